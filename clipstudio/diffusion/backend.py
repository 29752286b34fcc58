"""The classifier-free-guidance diffusion backend: a diffusers UNet, a diffusers scheduler, a text encoder.

The sampling loop (:func:`cfg_sample`) is written out step by step, as in the diffusers docs'
"deconstructed pipeline": encode the prompt and the negative (or empty) prompt, draw seeded noise,
and at every scheduler timestep call the UNet once on the doubled batch through
:func:`clipstudio.diffusion.sampling.cfg_model`, then let the scheduler step.

diffusers is the ``[diffusion]`` extra, so it is imported inside functions only.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from pathlib import Path

import torch

from clipstudio.diffusion.sampling import bind_cond, cfg_model, check_steps, list_samplers, sampler_entry
from clipstudio.errors import ClipstudioError, missing_extra
from clipstudio.images import require_finite_image

def _diffusers(what: str):
    try:
        import diffusers
    except ImportError:
        raise missing_extra("diffusers", "diffusion", what) from None
    return diffusers


def make_scheduler(sampler: str, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                   beta_start: float = 1e-4, beta_end: float = 0.02, shift: float = 1.0,
                   config: Optional[dict] = None):
    """A fresh diffusers scheduler for a registered sampler name (config: a saved scheduler config to reuse)."""
    entry = sampler_entry(sampler)
    diffusers = _diffusers(f"the '{sampler}' sampler")
    cls = getattr(diffusers, entry.scheduler)
    if entry.prediction == "flow":
        kw = {"num_train_timesteps": num_train_timesteps, "shift": shift}
    else:
        kw = {"num_train_timesteps": num_train_timesteps, "beta_schedule": beta_schedule,
              "beta_start": beta_start, "beta_end": beta_end, "prediction_type": "epsilon"}
        if entry.scheduler in ("DDPMScheduler", "DDIMScheduler"):
            kw["clip_sample"] = False
        if entry.scheduler == "EulerDiscreteScheduler":
            kw["use_karras_sigmas"] = True
        if entry.scheduler == "DDIMScheduler":
            kw["set_alpha_to_one"] = True
            kw["timestep_spacing"] = "trailing"
    if config:
        keep = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        keep.update({k: v for k, v in kw.items() if k not in keep})
        kw = keep
    return cls.from_config(kw)


# --------------------------------------------------------------------------- text encoders

def openclip_token_states(model, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token hidden states (B x L x width) of an open_clip text transformer after ln_final, before pooling."""
    tower = model.text if hasattr(model, "text") and hasattr(model.text, "token_embedding") else model
    if getattr(tower, "cls_emb", None) is not None:
        raise ClipstudioError("token states of open_clip text towers with a CLS embedding are not supported")
    cast_dtype = tower.transformer.get_cast_dtype() if hasattr(tower.transformer, "get_cast_dtype") else None
    x = tower.token_embedding(tokens)
    if cast_dtype is not None:
        x = x.to(cast_dtype)
    x = x + tower.positional_embedding[: x.shape[1]].to(x.dtype)
    mask = tower.attn_mask
    if mask is not None:
        mask = mask[: x.shape[1], : x.shape[1]]
    x = tower.transformer(x, attn_mask=mask)
    return tower.ln_final(x)


class OpenClipTextEncoder:
    """Callable list[str] -> token states (B x L x width) from an open_clip model and its tokenizer (frozen)."""

    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def width(self) -> int:
        tower = self.model.text if hasattr(self.model, "text") and hasattr(self.model.text, "ln_final") else self.model
        return tower.ln_final.normalized_shape[0]

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts))
        dev = next(self.model.parameters()).device
        return openclip_token_states(self.model, tokens.to(dev))


class HFTextEncoder:
    """Callable list[str] -> last hidden states of a transformers CLIPTextModel (Stable Diffusion style)."""

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval()

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(texts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device)).last_hidden_state


def encode_prompts(text_encoder: Callable, prompt: str, negative: Optional[str], n: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) embeddings, n rows each; uncond is the negative prompt's embedding, else the empty prompt's."""
    emb = text_encoder([prompt, negative if negative else ""])
    cond, uncond = emb[:1], emb[1:2]
    return cond.expand(n, *cond.shape[1:]), uncond.expand(n, *uncond.shape[1:])


# --------------------------------------------------------------------------- the sampling loop

def cfg_sample(unet, scheduler, cond: torch.Tensor, uncond: torch.Tensor, shape: Sequence[int], *,
               guidance: float, steps: int, generator: torch.Generator, eta: float = 0.0,
               guidance_rescale: float = 0.0,
               progress: bool = False) -> torch.Tensor:
    """Unrolled CFG sampling loop over a diffusers UNet2DConditionModel and scheduler; returns x_0 (model space)."""
    check_steps(steps)
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    scheduler.set_timesteps(steps, device=device)

    # 1. seeded starting noise, scaled as the scheduler expects (sigma_max for Euler, 1 otherwise)
    x = torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device, dtype)
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)

    # 2. the model function, and guidance as a wrapper around it (one batched call per step)
    def unet_fn(x_in: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return unet(x_in, t, encoder_hidden_states=emb).sample

    if guidance == 1.0:
        model_fn = bind_cond(unet_fn, cond.to(device, dtype))
    else:
        model_fn = cfg_model(unet_fn, cond.to(device, dtype), uncond.to(device, dtype), guidance,
                             rescale=guidance_rescale)

    step_kwargs = {"generator": generator}
    if type(scheduler).__name__ == "DDIMScheduler":
        step_kwargs["eta"] = eta

    # 3. reverse time: scale the input, predict, step
    timesteps = scheduler.timesteps
    if progress:
        from tqdm.auto import tqdm
        timesteps = tqdm(timesteps, desc="diffusion", leave=False)
    for t in timesteps:
        x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = model_fn(x_in, t)
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x


@dataclass
class CFGBackend:
    """A text-conditioned UNet with a text encoder; `decoder` maps the UNet's space to images in [-1, 1]
    (a VAE decode for latent models, a reshape for pixel models; None: the UNet space is the image), and
    `encoder`, where the model has one, maps images in [0, 1] to the UNet's space, differentiably (score
    distillation's way in; see :class:`clipstudio.losses.ScoreDistillationLoss`)."""
    unet: object
    text_encoder: Callable[[Sequence[str]], torch.Tensor]
    prediction: str = "epsilon"                     # 'epsilon' or 'v_prediction' (DDPM family) or 'flow'
    scheduler_config: dict = field(default_factory=dict)
    decoder: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    default_sampler: str = "ddim"
    default_guidance: float = 4.0
    default_steps: int = 50
    default_guidance_rescale: float = 0.0
    encoder: Optional[torch.nn.Module] = None

    def alphas_cumprod(self) -> Optional[torch.Tensor]:
        """The training schedule's cumulative alphas (DDPM-family models); None for flow models."""
        if self.family == "flow":
            return None
        return make_scheduler("ddpm", config=self.scheduler_config).alphas_cumprod.float()

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        cfg = self.unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
        return (cfg.in_channels, size, size)

    @torch.no_grad()
    def generate(self, prompt: str | Sequence[str], *, negative: Optional[str] = None,
                 guidance: Optional[float] = None, steps: Optional[int] = None, seed: int = 0, n: int = 1,
                 sampler: Optional[str] = None, eta: float = 0.0, progress: bool = False,
                 guidance_rescale: Optional[float] = None) -> torch.Tensor:
        """n images (n x 3 x H x W in [0, 1]) for a prompt, seeded; negative replaces the empty uncond prompt.

        A list of prompts gives one image each (n is then ignored) in one batch. ``guidance_rescale`` (phi in
        [0, 1], default the model's) is Lin et al.'s rescale of the guided prediction.
        """
        sampler = sampler or self.default_sampler
        entry = sampler_entry(sampler)
        if entry.prediction != self.family:
            raise ClipstudioError(
                f"sampler '{sampler}' is for {entry.prediction} models, this model predicts {self.prediction}; "
                f"use one of: {', '.join(self.samplers())}")
        steps = self.default_steps if steps is None else steps
        check_steps(steps)
        guidance = self.default_guidance if guidance is None else guidance
        if isinstance(prompt, (list, tuple)):
            if not prompt or not all(isinstance(p, str) for p in prompt):
                raise ClipstudioError("prompts must be a non-empty list of strings")
            n = len(prompt)
        elif not isinstance(prompt, str):
            raise ClipstudioError(f"prompt must be a string, got {type(prompt).__name__}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ClipstudioError(f"n must be a positive integer, got {n!r}")
        if not math.isfinite(float(guidance)) or guidance < 0:
            raise ClipstudioError(f"guidance must be a finite number >= 0, got {guidance}")
        if not math.isfinite(float(eta)) or eta < 0:
            raise ClipstudioError(f"eta must be a finite number >= 0, got {eta}")
        rescale = self.default_guidance_rescale if guidance_rescale is None else guidance_rescale
        if not 0 <= float(rescale) <= 1:
            raise ClipstudioError(f"guidance rescale must be in [0, 1], got {rescale}")
        if isinstance(prompt, str):
            cond, uncond = encode_prompts(self.text_encoder, prompt, negative, n)
        else:
            emb = self.text_encoder(list(prompt) + [negative if negative else ""])
            cond, uncond = emb[:-1], emb[-1:].expand(n, *emb.shape[1:])
        scheduler = make_scheduler(sampler, config=self.scheduler_config)
        g = torch.Generator().manual_seed(int(seed))
        x = cfg_sample(self.unet, scheduler, cond, uncond, (n,) + self.sample_shape, guidance=float(guidance),
                       steps=steps, generator=g, eta=eta, progress=progress, guidance_rescale=float(rescale))
        if self.decoder is not None:
            x = self.decoder(x)
        return ((x.float().clamp(-1, 1) + 1) / 2).cpu()

    @property
    def family(self) -> str:
        """'flow' for flow-matching models, else 'epsilon' (DDPM-family: eps or v prediction)."""
        return "flow" if self.prediction == "flow" else "epsilon"

    def samplers(self) -> list[str]:
        """The registered samplers that fit this model's prediction type."""
        return list_samplers(self.family)


def to_pil(images: torch.Tensor) -> list:
    """PIL images from an n x 3 x H x W tensor in [0, 1]."""
    from PIL import Image
    arr = (require_finite_image(images).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


# --------------------------------------------------------------------------- Stable-Diffusion-style pipelines

def resolve_pipeline_dir(name_or_path: str) -> str:
    """A local directory for a pipeline: the path itself, the local hub cache, or a hub download; else ClipstudioError."""
    if os.path.isdir(name_or_path):
        if not os.path.isfile(os.path.join(name_or_path, "model_index.json")):
            raise ClipstudioError(f"'{name_or_path}' is not a diffusers pipeline directory (no model_index.json)")
        return name_or_path
    if os.path.exists(name_or_path) or name_or_path.count("/") != 1:
        raise ClipstudioError(f"pipeline '{name_or_path}' is neither a directory nor a hub name like 'org/model'")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise missing_extra("diffusers", "diffusion", "loading a hub pipeline") from None
    patterns = ["*.json", "*.txt", "*.safetensors", "*.model"]
    try:
        return snapshot_download(name_or_path, local_files_only=True, allow_patterns=patterns)
    except Exception:
        pass
    from clipstudio.weights import is_offline

    if is_offline():
        raise ClipstudioError(
            f"pipeline '{name_or_path}' is not in the Hugging Face cache and downloads are off (CLIPSTUDIO_OFFLINE/"
            f"HF_HUB_OFFLINE): run 'hf download {name_or_path}' where there is a network, or pass a directory")
    try:
        return snapshot_download(name_or_path, allow_patterns=patterns, etag_timeout=10)
    except Exception as e:
        raise ClipstudioError(
            f"could not get pipeline '{name_or_path}': not a local directory, not in the hub cache, and the "
            f"Hugging Face hub is unreachable ({type(e).__name__}); download it elsewhere and pass its directory"
        ) from None


_PIPELINE_PARTS = ("unet", "vae", "tokenizer", "text_encoder", "scheduler")


def _quiet_hf_loading() -> None:
    """No per-component progress bars or advice while a pipeline loads: our own errors say what went wrong."""
    import diffusers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:
        pass


def _pipeline_kwargs(path: str) -> dict:
    """Loading options for the pipeline in ``path``: no safety checker where the pipeline has a slot for one."""
    import json

    try:
        index = json.loads(Path(path, "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise ClipstudioError(f"cannot read {Path(path, 'model_index.json')}: {type(e).__name__}") from None
    if not isinstance(index, dict):
        raise ClipstudioError(f"{Path(path, 'model_index.json')} is not a JSON object")
    if "tokenizer_2" in index or "text_encoder_2" in index:
        raise ClipstudioError(f"pipeline '{path}' ({index.get('_class_name', '?')}) has two text encoders "
                              "(SDXL/SD3 style); only one-text-encoder pipelines (Stable Diffusion 1.x/2.x) load")
    missing = [part for part in _PIPELINE_PARTS if part not in index]
    if missing:
        raise ClipstudioError(f"pipeline '{path}' ({index.get('_class_name', '?')}) is not Stable Diffusion-style: "
                              f"it has no {', '.join(missing)}")
    return {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}


def pipeline_prediction(scheduler) -> str:
    """What a pipeline's UNet predicts, read off its scheduler: 'flow' for flow-matching schedulers, else the
    scheduler's prediction_type ('epsilon' or 'v_prediction'); anything else is a one-line error."""
    if type(scheduler).__name__.startswith("FlowMatch"):
        return "flow"
    pred = scheduler.config.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction"):
        raise ClipstudioError(f"the pipeline predicts '{pred}'; only epsilon, v prediction and flow matching load")
    return pred


def load_sd_pipeline(name_or_path: str, device: str = "auto", dtype: torch.dtype | str | None = None,
                     default_guidance: float = 7.5) -> CFGBackend:
    """A CFGBackend from a Stable Diffusion-style pipeline (unet, vae, tokenizer + CLIPTextModel, scheduler):
    a local ``save_pretrained`` folder or a hub name. ``device``: auto (CUDA, MPS, CPU), cpu, cuda, mps;
    ``dtype``: float32 (default), float16 or bfloat16 weights. A pipeline whose scheduler is a flow-matching
    one samples with ``flow-euler``."""
    from clipstudio.devices import resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype) if dtype is not None else torch.float32
    path = resolve_pipeline_dir(name_or_path)
    diffusers = _diffusers("Stable Diffusion pipelines")
    try:
        import transformers  # noqa: F401  (the pipeline's tokenizer and text encoder)
    except ImportError:
        raise missing_extra("transformers", "diffusion", "Stable Diffusion pipelines") from None
    kwargs = _pipeline_kwargs(path)
    _quiet_hf_loading()
    try:
        if torch_dtype != torch.float32:  # float32 is the default; diffusers renamed the argument in 0.36
            kwargs["torch_dtype"] = torch_dtype
        pipe = diffusers.DiffusionPipeline.from_pretrained(path, local_files_only=True, **kwargs)
    except Exception as e:
        raise ClipstudioError(f"could not load the pipeline in '{path}': {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
    pipe.to(torch_device)
    pred = pipeline_prediction(pipe.scheduler)
    vae = pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0  # SD3/FLUX VAEs centre their latents

    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode((z / vae.config.scaling_factor + shift).to(vae.dtype)).sample

    return CFGBackend(unet=pipe.unet, text_encoder=HFTextEncoder(pipe.tokenizer, pipe.text_encoder),
                      prediction=pred, scheduler_config=dict(pipe.scheduler.config), decoder=decode,
                      default_sampler="flow-euler" if pred == "flow" else "ddim",
                      default_guidance=default_guidance, encoder=VAEEncoder(vae, shift))


class VAEEncoder(torch.nn.Module):
    """Images in [0, 1] -> a pipeline's scaled latents: the mean of AutoencoderKL's posterior (its mode), or
    AutoencoderTiny's latents, as the pipeline's UNet saw them in training."""

    def __init__(self, vae, shift: float = 0.0):
        super().__init__()
        self.vae, self.shift = vae, float(shift)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.vae.encode((images * 2 - 1).to(self.vae.dtype))
        latents = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents
        return ((latents - self.shift) * self.vae.config.scaling_factor).float()


# --------------------------------------------------------------------------- embedded models of worlds

def load_embedded_backend(name: str, device: str = "cpu") -> CFGBackend:
    """An embedded diffusion model of a world (see :mod:`clipstudio.embedded`), loaded by the ``module:function``
    its world.json names (so the core never imports a world by name); ``device`` may be ``auto``."""
    import importlib

    from clipstudio import embedded
    from clipstudio.devices import resolve_device

    device = str(resolve_device(device))

    model = embedded.embedded_model(name, "diffusion")
    if not model.loader or model.loader.count(":") != 1:
        raise ClipstudioError(f"the embedded model '{name}' names no loader 'module:function' in its world.json")
    module_name, func_name = model.loader.split(":")
    try:
        loader = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError):
        raise ClipstudioError(f"the loader '{model.loader}' of the embedded model '{name}' cannot be imported") from None
    return loader(model.checkpoint, device=device)


# --------------------------------------------------------------------------- a DiffuseConfig's model and images

def load_config_backend(config) -> CFGBackend:
    """The CFG backend a :class:`~clipstudio.diffusion.config.DiffuseConfig` names: its pipeline or its embedded
    model (the command boundary fills in a default model; the core has none)."""
    from clipstudio.devices import resolve_device

    device = str(resolve_device(config.device))
    if config.pipeline:
        return load_sd_pipeline(config.pipeline, device=device)
    if not config.model:
        raise ClipstudioError("name an embedded diffusion --model or a --pipeline")
    return load_embedded_backend(config.model, device=device)


def resolve_model_defaults(config, backend: CFGBackend):
    """The config with every 'the model's default' (None) made concrete, so that an output records what ran."""
    return config.replace(
        guidance=float(backend.default_guidance if config.guidance is None else config.guidance),
        guidance_rescale=float(backend.default_guidance_rescale if config.guidance_rescale is None
                               else config.guidance_rescale),
        steps=backend.default_steps if config.steps is None else config.steps,
        sampler=config.sampler or backend.default_sampler)


def sample_config(config, backend: CFGBackend, progress: bool = False) -> torch.Tensor:
    """The n x 3 x H x W images in [0, 1] of a config, sampled with ``backend``."""
    return backend.generate(config.prompt, negative=config.negative or None, guidance=config.guidance,
                            steps=config.steps, seed=config.seed, n=config.n, sampler=config.sampler,
                            eta=config.eta, guidance_rescale=config.guidance_rescale, progress=progress)
