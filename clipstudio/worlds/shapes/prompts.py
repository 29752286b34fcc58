"""The shapes world's prompt sets: seeded canonical-grammar prompts for every evaluation."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .captions import canonical_caption
from .render import FORMS, sample_scene


def prompt_set(n: int, seed: int = 1234, forms: Sequence[str] = FORMS) -> list[str]:
    """``n`` canonical-grammar prompts from seeded random scenes, cycling through ``forms`` so each form is
    equally represented."""
    rng = np.random.default_rng(seed)
    return [canonical_caption(sample_scene(rng, forms[i % len(forms)])) for i in range(n)]
