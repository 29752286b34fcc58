"""Diffusion and flow-matching sampling maths as small pure functions (k-diffusion style).

Conventions
-----------
* Discrete-time diffusion (DDPM/DDIM/Euler): ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``,
  ``t`` an integer training timestep in ``[0, T)``; the model predicts ``eps``.
  A :class:`DiffusionSchedule` holds ``alphas_cumprod``.
* Flow matching / rectified flow: ``x_s = (1 - s) x_0 + s noise`` with ``s`` in ``[0, 1]``
  (``s = 1`` is pure noise, as diffusers' ``FlowMatchEulerDiscreteScheduler``); the model predicts
  the velocity ``v = noise - x_0`` and is called with ``t = s * T`` (diffusers' timestep scale).
  A :class:`FlowSchedule` describes it.

Every sampler has the same signature::

    sampler(model_fn, x, steps, schedule, *, generator=None, trajectory=None, **options) -> x_0

``model_fn(x, t)`` takes a batch ``x`` and a 1-D tensor ``t`` of timesteps (one per row).
Conditioning and guidance are wrappers that turn a ``model_fn(x, t, cond)`` into such a function:
:func:`bind_cond` (plain conditioning) and :func:`cfg_model` (classifier-free guidance).
If ``trajectory`` is a list, the sampler appends ``x`` (detached) after the start and every step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from clipstudio.errors import ClipstudioError

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- schedules

def linear_betas(num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> torch.Tensor:
    """Linear beta schedule of DDPM (Ho et al. 2020), float64."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def cosine_alphas_cumprod(num_train_timesteps: int = 1000, s: float = 0.008) -> torch.Tensor:
    """Cosine abar_t schedule of Improved DDPM (Nichol & Dhariwal 2021), clipped to beta <= 0.999."""
    steps = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s) (Ho et al. 2020, eq. 4)."""
    return torch.cumprod(1.0 - betas, dim=0)


def spaced_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Evenly spaced decreasing timesteps from T-1 to 0 for a `steps`-step sampler (DDIM, Song et al. 2020)."""
    check_steps(steps)
    steps = min(steps, num_train_timesteps)
    ts = torch.linspace(num_train_timesteps - 1, 0, steps).round().long().tolist()
    return ts


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Noise levels of Karras et al. 2022 (eq. 5), decreasing, with a final 0 appended."""
    check_steps(steps)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sigma_from_abar(abar: torch.Tensor) -> torch.Tensor:
    """VE noise level of a VP timestep: sigma = sqrt((1 - abar) / abar) (Karras et al. 2022, table 1)."""
    return ((1 - abar) / abar).sqrt()


def sigma_to_t(sigma: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Continuous timestep for a noise level, by interpolating log sigma over the training timesteps (k-diffusion)."""
    log_sigmas = sigma_from_abar(alphas_cumprod).log()
    ls = sigma.clamp(min=1e-10).log().to(log_sigmas.dtype)
    idx = torch.searchsorted(log_sigmas, ls.reshape(-1)).clamp(1, len(log_sigmas) - 1)
    lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
    w = ((ls.reshape(-1) - lo) / (hi - lo)).clamp(0, 1)
    return (idx - 1 + w).reshape(sigma.shape)


@dataclass(frozen=True)
class DiffusionSchedule:
    """A discrete-time VP diffusion (DDPM, Ho et al. 2020): the model predicts eps at integer t."""
    alphas_cumprod: torch.Tensor

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        return cls(alphas_cumprod_from_betas(linear_betas(num_train_timesteps, beta_start, beta_end)))

    @classmethod
    def cosine(cls, num_train_timesteps: int = 1000):
        return cls(cosine_alphas_cumprod(num_train_timesteps))


@dataclass(frozen=True)
class FlowSchedule:
    """A rectified-flow / flow-matching path (Lipman et al. 2022; Liu et al. 2022): the model predicts v at t = s*T."""
    num_train_timesteps: int = 1000
    shift: float = 1.0


# --------------------------------------------------------------------------- forward processes (training)

def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward diffusion x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4)."""
    abar = _bcast(alphas_cumprod.to(x0.device)[t].to(x0.dtype), x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def flow_interpolate(x0: torch.Tensor, s: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Straight-line path x_s = (1 - s) x_0 + s noise, target velocity noise - x_0 (Liu et al. 2022)."""
    s = _bcast(s.to(x0.dtype), x0)
    return (1 - s) * x0 + s * noise


def flow_velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Target velocity d x_s / ds = noise - x_0 of the straight path (Liu et al. 2022, eq. 1)."""
    return noise - x0


def shift_flow_sigmas(s: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift s' = shift*s / (1 + (shift-1)*s) of SD3 (Esser et al. 2024) for flow samplers."""
    return shift * s / (1 + (shift - 1) * s)


# --------------------------------------------------------------------------- single steps

def predict_x0(x: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """x_0 estimate (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (Ho et al. 2020, eq. 15)."""
    return (x - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()


def ddpm_step(x: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor, abar_prev: torch.Tensor,
              noise: Optional[torch.Tensor]) -> torch.Tensor:
    """Ancestral step from the posterior q(x_prev | x_t, x_0) (Ho et al. 2020, eqs. 6-7), strided over t > prev.

    ``noise=None`` returns the posterior mean only (the noise-free ancestral sampler, which collapses).
    """
    alpha = abar_t / abar_prev                      # effective 1 - beta for the stride
    beta = 1 - alpha
    x0 = predict_x0(x, eps, abar_t)
    mean = (abar_prev.sqrt() * beta / (1 - abar_t)) * x0 + (alpha.sqrt() * (1 - abar_prev) / (1 - abar_t)) * x
    if noise is None:
        return mean
    var = beta * (1 - abar_prev) / (1 - abar_t)
    return mean + var.sqrt() * noise


def ddim_step(x: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor, abar_prev: torch.Tensor,
              eta: float = 0.0, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Generalised DDIM update with stochasticity eta (Song et al. 2020, eq. 12); eta=0 is deterministic."""
    x0 = predict_x0(x, eps, abar_t)
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
    dir_xt = (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * eps
    out = abar_prev.sqrt() * x0 + dir_xt
    if eta > 0:
        if noise is None:
            raise ClipstudioError("ddim with eta > 0 needs noise")
        out = out + sigma * noise
    return out


def euler_step(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """Euler step of the probability-flow ODE dx/dsigma = (x - D(x)) / sigma (Karras et al. 2022, alg. 1)."""
    d = (x - denoised) / sigma
    return x + d * (sigma_next - sigma)


def flow_euler_step(x: torch.Tensor, v: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor) -> torch.Tensor:
    """Euler step of the flow ODE dx/ds = v from s to s_next (Lipman et al. 2022; Liu et al. 2022)."""
    return x + (s_next - s) * v


# --------------------------------------------------------------------------- guidance wrappers

def cfg_combine(out_uncond: torch.Tensor, out_cond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance eps = eps_uncond + w (eps_cond - eps_uncond) (Ho & Salimans 2022)."""
    return out_uncond + w * (out_cond - out_uncond)


def cfg_rescale(guided: torch.Tensor, out_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale: match the guided output's per-sample std to the conditional one's, mixed by phi
    (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", eq. 15-16)."""
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * (out_cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-8))
    return phi * rescaled + (1 - phi) * guided


def cfg_model(model_fn: Callable, cond: torch.Tensor, uncond: torch.Tensor, w: float,
              rescale: float = 0.0) -> ModelFn:
    """Wrap model_fn(x, t, cond) into a guided (x, t) -> eps with one batched call (Ho & Salimans 2022).

    ``cond`` and ``uncond`` have the batch size of ``x`` (or 1, then broadcast); ``rescale`` > 0 applies
    :func:`cfg_rescale`, which keeps high guidance weights from over-saturating the prediction.
    """
    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        c = _expand_batch(cond, b)
        u = _expand_batch(uncond, b)
        t = _as_t(t, x)
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([u, c]))
        out_u, out_c = out.chunk(2)
        combined = cfg_combine(out_u, out_c, w)
        return cfg_rescale(combined, out_c, rescale) if rescale else combined
    return guided


def bind_cond(model_fn: Callable, cond: torch.Tensor) -> ModelFn:
    """Turn model_fn(x, t, cond) into (x, t) -> out for plain conditional sampling (no guidance)."""
    def bound(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model_fn(x, _as_t(t, x), _expand_batch(cond, x.shape[0]))
    return bound


# --------------------------------------------------------------------------- samplers (one signature)

def _strided_sampling(model_fn: ModelFn, x: torch.Tensor, steps: int, schedule: DiffusionSchedule,
                      step: Callable, trajectory: Optional[list]) -> torch.Tensor:
    """The loop DDPM and DDIM share: ``step(x, eps, abar_t, abar_prev)`` between the strided timesteps, and the
    clean estimate from the last one."""
    abar = schedule.alphas_cumprod.to(x.device)
    ts = spaced_timesteps(schedule.num_train_timesteps, steps)
    _record(trajectory, x)
    for i, t in enumerate(ts):
        eps = model_fn(x, _t_batch(t, x))
        a_t = abar[t].to(x.dtype)
        x = step(x, eps, a_t, abar[ts[i + 1]].to(x.dtype)) if i + 1 < len(ts) else predict_x0(x, eps, a_t)
        _record(trajectory, x)
    return x


def sample_ddpm(model_fn: ModelFn, x: torch.Tensor, steps: int, schedule: DiffusionSchedule, *,
                generator: Optional[torch.Generator] = None, trajectory: Optional[list] = None,
                noise_scale: float = 1.0) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, alg. 2), strided to `steps`; noise_scale=0 drops the noise."""
    _need(schedule, DiffusionSchedule, "ddpm")

    def step(x, eps, a_t, a_prev):
        noise = noise_scale * _randn_like(x, generator) if noise_scale > 0 else None
        return ddpm_step(x, eps, a_t, a_prev, noise)
    return _strided_sampling(model_fn, x, steps, schedule, step, trajectory)


def sample_ddim(model_fn: ModelFn, x: torch.Tensor, steps: int, schedule: DiffusionSchedule, *,
                generator: Optional[torch.Generator] = None, trajectory: Optional[list] = None,
                eta: float = 0.0) -> torch.Tensor:
    """DDIM sampling (Song et al. 2020), deterministic at eta=0; eta=1 matches strided DDPM."""
    _need(schedule, DiffusionSchedule, "ddim")
    if eta < 0:
        raise ClipstudioError(f"ddim eta must be >= 0, got {eta}")

    def step(x, eps, a_t, a_prev):
        return ddim_step(x, eps, a_t, a_prev, eta, _randn_like(x, generator) if eta > 0 else None)
    return _strided_sampling(model_fn, x, steps, schedule, step, trajectory)


def sample_euler(model_fn: ModelFn, x: torch.Tensor, steps: int, schedule: DiffusionSchedule, *,
                 generator: Optional[torch.Generator] = None, trajectory: Optional[list] = None,
                 karras: bool = True, rho: float = 7.0) -> torch.Tensor:
    """Euler ODE sampler on Karras noise levels for an eps-prediction VP model (Karras et al. 2022, alg. 1).

    ``x`` is unit-variance noise, as for the other samplers; it is scaled to sigma_max internally.
    The VP model is called as k-diffusion's wrapper does: input x / sqrt(1 + sigma^2), continuous t.
    """
    _need(schedule, DiffusionSchedule, "euler")
    abar = schedule.alphas_cumprod.to(x.device)
    all_sigmas = sigma_from_abar(abar)
    s_min, s_max = float(all_sigmas[0]), float(all_sigmas[-1])
    if karras:
        sigmas = karras_sigmas(steps, s_min, s_max, rho).to(x.device)
    else:
        ts = spaced_timesteps(schedule.num_train_timesteps, steps)
        sigmas = torch.cat([all_sigmas[ts], all_sigmas.new_zeros(1)])
    x = x * sigmas[0].to(x.dtype)
    _record(trajectory, x / (1 + sigmas[0] ** 2).sqrt().to(x.dtype))
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        c_in = (1 / (1 + sigma ** 2).sqrt()).to(x.dtype)
        t = sigma_to_t(sigma, abar).to(x.dtype)
        eps = model_fn(x * c_in, _t_batch(t, x))
        denoised = x - sigma.to(x.dtype) * eps
        x = euler_step(x, denoised, sigma.to(x.dtype), sigma_next.to(x.dtype))
        _record(trajectory, x / (1 + sigma_next ** 2).sqrt().to(x.dtype))
    return x


def sample_flow_euler(model_fn: ModelFn, x: torch.Tensor, steps: int, schedule: FlowSchedule, *,
                      generator: Optional[torch.Generator] = None,
                      trajectory: Optional[list] = None) -> torch.Tensor:
    """Euler integration of a learned velocity field from s=1 (noise) to s=0 (Lipman et al. 2022; Liu et al. 2022)."""
    _need(schedule, FlowSchedule, "flow-euler")
    check_steps(steps)
    s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=x.device)
    if schedule.shift != 1.0:
        s = shift_flow_sigmas(s, schedule.shift)
    _record(trajectory, x)
    for i in range(steps):
        v = model_fn(x, _t_batch((s[i] * schedule.num_train_timesteps).to(x.dtype), x))
        x = flow_euler_step(x, v, s[i].to(x.dtype), s[i + 1].to(x.dtype))
        _record(trajectory, x)
    return x


@dataclass(frozen=True)
class Sampler:
    """One registered sampler: the pure function of this module, the diffusers scheduler class the CFG backend
    steps with, and the model family it needs ('epsilon': DDPM-family eps or v prediction; 'flow': velocity)."""
    fn: Callable
    scheduler: str
    prediction: str
    about: str


# The one sampler registry: the pure samplers (spiral demo, tests) and the diffusers backend both read it.
SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(sample_ddpm, "DDPMScheduler", "epsilon", "ancestral DDPM (Ho et al. 2020)"),
    "ddim": Sampler(sample_ddim, "DDIMScheduler", "epsilon", "DDIM with eta (Song et al. 2020); eta=0 deterministic"),
    "euler": Sampler(sample_euler, "EulerDiscreteScheduler", "epsilon",
                     "Euler ODE on Karras sigmas (Karras et al. 2022)"),
    "flow-euler": Sampler(sample_flow_euler, "FlowMatchEulerDiscreteScheduler", "flow",
                          "Euler on a flow-matching velocity (Lipman et al. 2022; Liu et al. 2022)"),
}


def list_samplers(prediction: Optional[str] = None) -> list[str]:
    """Names of the registered samplers (only those for one model family, if given)."""
    return [name for name, entry in SAMPLERS.items() if prediction in (None, entry.prediction)]


def sampler_entry(name: str) -> Sampler:
    """The registry entry for a sampler name, or a one-line ClipstudioError."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ClipstudioError(f"unknown sampler '{name}'; choose one of: {', '.join(SAMPLERS)}") from None


def get_sampler(name: str) -> Callable:
    """The sampler function registered under `name`, or a one-line ClipstudioError."""
    return sampler_entry(name).fn


# --------------------------------------------------------------------------- helpers

def check_steps(steps) -> None:
    """Raise a ClipstudioError unless steps is a positive integer."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ClipstudioError(f"steps must be a positive integer, got {steps!r}")


def _need(schedule, kind, name):
    if not isinstance(schedule, kind):
        raise ClipstudioError(f"sampler '{name}' needs a {kind.__name__}, got {type(schedule).__name__}")


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


def _t_batch(t, x: torch.Tensor) -> torch.Tensor:
    if torch.is_tensor(t):
        return t.reshape(1).to(x.device).expand(x.shape[0])
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def _as_t(t, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(t) or t.dim() == 0:
        return _t_batch(t, x)
    return t


def _expand_batch(c: torch.Tensor, b: int) -> torch.Tensor:
    if c.shape[0] == b:
        return c
    if c.shape[0] == 1:
        return c.expand(b, *c.shape[1:])
    raise ClipstudioError(f"conditioning batch {c.shape[0]} does not match sample batch {b}")


def _randn_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _record(trajectory: Optional[list], x: torch.Tensor) -> None:
    if trajectory is not None:
        trajectory.append(x.detach().clone())
