"""Reward fine-tuning of a CFG diffusion model, as small pure functions (world-free).

* **DRaFT-K** (Clark et al. 2023, "Directly Fine-Tuning Diffusion Models on Differentiable Rewards"; AlignProp,
  Prabhudesai et al. 2023): sample with DDIM at eta=0 from seeded noise, the first steps without gradients, and
  backpropagate a differentiable reward through the decoder and only the last K denoising steps
  (:func:`ddim_sample_draft`, :func:`draft_loss`).
* **Reward-weighted regression** (Peng et al. 2019; for text-to-image, Lee et al. 2023, "Aligning Text-to-Image
  Models using Human Feedback"): sample without gradients, score the images with any black-box reward (a
  checker, a human rating), and regress the model onto its own samples, each weighted by exp(reward / beta)
  within its prompt's group (:func:`rwr_weights`, :func:`denoising_losses`).
* An **L2 anchor** to the starting weights (L2-SP, Li et al. 2018) and a hand-written **LoRA** (Hu et al. 2021)
  on the attention projections, merged back into plain Linear layers before a model is saved.

A ``model_fn(x, t, cond) -> prediction`` is the UNet; ``prediction`` is ``"epsilon"`` or ``"v_prediction"``.
The reward is a callable ``reward_fn(images NCHW in [0, 1], prompts) -> (N,)`` tensor, higher is better.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn as nn

from clipstudio.diffusion.sampling import bind_cond, cfg_model, ddim_step, q_sample
from clipstudio.errors import ClipstudioError

RewardFn = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]
PREDICTIONS = ("epsilon", "v_prediction")


# --------------------------------------------------------------------------- parameterisations

def v_to_eps(v: torch.Tensor, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(abar) v + sqrt(1 - abar) x_t for a v-prediction model (Salimans & Ho 2022, sec. 4)."""
    return abar.sqrt() * v + (1 - abar).sqrt() * x


def v_target(x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The v-prediction target v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022, eq. 9)."""
    return abar.sqrt() * noise - (1 - abar).sqrt() * x0


def check_prediction(prediction: str) -> None:
    """A one-line error unless the model predicts eps or v."""
    if prediction not in PREDICTIONS:
        raise ClipstudioError(f"reward fine-tuning needs an epsilon or v_prediction model, got '{prediction}'")


def eps_model(model_fn: Callable, alphas_cumprod: torch.Tensor, prediction: str) -> Callable:
    """Turn a guided (x, t) -> eps-or-v function into (x, t) -> eps, so DDIM's update applies (Song et al. 2020)."""
    check_prediction(prediction)
    if prediction == "epsilon":
        return model_fn

    def to_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = alphas_cumprod.to(x.device)[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return v_to_eps(model_fn(x, t), x, abar)
    return to_eps


def guided_model(model_fn: Callable, cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> Callable:
    """(x, t) -> output with classifier-free guidance (Ho & Salimans 2022); w=1 skips the unconditional half."""
    if guidance == 1.0:
        return bind_cond(model_fn, cond)
    return cfg_model(model_fn, cond, uncond, guidance)


# --------------------------------------------------------------------------- DRaFT-K

def trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """diffusers' "trailing" DDIM timesteps T-1, T-1-T/n, ... (Lin et al. 2023, table 2), as the CFG backend uses."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 < steps <= num_train_timesteps:
        raise ClipstudioError(f"sampling steps must be an integer in 1..{num_train_timesteps}, got {steps!r}")
    stride = num_train_timesteps / steps
    return [int(round(num_train_timesteps - i * stride)) - 1 for i in range(steps)]


def ddim_sample_draft(eps_fn: Callable, x: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: torch.Tensor,
                      grad_steps: int, checkpoint: bool = False, eta: float = 0.0,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DDIM (Song et al. 2020) to x_0, with gradients through the last ``grad_steps`` steps only (DRaFT-K,
    Clark et al. 2023); ``checkpoint`` recomputes those steps' activations in the backward pass. ``eta`` 1 makes
    each step ancestral, as DDPM's with its posterior variance, its noise drawn from ``generator``. The last step
    goes to abar=1 (diffusers' ``set_alpha_to_one``), so it returns the x_0 estimate."""
    abar = alphas_cumprod.to(x.device, torch.float64)
    first_tracked = len(timesteps) - max(0, int(grad_steps))
    for i, t in enumerate(timesteps):
        a_t = abar[t].to(x.dtype)
        a_prev = abar[timesteps[i + 1]].to(x.dtype) if i + 1 < len(timesteps) else torch.ones((), dtype=x.dtype)
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        tracked = i >= first_tracked and torch.is_grad_enabled()
        noise = torch.randn(x.shape, generator=generator).to(x) if eta and i + 1 < len(timesteps) else None
        with torch.set_grad_enabled(tracked):
            if tracked and checkpoint:
                eps = torch.utils.checkpoint.checkpoint(eps_fn, x, t_batch, use_reentrant=False)
            else:
                eps = eps_fn(x, t_batch)
            x = ddim_step(x, eps, a_t, a_prev.to(x.device), eta if noise is not None else 0.0, noise)
    return x


def draft_loss(images: torch.Tensor, prompts: Sequence[str], reward_fn: RewardFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss = -mean reward, rewards detached) of decoded samples; the gradient flows back into the sampler
    (DRaFT, Clark et al. 2023, alg. 1)."""
    rewards = reward_fn(images, prompts)
    return -rewards.mean(), rewards.detach()


# --------------------------------------------------------------------------- reward-weighted regression

def rwr_weights(rewards: torch.Tensor, groups: torch.Tensor, beta: float) -> torch.Tensor:
    """exp((r - max r) / beta) within each group, normalised to mean 1 per group (reward-weighted regression,
    Peng et al. 2019, eq. 7); beta -> 0 keeps each group's best only, beta -> inf weighs all alike."""
    if not (math.isfinite(beta) and beta > 0):
        raise ClipstudioError(f"the RWR temperature beta must be a positive number, got {beta}")
    rewards = rewards.detach().float()
    weights = torch.empty_like(rewards)
    for g in groups.unique():
        member = groups == g
        w = torch.exp((rewards[member] - rewards[member].max()) / beta)
        weights[member] = w / w.mean()
    return weights


def denoising_losses(model_fn: Callable, x0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                     alphas_cumprod: torch.Tensor, prediction: str) -> torch.Tensor:
    """Per-sample MSE of the model's eps or v prediction on x_0 noised to t (Ho et al. 2020; Salimans & Ho 2022)."""
    check_prediction(prediction)
    abar = alphas_cumprod.to(x0.device)[t].to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
    xt = q_sample(x0, t, noise, alphas_cumprod)
    target = noise if prediction == "epsilon" else v_target(x0, noise, abar)
    return ((model_fn(xt, t, cond) - target) ** 2).mean(dim=tuple(range(1, x0.dim())))


# --------------------------------------------------------------------------- anchor and LoRA

def l2_anchor(deltas: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of squared weight changes from the starting point (L2-SP, Li et al. 2018): the fine-tune's leash."""
    total = None
    for d in deltas:
        term = d.pow(2).sum()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update scale * B A (Hu et al. 2021); B starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: Optional[float] = None):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = float(alpha if alpha is not None else rank) / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        """The weight update scale * B A, shaped like the base weight."""
        return self.scale * self.lora_b @ self.lora_a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_a.t()) @ self.lora_b.t())


LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def add_lora(model: nn.Module, rank: int, alpha: Optional[float] = None,
             targets: Sequence[str] = LORA_TARGETS) -> list[LoRALinear]:
    """Freeze ``model`` and wrap every Linear whose name ends in one of ``targets`` (diffusers' attention
    projections) with a :class:`LoRALinear`; returns the adapters, in module order."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ClipstudioError(f"the LoRA rank must be a positive integer, got {rank!r}")
    model.requires_grad_(False)
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in targets)]
    if not names:
        raise ClipstudioError(f"the model has no Linear layer named {', '.join(targets)} to adapt")
    adapters = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        adapter = LoRALinear(getattr(parent, child) if not child.isdigit() else parent[int(child)], rank, alpha)
        if child.isdigit():
            parent[int(child)] = adapter
        else:
            setattr(parent, child, adapter)
        adapters.append(adapter)
    return adapters


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every :class:`LoRALinear` of ``model`` into its base Linear (W += scale B A) and put the base back,
    so the state dict has the original keys and loads into the original architecture."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoRALinear):
            continue
        module.base.weight += module.delta().to(module.base.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if child.isdigit():
            parent[int(child)] = module.base
        else:
            setattr(parent, child, module.base)
    return model


def weight_deltas(model: nn.Module, start: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The change of every trained weight from ``start`` (name -> tensor), or each LoRA's B A when adapted."""
    adapters = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if adapters:
        return [a.delta() for a in adapters]
    return [p - start[n] for n, p in model.named_parameters() if p.requires_grad]
