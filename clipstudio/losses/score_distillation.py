"""Score distillation: a text-to-image diffusion model as a prior on the image, by gradient alone.

The guided model's denoised estimate of the noised image is a target the image moves toward (SDS; Poole et al.
2022, "DreamFusion"); see :mod:`clipstudio.diffusion.distillation` for the maths. Beside a CLIP loss it keeps
the image on the model's manifold, where CLIP's own gradient alone paints adversarial texture.
"""
from __future__ import annotations

import torch

from ..errors import ClipstudioError, option_number
from ..guide.prompts import Prompt
from .base import Loss, LossContext


def load_prior_backend(model: str | None, pipeline: str | None):
    """The CFG backend of an embedded diffusion ``model`` or a Stable Diffusion-style ``pipeline`` (one of the
    two), on the CPU (the run moves the loss to its device)."""
    from ..diffusion.backend import load_embedded_backend, load_sd_pipeline

    if bool(model) == bool(pipeline):
        raise ClipstudioError("the sds loss needs one diffusion model: loss option model=NAME (an embedded "
                              "model, see 'clipstudio models') or pipeline=DIR")
    return load_sd_pipeline(pipeline, device="cpu") if pipeline else load_embedded_backend(model, device="cpu")


SPACES = ("auto", "image", "latent", "code")


class ScoreDistillationLoss(Loss):
    """SDS toward the run's text prompts: ``0.5 mean |x - sg(x0_hat)|^2`` per image, where ``x`` is the image in
    the model's space and ``x0_hat`` the classifier-free-guided denoised estimate at a random noise level.

    Options: ``model`` (an embedded diffusion model) or ``pipeline`` (a diffusers folder or hub name), or, from
    Python, a loaded ``backend`` (:class:`~clipstudio.diffusion.backend.CFGBackend`);
    ``guidance`` (the CFG scale, default 7.5: SDS wants more than sampling does); ``t_min``, ``t_max``
    (the range of noise levels, as fractions of the training time axis, default DreamFusion's 0.02-0.98);
    ``space``: ``image`` compares the image with the decoded estimate in pixels, as HiFA's image-level loss does
    (Zhu et al. 2023), so no gradient goes through the encoder, whose pixel gradient paints texture;
    ``latent`` is DreamFusion's loss in the model's space, on the encoded image; ``code`` is DreamFusion's loss on
    the generator's own latent (:meth:`~clipstudio.generators.base.Generator.code`), when it lies in the space
    of the model's autoencoder (``encoder.latent_space``) at the model's size: no encoder at all; ``auto``
    (default) is ``code`` where the generator's latent allows it, else ``image``;
    ``denoise_steps`` (default 1): the target is the estimate after that many deterministic DDIM steps from the
    noise level down to the clean image, rather than the one-step estimate, a sharper target at high noise (the
    multi-step denoising of HiFA, Zhu et al. 2023).
    Text prompts of positive weight condition the model (several: their guided directions are mixed by weight,
    as in composable diffusion, Liu et al. 2022); negative prompts replace the empty unconditional prompt;
    image prompts do not take part.
    """

    needs_prompts = True
    stochastic = True  # a new noise level and noise every call

    def __init__(self, model: str | None = None, pipeline: str | None = None, guidance: float = 7.5,
                 t_min: float = 0.02, t_max: float = 0.98, space: str = "auto", denoise_steps: int = 1,
                 backend=None):
        super().__init__()
        if space not in SPACES:
            raise ClipstudioError(f"sds option space must be one of {', '.join(SPACES)}, got {space!r}")
        self.space = space
        self.guidance = option_number(guidance, "sds option guidance", low=0.0, high=1e3)
        self.t_min = option_number(t_min, "sds option t_min", low=0.0, high=1.0)
        self.t_max = option_number(t_max, "sds option t_max", low=0.0, high=1.0)
        self.denoise_steps = int(option_number(denoise_steps, "sds option denoise_steps", low=1, high=1000))
        if self.denoise_steps != float(denoise_steps):
            raise ClipstudioError(f"sds option denoise_steps must be a whole number, got {denoise_steps!r}")
        if self.t_min >= self.t_max:
            raise ClipstudioError(f"sds option t_min ({t_min}) must be below t_max ({t_max})")
        if backend is None:
            backend = load_prior_backend(model, pipeline)
        elif not hasattr(backend, "unet"):  # settings from a file hold text, never a loaded model
            raise ClipstudioError("sds option backend takes a loaded CFGBackend from Python; in settings, name a "
                                  "model= or pipeline=")
        if backend.encoder is None:
            raise ClipstudioError(f"diffusion model '{model or pipeline}' has no encoder from images into its space, "
                                  "so it cannot judge an image (score distillation)")
        self.unet = backend.unet.eval().requires_grad_(False)
        self.encoder = backend.encoder.eval().requires_grad_(False)
        self.text_encoder = backend.text_encoder
        self.decoder = backend.decoder  # model space -> images in [-1, 1] (None: the model space is the image)
        self.prediction = backend.prediction
        self.sample_shape = backend.sample_shape
        self.num_train_timesteps = backend.num_train_timesteps
        abar = backend.alphas_cumprod()
        self.register_buffer("alphas_cumprod", abar if abar is not None else torch.zeros(0), persistent=False)
        self.register_buffer("cond", torch.zeros(0), persistent=False)
        self.register_buffer("uncond", torch.zeros(0), persistent=False)
        self.register_buffer("mix", torch.zeros(0), persistent=False)

    def set_prompts(self, prompts: list[Prompt]) -> None:
        """Condition on the positive text prompts; the negative ones (if any) are the unconditional branch."""
        positive = [p for p in prompts if not p.is_image and not p.terms and p.weight > 0]
        negative = [p.text for p in prompts if not p.is_image and not p.terms and p.weight < 0]
        if not positive:
            raise ClipstudioError("the sds loss needs a text prompt of positive weight")
        device = self.cond.device
        with torch.no_grad():
            cond = self.text_encoder([p.text for p in positive]).float()
            uncond = self.text_encoder([" ".join(negative)] if negative else [""]).float()
        weights = torch.tensor([p.weight for p in positive])
        self.cond, self.uncond, self.mix = cond.to(device), uncond.to(device), (weights / weights.sum()).to(device)

    def _guided_x0(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The CFG-guided denoised estimate: one UNet call on the unconditional and every conditional batch."""
        from ..diffusion.distillation import denoised_estimate

        n, k = x_t.shape[0], self.cond.shape[0]
        embeds = torch.cat([self.uncond.expand(n, -1, -1)] + [c.expand(n, -1, -1) for c in self.cond])
        out = self.unet(x_t.repeat(k + 1, 1, 1, 1), t.repeat(k + 1), encoder_hidden_states=embeds).sample
        uncond, conds = out[:n], out[n:].view(k, *x_t.shape)
        direction = (self.mix.view(k, 1, 1, 1, 1) * (conds - uncond)).sum(0)
        guided = uncond + self.guidance * direction
        return denoised_estimate(x_t, guided, t, self.prediction, self.alphas_cumprod, self.num_train_timesteps)

    def _schedule(self) -> torch.Tensor | None:
        """The training schedule's cumulative alphas (DDPM-family models), None for flow models."""
        return self.alphas_cumprod if self.alphas_cumprod.numel() else None

    def _denoised(self, x_t: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
        """The guided estimate of the clean sample of ``x_t`` (at time fractions ``frac``), after
        ``denoise_steps`` DDIM steps down an evenly spaced ladder of noise levels."""
        from ..diffusion.distillation import ddim_jump, model_time, signal_noise_scales

        abar = self._schedule()
        for i in range(self.denoise_steps):
            level = frac * (1 - i / self.denoise_steps)
            x0_hat = self._guided_x0(x_t, model_time(level, self.prediction, self.num_train_timesteps))
            if i + 1 < self.denoise_steps:
                scales = [signal_noise_scales(f, self.prediction, abar, self.num_train_timesteps)
                          for f in (level, frac * (1 - (i + 1) / self.denoise_steps))]
                x_t = ddim_jump(x_t, x0_hat, *scales)
        return x0_hat

    def _space(self, ctx: LossContext) -> str:
        """Where this call compares: the option, with ``auto`` resolved for this generator's latent."""
        fits = (ctx.code is not None and ctx.code.space == getattr(self.encoder, "latent_space", None)
                and tuple(ctx.code.latent.shape[1:]) == tuple(self.sample_shape) and ctx.image.shape[0] == 1)
        if self.space == "code" and not fits:
            raise ClipstudioError("sds option space=code needs a generator whose latent is in the diffusion model's "
                                  f"autoencoder space ({getattr(self.encoder, 'latent_space', 'none')}) at its size "
                                  f"{tuple(self.sample_shape)}; use space=image")
        if self.space == "auto":
            return "code" if fits else "image"
        return self.space

    def forward(self, ctx: LossContext) -> torch.Tensor:
        from ..diffusion.distillation import noise_to_time, score_distillation_loss

        if self.cond.numel() == 0:
            raise ClipstudioError("the sds loss has no prompt (set_prompts was not called)")
        space = self._space(ctx)
        in_image = space == "image"
        if space == "code":
            x0 = self.encoder.from_latent(ctx.code.latent)
        else:
            with torch.set_grad_enabled(not in_image and torch.is_grad_enabled()):
                x0 = self.encoder(ctx.image)
        frac = torch.empty(x0.shape[0], device=x0.device).uniform_(self.t_min, self.t_max)
        noise = torch.randn_like(x0)
        with torch.no_grad():
            abar = self._schedule()
            x_t, _ = noise_to_time(x0.detach(), noise, frac, self.prediction, abar, self.num_train_timesteps)
            x0_hat = self._denoised(x_t, frac)
            if in_image:
                target = (self.decoder(x0_hat) if self.decoder is not None else x0_hat).float().add(1).div(2)
        if not in_image:
            return score_distillation_loss(x0, x0_hat)
        if target.shape[-2:] != ctx.image.shape[-2:]:
            target = torch.nn.functional.interpolate(target, size=ctx.image.shape[-2:], mode="bilinear",
                                                     align_corners=False)
        return score_distillation_loss(ctx.image, target.clamp(0, 1))
