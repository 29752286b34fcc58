"""Adversarial fine-tuning of a CLIP image tower on shapes-world renders, on CPU: FARE or TeCoA under PGD.

FARE (Schlarmann et al. 2024) keeps the image embedding of an attacked image where the frozen original model
puts the clean one, so the text tower and the zero-shot behaviour stay; TeCoA (Mao et al. 2023) minimizes the
contrastive loss against the batch's captions under attack. Only the image tower trains; batch norms keep
their statistics (the model stays in eval mode: the attack and the update see the same network).

The batch of step ``k`` is rendered from ``(seed, k)`` (:func:`clipstudio.worlds.shapes.train_clip.make_batch`)
and the attack's random start from the same pair, so ``--resume`` from the state file (fp32 weights,
optimizer, step) continues exactly. The checkpoint is open_clip's plain ``state_dict`` in fp16, written
atomically, with a card ``OUT.json`` (the exact command, the architecture, progress, clean accuracy) that also
lets ``--clip OUT.pt`` find the architecture.

Command line: ``clipstudio train robust --model shapes-guide --objective fare --norm linf --eps 4 --steps 300``
(options and defaults from :class:`RobustTrainConfig`; radii in units of 1/255).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...checkpoints import load_checkpoint
from ...config import MAX_LR, MAX_WEIGHT, SEED_MAX, check_numbers
from ...errors import ClipstudioError
from ...guide.clip import ClipGuide, create_clip_model, resolve_clip_spec
from ...guide.robust import NORMS, OBJECTIVES, fare_loss, pgd_attack, tecoa_loss
from ...images import atomic_torch_save, atomic_write
from .train_clip import TARGETS, export_state_dict, lr_at, make_batch
from .zeroshot import evaluate_model

PIXEL_LEVEL = 1 / 255  # the unit of --eps and --step-size


@dataclass
class RobustTrainConfig:
    """An adversarial fine-tuning run: ``clipstudio train robust`` derives its options and defaults from these."""

    model: str = "shapes-guide"  # the CLIP to make robust: an embedded name, NAME:PATH or a checkpoint path
    objective: str = "fare"  # fare (unsupervised, embedding-preserving) or tecoa (contrastive under attack)
    norm: str = "linf"  # the threat model: linf or l2
    eps: float = 4.0  # attack radius in units of 1/255 at the model's input size
    step_size: float = 1.0  # PGD step in units of 1/255
    pgd_steps: int = 5  # PGD iterations per training step
    clean_weight: float = 0.0  # weight of the same objective on the clean images too
    steps: int = 300
    batch: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup: int = -1  # warm-up steps (-1: steps/20, at most 50)
    seed: int = 0  # the data and attack starts of every step
    extra_objects: bool = True  # hard-negative twins with an object more or fewer, as the guide was tuned on
    out: str = ""  # checkpoint path ("": MODEL-OBJECTIVE.pt in the current folder)
    state: str = ""  # resume-state path ("": OUT.state)
    resume: bool = False  # continue from the state file
    save_every: int = 50
    stop_after: int = 0  # stop (with a checkpoint) at this step, to continue with resume (0: run all steps)
    eval_n: int = 100  # clean zero-shot check at the end, scenes per form (0: off)

    def validate(self) -> "RobustTrainConfig":
        """Reject settings no run can use, in one line."""
        if self.objective not in OBJECTIVES:
            raise ClipstudioError(f"unknown objective '{self.objective}'; choose one of: {', '.join(OBJECTIVES)}")
        if self.norm not in NORMS:
            raise ClipstudioError(f"unknown threat model '{self.norm}'; choose one of: {', '.join(NORMS)}")
        check_numbers(lr=(self.lr, 0, MAX_LR), seed=(self.seed, 0, SEED_MAX), eps=(self.eps, 0, 255 * 64),
                      step_size=(self.step_size, 0, 255 * 64), weight_decay=(self.weight_decay, 0, MAX_WEIGHT),
                      clean_weight=(self.clean_weight, 0, MAX_WEIGHT))
        if self.steps <= 0 or self.batch < 2 or self.pgd_steps < 0:
            raise ClipstudioError(f"--steps must be positive, --batch at least 2 and --pgd-steps >= 0, got "
                                  f"{self.steps}, {self.batch} and {self.pgd_steps}")
        if self.save_every < 1 or self.stop_after < 0 or self.eval_n < 0 or not self.lr > 0:
            raise ClipstudioError("--save-every must be >= 1, --stop-after and --eval-n >= 0, --lr > 0")
        return self

    @property
    def out_path(self) -> str:
        return self.out or f"{Path(self.model.replace(':', '-')).stem}-{self.objective}.pt"

    @property
    def state_path(self) -> str:
        return self.state or self.out_path + ".state"

    @property
    def warmup_steps(self) -> int:
        return self.warmup if self.warmup >= 0 else max(1, min(50, self.steps // 20))


@dataclass
class _Run:
    """A fine-tuning run: the model being trained and the frozen original, both wrapped as guides."""

    config: RobustTrainConfig
    arch: str
    guide: ClipGuide  # trained (image tower only)
    original: ClipGuide  # frozen: FARE's targets, TeCoA's text embeddings and temperature
    optimizer: torch.optim.Optimizer
    history: list[float]
    start: int = 0

    def save(self, step: int, command: str, extra: dict | None = None) -> None:
        atomic_torch_save({"model": self.config.model, "step": step, "state_dict": self.guide.model.state_dict(),
                           "optimizer": self.optimizer.state_dict(), "history": self.history}, self.config.state_path)
        atomic_torch_save(export_state_dict(self.guide.model), self.config.out_path)
        write_card(self, step, command, extra or {})


def write_card(run: _Run, step: int, command: str, extra: dict) -> str:
    """``OUT.json`` beside the checkpoint: its architecture (``model``, read by ``--clip OUT.pt``), the exact
    command, the settings and progress."""
    out = Path(run.config.out_path)
    card = {"model": run.arch, "name": out.stem, "command": command, "kind": "robust fine-tune",
            "settings": asdict(run.config), "step": step, "checkpoint_bytes": out.stat().st_size,
            "dtype": "float16", "last_losses": run.history[-10:], **extra}
    path = out.with_suffix(".json")
    atomic_write(path, lambda handle: handle.write((json.dumps(card, indent=2) + "\n").encode()))
    return str(path)


def _start_run(config: RobustTrainConfig, log: Callable[[str], None]) -> _Run:
    """The model to train and its frozen original (same weights), the optimizer, and the resume state."""
    arch = resolve_clip_spec(config.model).arch
    model, tokenizer = create_clip_model(config.model)
    original, _ = create_clip_model(config.model)
    model.eval().requires_grad_(False)
    model.visual.requires_grad_(True)  # the text tower stays as it was (FARE and TeCoA alike)
    optimizer = torch.optim.AdamW(model.visual.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    guide = ClipGuide.from_open_clip(arch, model, tokenizer, freeze=False)
    run = _Run(config, arch, guide, ClipGuide.from_open_clip(arch, original, tokenizer), optimizer, [])
    if config.resume:
        path = config.state_path
        if not os.path.exists(path):
            raise ClipstudioError(f"--resume: no training state at {path}")
        state = load_checkpoint(path)
        if not isinstance(state, dict) or state.get("model") != config.model:
            raise ClipstudioError(f"--resume: {path} is not a robust fine-tune of {config.model}")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        run.start, run.history = int(state["step"]), list(state["history"])
        log(f"resumed from {path} at step {run.start}")
    return run


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step ``step``'s attack starts: fixed by ``(seed, step)``, so a resume replays it."""
    return torch.Generator().manual_seed(int(np.random.default_rng([seed, step, 1]).integers(2**62)))


def objective_fn(run: _Run, images: torch.Tensor, captions: list[str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The run's objective as a function of (attacked) images: FARE against the original's clean embeddings,
    or TeCoA against the batch's distinct captions under the original's text tower."""
    guide, original = run.guide, run.original

    def embed(x: torch.Tensor) -> torch.Tensor:
        return guide.model.encode_image(guide.normalize(x)).float()

    if run.config.objective == "fare":
        with torch.no_grad():
            targets = original.model.encode_image(original.normalize(images)).float()
        return lambda x: fare_loss(embed(x), targets)
    distinct = list(dict.fromkeys(captions))
    labels = torch.tensor([distinct.index(c) for c in captions])
    text = original.encode_text(distinct)
    scale = original.model.logit_scale.exp().detach()
    return lambda x: tecoa_loss(embed(x), text, scale, labels)


def train_step(run: _Run, step: int) -> float:
    """One adversarial step on the batch of ``(seed, step)``: attack the current model, then descend on the
    objective at the attacked images (plus ``clean_weight`` times it at the clean ones). Returns the loss."""
    c = run.config
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(step, c.steps, c.lr, c.warmup_steps)
    images, captions = make_batch((c.seed, step), c.batch, run.guide.image_size, extra_objects=c.extra_objects)
    loss_fn = objective_fn(run, images, captions)
    adv = pgd_attack(loss_fn, images, c.norm, c.eps * PIXEL_LEVEL, c.step_size * PIXEL_LEVEL, c.pgd_steps,
                     step_generator(c.seed, step))
    loss = loss_fn(adv)
    if c.clean_weight:
        loss = loss + c.clean_weight * loss_fn(images)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.guide.model.visual.parameters(), 1.0)
    run.optimizer.step()
    return float(loss.detach())


def train(config: RobustTrainConfig, command: str = "", log: Callable[[str], None] = print,
          progress: bool = True) -> dict:
    """Fine-tune ``config.model``'s image tower adversarially; checkpoints (and card) to ``config.out_path``.
    Runs on torch's current thread count (the command sets it). Returns a summary dict."""
    from tqdm import tqdm

    config.validate()
    torch.manual_seed(config.seed)
    run = _start_run(config, log)
    end = min(config.steps, config.stop_after) if config.stop_after else config.steps
    t0, loss = time.time(), float("nan")
    bar = tqdm(range(run.start, end), initial=run.start, total=config.steps, disable=not progress,
               desc=f"{config.objective} {config.norm}", dynamic_ncols=True, mininterval=5.0)
    for step in bar:
        loss = train_step(run, step)
        run.history.append(round(loss, 6))
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        done = step + 1
        if done % config.save_every == 0 and done != end:
            run.save(done, command)
    accuracy = evaluate_model(run.guide, n=config.eval_n, seed=10_000 + config.seed) if config.eval_n else {}
    extra = {"train_seconds_this_run": round(time.time() - t0, 1)}
    if accuracy:
        extra.update(accuracy={k: round(v, 4) for k, v in accuracy.items()}, targets=TARGETS,
                     accuracy_seed=10_000 + config.seed, accuracy_n_per_form=config.eval_n,
                     meets_targets=all(accuracy.get(k, 0.0) >= v for k, v in TARGETS.items()))
    run.save(end, command, extra)
    return {"model": config.model, "out": config.out_path, "steps": end, "final_loss": loss,
            "seconds": round(time.time() - t0, 1), "history": run.history, "eval": accuracy}
