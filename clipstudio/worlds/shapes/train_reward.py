"""Reward fine-tuning of the shapes diffusion model (``clipstudio train reward``), and its over-optimization curve.

The generic maths (DRaFT-K, reward-weighted regression, the L2 anchor, LoRA) is in
:mod:`clipstudio.diffusion.reward`; this module holds the shapes world's part: the prompt sets, the rewards
(``shapes-guide``: cosine of the decoded 64 px image, through the guide's own preprocessing, with the prompt's
text embedding; ``check``: the colour-and-geometry checker's pass/fail, a non-differentiable black box), the
held-out curve (guide reward, the independent ``shapes-eval`` score, check pass rate, sample diversity) and the
shippable checkpoint, in exactly the format of ``assets/shapes-diffusion.pt`` (full fp16 UNet, LoRA merged).

Prompt sets (``worlds/shapes/prompts.prompt_set`` seeds): training draws from seed ``TRAIN_PROMPT_SEED`` (2026),
the curve is measured on seed ``CURVE_PROMPT_SEED`` (4242); both exclude every prompt string of the evaluation
sets (seed 1234: ``eval diffusion`` pass rate; 99: its guidance sweep; 7: ``compare``), so the figures of
``clipstudio eval diffusion`` are on prompts the fine-tune never saw. The batch of step k depends only on
(seed, k), so a resumed run is exactly an uninterrupted one.

    clipstudio train reward --model shapes-diffusion --reward shapes-guide --method draft \\
        --out shapes-diffusion-reward.pt --resume
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from clipstudio.config import MAX_LR, SEED_MAX, check_numbers
from clipstudio.diffusion.sampling import list_samplers
from clipstudio.errors import ClipstudioError

METHODS = ("draft", "rwr", "raft")
TRAIN_PROMPT_SEED = 2026
CURVE_PROMPT_SEED = 4242
EVAL_PROMPT_SETS = ((100, 1234), (50, 99), (10, 7))   # (n, seed): eval diffusion, its sweep, compare
FREE_COLOUR_PROMPT = "a circle on a white background"
EVALUATOR = "shapes-eval"


@dataclass
class RewardTrainConfig:
    """Every setting of a reward fine-tuning run, with its default (the command's options derive from it).

    ``guidance`` lists the CFG weights a step draws from; ``grad_steps`` is DRaFT's K; ``sample_eta`` the
    stochasticity of DRaFT's training samples (DDIM's eta: 0 deterministic, 1 ancestral as DDPM); ``anchor`` weighs
    the L2 pull to the starting weights (sum of squares); ``lora_rank`` 0 fine-tunes every UNet weight, else a LoRA
    on the attention projections; ``rwr_samples`` images per prompt and temperature ``rwr_beta`` for ``--method
    rwr``; for ``--method raft``, ``rwr_samples`` images per training prompt at ``raft_guidance``, the best by the
    reward kept (OUT.raft.pt) and regressed on, the caption dropped with probability ``p_uncond``; every
    ``eval_every`` steps the curve is measured on ``curve_prompts`` held-out prompts at ``curve_guidance`` with
    ``curve_steps`` DDIM steps (diversity over ``diversity_seeds`` seeds of the first ``diversity_prompts`` of them
    and the free-colour prompt). ``default_sampler`` is written into the shipped checkpoint as the sampler it is
    used with unless told otherwise (None: the starting model's). ``max_minutes`` is wall-clock time of this
    invocation, curve points included; ``stop_after`` a step. ``state`` defaults to OUT.state, ``curve`` to
    OUT.curve.json; the best curve point (check pass rate, then guide reward) is also written to OUT.best.pt.
    """
    model: str = "shapes-diffusion"
    checkpoint: Optional[str] = None
    reward: str = "shapes-guide"
    method: str = "draft"
    steps: int = 400
    batch: int = 8
    lr: float = 3e-5
    seed: int = 0
    guidance: list = field(default_factory=lambda: [1.0, 3.0])
    sample_steps: int = 20
    sample_eta: float = 0.0
    grad_steps: int = 1
    grad_checkpoint: bool = False
    anchor: float = 0.0
    lora_rank: int = 0
    lora_alpha: Optional[float] = None
    rwr_samples: int = 4
    rwr_beta: float = 0.05
    raft_guidance: float = 3.0
    p_uncond: float = 0.15
    ema_decay: float = 0.0
    kl_weight: float = 0.0
    kl_reference: Optional[str] = None
    default_sampler: Optional[str] = None
    train_prompts: int = 2000
    eval_every: int = 50
    curve_prompts: int = 24
    curve_guidance: float = 3.0
    curve_steps: int = 50
    diversity_prompts: int = 3
    diversity_seeds: int = 4
    out: str = "shapes-diffusion-reward.pt"
    state: Optional[str] = None
    curve: Optional[str] = None
    resume: bool = False
    save_every: int = 25
    max_minutes: Optional[float] = None
    stop_after: Optional[int] = None

    def validate(self) -> "RewardTrainConfig":
        """Check ranges and names; each problem is one line of error, raised before any work."""
        check_numbers(lr=(self.lr, 0, MAX_LR), seed=(self.seed, 0, SEED_MAX))
        if self.method not in METHODS:
            raise ClipstudioError(f"unknown --method '{self.method}'; choose one of: {', '.join(METHODS)}")
        if self.reward not in REWARDS:
            raise ClipstudioError(f"unknown --reward '{self.reward}'; choose one of: {', '.join(REWARDS)}")
        if self.method == "draft" and not REWARDS[self.reward].differentiable:
            raise ClipstudioError(f"the reward '{self.reward}' is not differentiable: use --method rwr")
        for name in ("steps", "batch", "sample_steps", "rwr_samples", "train_prompts", "eval_every",
                     "curve_prompts", "curve_steps", "diversity_seeds", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ClipstudioError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("grad_steps", "lora_rank", "diversity_prompts"):
            if getattr(self, name) < 0:
                raise ClipstudioError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if not 0 < self.grad_steps <= self.sample_steps and self.method == "draft":
            raise ClipstudioError(f"--grad-steps must be in 1..--sample-steps ({self.sample_steps}), "
                                  f"got {self.grad_steps}")
        if self.batch > self.train_prompts:
            raise ClipstudioError(f"--batch ({self.batch}) cannot exceed --train-prompts ({self.train_prompts})")
        self.guidance = [_finite(g, "--guidance", 0) for g in self.guidance]
        if not self.guidance:
            raise ClipstudioError("--guidance needs at least one weight")
        _finite(self.anchor, "--anchor", 0)
        _finite(self.raft_guidance, "--raft-guidance", 0)
        if not 0 <= _finite(self.p_uncond, "--p-uncond", 0) < 1:
            raise ClipstudioError(f"--p-uncond must be below 1, got {self.p_uncond}")
        if not 0 <= _finite(self.sample_eta, "--sample-eta", 0) <= 1:
            raise ClipstudioError(f"--sample-eta must be in [0, 1], got {self.sample_eta}")
        if not 0 <= _finite(self.ema_decay, "--ema-decay", 0) < 1:
            raise ClipstudioError(f"--ema-decay must be below 1, got {self.ema_decay}")
        _finite(self.curve_guidance, "--curve-guidance", 0)
        _finite(self.kl_weight, "--kl-weight", 0)
        if self.default_sampler is not None and self.default_sampler not in list_samplers("epsilon"):
            raise ClipstudioError(f"unknown --default-sampler '{self.default_sampler}'; choose one of: "
                                  f"{', '.join(list_samplers('epsilon'))}")
        if not (math.isfinite(self.rwr_beta) and self.rwr_beta > 0):
            raise ClipstudioError(f"--rwr-beta must be a positive number, got {self.rwr_beta}")
        for name in ("max_minutes", "stop_after", "lora_alpha"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ClipstudioError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        return self

    def to_dict(self) -> dict:
        """Only the settings that differ from the defaults."""
        defaults = RewardTrainConfig()
        return {k: v for k, v in dataclasses.asdict(self).items() if v != getattr(defaults, k)}

    @property
    def state_path(self) -> str:
        return self.state or f"{self.out}.state"

    @property
    def curve_path(self) -> str:
        return self.curve or str(Path(self.out).with_suffix(".curve.json"))

    @property
    def raft_path(self) -> str:
        return str(Path(self.out).with_suffix(".raft.pt"))

    @property
    def best_path(self) -> str:
        return str(Path(self.out).with_suffix(".best.pt"))


# The type of each field whose default is None (for the command's options).
OPTIONAL_TYPES = {"checkpoint": str, "lora_alpha": float, "state": str, "curve": str, "max_minutes": float,
                  "stop_after": int, "kl_reference": str, "default_sampler": str}


def _finite(value, flag: str, low: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ClipstudioError(f"{flag} must be a number, got {value!r}") from None
    if not (math.isfinite(value) and value >= low):
        raise ClipstudioError(f"{flag} must be a finite number >= {low:g}, got {value}")
    return value


# --------------------------------------------------------------------------- prompt sets

def evaluation_prompts() -> set[str]:
    """Every prompt of the world's evaluation sets (eval diffusion, its sweep, compare): never trained on."""
    from clipstudio.worlds.shapes.prompts import prompt_set
    return {p for n, seed in EVAL_PROMPT_SETS for p in prompt_set(n, seed)}


def held_out_prompt_set(n: int, seed: int, exclude: set[str]) -> list[str]:
    """n prompts of ``prompt_set`` at ``seed``, skipping every string in ``exclude`` (so the sets are disjoint)."""
    from clipstudio.worlds.shapes.prompts import prompt_set
    found: list[str] = []
    size = n
    while len(found) < n:
        size *= 2
        found = [p for p in prompt_set(size, seed) if p not in exclude][:n]
    return found


def training_and_curve_prompts(n_train: int, n_curve: int) -> tuple[list[str], list[str]]:
    """(training prompts, curve prompts): disjoint from each other and from the evaluation sets."""
    evaluation = evaluation_prompts()
    curve = held_out_prompt_set(n_curve, CURVE_PROMPT_SEED, evaluation)
    train = held_out_prompt_set(n_train, TRAIN_PROMPT_SEED, evaluation | set(curve))
    return train, curve


# --------------------------------------------------------------------------- the model's parts

@dataclass
class ShapesParts:
    """The pieces of a shapes-diffusion checkpoint that fine-tuning needs (the UNet is the trained one)."""
    checkpoint: dict
    unet: torch.nn.Module
    text: Callable[[Sequence[str]], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]     # UNet space -> images in [0, 1], differentiable
    alphas_cumprod: torch.Tensor
    prediction: str

    def unet_fn(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The UNet as a ``model_fn(x, t, cond)`` of :mod:`clipstudio.diffusion.reward`."""
        return self.unet(x, t, encoder_hidden_states=cond).sample

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        return (cfg.in_channels, cfg.sample_size, cfg.sample_size)


def resolve_checkpoint(config: RewardTrainConfig) -> Path:
    """The starting checkpoint: ``--checkpoint``, else the embedded ``--model``'s file."""
    if config.checkpoint:
        path = Path(config.checkpoint)
        if not path.is_file():
            raise ClipstudioError(f"no diffusion checkpoint at {path}")
        return path
    from clipstudio import embedded
    return embedded.embedded_model(config.model, "diffusion").checkpoint


def load_parts(path: str | os.PathLike) -> ShapesParts:
    """Load a shapes-diffusion checkpoint for fine-tuning (fp32 UNet; frozen text tower and decoder)."""
    from diffusers import DDPMScheduler

    from clipstudio.checkpoints import load_checkpoint, require_keys
    from clipstudio.diffusion.backend import OpenClipTextEncoder
    from clipstudio.worlds.shapes import diffusion_model as SM
    try:
        ck = require_keys(load_checkpoint(path), ("unet_config", "unet", "text_cfg", "text_tower"), path)
        unet = SM.build_unet(ck["unet_config"])
        unet.load_state_dict({k: v.float() for k, v in ck["unet"].items()})
        encoder = OpenClipTextEncoder(SM.load_text_tower(ck["text_tower"], ck["text_cfg"]),
                                      SM.make_tokenizer(ck["text_cfg"]))
    except ClipstudioError:
        raise
    except Exception as e:
        raise ClipstudioError(f"could not load diffusion checkpoint {path}: {type(e).__name__}") from None
    if ck.get("prediction") == "flow":      # its DDIM sampler and denoising loss are the DDPM family's
        raise ClipstudioError(f"{path} is a flow-matching model; reward fine-tuning needs an epsilon or "
                              "v_prediction model such as shapes-diffusion")
    saved = ck.get("scheduler_config", {})
    sched = {**SM.SCHEDULER_CONFIG, **{k: saved[k] for k in SM.TRAINING_SCHEDULER_KEYS if k in saved}}
    abar = DDPMScheduler(**sched).alphas_cumprod.float()
    return ShapesParts(ck, unet, text_cache(encoder), differentiable_decoder(ck), abar,
                       sched.get("prediction_type", "epsilon"))


def text_cache(encoder) -> Callable[[Sequence[str]], torch.Tensor]:
    """Token states of the frozen text tower, cached per string (the training prompts repeat). Each text is
    encoded alone: batched matmuls round differently per batch, and a resumed run must see the same states."""
    cache: dict[str, torch.Tensor] = {}

    def encode(texts: Sequence[str]) -> torch.Tensor:
        for t in dict.fromkeys(texts):
            if t not in cache:
                cache[t] = encoder([t])[0]
        return torch.stack([cache[t] for t in texts])
    return encode


def differentiable_decoder(ck: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """UNet space -> images in [0, 1] with gradients (the loader's decoder runs under no_grad)."""
    from clipstudio.worlds.shapes import diffusion_model as SM
    space = ck.get("space") or {"kind": "pixel"}
    if space["kind"] == "pixel":
        return lambda x: ((SM.from_model_space(x) + 1) / 2).clamp(0, 1)
    decoder, _ = SM.latent_decoder(space, ck["decoder"])
    decoder.requires_grad_(False)
    mean = torch.tensor(space["latent_mean"])[:, None, None]
    std = torch.tensor(space["latent_std"])[:, None, None]
    return lambda z: decoder(z.float() * std.to(z.device) + mean.to(z.device)).clamp(0, 1)


# --------------------------------------------------------------------------- rewards

@dataclass(frozen=True)
class Reward:
    """A reward factory: ``make() -> reward_fn(images NCHW in [0, 1], prompts) -> (N,)``."""
    make: Callable[[], Callable]
    differentiable: bool
    about: str


def clip_reward(clip: str) -> Callable:
    """Cosine of each image with its prompt under an embedded CLIP, through its own preprocessing (a bicubic
    antialiased resize to its input size and its mean/std, as ``ranking.score_images``); differentiable."""
    from clipstudio.guide.clip import load_clip
    guide = load_clip(clip)
    texts: dict[str, torch.Tensor] = {}

    def reward(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        for p in dict.fromkeys(prompts):
            if p not in texts:                    # one at a time, for the same reason as text_cache
                texts[p] = guide.encode_text([p])[0]
        small = torch.nn.functional.interpolate(images, size=(guide.image_size,) * 2, mode="bicubic",
                                                antialias=True).clamp(0, 1)
        return (guide.encode_image(small) * torch.stack([texts[p] for p in prompts])).sum(-1)
    return reward


def hard_negatives(prompt: str) -> list[str]:
    """Captions of the grammar that differ from ``prompt`` in one attribute: each colour, shape, size or position
    word swapped for each other value, and for two objects, the relation flipped and the objects swapped."""
    from clipstudio.worlds.shapes.render import COLOURS, POSITIONS, SHAPES, SIZE_BANDS
    words = prompt.split()
    negatives = []
    for i, word in enumerate(words):
        for values in (COLOURS, SHAPES, tuple(SIZE_BANDS), tuple(POSITIONS)):
            if word in values:
                negatives += [" ".join(words[:i] + [v] + words[i + 1:]) for v in values if v != word]
    for relation, other in ((" to the left of ", " above "), (" above ", " to the left of ")):
        if relation in prompt:
            first, rest = prompt.split(relation)
            second, _, background = rest.partition(" on ")
            negatives.append(f"{first}{other}{rest}")
            negatives.append(f"{second}{relation}{first} on {background}")
    return [n for n in dict.fromkeys(negatives) if n != prompt and _is_caption(n)]


def _is_caption(text: str) -> bool:
    """Whether a text is a caption of the world's grammar (a near miss may paint an object the background's colour)."""
    from clipstudio.worlds.shapes.captions import parse_caption
    try:
        parse_caption(text)
    except ValueError:
        return False
    return True


def contrast_reward(clip: str) -> Callable:
    """log p(prompt | image) against the prompt's :func:`hard_negatives` under an embedded CLIP, a softmax over
    its scaled cosines (CLIP as a zero-shot classifier, Radford et al. 2021); differentiable. It rewards the
    attributes that tell the prompt from its near misses rather than a high cosine as such."""
    from clipstudio.guide.clip import load_clip
    guide = load_clip(clip)
    scale = float(guide.model.logit_scale.exp()) if hasattr(guide.model, "logit_scale") else 100.0
    texts: dict[str, torch.Tensor] = {}

    def reward(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        for p in dict.fromkeys(prompts):
            if p not in texts:                    # row 0 the prompt, then its negatives, one text at a time
                texts[p] = torch.stack([guide.encode_text([t])[0] for t in [p] + hard_negatives(p)])
        small = torch.nn.functional.interpolate(images, size=(guide.image_size,) * 2, mode="bicubic",
                                                antialias=True).clamp(0, 1)
        embeds = guide.encode_image(small)
        return torch.stack([torch.log_softmax(scale * texts[p] @ e, dim=0)[0] for p, e in zip(prompts, embeds)])
    return reward


def check_reward() -> Callable:
    """1 where the colour-and-geometry checker passes the image for its prompt, else 0 (a black box)."""
    from clipstudio.worlds.shapes.check import check_image
    from clipstudio.worlds.shapes.diffusion_model import to_uint8

    def reward(images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        arrays = to_uint8(images.detach().cpu())
        return torch.tensor([float(check_image(a, p).passed) for a, p in zip(arrays, prompts)])
    return reward


REWARDS: dict[str, Reward] = {
    "shapes-guide": Reward(lambda: clip_reward("shapes-guide"), True, "cosine with the prompt under the guide CLIP"),
    "shapes-guide-contrast": Reward(lambda: contrast_reward("shapes-guide"), True,
                                    "log-probability of the prompt against its one-attribute near misses, guide CLIP"),
    "check": Reward(check_reward, False, "colour-and-geometry checker pass (1) or fail (0); not differentiable"),
}


def list_rewards() -> list[str]:
    """Names of the registered rewards."""
    return list(REWARDS)


# --------------------------------------------------------------------------- sampling and the two methods

def sample_latents(parts: ShapesParts, prompts: Sequence[str], guidance: float, steps: int, noise: torch.Tensor,
                   grad_steps: int = 0, checkpoint: bool = False, eta: float = 0.0,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DDIM (trailing timesteps, as the CFG backend; ``eta`` 1 ancestral, its noise from ``generator``) x_0
    latents for ``prompts`` from ``noise``; gradients flow through the last ``grad_steps`` steps when grad mode
    is on (DRaFT-K)."""
    from clipstudio.diffusion import reward as R
    emb = parts.text(list(prompts) + [""])
    cond, uncond = emb[:-1], emb[-1:]
    guided = R.guided_model(parts.unet_fn, cond, uncond, float(guidance))
    fn = R.eps_model(guided, parts.alphas_cumprod, parts.prediction)
    ts = R.trailing_timesteps(len(parts.alphas_cumprod), steps)
    return R.ddim_sample_draft(fn, noise, ts, parts.alphas_cumprod, grad_steps, checkpoint, eta, generator)


def step_draw(config: RewardTrainConfig, step: int, prompts: Sequence[str]) -> tuple[list[str], float, torch.Generator]:
    """(prompts, guidance weight, noise generator) of one step; they depend only on (seed, step)."""
    rng = np.random.default_rng([config.seed, step])
    chosen = [prompts[int(i)] for i in rng.choice(len(prompts), size=config.batch, replace=False)]
    guidance = config.guidance[int(rng.integers(len(config.guidance)))]
    return chosen, guidance, torch.Generator().manual_seed(config.seed * 1_000_003 + step)


def draft_objective(parts: ShapesParts, config: RewardTrainConfig, reward_fn: Callable, step: int,
                    prompts: Sequence[str], data: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(loss, rewards, guidance) of one DRaFT-K step (Clark et al. 2023): reward backpropagated through the
    decoder and the last K sampling steps."""
    from clipstudio.diffusion.reward import draft_loss
    chosen, guidance, gen = step_draw(config, step, prompts)
    noise = torch.randn((len(chosen),) + parts.sample_shape, generator=gen)
    z = sample_latents(parts, chosen, guidance, config.sample_steps, noise, config.grad_steps, config.grad_checkpoint,
                       config.sample_eta, gen)
    loss, rewards = draft_loss(parts.decode(z), chosen, reward_fn)
    return loss, rewards, guidance


def rwr_objective(parts: ShapesParts, config: RewardTrainConfig, reward_fn: Callable, step: int,
                  prompts: Sequence[str], data: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(loss, rewards, guidance) of one reward-weighted regression step (Peng et al. 2019; Lee et al. 2023):
    ``rwr_samples`` images per prompt, scored by the black-box reward, regressed on with weights
    exp(r / beta) normalised within each prompt's group."""
    from clipstudio.diffusion.reward import denoising_losses, rwr_weights
    chosen, guidance, gen = step_draw(config, step, prompts)
    repeated = [p for p in chosen for _ in range(config.rwr_samples)]
    noise = torch.randn((len(repeated),) + parts.sample_shape, generator=gen)
    with torch.no_grad():
        z = sample_latents(parts, repeated, guidance, config.sample_steps, noise)
        rewards = torch.as_tensor(reward_fn(parts.decode(z), repeated)).float().detach()
    groups = torch.arange(len(chosen)).repeat_interleave(config.rwr_samples)
    weights = rwr_weights(rewards, groups, config.rwr_beta)
    t = torch.randint(0, len(parts.alphas_cumprod), (len(repeated),), generator=gen)
    eps = torch.randn(z.shape, generator=gen)

    losses = denoising_losses(parts.unet_fn, z, parts.text(repeated), t, eps, parts.alphas_cumprod, parts.prediction)
    return (weights * losses).mean(), rewards, guidance


def prompt_noise(seed: int, index: int, n: int, shape: Sequence[int]) -> torch.Tensor:
    """The n starting noises of training prompt ``index``: they depend on (seed, index) only, so a dataset built
    in chunks, or resumed, holds the same samples."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed * 1_000_003 + 7919 * index + 1))


@torch.no_grad()
def best_of_n_chunk(parts: ShapesParts, config: RewardTrainConfig, reward_fn: Callable, prompts: Sequence[str],
                    first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(best latent per prompt, every sample's reward (len, n)) for ``prompts``, the training prompts from index
    ``first`` on: ``rwr_samples`` DDIM samples each at ``raft_guidance``, the reward's best kept (RAFT, Dong et
    al. 2023, "Reward rAnked FineTuning")."""
    n = config.rwr_samples
    noise = torch.cat([prompt_noise(config.seed, first + i, n, parts.sample_shape) for i in range(len(prompts))])
    repeated = [p for p in prompts for _ in range(n)]
    z = torch.cat([sample_latents(parts, repeated[i:i + 32], config.raft_guidance, config.sample_steps,
                                  noise[i:i + 32]) for i in range(0, len(repeated), 32)])
    rewards = torch.as_tensor(reward_fn(parts.decode(z), repeated)).float().reshape(len(prompts), n)
    best = rewards.argmax(dim=1)
    return z.reshape(len(prompts), n, *z.shape[1:])[torch.arange(len(prompts)), best], rewards


RAFT_KEYS = ("seed", "reward", "rwr_samples", "raft_guidance", "sample_steps")


def raft_dataset(parts: ShapesParts, config: RewardTrainConfig, reward_fn: Callable, prompts: Sequence[str],
                 chunk: int = 16, log: Callable[[str], None] = print) -> dict:
    """The RAFT dataset of the training prompts (best-of-n latents and all rewards), built in chunks and saved
    atomically to OUT.raft.pt after each, so an interrupted build continues where it stopped. A prompt's samples
    depend on (seed, its index) only and the training prompts of a smaller --train-prompts are a prefix of a
    larger one's, so a saved dataset serves any --train-prompts: cut to size, or grown."""
    from clipstudio.checkpoints import load_checkpoint
    from clipstudio.images import atomic_torch_save
    key = {k: getattr(config, k) for k in RAFT_KEYS}
    path = config.raft_path
    latents, rewards, done = [], [], []
    if os.path.isfile(path):
        saved = load_checkpoint(path)
        if saved.get("key") != key:
            raise ClipstudioError(f"{path} was built with other settings ({saved.get('key')}); move it away")
        done = list(saved["prompts"])
        if done[:len(prompts)] != list(prompts)[:len(done)]:
            raise ClipstudioError(f"{path} was built on other training prompts; move it away")
        latents, rewards = list(saved["latents"]), list(saved["rewards"])
    t0 = time.perf_counter()
    while len(done) < len(prompts):
        first = len(done)
        z, r = best_of_n_chunk(parts, config, reward_fn, prompts[first:first + chunk], first)
        latents, rewards, done = latents + list(z), rewards + list(r), done + list(prompts[first:first + chunk])
        atomic_torch_save({"key": key, "prompts": done, "latents": torch.stack(latents),
                           "rewards": torch.stack(rewards)}, path)
        all_rewards = torch.stack(rewards)
        log(f"RAFT data: {len(done)}/{len(prompts)} prompts, mean reward {all_rewards.mean():.4f}, "
            f"best {all_rewards.max(1).values.mean():.4f} ({time.perf_counter() - t0:.0f} s)")
    n = len(prompts)
    return {"latents": torch.stack(latents[:n]), "rewards": torch.stack(rewards[:n])}


def raft_objective(parts: ShapesParts, config: RewardTrainConfig, reward_fn: Callable, step: int,
                   prompts: Sequence[str], data: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(loss, rewards of the batch's samples, guidance) of one RAFT step: the denoising loss on the best-of-n
    latents of ``batch`` training prompts, each caption dropped with probability ``p_uncond`` so the
    unconditional half learns the kept samples too (classifier-free guidance, Ho & Salimans 2022)."""
    from clipstudio.diffusion.reward import denoising_losses
    rng = np.random.default_rng([config.seed, step])
    idx = rng.choice(len(prompts), size=config.batch, replace=False)
    captions = ["" if rng.random() < config.p_uncond else prompts[int(i)] for i in idx]
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    z = data["latents"][torch.as_tensor(idx)].float()
    t = torch.randint(0, len(parts.alphas_cumprod), (len(idx),), generator=gen)
    eps = torch.randn(z.shape, generator=gen)

    losses = denoising_losses(parts.unet_fn, z, parts.text(captions), t, eps, parts.alphas_cumprod, parts.prediction)
    return losses.mean(), data["rewards"][torch.as_tensor(idx)].max(1).values, config.raft_guidance


OBJECTIVES = {"draft": draft_objective, "rwr": rwr_objective, "raft": raft_objective}


# --------------------------------------------------------------------------- the KL term on free-colour captions

KL_PROMPTS = 200        # at most this many free-colour captions for the KL term (the world has 188)
KL_PROMPT_SEED = 2027
# Free-colour prompts whose colour spread is measured (the issue's, and README's wider table): never in the KL set.
DIVERSITY_PROMPTS = (FREE_COLOUR_PROMPT, "a square on a black background", "a triangle on a blue background",
                     "a circle on a green background")


def resolve_reference(config: RewardTrainConfig, start: Path) -> Path:
    """The KL term's reference model: ``--kl-reference`` (a checkpoint file or an embedded model's name), else
    the starting checkpoint."""
    if not config.kl_reference:
        return start
    if Path(config.kl_reference).is_file():
        return Path(config.kl_reference)
    from clipstudio import embedded
    return embedded.embedded_model(config.kl_reference, "diffusion").checkpoint


def free_colour_prompts(n: int, seed: int = KL_PROMPT_SEED) -> list[str]:
    """Up to ``n`` distinct captions that leave the object's colour free (``a circle on a white background``,
    ``a small square on a black background``): where a reward fine-tune narrows the colours the model draws.
    The world has fewer than ``KL_PROMPTS`` such captions (188 once the measured ones are left out), so the
    default takes them all."""
    from clipstudio.worlds.shapes.captions import partial_caption
    from clipstudio.worlds.shapes.render import sample_scene
    rng = np.random.default_rng(seed)
    found: dict[str, None] = {}
    for _ in range(100 * n):
        caption = partial_caption(rng, sample_scene(rng, str(rng.choice(("plain", "sized", "positioned")))))
        if " " in caption and caption not in DIVERSITY_PROMPTS:   # not a bare colour word, nor a measured prompt
            found[caption] = None
        if len(found) == n:
            break
    return list(found)


def kl_objective(parts: ShapesParts, reference: ShapesParts, config: RewardTrainConfig, step: int,
                 prompts: Sequence[str]) -> torch.Tensor:
    """The per-step KL between the fine-tuned and the reference model's denoising steps on free-colour
    captions (DPOK, Fan et al. 2023: for Gaussian steps of equal variance it is the squared difference of the
    two predictions): states ``x_t`` are the reference's own samples for those captions (DDIM, w=1, no
    gradient), noised to a random training timestep, as DreamBooth's prior preservation (Ruiz et al. 2023)
    draws its data from the original model. Batch, captions and noise depend only on (seed, step)."""
    rng = np.random.default_rng([config.seed, step, 1])
    chosen = [prompts[int(i)] for i in rng.choice(len(prompts), size=min(config.batch, len(prompts)), replace=False)]
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step + 500_000_000)
    noise = torch.randn((len(chosen),) + parts.sample_shape, generator=gen)
    with torch.no_grad():
        x0 = sample_latents(reference, chosen, 1.0, config.sample_steps, noise)
    t = torch.randint(0, len(parts.alphas_cumprod), (len(chosen),), generator=gen)
    abar = parts.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * torch.randn(x0.shape, generator=gen)
    cond = parts.text(chosen)
    with torch.no_grad():
        target = reference.unet_fn(x_t, t, cond)
    return (parts.unet_fn(x_t, t, cond) - target).pow(2).mean()


# --------------------------------------------------------------------------- the over-optimization curve

CURVE_NOISE_SEED = 777      # the same noise at every curve point, so the points differ by the weights only


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean RMS pixel distance over all pairs of a prompt's samples (a diversity measure; 0 = collapsed)."""
    flat = images.flatten(1)
    d = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    n = len(images)
    return float(d.sum() / (n * (n - 1))) if n > 1 else 0.0


def object_colours(images: torch.Tensor, background: str = "white") -> list[Optional[str]]:
    """The palette colour of each image's object (``diffusion_model.object_colour``)."""
    from clipstudio.worlds.shapes.diffusion_model import object_colour, to_uint8
    return [object_colour(a, background) for a in to_uint8(images)]


def colour_spread(backend, prompt: str = FREE_COLOUR_PROMPT, n: int = 64, seed: int = 5,
                  guidance: Optional[float] = None, steps: int = 50, background: str = "white",
                  sampler: Optional[str] = None) -> dict:
    """How many distinct palette colours a free-colour prompt's object takes over n seeded images (the
    diversity target: a reward fine-tune must not collapse it to one colour); ``sampler`` None: the model's."""
    images = backend.generate(prompt, n=n, guidance=guidance, steps=steps, seed=seed, sampler=sampler)
    colours = object_colours(images, background)
    counts = {c: colours.count(c) for c in sorted(set(colours), key=str) if c is not None}
    return {"prompt": prompt, "n": n, "seed": seed, "distinct": len(counts), "counts": counts}


@torch.no_grad()
def generate_batched(parts: ShapesParts, prompts: Sequence[str], guidance: float, steps: int,
                     noise: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Images in [0, 1] for prompts (one per row of ``noise``), in chunks."""
    out = [parts.decode(sample_latents(parts, prompts[i:i + chunk], guidance, steps, noise[i:i + chunk]))
           for i in range(0, len(prompts), chunk)]
    return torch.cat(out)


def eval_scores(arrays: Sequence[np.ndarray], prompts: Sequence[str]) -> list[float]:
    """The independent evaluator's cosine of each image with its prompt (``shapes-eval``, never the guide)."""
    from clipstudio.ranking import score_images
    return score_images(arrays, prompts, EVALUATOR)


@torch.no_grad()
def curve_point(parts: ShapesParts, config: RewardTrainConfig, prompts: Sequence[str], guide_fn: Callable) -> dict:
    """Held-out figures of the current weights: guide reward, shapes-eval score, check pass rate, diversity."""
    from clipstudio.worlds.shapes.check import check_image
    from clipstudio.worlds.shapes.diffusion_model import to_uint8
    gen = torch.Generator().manual_seed(CURVE_NOISE_SEED)
    noise = torch.randn((len(prompts),) + parts.sample_shape, generator=gen)
    images = generate_batched(parts, prompts, config.curve_guidance, config.curve_steps, noise)
    arrays = to_uint8(images)
    point = {"guide_reward": float(guide_fn(images, prompts).mean()),
             "eval_score": float(np.mean(eval_scores(arrays, list(prompts)))),
             "pass_rate": float(np.mean([check_image(a, p).passed for a, p in zip(arrays, prompts)]))}
    div_prompts = list(prompts[:config.diversity_prompts]) + [FREE_COLOUR_PROMPT]
    reps = [p for p in div_prompts for _ in range(config.diversity_seeds)]
    div_noise = torch.randn((len(reps),) + parts.sample_shape, generator=gen)
    div_images = generate_batched(parts, reps, config.curve_guidance, config.curve_steps, div_noise)
    groups = div_images.split(config.diversity_seeds)
    point["diversity"] = float(np.mean([mean_pairwise_distance(g) for g in groups]))
    point["free_colours"] = len({c for c in object_colours(groups[-1]) if c is not None})
    return point


# --------------------------------------------------------------------------- the run

@dataclass
class _Run:
    """A fine-tuning run's live objects and progress (what a checkpoint saves and a resume restores)."""
    config: RewardTrainConfig
    parts: ShapesParts
    base: Path
    base_sha256: str
    start: dict[str, torch.Tensor]
    opt: torch.optim.Optimizer
    reward_fn: Callable
    guide_fn: Callable
    train_prompts: list[str]
    curve_prompts: list[str]
    step: int = 0
    elapsed: float = 0.0
    history: list = field(default_factory=list)        # per step: reward mean, loss, guidance
    curve: list = field(default_factory=list)          # per curve point: step and the held-out figures
    best: Optional[dict] = None
    data: Optional[dict] = None                        # --method raft: the best-of-n dataset
    ema: Optional[dict] = None                         # --ema-decay: the average of the trainable weights
    reference: Optional[ShapesParts] = None            # --kl-weight: the frozen reference model
    kl_prompts: list = field(default_factory=list)     # --kl-weight: the free-colour captions it is measured on

    def trainable(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.parts.unet.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def shipped_weights(self):
        """The weights that ship, in place for the block: the EMA where there is one, else the trained ones."""
        if self.ema is None:
            yield
            return
        params = self.trainable()
        trained = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.ema[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(trained[n])


def _start_run(config: RewardTrainConfig) -> _Run:
    """Load the starting model, add a LoRA if asked, build the optimizer and rewards; resume from --state."""
    from clipstudio import weights
    from clipstudio.checkpoints import load_checkpoint, require_keys
    from clipstudio.diffusion.reward import add_lora
    base = resolve_checkpoint(config)
    parts = load_parts(base)
    start = {n: p.detach().clone() for n, p in parts.unet.named_parameters()}
    torch.manual_seed(config.seed)                     # the LoRA's initial A matrices
    if config.lora_rank:
        add_lora(parts.unet, config.lora_rank, config.lora_alpha)
    parts.unet.train()
    train_prompts, curve_prompts = training_and_curve_prompts(config.train_prompts, config.curve_prompts)
    params = [p for p in parts.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    guide_fn = REWARDS["shapes-guide"].make()
    reward_fn = guide_fn if config.reward == "shapes-guide" else REWARDS[config.reward].make()
    run = _Run(config, parts, base, weights.file_sha256(base), start, opt, reward_fn, guide_fn,
               train_prompts, curve_prompts)
    if config.kl_weight:
        run.reference = load_parts(resolve_reference(config, base))
        run.reference.unet.requires_grad_(False).eval()
        run.kl_prompts = free_colour_prompts(KL_PROMPTS)
    if config.ema_decay:                               # starts at the starting weights: no warm-up
        run.ema = {n: p.detach().clone() for n, p in run.trainable().items()}
    if config.method == "raft":                        # sampled from the starting weights, before any resume
        parts.unet.eval()
        run.data = raft_dataset(parts, config, reward_fn, train_prompts)
        parts.unet.train()
    state = config.state_path
    if config.resume and os.path.isfile(state):
        _restore(run, require_keys(load_checkpoint(state), ("config", "trainable", "opt", "step", "base_sha256"),
                                   state))
    elif config.resume:
        print(f"--resume: no state at {state}; starting fresh", file=sys.stderr)
    return run


RESUME_KEYS = ("method", "reward", "seed", "batch", "lora_rank", "guidance", "sample_steps", "grad_steps",
               "train_prompts", "rwr_samples", "raft_guidance", "p_uncond", "ema_decay", "kl_weight", "kl_reference",
               "sample_eta")
RESUME_DEFAULTS = {"ema_decay": 0.0, "kl_weight": 0.0, "sample_eta": 0.0}  # keys a state of an older version lacks


def _restore(run: _Run, st: dict) -> None:
    """Put a saved state back into the run; refuse a state of another base model or another data stream."""
    saved = st["config"]
    changed = [k for k in RESUME_KEYS if saved.get(k, RESUME_DEFAULTS.get(k)) != getattr(run.config, k)]
    if changed or st["base_sha256"] != run.base_sha256:
        what = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)}" for k in changed) or "another base model"
        raise ClipstudioError(f"--resume: {run.config.state_path} was trained with {what}")
    params = run.trainable()
    missing = set(params) ^ set(st["trainable"])
    if missing:
        raise ClipstudioError(f"--resume: {run.config.state_path} does not fit this model ({sorted(missing)[0]})")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(st["trainable"][n])
    run.opt.load_state_dict(st["opt"])
    if run.ema is not None:
        run.ema = {n: v.clone() for n, v in st["ema"].items()}
    run.step, run.elapsed = st["step"], st.get("elapsed", 0.0)
    run.history, run.curve, run.best = st.get("history", []), st.get("curve", []), st.get("best")


def shippable(run: _Run) -> dict:
    """The checkpoint in the format of assets/shapes-diffusion.pt: the full fp16 UNet (any LoRA merged in)."""
    import copy

    from clipstudio.diffusion.reward import merge_lora
    with run.shipped_weights():
        unet = merge_lora(copy.deepcopy(run.parts.unet))
    shipped = {k: v for k, v in run.parts.checkpoint.items() if k != "unet"}
    shipped["unet"] = {k: v.detach().half() for k, v in unet.state_dict().items()}
    shipped["step"] = run.step
    if run.config.default_sampler:               # what `diffuse` and `eval diffusion` use unless told otherwise
        shipped["default_sampler"] = run.config.default_sampler
    shipped["reward_finetune"] = {"base_sha256": run.base_sha256, "method": run.config.method,
                                  "reward": run.config.reward, "step": run.step}
    return shipped


def write_card(path: str | os.PathLike, run: _Run, command: Optional[str], extra: Optional[dict] = None) -> None:
    """The .json model card beside a checkpoint: exact command, settings, progress and the curve so far."""
    from clipstudio.images import atomic_write
    recent = run.history[-25:]
    meta = {"command": command, "step": run.step, "steps": run.config.steps, "train_seconds": round(run.elapsed, 1),
            "threads": torch.get_num_threads(), "base": f"{run.base} (sha256 {run.base_sha256[:16]})",
            "recent_reward": float(np.mean([h["reward"] for h in recent])) if recent else None,
            "config": dataclasses.asdict(run.config), "prompt_sets": PROMPT_SETS_NOTE,
            "curve": run.curve, **(extra or {})}
    text = json.dumps(meta, indent=2, default=str)
    atomic_write(Path(path).with_suffix(".json"), lambda f: f.write(text.encode()))


PROMPT_SETS_NOTE = (f"training: prompt_set seed {TRAIN_PROMPT_SEED}; curve: seed {CURVE_PROMPT_SEED}; both without "
                    f"any prompt of the evaluation sets (n, seed) {list(EVAL_PROMPT_SETS)} nor of each other")


def _save(run: _Run, command: Optional[str]) -> None:
    """Atomically write the training state, the shippable model and its card, and the curve."""
    from clipstudio.images import atomic_torch_save, atomic_write
    config = run.config
    atomic_torch_save({"config": dataclasses.asdict(config),
                       "trainable": {n: p.detach().clone() for n, p in run.trainable().items()},
                       "opt": run.opt.state_dict(), "ema": run.ema, "step": run.step, "elapsed": run.elapsed,
                       "history": run.history, "curve": run.curve, "best": run.best,
                       "base_sha256": run.base_sha256}, config.state_path)
    atomic_torch_save(shippable(run), config.out)
    write_card(config.out, run, command)
    text = json.dumps({"config": dataclasses.asdict(config), "command": command, "curve": run.curve,
                       "best": run.best, "history": run.history}, indent=1, default=str)
    atomic_write(config.curve_path, lambda f: f.write(text.encode()))


def _measure_curve(run: _Run, command: Optional[str], log: Callable[[str], None]) -> None:
    """Add a curve point at the current step; keep the best one (pass rate, then guide reward) as OUT.best.pt."""
    from clipstudio.images import atomic_torch_save
    run.parts.unet.eval()
    with run.shipped_weights():
        point = {"step": run.step, **curve_point(run.parts, run.config, run.curve_prompts, run.guide_fn)}
    run.parts.unet.train()
    run.curve.append(point)
    log(f"curve at step {run.step}: guide {point['guide_reward']:.4f}, eval {point['eval_score']:.4f}, "
        f"pass {point['pass_rate']:.3f}, diversity {point['diversity']:.4f}, free colours {point['free_colours']}")
    key = (point["pass_rate"], point["guide_reward"])
    if run.best is None or key > (run.best["pass_rate"], run.best["guide_reward"]):
        run.best = point
        atomic_torch_save(shippable(run), run.config.best_path)
        write_card(run.config.best_path, run, command, {"selected": "best held-out curve point", "point": point})


def _train_step(run: _Run) -> dict:
    """One optimizer step of the configured method, with the L2 anchor; returns its log entry."""
    from clipstudio.diffusion.reward import l2_anchor, weight_deltas
    config = run.config
    loss, rewards, guidance = OBJECTIVES[config.method](run.parts, config, run.reward_fn, run.step,
                                                        run.train_prompts, run.data)
    anchor = l2_anchor(weight_deltas(run.parts.unet, run.start)) if config.anchor else torch.zeros(())
    kl = kl_objective(run.parts, run.reference, config, run.step, run.kl_prompts) if config.kl_weight \
        else torch.zeros(())
    total = loss + config.anchor * anchor + config.kl_weight * kl
    if not torch.isfinite(total):
        raise ClipstudioError(f"the loss became {float(total)} at step {run.step}; lower --lr")
    run.opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_([p for p in run.parts.unet.parameters() if p.requires_grad], 1.0)
    run.opt.step()
    if run.ema is not None:
        update_ema(run.ema, run.trainable(), config.ema_decay)
    return {"step": run.step, "reward": float(rewards.mean()), "loss": float(loss.detach()),
            "anchor": float(anchor.detach()), "kl": float(kl.detach()), "guidance": guidance}


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], params: dict[str, torch.Tensor], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * params, in place: the shipped weights average out the step-to-step
    noise of fine-tuning (Polyak averaging, as diffusion training ships an EMA)."""
    for n, p in params.items():
        ema[n].lerp_(p.detach(), 1 - decay)


def train(config: RewardTrainConfig, *, progress: bool = True, command: Optional[str] = None,
          log: Callable[[str], None] = print) -> dict:
    """Fine-tune (or resume) toward the reward; measures the curve every ``eval_every`` steps (and at step 0)."""
    from tqdm.auto import tqdm
    config.validate()
    run = _start_run(config)
    if run.step == 0 and not run.curve:
        _measure_curve(run, command, log)
    bar = tqdm(total=config.steps, initial=run.step, desc=f"reward {config.method}", disable=not progress)
    t_last = t_start = time.perf_counter()
    while run.step < config.steps:
        entry = _train_step(run)
        run.history.append(entry)
        run.step += 1
        now = time.perf_counter()
        run.elapsed += now - t_last
        bar.update(1)
        bar.set_postfix(reward=f"{np.mean([h['reward'] for h in run.history[-20:]]):.4f}")
        if run.step % config.eval_every == 0 or run.step == config.steps:
            _measure_curve(run, command, log)
        t_last = time.perf_counter()
        stop = (config.stop_after is not None and run.step >= config.stop_after) or \
            (config.max_minutes is not None and time.perf_counter() - t_start > config.max_minutes * 60)
        if run.step % config.save_every == 0 or run.step == config.steps or stop:
            _save(run, command)
        if stop and run.step < config.steps:
            log(f"stopping at step {run.step}; continue with --resume")
            break
    bar.close()
    if run.step == 0 or run.step % config.save_every:
        _save(run, command)
    return {"step": run.step, "train_seconds": run.elapsed, "curve": run.curve, "best": run.best,
            "history": run.history,
            "reward": float(np.mean([h["reward"] for h in run.history[-20:]])) if run.history else None}


# --------------------------------------------------------------------------- the figure

def over_optimization_onset(curve: Sequence[dict]) -> Optional[int]:
    """The step after which the guide reward still rises while the pass rate never again reaches its best:
    the first best-pass-rate point, if a later point has a higher guide reward and a lower pass rate (else None)."""
    if not curve:
        return None
    best = max(range(len(curve)), key=lambda i: (curve[i]["pass_rate"], -i))
    later = curve[best + 1:]
    cheated = any(p["guide_reward"] > curve[best]["guide_reward"] and p["pass_rate"] < curve[best]["pass_rate"]
                  for p in later)
    return int(curve[best]["step"]) if cheated else None


def windowed_rewards(history: Sequence[dict], window: int) -> tuple[list[int], list[float]]:
    """(end step, mean training reward) of each ``window`` consecutive steps of a run's history."""
    ends, means = [], []
    for i in range(0, len(history) - window + 1, window):
        ends.append(int(history[i + window - 1]["step"]) + 1)
        means.append(float(np.mean([h["reward"] for h in history[i:i + window]])))
    return ends, means


def plot_curve(curves: dict[str, Sequence[dict]], path: str | os.PathLike, title: str = "",
               histories: Optional[dict[str, Sequence[dict]]] = None, window: int = 20) -> Optional[int]:
    """One PNG with four panels (guide reward, shapes-eval score, check pass rate, diversity) against the
    fine-tuning step, one line per run, and a dashed line where over-optimization starts; returns that step
    for the first run (matplotlib is imported here only). ``histories`` (label: per-step log of a run whose
    reward is the guide's cosine) add its training reward, averaged over ``window`` steps, dotted."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ClipstudioError("plotting the curve needs matplotlib: pip install matplotlib") from None
    from clipstudio.images import atomic_write
    panels = [("guide_reward", "guide reward (shapes-guide cosine)"), ("eval_score", "independent evaluator (shapes-eval)"),
              ("pass_rate", "colour-and-geometry pass rate"), ("diversity", "diversity (mean pairwise RMS)")]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    onsets = {}
    for label, curve in curves.items():
        steps = [p["step"] for p in curve]
        for ax, (key, _) in zip(axes.flat, panels):
            ax.plot(steps, [p[key] for p in curve], marker="o", ms=3, label=label)
        onsets[label] = over_optimization_onset(curve)
    for label, history in (histories or {}).items():
        ends, means = windowed_rewards(history, window)
        axes[0, 0].plot(ends, means, ls=":", label=f"{label}: training reward, {window}-step mean")
    for ax, (_, name) in zip(axes.flat, panels):
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        for label, onset in onsets.items():
            if onset is not None:
                ax.axvline(onset, ls="--", color="grey", lw=1)
    for ax in axes[1]:
        ax.set_xlabel("fine-tuning step")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    marked = [f"{label}: step {onset}" for label, onset in onsets.items() if onset is not None]
    note = ("dashed: the pass rate's best, after which the guide reward still rises while the pass rate falls ("
            + "; ".join(marked) + ")") if marked else "no point where the guide reward rose while the pass rate fell"
    fig.suptitle(title or f"reward fine-tuning on held-out prompts; {note}", fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)
    return next(iter(onsets.values()), None)
