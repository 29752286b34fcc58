"""Train the shapes-world text-to-image diffusion model (``clipstudio train diffusion --world shapes``).

With ``--space taef2`` (the default) a seeded set of ``--dataset`` scenes is rendered at 64 px and encoded
once to TAEF2 latents (a resumable cache), and each step draws a batch of them; with ``--space pixel`` each
step renders fresh scenes at 32 px. Captions are drawn per step (canonical or paraphrased, partial for some
one-object scenes, 15% empty for classifier-free guidance). The step noises the batch with the
DDPM forward process and regresses v = sqrt(abar) eps - sqrt(1 - abar) x0 (v-prediction, Salimans & Ho
2022: well conditioned at high noise, where an eps model must be very precise to give a usable x0). The batch of
step k depends only on (seed, k), so a resumed run sees exactly the data of an uninterrupted one.
With ``--objective flow`` the same network learns a rectified flow instead (Liu et al. 2022; Lipman et al.
2022): x_s = (1 - s) x0 + s noise, target noise - x0, sampled with ``flow-euler``; ``--init-from`` warm-starts
the UNet (and takes the text tower) from a shipped model, e.g. the v-prediction shapes-diffusion.
An EMA of the weights is what ships. Checkpoints are written atomically every ``--save-every`` steps:
the full training state to ``--state`` (for ``--resume``) and the small shippable model to ``--out``
with a ``.json`` sidecar holding the command, config and progress.

    clipstudio train diffusion --space taef2 --steps 6500 --batch 128 --lr 1e-3 --seed 0 \\
        --out shapes-diffusion.pt --state runs/shapes-diffusion.state --resume
    (the shipped model's exact command is in clipstudio/worlds/shapes/assets/shapes-diffusion.json)

The settings live once, in :class:`DiffusionTrainConfig`; the command derives its options from it.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from clipstudio import weights
from clipstudio.checkpoints import load_checkpoint, require_keys
from clipstudio.config import MAX_LR, SEED_MAX, check_numbers
from clipstudio.devices import native_precision
from clipstudio.errors import ClipstudioError
from clipstudio.images import atomic_torch_save, atomic_write
from clipstudio.schedules import lr_factor
from clipstudio.settings import Settings

SPACES = ("taef2", "pixel")
OBJECTIVES = ("diffusion", "flow")
FORM_WEIGHTS = {"plain": 0.18, "sized": 0.18, "positioned": 0.2, "left_of": 0.22, "above": 0.22}


@dataclass
class DiffusionTrainConfig(Settings):
    """Every setting of a shapes-diffusion training run, with its default (the command's options derive from it).

    ``state`` defaults to OUT.state and ``latents`` to STATE.latents; ``guide`` to the shipped shapes-guide
    (a seeded random text tower when that file is missing); ``weights_dir`` holds taef2_encoder.pth and
    taef2_decoder.pth for offline use; ``min_snr`` is min-SNR-gamma weighting (Hang et al. 2023), None the plain
    DDPM loss; ``max_minutes`` and ``stop_after`` stop (and save) early, to be continued with ``resume``.
    """
    steps: int = 4000
    batch: int = 32
    lr: float = 5e-4
    seed: int = 0
    out: str = "shapes-diffusion.pt"
    state: Optional[str] = None
    resume: bool = False
    save_every: int = 100
    p_uncond: float = 0.15
    p_partial: float = 0.15
    ema_decay: float = 0.999
    guide: Optional[str] = None
    max_minutes: Optional[float] = None
    stop_after: Optional[int] = None
    min_snr: Optional[float] = None
    space: str = "taef2"
    dataset: int = 40000
    latents: Optional[str] = None
    weights_dir: Optional[str] = None
    default_guidance: float = 3.0
    objective: str = "diffusion"
    init_from: Optional[str] = None

    def validate(self) -> DiffusionTrainConfig:
        """Check ranges; each problem is one line of error, raised before any work."""
        check_numbers(lr=(self.lr, 0, MAX_LR), seed=(self.seed, 0, SEED_MAX))
        for name in ("steps", "batch", "save_every"):
            if getattr(self, name) <= 0:
                raise ClipstudioError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("lr", "default_guidance", "ema_decay", "p_uncond", "p_partial"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise ClipstudioError(f"--{name.replace('_', '-')} must be a finite number "
                                      f"{'> 0' if name == 'lr' else '>= 0'}, got {value}")
        if not self.p_uncond < 1 or not self.p_partial <= 1 or not self.ema_decay < 1:
            raise ClipstudioError(f"--p-uncond and --ema-decay must be below 1 and --p-partial at most 1, got "
                                  f"{self.p_uncond}, {self.ema_decay} and {self.p_partial}")
        if self.space not in SPACES:
            raise ClipstudioError(f"unknown --space '{self.space}'; choose one of: {', '.join(SPACES)}")
        if self.objective not in OBJECTIVES:
            raise ClipstudioError(f"unknown --objective '{self.objective}'; choose one of: {', '.join(OBJECTIVES)}")
        if self.space != "pixel" and self.dataset <= 0:
            raise ClipstudioError(f"--dataset must be positive, got {self.dataset}")
        for name in ("max_minutes", "stop_after", "min_snr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ClipstudioError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        return self


# The type of each field whose default is None (for the command's options).
TRAIN_OPTIONAL_TYPES = {"state": str, "guide": str, "max_minutes": float, "stop_after": int, "min_snr": float,
                        "latents": str, "weights_dir": str, "init_from": str}


def training_caption(rng: np.random.Generator, scene, p_uncond: float, p_partial: float) -> str:
    """One training caption: empty (``p_uncond``, for CFG), partial (``p_partial`` of one-object scenes) or full."""
    from clipstudio.worlds.shapes.captions import partial_caption, random_caption
    r = rng.random()
    if r < p_uncond:
        return ""
    if r < p_uncond + p_partial and len(scene.objects) == 1:
        return partial_caption(rng, scene)
    return random_caption(rng, scene)


def sample_scenes(rng: np.random.Generator, n: int) -> list:
    """n scenes, their caption forms drawn with FORM_WEIGHTS."""
    from clipstudio.worlds.shapes.render import sample_scene
    forms = list(FORM_WEIGHTS)
    probs = np.array([FORM_WEIGHTS[f] for f in forms])
    return [sample_scene(rng, forms[int(rng.choice(len(forms), p=probs / probs.sum()))]) for _ in range(n)]


def make_batch(seed: int, step: int, batch: int, p_uncond: float,
               p_partial: float = 0.0) -> tuple[torch.Tensor, list[str]]:
    """(images N x 3 x 32 x 32 in [0, 1], captions) for one pixel-space step; depends only on (seed, step).

    ``p_partial`` of the one-object scenes get a :func:`partial_caption` (colour left free, or the colour
    alone), so that "a circle on a white background" and the negative prompt "red" mean something.
    """
    from clipstudio.worlds.shapes.diffusion_model import IMAGE_SIZE
    from clipstudio.worlds.shapes.render import render_batch
    rng = np.random.default_rng([seed, step])
    scenes, caps = [], []
    for scene in sample_scenes(rng, batch):
        scenes.append(scene)
        caps.append(training_caption(rng, scene, p_uncond, p_partial))
    return render_batch(scenes, IMAGE_SIZE), caps


# --------------------------------------------------------------------------- the TAEF2 latent space

DATASET_STREAM = 0x5CE7E5   # the rng stream of the encoded dataset's scenes, apart from the per-step streams


def dataset_scenes(seed: int, n: int) -> list:
    """The n scenes of the pre-encoded latent dataset; depend only on (seed, n)."""
    return sample_scenes(np.random.default_rng([seed, DATASET_STREAM]), n)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16)."""
    return native_precision(torch.bfloat16)


def encode_dataset(scenes: Sequence, encoder: torch.nn.Module, path: str | os.PathLike, fingerprint: dict,
                   image_size: int, chunk: int = 250, save_every: int = 20, progress: bool = True) -> torch.Tensor:
    """TAEF2 latents (fp16) of the scenes rendered at ``image_size``, cached at ``path`` and resumable.

    Encoding runs under bf16 autocast where the CPU has native bf16 (AMX or AVX512-BF16): 1.7x faster than fp32
    on the Xeon the shipped model was trained on, latents within 1.5% of the fp32 ones (relative RMS), far inside
    the 20% latent noise the decoder was measured to tolerate. Elsewhere bf16 is emulated and far slower, so fp32.
    """
    from tqdm.auto import tqdm

    from clipstudio.worlds.shapes.render import render_batch
    done = torch.zeros(0)
    if os.path.isfile(path):
        try:
            cached = load_checkpoint(path)
        except Exception:  # an unreadable cache is only lost work: encode again
            print(f"warning: latent cache {path} is unreadable; encoding again", file=sys.stderr)
            cached = {}
        if isinstance(cached, dict) and cached.get("fingerprint") == fingerprint:
            done = cached["latents"]
    if len(done) >= len(scenes):
        return done[:len(scenes)]
    parts = [done] if len(done) else []
    bar = tqdm(total=len(scenes), initial=len(done), desc="encode latents", disable=not progress)
    for k, i in enumerate(range(len(done), len(scenes), chunk)):
        images = render_batch(scenes[i:i + chunk], image_size)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=native_bf16()):
            parts.append(encoder(images).float().half())
        bar.update(len(images))
        if (k + 1) % save_every == 0 or i + chunk >= len(scenes):
            atomic_torch_save({"fingerprint": fingerprint, "latents": torch.cat(parts)}, path)
    bar.close()
    return torch.cat(parts)


def make_latent_batch(seed: int, step: int, batch: int, scenes: Sequence, latents: torch.Tensor,
                      p_uncond: float, p_partial: float) -> tuple[torch.Tensor, list[str]]:
    """(encoded latents N x C x h x w, captions) for one latent-space step; depends only on (seed, step)."""
    rng = np.random.default_rng([seed, step])
    idx = rng.integers(len(scenes), size=batch)
    caps = [training_caption(rng, scenes[int(i)], p_uncond, p_partial) for i in idx]
    return latents[torch.from_numpy(idx)].float(), caps


class TextCache:
    """Token states of the frozen text tower, cached per caption string."""

    def __init__(self, encoder, max_items: int = 50000):
        self.encoder = encoder
        self.cache: dict[str, torch.Tensor] = {}
        self.max_items = max_items

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing and len(self.cache) + len(missing) > self.max_items:
            self.cache.clear()                       # then every text of this batch is missing, not only the new
            missing = list(dict.fromkeys(texts))
        if missing:
            for t, row in zip(missing, self.encoder(missing)):
                self.cache[t] = row
        return torch.stack([self.cache[t] for t in texts])


def noised_pair(objective: str, x0: torch.Tensor, gen: torch.Generator, noise_sched, loss_weight: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model input, timesteps, regression target, per-sample loss weight) for one training batch.

    'diffusion': the DDPM forward process at integer t with an eps or v target (Ho et al. 2020; Salimans & Ho
    2022). 'flow': the straight path x_s = (1 - s) x0 + s noise at s ~ U(0, 1), fed as t = s * T, with the
    velocity target noise - x0 (Liu et al. 2022; Lipman et al. 2022). Draws noise first, then the times.
    """
    from clipstudio.diffusion.sampling import flow_interpolate, flow_velocity
    batch = x0.shape[0]
    noise = torch.randn(x0.shape, generator=gen)
    if objective == "flow":
        s = torch.rand(batch, generator=gen)
        steps = noise_sched.config.num_train_timesteps
        return flow_interpolate(x0, s, noise), s * steps, flow_velocity(x0, noise), torch.ones(batch)
    t = torch.randint(0, len(loss_weight), (batch,), generator=gen)
    xt = noise_sched.add_noise(x0, noise, t)
    if noise_sched.config.prediction_type == "v_prediction":
        target = noise_sched.get_velocity(x0, noise, t)   # v = sqrt(abar) eps - sqrt(1 - abar) x0
    else:
        target = noise
    return xt, t, target, loss_weight[t]


def load_init(path: str) -> tuple[dict, str]:
    """(a shipped model checkpoint to warm-start from, its description for the card)."""
    init = require_keys(load_checkpoint(path), ("unet_config", "unet", "text_tower", "text_cfg"), path)
    return init, f"{path} (sha256 {weights.file_sha256(path)[:16]})"


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of ``base`` (the schedule the shipped model was trained with)."""
    return base * lr_factor("cosine", step, total, warmup, floor=0.1)


@dataclass
class _Run:
    """One training run's live state: models, optimizer, data and progress, with how to save it."""
    config: DiffusionTrainConfig
    state_path: str
    cfg: dict                  # the run's record: written to the state and the card
    unet: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    noise_sched: object
    loss_weight: torch.Tensor  # per DDPM timestep (min-SNR or ones)
    text: TextCache
    text_record: dict          # text_tower snapshot, text_cfg and guide description, as saved
    sched_cfg: dict
    latent: Optional[tuple] = None   # (space config, decoder state, (scenes, latents), mean, std) for taef2
    start: int = 0
    elapsed: float = 0.0
    losses: list = field(default_factory=list)
    command: Optional[str] = None

    @property
    def flow(self) -> bool:
        return self.config.objective == "flow"

    def batch(self, step: int) -> tuple[torch.Tensor, list[str]]:
        """(x0 in the UNet's space, captions) of step ``step``; depends only on (seed, step)."""
        from clipstudio.worlds.shapes import diffusion_model as SM
        c = self.config
        if self.latent is None:
            images, caps = make_batch(c.seed, step, c.batch, c.p_uncond, c.p_partial)
            return SM.to_model_space(images), caps
        _, _, (scenes, latents), mean, std = self.latent
        z, caps = make_latent_batch(c.seed, step, c.batch, scenes, latents, c.p_uncond, c.p_partial)
        return (z - mean) / std, caps

    def save(self, step: int) -> None:
        """The full state (for --resume), the shippable EMA model and its .json card, each written atomically."""
        c, out = self.config, self.config.out
        atomic_torch_save({"config": self.cfg, "unet": self.unet.state_dict(), "ema": self.ema.state_dict(),
                           "opt": self.opt.state_dict(), "step": step, "elapsed": self.elapsed,
                           "losses": self.losses, **self.text_record}, self.state_path)
        shipped = {"unet_config": self.cfg["unet_config"],
                   "unet": {k: v.half() for k, v in self.ema.state_dict().items()},
                   "text_cfg": self.text_record["text_cfg"], "text_tower": self.text_record["text_tower"],
                   "scheduler_config": self.sched_cfg, "default_guidance": c.default_guidance,
                   "default_steps": 25 if self.flow else 50, "step": step, "prediction": self.cfg["prediction_type"],
                   "default_sampler": "flow-euler" if self.flow else "ddim"}
        if self.latent is not None:
            shipped.update(space=self.latent[0], decoder=self.latent[1])
        atomic_torch_save(shipped, out)
        meta = {"command": self.command, "step": step, "steps": c.steps, "train_seconds": round(self.elapsed, 1),
                "threads": torch.get_num_threads(),
                "last_loss": float(np.mean(self.losses[-100:])) if self.losses else None, "config": self.cfg}
        text = json.dumps(meta, indent=2, default=str)
        atomic_write(Path(out).with_suffix(".json"), lambda f: f.write(text.encode()))


def _resumed_state(config: DiffusionTrainConfig, state_path: str) -> Optional[dict]:
    """The saved state to continue from (None: start fresh); a state of another run is a one-line error."""
    if not (config.resume and os.path.isfile(state_path)):
        if config.resume:
            print(f"--resume: no state at {state_path}; starting fresh", file=sys.stderr)
        return None
    st = require_keys(load_checkpoint(state_path), ("config", "unet", "ema", "opt", "step", "elapsed", "losses",
                                                    "text_tower", "guide"), state_path)
    cfg = st["config"]
    if cfg["seed"] != config.seed or cfg["batch"] != config.batch or cfg.get("space", "pixel") != config.space:
        raise ClipstudioError(f"--resume: {state_path} was trained with seed {cfg['seed']} batch {cfg['batch']} "
                              f"space {cfg.get('space', 'pixel')}")
    return st


def _text_conditioning(config: DiffusionTrainConfig, st: Optional[dict], cfg: dict) -> tuple[dict, Optional[dict]]:
    """The text tower the UNet is conditioned on, as saved ({text_tower, text_cfg, guide}), and the --init-from
    checkpoint (None without one): a resumed run's own, a warm start's, or a snapshot of the guide's."""
    from clipstudio.worlds.shapes import diffusion_model as SM
    if st is not None:       # the guide config may have changed since the run began: keep the run's
        return {"text_tower": st["text_tower"], "text_cfg": st.get("text_cfg", SM.guide_text_cfg()),
                "guide": st["guide"]}, None
    if config.init_from:     # warm start: the init model's UNet and the text tower it was trained on
        init, init_desc = load_init(config.init_from)
        cfg["history"] = [f"step 0: warm start from {init_desc} ({init.get('prediction', 'v_prediction')} model)"]
        return {"text_tower": init["text_tower"], "text_cfg": init["text_cfg"],
                "guide": f"text tower of {init_desc}"}, init
    text_cfg = SM.guide_text_cfg()
    guide = config.guide if config.guide is not None else str(SM.ASSETS_DIR / "shapes-guide.pt")
    clip_state, guide_desc = SM.load_guide_clip_state(guide, config.seed)
    snapshot = SM.text_tower_snapshot(clip_state, SM.world_vocabulary(SM.make_tokenizer(text_cfg)))
    return {"text_tower": snapshot, "text_cfg": text_cfg, "guide": guide_desc}, None


def _loss_weight(noise_sched, min_snr: Optional[float]) -> torch.Tensor:
    """Per-timestep loss weight: min-SNR-gamma (Hang et al. 2023) or the plain DDPM loss (Ho et al. 2020)."""
    abar = noise_sched.alphas_cumprod.float()
    snr = abar / (1 - abar)
    return torch.clamp(snr, max=min_snr) / snr if min_snr else torch.ones_like(snr)


def _start_run(config: DiffusionTrainConfig, progress: bool, command: Optional[str]) -> _Run:
    """Build (or restore) every piece of a run. The order of seeded draws is fixed: a resumed run and the
    shipped models' commands depend on it."""
    from diffusers import DDPMScheduler

    from clipstudio.diffusion.backend import OpenClipTextEncoder
    from clipstudio.worlds.shapes import diffusion_model as SM
    c = config
    state_path = c.state or f"{c.out}.state"
    st = _resumed_state(c, state_path)
    cfg = st["config"] if st is not None else {"seed": c.seed, "batch": c.batch}
    text_record, init = _text_conditioning(c, st, cfg)
    text_cfg = text_record["text_cfg"]
    tower = SM.load_text_tower(text_record["text_tower"], text_cfg)
    text = TextCache(OpenClipTextEncoder(tower, SM.make_tokenizer(text_cfg)))
    latent = None
    if c.space == "taef2":
        space_cfg, decoder_state, data = prepare_latents(c.seed, c.dataset, c.latents or f"{state_path}.latents",
                                                         c.weights_dir, progress)
        latent = (space_cfg, decoder_state, data, torch.tensor(space_cfg["latent_mean"])[:, None, None],
                  torch.tensor(space_cfg["latent_std"])[:, None, None])
    sched_cfg = SM.scheduler_config(c.space)
    prediction = "flow" if c.objective == "flow" else sched_cfg["prediction_type"]

    torch.manual_seed(c.seed)
    ucfg = SM.unet_config(text_cfg["width"]) if c.space == "pixel" else SM.latent_unet_config(text_cfg["width"])
    unet = SM.build_unet(ucfg)
    if init is not None:
        if init["unet_config"] != ucfg:
            raise ClipstudioError(f"--init-from {c.init_from} has another UNet config than --space {c.space}")
        unet.load_state_dict({k: v.float() for k, v in init["unet"].items()})
    ema = copy.deepcopy(unet).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=c.lr, weight_decay=0.0)
    noise_sched = DDPMScheduler(**{**sched_cfg, "clip_sample": False})
    run = _Run(c, state_path, cfg, unet, ema, opt, noise_sched, _loss_weight(noise_sched, c.min_snr), text,
               text_record, SM.flow_scheduler_config() if c.objective == "flow" else sched_cfg, latent,
               command=command)
    if st is not None:
        unet.load_state_dict(st["unet"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        run.start, run.elapsed, run.losses = st["step"], st["elapsed"], st["losses"]
        if cfg.get("prediction_type", "epsilon") != prediction:
            cfg.setdefault("history", []).append(
                f"step {run.start}: prediction {cfg.get('prediction_type', 'epsilon')} -> {prediction} (warm start)")
    cfg["prediction_type"] = prediction
    cfg.update({"steps": c.steps, "lr": c.lr, "p_uncond": c.p_uncond, "ema_decay": c.ema_decay, "unet_config": ucfg,
                "scheduler_config": run.sched_cfg, "space": c.space,
                "image_size": SM.IMAGE_SIZE if c.space == "pixel" else SM.LATENT_IMAGE_SIZE,
                "patch": SM.PATCH if c.space == "pixel" else None,
                "dataset": c.dataset if c.space != "pixel" else None, "min_snr_gamma": c.min_snr,
                "form_weights": FORM_WEIGHTS, "guide": text_record["guide"], "p_partial": c.p_partial,
                "objective": c.objective})
    return run


def _train_step(run: _Run, step: int) -> float:
    """One optimizer step and the EMA update; returns the loss. Draws: data, then noise, then times."""
    c = run.config
    for g in run.opt.param_groups:
        g["lr"] = lr_at(step, c.steps, c.lr, warmup=min(200, c.steps // 10 + 1))
    x0, caps = run.batch(step)
    gen = torch.Generator().manual_seed(c.seed * 1_000_003 + step)
    xt, t, target, sample_weight = noised_pair(c.objective, x0, gen, run.noise_sched, run.loss_weight)
    pred = run.unet(xt, t, encoder_hidden_states=run.text(caps)).sample
    loss = (((pred - target) ** 2).mean(dim=(1, 2, 3)) * sample_weight).mean()
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.unet.parameters(), 1.0)
    run.opt.step()
    decay = min(c.ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(run.ema.parameters(), run.unet.parameters()):
            pe.lerp_(p.detach(), 1 - decay)
    return float(loss.detach())


def _stop_reason(config: DiffusionTrainConfig, done: int, elapsed: float) -> Optional[str]:
    """Why to stop (and save) after ``done`` steps before the schedule's end, or None."""
    if config.stop_after is not None and done >= config.stop_after and done < config.steps:
        return f"stopping at step {done} (--stop-after); continue with --resume"
    if config.max_minutes is not None and elapsed > config.max_minutes * 60:
        return f"stopping at step {done}: --max-minutes {config.max_minutes} reached"
    return None


def train(config: DiffusionTrainConfig, *, progress: bool = True, command: Optional[str] = None) -> dict:
    """Train (or resume) the shapes diffusion model; returns a summary dict."""
    from tqdm.auto import tqdm

    run = _start_run(config.validate(), progress, command)
    run.unet.train()
    bar = tqdm(range(run.start, config.steps), initial=run.start, total=config.steps, desc="shapes-diffusion",
               disable=not progress)
    t_last = time.perf_counter()
    step = run.start
    for step in bar:
        run.losses.append(_train_step(run, step))
        now = time.perf_counter()
        run.elapsed += now - t_last
        t_last = now
        bar.set_postfix(loss=f"{np.mean(run.losses[-50:]):.4f}")
        done = step + 1
        stop = _stop_reason(config, done, run.elapsed)
        if done % config.save_every == 0 or done == config.steps or stop:
            run.save(done)
        if stop:
            print(stop, file=sys.stderr)
            break
    bar.close()
    return {"step": step + 1, "train_seconds": run.elapsed, "last_loss": float(np.mean(run.losses[-100:]))}


def prepare_latents(seed: int, dataset: int, latents_path: str, weights_dir: Optional[str],
                    progress: bool) -> tuple[dict, dict, tuple]:
    """(space config with latent statistics, fp16 TAEF2 decoder state, (scenes, latents)) for latent training."""
    from clipstudio.generators.taef2 import load_taef2
    from clipstudio.worlds.shapes import diffusion_model as SM
    files = weights.fetch_group("taef2", ("encoder", "decoder"), weights_dir)
    encoder, decoder = load_taef2(files["encoder"], files["decoder"])
    scenes = dataset_scenes(seed, dataset)
    fingerprint = {"seed": seed, "n": dataset, "image_size": SM.LATENT_IMAGE_SIZE, "form_weights": FORM_WEIGHTS,
                   "encoder_sha256": weights.file_sha256(files["encoder"])}
    latents = encode_dataset(scenes, encoder.eval(), latents_path, fingerprint, SM.LATENT_IMAGE_SIZE,
                             progress=progress).float()
    space_cfg = {"kind": "taef2", "image_size": SM.LATENT_IMAGE_SIZE, "factor": 8,
                 # per-channel statistics of the encoded dataset: the UNet sees unit-variance latents
                 "latent_mean": latents.mean(dim=(0, 2, 3)).tolist(),
                 "latent_std": latents.std(dim=(0, 2, 3)).tolist(),
                 "decoder_sha256": weights.file_sha256(files["decoder"]),
                 "decoder_source": "TAEF2, madebyollin/taesd (MIT license, Copyright (c) 2023 Ollin Boer Bohan)"}
    decoder_state = {k: v.half() for k, v in decoder.state_dict().items()}
    return space_cfg, decoder_state, (scenes, latents.half())
