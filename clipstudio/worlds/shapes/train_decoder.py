"""Fine-tune a latent diffusion checkpoint's decoder on the shapes world's renders (``clipstudio train decoder``).

The shapes diffusion models sample 8x8 TAEF2 latents and decode them with the TAEF2 decoder, which was trained
on photographs. On the world's flat shapes its round trip (a true render, encoded, decoded) already fails the
colour-and-geometry checker on about 1.5% of scenes: square corners come back rounded (read as circles) and
small triangles lose their tips. Whatever the UNet learns, a sample cannot be sharper than the decoder draws it.

This trainer keeps the encoder and the UNet frozen and fits the decoder to the world: each step renders
``batch`` random scenes, encodes them, adds Gaussian noise of a standard deviation drawn from
U(0, ``latent_noise``) to the normalized latents (the UNet's samples are near the encoder's latents, not on
them), decodes and takes the L1 distance to the render. An average of the weights (``ema_decay``, started at
the starting weights) ships. The scenes and noise of step k depend only on (seed, k), so a resumed run is
exactly an uninterrupted one. It reports the round trip's checker failures on ``eval_scenes`` held-out scenes
before and after, and writes the starting checkpoint with only its decoder replaced, plus a ``.json`` card with
the exact command.

    clipstudio train decoder --model shapes-diffusion-reward --out shapes-diffusion-reward.pt --resume
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from clipstudio.config import MAX_LR, SEED_MAX, check_numbers
from clipstudio.errors import ClipstudioError

EVAL_SCENE_SEED = 777    # the held-out round-trip scenes; training draws from numpy streams [seed, step]


@dataclass
class DecoderTrainConfig:
    """Every setting of a decoder fine-tune, with its default (the command's options derive from it)."""
    model: str = "shapes-diffusion-reward"
    checkpoint: Optional[str] = None
    steps: int = 500
    batch: int = 32
    lr: float = 5e-5
    seed: int = 0
    latent_noise: float = 0.2
    ema_decay: float = 0.995
    eval_scenes: int = 600
    out: str = "shapes-diffusion-decoder.pt"
    state: Optional[str] = None
    resume: bool = False
    save_every: int = 50

    def validate(self) -> "DecoderTrainConfig":
        """Check ranges; each problem is one line of error, raised before any work."""
        check_numbers(lr=(self.lr, 0, MAX_LR), seed=(self.seed, 0, SEED_MAX))
        for name in ("steps", "batch", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ClipstudioError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if isinstance(self.eval_scenes, bool) or not isinstance(self.eval_scenes, int) or self.eval_scenes < 0:
            raise ClipstudioError(f"--eval-scenes must be 0 or more, got {self.eval_scenes!r}")
        if not (np.isfinite(self.latent_noise) and self.latent_noise >= 0):
            raise ClipstudioError(f"--latent-noise must be a finite number >= 0, got {self.latent_noise}")
        if not 0 <= self.ema_decay < 1:
            raise ClipstudioError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        return self

    @property
    def state_path(self) -> str:
        return self.state or f"{self.out}.state"


@dataclass
class _Run:
    """A decoder fine-tune's live objects and progress."""
    config: DecoderTrainConfig
    checkpoint: dict
    base: Path
    base_sha256: str
    decoder: torch.nn.Module
    ema: torch.nn.Module
    encoder: torch.nn.Module
    opt: torch.optim.Optimizer
    step: int = 0
    elapsed: float = 0.0
    history: list = dataclasses.field(default_factory=list)


def load_latent_parts(ck: dict, path: str | os.PathLike) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the trainable TAEF2 decoder, the frozen encoder into the UNet's space) of a latent checkpoint."""
    from clipstudio.worlds.shapes import diffusion_model as SM
    space = ck.get("space") or {"kind": "pixel"}
    if space.get("kind") != "taef2" or "decoder" not in ck:
        raise ClipstudioError(f"{path} is not a latent (TAEF2) diffusion checkpoint: it has no decoder to fine-tune")
    encoder_state = SM.taef2_encoder_state(ck)
    if encoder_state is None:
        raise ClipstudioError(f"no TAEF2 encoder for {path}: it embeds none and {SM.TAEF2_ENCODER} is missing")
    decoder, _ = SM.latent_decoder(space, ck["decoder"])
    return decoder.train().requires_grad_(True), SM.LatentEncoder(space, encoder_state)


def batch_scenes(seed: int, step: int, n: int) -> list:
    """The training scenes of step ``step``: a numpy stream of (seed, step) alone, so a resume repeats them."""
    from clipstudio.worlds.shapes.render import sample_scene
    rng = np.random.default_rng([seed, step])
    return [sample_scene(rng) for _ in range(n)]


def noisy_latents(latents: torch.Tensor, scale: float, seed: int, step: int) -> torch.Tensor:
    """``latents`` plus Gaussian noise whose standard deviation is drawn per sample from U(0, scale)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    sigma = scale * torch.rand(latents.shape[0], 1, 1, 1, generator=gen)
    return latents + sigma * torch.randn(latents.shape, generator=gen)


def decode(decoder: torch.nn.Module, encoder: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """UNet-space latents -> images (roughly [0, 1]) through ``decoder``, un-normalized as the loader does."""
    return decoder(latents * encoder.std + encoder.mean)


def roundtrip_failures(decoder: torch.nn.Module, encoder: torch.nn.Module, scenes: Sequence,
                       chunk: int = 100) -> list[dict]:
    """Every scene whose render, encoded and decoded, fails the checker: ``{caption, failures}`` each."""
    from clipstudio.worlds.shapes.captions import canonical_caption
    from clipstudio.worlds.shapes.check import check_image
    from clipstudio.worlds.shapes.diffusion_model import to_uint8
    from clipstudio.worlds.shapes.render import render_batch
    failed = []
    for start in range(0, len(scenes), chunk):
        part = scenes[start:start + chunk]
        with torch.no_grad():
            images = decode(decoder, encoder, encoder(render_batch(part, encoder.size)))
        for scene, array in zip(part, to_uint8(images)):
            caption = canonical_caption(scene)
            result = check_image(array, caption)
            if not result.passed:
                failed.append({"caption": caption, "failures": list(result.failures)})
    return failed


def eval_scenes(n: int) -> list:
    """The held-out round-trip scenes (numpy seed ``EVAL_SCENE_SEED``)."""
    from clipstudio.worlds.shapes.render import sample_scene
    rng = np.random.default_rng(EVAL_SCENE_SEED)
    return [sample_scene(rng) for _ in range(n)]


def resolve_start(config: DecoderTrainConfig) -> Path:
    """The starting checkpoint: ``--checkpoint``, else the embedded ``--model``'s file."""
    from clipstudio.worlds.shapes.train_reward import resolve_checkpoint
    return resolve_checkpoint(config)


def _start_run(config: DecoderTrainConfig) -> _Run:
    from clipstudio import weights
    from clipstudio.checkpoints import load_checkpoint, require_keys
    base = resolve_start(config)
    try:
        ck = load_checkpoint(base)
    except Exception as e:
        raise ClipstudioError(f"could not load diffusion checkpoint {base}: {type(e).__name__}") from None
    if not isinstance(ck, dict):
        raise ClipstudioError(f"{base} is not a diffusion checkpoint")
    decoder, encoder = load_latent_parts(ck, base)
    torch.manual_seed(config.seed)
    run = _Run(config, ck, base, weights.file_sha256(base), decoder, copy.deepcopy(decoder).requires_grad_(False),
               encoder, torch.optim.Adam(decoder.parameters(), lr=config.lr))
    state = config.state_path
    if config.resume and os.path.isfile(state):
        _restore(run, require_keys(load_checkpoint(state), ("config", "decoder", "ema", "opt", "step", "base_sha256"),
                                   state))
    elif config.resume:
        print(f"--resume: no state at {state}; starting fresh", file=sys.stderr)
    return run


RESUME_KEYS = ("seed", "batch", "latent_noise", "ema_decay")


def _restore(run: _Run, st: dict) -> None:
    """Put a saved state back; refuse one of another base model or another data stream."""
    changed = [k for k in RESUME_KEYS if st["config"].get(k) != getattr(run.config, k)]
    if changed or st["base_sha256"] != run.base_sha256:
        what = ", ".join(f"--{k.replace('_', '-')} {st['config'].get(k)}" for k in changed) or "another base model"
        raise ClipstudioError(f"--resume: {run.config.state_path} was trained with {what}")
    run.decoder.load_state_dict(st["decoder"])
    run.ema.load_state_dict(st["ema"])
    run.opt.load_state_dict(st["opt"])
    run.step, run.elapsed, run.history = st["step"], st.get("elapsed", 0.0), st.get("history", [])


def _train_step(run: _Run) -> float:
    """One Adam step of the L1 reconstruction loss on a fresh batch of renders; returns the loss."""
    from clipstudio.worlds.shapes.render import render_batch
    config = run.config
    images = render_batch(batch_scenes(config.seed, run.step, config.batch), run.encoder.size)
    with torch.no_grad():
        latents = noisy_latents(run.encoder(images), config.latent_noise, config.seed, run.step)
    loss = (decode(run.decoder, run.encoder, latents) - images).abs().mean()
    if not torch.isfinite(loss):
        raise ClipstudioError(f"the loss became {float(loss)} at step {run.step}; lower --lr")
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    with torch.no_grad():
        for average, param in zip(run.ema.parameters(), run.decoder.parameters()):
            average.lerp_(param, 1 - config.ema_decay)
    return float(loss.detach())


def shippable(run: _Run) -> dict:
    """The starting checkpoint with its decoder replaced by the averaged one (in the stored dtype)."""
    ck = dict(run.checkpoint)
    dtypes = {k: v.dtype for k, v in run.checkpoint["decoder"].items()}
    ck["decoder"] = {k: v.detach().to(dtypes.get(k, v.dtype)).clone() for k, v in run.ema.state_dict().items()}
    ck["decoder_finetune"] = {"base_sha256": run.base_sha256, "step": run.step, "loss": "L1 to the render",
                              "latent_noise": run.config.latent_noise, "ema_decay": run.config.ema_decay}
    return ck


def _save(run: _Run, command: Optional[str], extra: Optional[dict] = None) -> None:
    """Atomically write the training state, the shippable checkpoint and its card."""
    from clipstudio.images import atomic_torch_save, atomic_write
    config = run.config
    atomic_torch_save({"config": dataclasses.asdict(config), "decoder": run.decoder.state_dict(),
                       "ema": run.ema.state_dict(), "opt": run.opt.state_dict(), "step": run.step,
                       "elapsed": run.elapsed, "history": run.history, "base_sha256": run.base_sha256},
                      config.state_path)
    atomic_torch_save(shippable(run), config.out)
    card = {"command": command, "step": run.step, "steps": config.steps, "train_seconds": round(run.elapsed, 1),
            "threads": torch.get_num_threads(), "base": f"{run.base} (sha256 {run.base_sha256[:16]})",
            "config": dataclasses.asdict(config), "recent_loss": float(np.mean(run.history[-25:])) if run.history else None,
            **(extra or {})}
    text = json.dumps(card, indent=2, default=str)
    atomic_write(Path(config.out).with_suffix(".json"), lambda f: f.write(text.encode()))


def train(config: DecoderTrainConfig, *, progress: bool = True, command: Optional[str] = None,
          log: Callable[[str], None] = print) -> dict:
    """Fine-tune (or resume) the decoder; returns the step, time, and the round trip's failures before/after."""
    from tqdm.auto import tqdm
    config.validate()
    run = _start_run(config)
    bar = tqdm(total=config.steps, initial=run.step, desc="decoder", disable=not progress)
    t_last = time.perf_counter()
    while run.step < config.steps:
        run.history.append(_train_step(run))
        run.step += 1
        now = time.perf_counter()
        run.elapsed += now - t_last
        t_last = now
        bar.update(1)
        bar.set_postfix(l1=f"{np.mean(run.history[-20:]):.4f}")
        if run.step % config.save_every == 0:
            _save(run, command)
    bar.close()
    scenes = eval_scenes(config.eval_scenes)
    start_decoder, _ = load_latent_parts(run.checkpoint, run.base)
    before = roundtrip_failures(start_decoder.eval(), run.encoder, scenes)
    after = roundtrip_failures(run.ema.eval(), run.encoder, scenes)
    roundtrip = {"scenes": len(scenes), "scene_seed": EVAL_SCENE_SEED, "failed_before": len(before),
                 "failed_after": len(after), "failures_after": after}
    log(f"round trip (render -> encoder -> decoder -> checker) on {len(scenes)} held-out scenes: "
        f"{len(before)} failed before, {len(after)} after")
    _save(run, command, {"roundtrip": roundtrip})
    return {"step": run.step, "train_seconds": run.elapsed, "roundtrip": roundtrip}
