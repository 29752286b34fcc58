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

CLI (wired by the lead as ``clipstudio eval clip [--model NAME] [-n N]``)::

    python -m clipstudio.worlds.shapes.zeroshot --model shapes-guide -n 200
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np
import torch

from clipstudio.errors import ClipstudioError
from clipstudio.worlds.shapes.captions import CaptionSpec, canonical_caption, spec_from_scene, with_object
from clipstudio.worlds.shapes.render import COLOURS, FORMS, POSITIONS, SHAPES, SIZE_BANDS, Scene, render_batch, sample_scene

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


@torch.no_grad()
def evaluate_model(model, tokenizer, n: int = 200, seed: int = DEFAULT_SEED,
                   batch: int = 250) -> dict[str, float]:
    """Per-attribute zero-shot accuracy of an open_clip ``model`` (see module docstring)."""
    from clipstudio.train.clip_train import CachedTokenizer, image_normalizer, model_image_size

    if n <= 0:
        raise ClipstudioError("-n must be positive")
    was_training = model.training
    model.eval()
    tok = tokenizer if isinstance(tokenizer, CachedTokenizer) else CachedTokenizer(tokenizer)
    normalize = image_normalizer(model)
    size = model_image_size(model)
    scenes = eval_scenes(n, seed)
    feats = []
    for i in range(0, len(scenes), batch):
        x = normalize(render_batch(scenes[i:i + batch], size))
        feats.append(torch.nn.functional.normalize(model.encode_image(x), dim=-1))
    img_f = torch.cat(feats)
    # Gather every candidate group first, then encode all distinct captions in large
    # batches: encoding group by group is dominated by per-call overhead.
    trials: list[tuple[int, str, list[str]]] = []
    for idx, scene in enumerate(scenes):
        spec = spec_from_scene(scene)
        for attr in ATTRIBUTES:
            for group in candidate_specs(spec, attr):
                trials.append((idx, attr, [canonical_caption(s) for s in group]))
    texts = list(dict.fromkeys(t for _, _, group in trials for t in group))
    index = {t: i for i, t in enumerate(texts)}
    txt_f = torch.cat([torch.nn.functional.normalize(model.encode_text(tok(texts[j:j + 1024])), dim=-1)
                       for j in range(0, len(texts), 1024)])
    correct = {a: 0 for a in ATTRIBUTES}
    total = {a: 0 for a in ATTRIBUTES}
    for idx, attr, group in trials:
        sims = txt_f[[index[t] for t in group]] @ img_f[idx]
        correct[attr] += int(int(sims.argmax()) == 0)
        total[attr] += 1
    model.train(was_training)
    return {a: correct[a] / total[a] for a in ATTRIBUTES if total[a]}


def evaluate_clip(model_name: str = "shapes-guide", n: int = 200, seed: int = DEFAULT_SEED,
                  checkpoint: Optional[str] = None) -> dict[str, float]:
    """Zero-shot accuracy per attribute of an embedded model (``clipstudio/assets/NAME.pt``)."""
    from clipstudio.train.clip_train import load_embedded

    model, tokenizer = load_embedded(model_name, checkpoint)
    return evaluate_model(model, tokenizer, n=n, seed=seed)


def format_table(name: str, acc: dict[str, float], n: int) -> str:
    """A small plain-text table of accuracies."""
    lines = [f"zero-shot accuracy of {name} ({n} scenes per form)", f"{'attribute':<12}{'accuracy':>10}"]
    lines += [f"{a:<12}{v * 100:>9.1f}%" for a, v in acc.items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: print the per-attribute accuracy table; returns the exit status."""
    ap = argparse.ArgumentParser(prog="clipstudio eval clip", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes-guide")
    ap.add_argument("-n", type=int, default=200, help="scenes per grammar form")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--checkpoint", default=None, help="checkpoint path (default: the shipped one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    try:
        acc = evaluate_clip(args.model, n=args.n, seed=args.seed, checkpoint=args.checkpoint)
    except ClipstudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(args.model, acc, args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
