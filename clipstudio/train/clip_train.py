"""Contrastive (CLIP) training of the embedded shapes-world models, on CPU.

Every batch is rendered on the fly from seeded random scenes (no data set on disk):
half of it is random scenes, the other half is one "hard negative" twin per scene that
differs in exactly one attribute (a colour, the shape, the size band, the position, the
order or kind of relation).  Twins make the in-batch InfoNCE loss depend on every
attribute, which random batches alone teach only slowly.

Checkpoints are open_clip's plain ``state_dict`` (tensors only, floats stored as fp16
to stay small), written atomically, so ``torch.load(weights_only=True)`` and
``open_clip.create_model(name, pretrained=PATH)`` both read them.  A separate state
file (fp32 weights, optimizer, step) makes ``--resume`` exact: the data of step ``k``
depends only on ``(seed, k)``.

CLI (wired by the lead as ``clipstudio train clip --world shapes ...``)::

    python -m clipstudio.train.clip_train --model shapes-guide --steps 3000 --batch 256 \
        --lr 1e-3 --seed 0 --out clipstudio/assets/shapes-guide.pt
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipstudio.checkpoints import load_checkpoint
from clipstudio.config import MAX_LR, MAX_WEIGHT, SEED_MAX, check_numbers
from clipstudio.errors import ClipstudioError
from clipstudio.schedules import lr_factor
from clipstudio.images import atomic_torch_save
from clipstudio.worlds.shapes.captions import random_caption
from clipstudio.worlds.shapes.render import (COLOURS, POSITIONS, SHAPES, SIZE_BANDS, Scene, render_batch,
                                     sample_scene)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "worlds" / "shapes" / "model_configs"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "worlds" / "shapes" / "assets"
# Relative frequency of the grammar forms in training batches.  Two-object scenes get
# extra weight: binding colours/shapes to the right side of a relation is the hardest part.
FORM_WEIGHTS: dict[str, float] = {"plain": 0.16, "sized": 0.2, "positioned": 0.2, "left_of": 0.22, "above": 0.22}


# --------------------------------------------------------------------------- models
def register_configs() -> None:
    """Make the shapes-* configs known to open_clip (idempotent)."""
    import open_clip

    if "shapes-guide" not in open_clip.list_models():
        open_clip.add_model_config(str(MODEL_CONFIG_DIR))


def create_model(name: str, pretrained: Optional[str] = None):
    """(model, tokenizer) for a registered config, optionally loading a checkpoint."""
    import open_clip

    register_configs()
    if name not in open_clip.list_models():
        raise ClipstudioError(f"unknown model config {name!r}")
    model = open_clip.create_model(name, pretrained=pretrained)
    return model.float(), open_clip.get_tokenizer(name)


def load_embedded(name: str, path: Optional[str] = None):
    """(model in eval mode, tokenizer) for a shipped checkpoint ``clipstudio/assets/NAME.pt``."""
    path = str(path or ASSETS_DIR / f"{name}.pt")
    if not os.path.exists(path):
        raise ClipstudioError(f"missing checkpoint {path}; train it with clipstudio train clip")
    model, tok = create_model(name, pretrained=path)
    return model.eval(), tok


def image_normalizer(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's mean/std normalisation for NCHW tensors in [0, 1]."""
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    mean = torch.tensor(cfg.get("mean", OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", OPENAI_DATASET_STD)).view(1, 3, 1, 1)
    return lambda x: (x - mean) / std


def model_image_size(model) -> int:
    s = model.visual.image_size
    return int(s[0] if isinstance(s, (tuple, list)) else s)


class CachedTokenizer:
    """open_clip tokenizer with a per-string cache (the caption set is finite and small)."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            for t, row in zip(missing, self.tok(missing)):
                self.cache[t] = row
        return torch.stack([self.cache[t] for t in texts])


# --------------------------------------------------------------------------- data
def _pick(rng: np.random.Generator, options: Sequence[str], exclude: Sequence[str] = ()) -> str:
    pool = [o for o in options if o not in exclude]
    return pool[int(rng.integers(len(pool)))]


def twin_scene(rng: np.random.Generator, scene: Scene, extra_objects: bool = False) -> Scene:
    """A scene that differs from ``scene`` in exactly one named attribute, or (with ``extra_objects``) in
    having one object more or fewer."""
    bg = scene.background
    cols = [o.colour for o in scene.objects]
    shps = [o.shape for o in scene.objects]
    kw: dict = {"background": bg, "colours": cols, "shapes": shps}
    form = scene.form
    if form == "sized":
        kw["size"] = scene.objects[0].size_label
    if form == "positioned":
        kw["position"] = scene.objects[0].position_label
    choices = ["background", "colour", "shape"]
    if form == "sized":
        choices += ["size"] * 2
    elif form == "positioned":
        choices += ["position"] * 2
    elif form in ("left_of", "above"):
        choices += ["swap", "swap", "relation", "colour2", "shape2"]
    if extra_objects:
        # A one-object caption must not fit a picture with a second object (nor the reverse), or a guided
        # optimizer adds objects nobody asked for.
        choices += ["missing"] if form in ("left_of", "above") else ["extra", "extra"]
    what = choices[int(rng.integers(len(choices)))]
    if what == "extra":
        relation = "left_of" if rng.random() < 0.5 else "above"
        first = rng.random() < 0.5
        return sample_scene(rng, relation, background=bg, colours=cols + [None] if first else [None] + cols,
                            shapes=shps + [None] if first else [None] + shps)
    if what == "missing":
        keep = int(rng.integers(2))
        return sample_scene(rng, "plain", background=bg, colours=[cols[keep]], shapes=[shps[keep]])
    if what == "background":
        kw["background"] = _pick(rng, COLOURS, cols + [bg])
    elif what in ("colour", "colour2"):
        i = 1 if what == "colour2" else 0
        cols = list(cols)
        cols[i] = _pick(rng, COLOURS, cols + [bg])
        kw["colours"] = cols
    elif what in ("shape", "shape2"):
        i = 1 if what == "shape2" else 0
        shps = list(shps)
        shps[i] = _pick(rng, SHAPES, [shps[i]])
        kw["shapes"] = shps
    elif what == "size":
        kw["size"] = _pick(rng, tuple(SIZE_BANDS), [kw["size"]])
    elif what == "position":
        kw["position"] = _pick(rng, tuple(POSITIONS), [kw["position"]])
    elif what == "swap":
        kw["colours"], kw["shapes"] = cols[::-1], shps[::-1]
    elif what == "relation":
        form = "above" if form == "left_of" else "left_of"
    return sample_scene(rng, form, **kw)


def make_batch(step_seed: Sequence[int], batch: int, image_size: int,
               p_lowres: float = 0.3, max_noise: float = 0.04,
               extra_objects: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Render one training batch: (images NCHW in [0, 1], captions), fully determined by the seed.

    Light augmentation (sometimes rendering small and upsampling, pixel noise) keeps the
    models from keying on exact pixel values, since they must also judge generated images.
    """
    rng = np.random.default_rng(list(step_seed))
    forms = list(FORM_WEIGHTS)
    p = np.array([FORM_WEIGHTS[f] for f in forms])
    n_base = (batch + 1) // 2
    scenes: list[Scene] = []
    for _ in range(n_base):
        scenes.append(sample_scene(rng, forms[int(rng.choice(len(forms), p=p / p.sum()))]))
    scenes += [twin_scene(rng, s, extra_objects) for s in scenes[: batch - n_base]]
    captions = [random_caption(rng, s) for s in scenes]
    lo = max(16, image_size // 2)
    if rng.random() < p_lowres and lo < image_size:
        px = int(rng.integers(lo, image_size))
        imgs = F.interpolate(render_batch(scenes, px), size=(image_size, image_size),
                             mode="bilinear", align_corners=False, antialias=False)
    else:
        imgs = render_batch(scenes, image_size)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    sigma = torch.rand(len(scenes), 1, 1, 1, generator=gen) * max_noise
    imgs = (imgs + sigma * torch.randn(imgs.shape, generator=gen)).clamp(0, 1)
    return imgs, captions


# --------------------------------------------------------------------------- checkpoints
def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, then os.replace (never a torn file)."""
    atomic_torch_save(obj, path)


def export_state_dict(model, half: bool = True) -> dict[str, torch.Tensor]:
    """Plain open_clip state_dict (tensors only); floats as fp16 when ``half``."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        out[k] = v.half() if (half and v.is_floating_point()) else v.clone()
    return out


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 5% of ``base`` (the schedule the shipped model was trained with)."""
    return base * lr_factor("cosine", step, total, warmup, floor=0.05)


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        # Norms, biases, embeddings' scale and the temperature are not decayed (as in open_clip).
        (no_decay if p.ndim < 2 or "logit_scale" in n or "ln" in n or "bn" in n else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------- training
def train(model_name: str, steps: int, batch: int, lr: float, seed: int, out: str,
          resume: bool = False, state_path: Optional[str] = None, save_every: int = 100,
          eval_every: int = 0, threads: int = 2, weight_decay: float = 0.1,
          warmup: Optional[int] = None, log: Callable[[str], None] = print,
          progress: bool = True, stop_after: Optional[int] = None, extra_objects: bool = False,
          init: Optional[str] = None) -> dict:
    """Train ``model_name`` from scratch (or resume) and write checkpoints to ``out``.

    ``steps`` fixes the learning-rate schedule; ``stop_after`` (optional) ends the run
    early at that step with a checkpoint, to be continued with ``resume=True``. ``init`` starts
    from a checkpoint's weights (fine-tuning); ``extra_objects`` adds twins with one object more
    or fewer to the batches.
    Returns a summary dict (final loss, last step, seconds, loss history, last evaluation).
    """
    import open_clip
    from tqdm import tqdm

    check_numbers(lr=(lr, 0, MAX_LR), seed=(seed, 0, SEED_MAX), weight_decay=(weight_decay, 0, MAX_WEIGHT))
    if steps <= 0 or batch < 2:
        raise ClipstudioError("--steps must be positive and --batch at least 2")
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    register_configs()
    model, tokenizer = create_model(model_name)
    if init:
        model.load_state_dict({k: v.float() for k, v in load_checkpoint(init).items()})
    tok = CachedTokenizer(tokenizer)
    state_path = state_path or str(out) + ".state"
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.ClipLoss()
    normalize = image_normalizer(model)
    size = model_image_size(model)
    warmup = warmup if warmup is not None else max(1, min(200, steps // 20))
    start, history = 0, []
    if resume:
        if not os.path.exists(state_path):
            raise ClipstudioError(f"--resume: no training state at {state_path}")
        st = load_checkpoint(state_path)
        if st["model_name"] != model_name:
            raise ClipstudioError(f"--resume: {state_path} is for {st['model_name']}, not {model_name}")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        start, history = int(st["step"]), list(st["history"])
        log(f"resumed from {state_path} at step {start}")

    def save(step: int) -> None:
        atomic_save({"model_name": model_name, "step": step, "model": model.state_dict(),
                     "optimizer": opt.state_dict(), "history": history, "seed": seed}, state_path)
        atomic_save(export_state_dict(model), out)

    t0 = time.time()
    last_eval: dict = {}
    model.train()
    end = min(steps, stop_after) if stop_after is not None else steps
    bar = tqdm(range(start, end), initial=start, total=steps, disable=not progress, desc=model_name,
               dynamic_ncols=True, mininterval=5.0)
    loss_v = float("nan")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        imgs, caps = make_batch((seed, step), batch, size, extra_objects=extra_objects)
        img_f, txt_f, scale = model(normalize(imgs), tok(caps))[:3]
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # clamp the learned temperature as CLIP does (scale <= 100)
            model.logit_scale.clamp_(0, math.log(100))
        loss_v = float(loss.detach())
        history.append(round(loss_v, 5))
        bar.set_postfix(loss=f"{loss_v:.3f}", scale=f"{model.logit_scale.exp().item():.1f}", refresh=False)
        done = step + 1
        if done % save_every == 0 or done == end:
            save(done)
        if eval_every and (done % eval_every == 0 or done == steps):
            from clipstudio.worlds.shapes.zeroshot import evaluate_model

            model.eval()
            last_eval = evaluate_model(model, tokenizer, n=100, seed=10_000 + seed)
            model.train()
            log(f"step {done} loss {loss_v:.4f} eval " + " ".join(f"{k}={v:.3f}" for k, v in last_eval.items()))
    return {"model": model_name, "steps": end, "final_loss": loss_v, "seconds": round(time.time() - t0, 1),
            "history": history, "eval": last_eval}


TARGETS: dict[str, float] = {"background": 0.97, "colour": 0.97, "shape": 0.97,
                              "size": 0.90, "position": 0.90, "relation": 0.90}


def write_card(checkpoint: str, command: str, accuracy: dict[str, float], eval_command: str,
               extra: Optional[dict] = None) -> str:
    """Write ``<checkpoint minus .pt>.json``: how the checkpoint was made and what it measures.

    The training parameters are read back from the resume-state file when present.
    """
    ckpt = Path(checkpoint)
    sd = load_checkpoint(ckpt)
    name = ckpt.stem
    card = {
        "model": name,
        "command": command,
        "config": json.loads((MODEL_CONFIG_DIR / f"{name}.json").read_text()),
        "checkpoint_bytes": ckpt.stat().st_size,
        "parameters": int(sum(v.numel() for v in sd.values() if v.is_floating_point())),
        "dtype": "float16",
        "accuracy": {k: round(float(v), 4) for k, v in accuracy.items()},
        "accuracy_command": eval_command,
        "targets": TARGETS,
        "meets_targets": all(accuracy.get(k, 0.0) >= v for k, v in TARGETS.items()),
    }
    card.update(extra or {})
    path = ckpt.with_suffix(".json")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, path)
    return str(path)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="clipstudio train clip",
                                 description="Train an embedded shapes-world CLIP model on CPU.")
    ap.add_argument("--model", default="shapes-guide", help="registered config name (shapes-guide, shapes-eval)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="checkpoint path (default clipstudio/assets/MODEL.pt)")
    ap.add_argument("--state", default=None, help="resume-state path (default OUT.state)")
    ap.add_argument("--resume", action="store_true", help="continue from the state file")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=0, help="zero-shot check every N steps (0: off)")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="stop (with a checkpoint) at this step; continue later with --resume")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", default=None, help="start from this checkpoint's weights (fine-tuning)")
    ap.add_argument("--extra-objects", action="store_true",
                    help="add hard-negative twins with one object more or fewer")
    ap.add_argument("--world", default="shapes", choices=["shapes"], help="training world (only shapes)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    out = args.out or str(ASSETS_DIR / f"{args.model}.pt")
    try:
        summary = train(args.model, args.steps, args.batch, args.lr, args.seed, out, resume=args.resume,
                        state_path=args.state, save_every=args.save_every, eval_every=args.eval_every,
                        threads=args.threads, stop_after=args.stop_after,
                        extra_objects=args.extra_objects, init=args.init)
    except ClipstudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary.pop("history")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
