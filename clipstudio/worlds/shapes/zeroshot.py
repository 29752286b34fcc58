"""Zero-shot attribute accuracy of a CLIP model on freshly rendered shapes-world images.

For each held-out scene (seeded; use a seed that training never used) and each
attribute, the candidate captions are the canonical caption of the truth with that one
attribute replaced by every value the world allows (a colour never equals the
background or the other object's colour), and the model must rank the true caption
first by cosine similarity.  Attributes and the scenes they are scored on:

* ``background``, ``colour``, ``shape``: every scene (for two-object scenes, both objects);
* ``size``: ``sized`` scenes (small / large);
* ``position``: ``positioned`` scenes (5 positions);
* ``relation``: two-object scenes; 4 candidates: either relation, in either object order
  (so the model must bind each colour/shape to its side, not just see a layout).

Any CLIP the studio can load is measured through the one loader (:func:`clipstudio.guide.clip.load_clip`)
and the guide's own normalization; ``clipstudio eval clip --model shapes-guide -n 200`` prints the table.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ...errors import ClipstudioError
from ...guide.clip import ClipGuide, load_clip
from .captions import CaptionSpec, canonical_caption, spec_from_scene, with_object
from .render import COLOURS, FORMS, POSITIONS, SHAPES, SIZE_BANDS, Scene, render_batch, sample_scene

ATTRIBUTES: tuple[str, ...] = ("background", "colour", "shape", "size", "position", "relation")
DEFAULT_SEED = 12345  # training uses seeds (seed, step) lists; this single-int stream is disjoint


def candidate_specs(spec: CaptionSpec, attribute: str) -> list[list[CaptionSpec]]:
    """Groups of candidate specs for ``attribute``; each group's first entry is the truth."""
    used = [o.colour for o in spec.objects]
    groups: list[list[CaptionSpec]] = []
    if attribute == "background":
        groups.append([spec] + [replace(spec, background=c) for c in COLOURS
                                if c != spec.background and c not in used])
    elif attribute in ("colour", "shape"):
        for i, ob in enumerate(spec.objects):
            if attribute == "colour":
                alts = [c for c in COLOURS if c not in used and c != spec.background]
                groups.append([spec] + [with_object(spec, i, colour=c) for c in alts])
            else:
                groups.append([spec] + [with_object(spec, i, shape=s) for s in SHAPES if s != ob.shape])
    elif attribute == "size" and spec.objects[0].size is not None:
        groups.append([spec] + [with_object(spec, 0, size=z) for z in SIZE_BANDS if z != spec.objects[0].size])
    elif attribute == "position" and spec.objects[0].position is not None:
        groups.append([spec] + [with_object(spec, 0, position=p) for p in POSITIONS
                                if p != spec.objects[0].position])
    elif attribute == "relation" and spec.relation is not None:
        swapped = replace(spec, objects=spec.objects[::-1])
        other = "above" if spec.relation == "to the left of" else "to the left of"
        groups.append([spec, swapped, replace(spec, relation=other), replace(swapped, relation=other)])
    return groups


def eval_scenes(n: int, seed: int) -> list[Scene]:
    """``n`` held-out scenes of each grammar form (5n in all), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, form) for form in FORMS for _ in range(n)]


def _candidate_trials(scenes: list[Scene]) -> list[tuple[int, str, list[str]]]:
    """(scene index, attribute, candidate captions with the truth first) for every scene and attribute."""
    trials = []
    for idx, scene in enumerate(scenes):
        spec = spec_from_scene(scene)
        for attr in ATTRIBUTES:
            for group in candidate_specs(spec, attr):
                trials.append((idx, attr, [canonical_caption(s) for s in group]))
    return trials


@torch.no_grad()
def evaluate_model(guide: ClipGuide, n: int = 200, seed: int = DEFAULT_SEED, batch: int = 250) -> dict[str, float]:
    """Per-attribute zero-shot accuracy of a CLIP ``guide`` (see module docstring); a model being trained is
    put in eval mode for the measurement and given back in the mode it was in."""
    if n <= 0:
        raise ClipstudioError(f"-n must be positive, got {n}")
    was_training = guide.model.training
    guide.model.eval()
    scenes = eval_scenes(n, seed)
    img_f = torch.cat([guide.encode_image(render_batch(scenes[i:i + batch], guide.image_size).to(guide.mean.device))
                       for i in range(0, len(scenes), batch)])
    # Gather every candidate group first, then encode all distinct captions in large batches: encoding group
    # by group is dominated by per-call overhead.
    trials = _candidate_trials(scenes)
    texts = list(dict.fromkeys(t for _, _, group in trials for t in group))
    index = {t: i for i, t in enumerate(texts)}
    txt_f = torch.cat([guide.encode_text(texts[j:j + 1024]) for j in range(0, len(texts), 1024)])
    correct = {a: 0 for a in ATTRIBUTES}
    total = {a: 0 for a in ATTRIBUTES}
    for idx, attr, group in trials:
        sims = txt_f[[index[t] for t in group]] @ img_f[idx]
        correct[attr] += int(int(sims.argmax()) == 0)
        total[attr] += 1
    guide.model.train(was_training)
    return {a: correct[a] / total[a] for a in ATTRIBUTES if total[a]}


def evaluate_clip(model: str = "shapes-guide", n: int = 200, seed: int = DEFAULT_SEED,
                  checkpoint: str | None = None, device: str = "cpu") -> dict[str, float]:
    """Zero-shot accuracy per attribute of a ``--clip`` model (an embedded name, ``NAME:PRETRAINED``, a path);
    ``checkpoint`` loads that file into architecture ``model`` instead (``NAME:PATH``)."""
    return evaluate_model(load_clip(f"{model}:{checkpoint}" if checkpoint else model, device), n=n, seed=seed)


def format_table(name: str, acc: dict[str, float], n: int) -> str:
    """A small plain-text table of accuracies."""
    lines = [f"zero-shot accuracy of {name} ({n} scenes per form)", f"{'attribute':<12}{'accuracy':>10}"]
    lines += [f"{a:<12}{v * 100:>9.1f}%" for a, v in acc.items()]
    return "\n".join(lines)
