"""Score distillation: a text-conditioned diffusion model's denoiser as a loss on an image (pure functions).

Score distillation sampling (SDS; Poole et al. 2022, "DreamFusion") noises the image's model-space code ``x``
to a random time, asks the guided model for its denoised estimate ``x0_hat`` and pushes ``x`` toward it. The
gradient of ``0.5 |x - sg(x0_hat)|^2`` is ``x - x0_hat``, which is SDS's ``w(t) (eps_hat - eps)`` with the
weight ``w(t) = sqrt(1 - abar_t) / sqrt(abar_t)`` folded in; no gradient flows through the model itself.
"""
from __future__ import annotations

import torch

from clipstudio.diffusion.sampling import predict_x0, q_sample


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """x_0 estimate sqrt(abar_t) x_t - sqrt(1 - abar_t) v of a v-prediction model (Salimans & Ho 2022, sec. 4)."""
    return abar_t.sqrt() * x_t - (1 - abar_t).sqrt() * v


def x0_from_velocity(x_s: torch.Tensor, v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x_0 estimate x_s - s v on the straight flow path x_s = (1 - s) x_0 + s noise (Liu et al. 2022)."""
    return x_s - s * v


def model_time(frac: torch.Tensor, prediction: str, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The model's time input at fractions ``frac`` of the training axis: a continuous flow time, or the nearest
    integer DDPM timestep (Ho et al. 2020)."""
    if prediction == "flow":
        return frac * num_train_timesteps
    return (frac * (num_train_timesteps - 1)).round().long()


def noise_to_time(x0: torch.Tensor, noise: torch.Tensor, frac: torch.Tensor, prediction: str,
                  alphas_cumprod: torch.Tensor | None, num_train_timesteps: int = 1000
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, model timesteps) of ``x0`` noised to fractions ``frac`` in (0, 1) of the training time axis: the
    DDPM forward process (Ho et al. 2020, eq. 4) or the flow path (Liu et al. 2022)."""
    t = model_time(frac, prediction, num_train_timesteps)
    if prediction == "flow":
        s = frac.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
        return (1 - s) * x0 + s * noise, t
    return q_sample(x0, t, noise, alphas_cumprod), t


def denoised_estimate(x_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor, prediction: str,
                      alphas_cumprod: torch.Tensor | None, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The model's x_0 estimate from its output ``out`` at ``x_t`` (epsilon, v_prediction or flow models)."""
    shape = (-1, *([1] * (x_t.ndim - 1)))
    if prediction == "flow":
        return x0_from_velocity(x_t, out, (t / num_train_timesteps).view(shape).to(x_t.dtype))
    abar = alphas_cumprod.to(x_t.device)[t].view(shape).to(x_t.dtype)
    if prediction == "v_prediction":
        return x0_from_v(x_t, out, abar)
    return predict_x0(x_t, out, abar)


def signal_noise_scales(frac: torch.Tensor, prediction: str, alphas_cumprod: torch.Tensor | None,
                        num_train_timesteps: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) with x_t = alpha x_0 + sigma noise at fractions ``frac`` of the time axis: sqrt(abar_t)
    and sqrt(1 - abar_t) for DDPM (Ho et al. 2020, eq. 4), 1 - s and s on the flow path (Liu et al. 2022)."""
    if prediction == "flow":
        return 1 - frac, frac
    abar = alphas_cumprod.to(frac.device)[model_time(frac, prediction, num_train_timesteps)]
    return abar.sqrt(), (1 - abar).sqrt()


def ddim_jump(x_t: torch.Tensor, x0_hat: torch.Tensor, scales_t: tuple[torch.Tensor, torch.Tensor],
              scales_s: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Deterministic DDIM step from time t to s < t, x_s = alpha_s x0_hat + sigma_s eps_hat (Song et al. 2020,
    eq. 12, eta = 0), written in (alpha, sigma) so that it serves the flow path as well."""
    shape = (-1, *([1] * (x_t.ndim - 1)))
    (alpha_t, sigma_t), (alpha_s, sigma_s) = [(a.view(shape), s.view(shape)) for a, s in (scales_t, scales_s)]
    eps_hat = (x_t - alpha_t * x0_hat) / sigma_t
    return alpha_s * x0_hat + sigma_s * eps_hat


def score_distillation_loss(x0: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
    """Per-sample 0.5 mean |x0 - sg(x0_hat)|^2, whose gradient is the SDS update (Poole et al. 2022, eq. 3)."""
    return 0.5 * (x0 - x0_hat.detach()).pow(2).flatten(1).mean(1)
