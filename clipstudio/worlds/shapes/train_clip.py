"""Contrastive (CLIP) training of the shapes-world models, on CPU.

Every batch is rendered on the fly from seeded random scenes (no data set on disk):
half of it is random scenes, the other half is one "hard negative" twin per scene that
differs in exactly one attribute (a colour, the shape, the size band, the position, the
order or kind of relation).  Twins make the in-batch InfoNCE loss depend on every
attribute, which random batches alone teach only slowly.

Checkpoints are open_clip's plain ``state_dict`` (tensors only, floats stored as fp16
to stay small), written atomically, so ``torch.load(weights_only=True)`` and
``open_clip.create_model(name, pretrained=PATH)`` both read them.  A separate state
file (fp32 weights, optimizer, step) makes ``--resume`` exact: the data of step ``k``
depends only on ``(seed, k)``.  Models are built by the one CLIP loader
(:func:`clipstudio.guide.clip.create_clip_model`), from ``NAME:random`` seeded by ``seed``.

Command line: ``clipstudio train clip --model shapes-guide --steps 3000 --batch 256 --lr 1e-3 --seed 0
--out shapes-guide.pt`` (options and defaults from :class:`ClipTrainConfig`).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...checkpoints import load_checkpoint
from ...config import MAX_LR, MAX_WEIGHT, SEED_MAX, check_numbers
from ...errors import ClipstudioError
from ...guide.clip import ClipGuide, create_clip_model
from ...images import atomic_torch_save, atomic_write
from ...schedules import lr_factor
from .captions import random_caption
from .render import COLOURS, POSITIONS, SHAPES, SIZE_BANDS, Scene, render_batch, sample_scene
from .zeroshot import evaluate_model

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
# Relative frequency of the grammar forms in training batches.  Two-object scenes get
# extra weight: binding colours/shapes to the right side of a relation is the hardest part.
FORM_WEIGHTS: dict[str, float] = {"plain": 0.16, "sized": 0.2, "positioned": 0.2, "left_of": 0.22, "above": 0.22}


@dataclass
class ClipTrainConfig:
    """A training run's settings: ``clipstudio train clip`` derives its options and defaults from these."""

    model: str = "shapes-guide"  # an open_clip config a world registers (shapes-guide, shapes-eval)
    steps: int = 3000  # total steps: fixes the learning-rate schedule
    batch: int = 256  # half random scenes, half their hard-negative twins
    lr: float = 1e-3
    seed: int = 0  # the initial weights and the data of every step
    out: str = ""  # checkpoint path ("": MODEL.pt in the current folder)
    state: str = ""  # resume-state path ("": OUT.state)
    resume: bool = False  # continue from the state file
    save_every: int = 100
    eval_every: int = 0  # zero-shot check every N steps (0: off)
    stop_after: int = 0  # stop (with a checkpoint) at this step, to continue with resume (0: run all steps)
    init: str = ""  # start from this checkpoint's weights (fine-tuning)
    extra_objects: bool = False  # also twins with one object more or fewer
    weight_decay: float = 0.1
    warmup: int = -1  # warm-up steps (-1: steps/20, at most 200)

    def validate(self) -> "ClipTrainConfig":
        """Reject settings no run can use, in one line."""
        check_numbers(lr=(self.lr, 0, MAX_LR), seed=(self.seed, 0, SEED_MAX), weight_decay=(self.weight_decay, 0, MAX_WEIGHT))
        if self.steps <= 0 or self.batch < 2:
            raise ClipstudioError(f"--steps must be positive and --batch at least 2, got {self.steps} and {self.batch}")
        if self.save_every < 1 or self.eval_every < 0 or self.stop_after < 0 or not self.lr > 0:
            raise ClipstudioError("--save-every must be >= 1, --eval-every and --stop-after >= 0, --lr > 0")
        return self

    @property
    def out_path(self) -> str:
        return self.out or f"{self.model}.pt"

    @property
    def state_path(self) -> str:
        return self.state or self.out_path + ".state"

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup >= 0 else max(1, min(200, self.steps // 20))


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
@dataclass
class _Run:
    """What a training run holds: the model (wrapped as an unfrozen guide), its optimizer and loss history."""

    config: ClipTrainConfig
    guide: ClipGuide
    optimizer: torch.optim.Optimizer
    history: list[float]
    start: int = 0

    def save(self, step: int) -> None:
        model = self.guide.model
        atomic_torch_save({"model_name": self.config.model, "step": step, "model": model.state_dict(),
                           "optimizer": self.optimizer.state_dict(), "history": self.history,
                           "seed": self.config.seed}, self.config.state_path)
        atomic_torch_save(export_state_dict(model), self.config.out_path)


def _start_run(config: ClipTrainConfig, log: Callable[[str], None]) -> _Run:
    """A new model (seeded random weights, or ``init``'s), its optimizer, and with ``resume`` the saved state."""
    model, tokenizer = create_clip_model(f"{config.model}:random", seed=config.seed)
    if config.init:
        if not os.path.isfile(config.init):
            raise ClipstudioError(f"--init: no checkpoint at {config.init}")
        init = load_checkpoint(config.init)
        model.load_state_dict({k: v.float() for k, v in init.items()})
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6)
    run = _Run(config, ClipGuide.from_open_clip(config.model, model, tokenizer, freeze=False), optimizer, [])
    if config.resume:
        path = config.state_path
        if not os.path.exists(path):
            raise ClipstudioError(f"--resume: no training state at {path}")
        state = load_checkpoint(path)
        if state["model_name"] != config.model:
            raise ClipstudioError(f"--resume: {path} is for {state['model_name']}, not {config.model}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        run.start, run.history = int(state["step"]), list(state["history"])
        log(f"resumed from {path} at step {run.start}")
    return run


def _train_step(run: _Run, step: int, loss_fn) -> float:
    """One contrastive step on the batch of ``(seed, step)``; returns the loss."""
    config, guide = run.config, run.guide
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(step, config.steps, config.lr, config.warmup_steps)
    images, captions = make_batch((config.seed, step), config.batch, guide.image_size,
                                  extra_objects=config.extra_objects)
    image_f, text_f, scale = guide.model(guide.normalize(images), guide.tokenizer(captions))[:3]
    loss = loss_fn(image_f, text_f, scale)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(guide.model.parameters(), 1.0)
    run.optimizer.step()
    with torch.no_grad():  # clamp the learned temperature as CLIP does (scale <= 100)
        guide.model.logit_scale.clamp_(0, math.log(100))
    return float(loss.detach())


def train(config: ClipTrainConfig, log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Train ``config.model`` from seeded random weights (or ``init``, or the resume state) and write
    checkpoints to ``config.out_path``. Runs on torch's current thread count (the command sets it).

    Returns a summary dict (final loss, last step, seconds, loss history, last evaluation).
    """
    import open_clip
    from tqdm import tqdm

    config.validate()
    torch.manual_seed(config.seed)  # any stochastic layer draws from the run's seed too
    run = _start_run(config, log)
    loss_fn = open_clip.ClipLoss()
    t0, last_eval, loss = time.time(), {}, float("nan")
    run.guide.model.train()
    end = min(config.steps, config.stop_after) if config.stop_after else config.steps
    bar = tqdm(range(run.start, end), initial=run.start, total=config.steps, disable=not progress,
               desc=config.model, dynamic_ncols=True, mininterval=5.0)
    for step in bar:
        loss = _train_step(run, step, loss_fn)
        run.history.append(round(loss, 5))
        bar.set_postfix(loss=f"{loss:.3f}", scale=f"{run.guide.model.logit_scale.exp().item():.1f}", refresh=False)
        done = step + 1
        if done % config.save_every == 0 or done == end:
            run.save(done)
        if config.eval_every and (done % config.eval_every == 0 or done == config.steps):
            last_eval = evaluate_model(run.guide, n=100, seed=10_000 + config.seed)
            log(f"step {done} loss {loss:.4f} eval " + " ".join(f"{k}={v:.3f}" for k, v in last_eval.items()))
    return {"model": config.model, "steps": end, "final_loss": loss, "seconds": round(time.time() - t0, 1),
            "history": run.history, "eval": last_eval}


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
    atomic_write(path, lambda handle: handle.write((json.dumps(card, indent=2) + "\n").encode()))
    return str(path)
