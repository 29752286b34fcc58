"""The classifier-free-guidance diffusion backend: a diffusers UNet, a diffusers scheduler, a text encoder.

The sampling loop (:func:`cfg_sample`) is written out step by step, as in the diffusers docs'
"deconstructed pipeline": encode the prompt and the negative (or empty) prompt, draw seeded noise,
and at every scheduler timestep call the UNet once on the doubled batch through
:func:`clipstudio.diffusion.sampling.cfg_model`, then let the scheduler step.

diffusers is the ``[diffusion]`` extra, so it is imported inside functions only.
"""
from __future__ import annotations

import os
from pathlib import Path as Path_
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from clipstudio.diffusion.sampling import bind_cond, cfg_model, check_steps
from clipstudio.errors import ClipstudioError, missing_extra
from clipstudio.config import SEED_MAX, check_numbers
from clipstudio.images import check_writable, require_finite_image

# name -> (diffusers scheduler class, what the model must predict, extra kwargs for .step)
SAMPLER_REGISTRY: dict[str, dict] = {
    "ddpm": {"scheduler": "DDPMScheduler", "prediction": "epsilon",
             "about": "ancestral DDPM (Ho et al. 2020)"},
    "ddim": {"scheduler": "DDIMScheduler", "prediction": "epsilon",
             "about": "DDIM with eta (Song et al. 2020); eta=0 deterministic"},
    "euler": {"scheduler": "EulerDiscreteScheduler", "prediction": "epsilon",
              "about": "Euler ODE on Karras sigmas (Karras et al. 2022)"},
    "flow-euler": {"scheduler": "FlowMatchEulerDiscreteScheduler", "prediction": "flow",
                   "about": "Euler on a flow-matching velocity (Lipman et al. 2022; Liu et al. 2022)"},
}


def list_samplers() -> list[str]:
    """Names of the registered samplers."""
    return list(SAMPLER_REGISTRY)


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
    cls = getattr(diffusers, entry["scheduler"])
    if entry["prediction"] == "flow":
        kw = {"num_train_timesteps": num_train_timesteps, "shift": shift}
    else:
        kw = {"num_train_timesteps": num_train_timesteps, "beta_schedule": beta_schedule,
              "beta_start": beta_start, "beta_end": beta_end, "prediction_type": "epsilon"}
        if entry["scheduler"] in ("DDPMScheduler", "DDIMScheduler"):
            kw["clip_sample"] = False
        if entry["scheduler"] == "EulerDiscreteScheduler":
            kw["use_karras_sigmas"] = True
        if entry["scheduler"] == "DDIMScheduler":
            kw["set_alpha_to_one"] = True
            kw["timestep_spacing"] = "trailing"
    if config:
        keep = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        keep.update({k: v for k, v in kw.items() if k not in keep})
        kw = keep
    return cls.from_config(kw)


def sampler_entry(name: str) -> dict:
    """The registry entry for a sampler name, or a one-line ClipstudioError."""
    try:
        return SAMPLER_REGISTRY[name]
    except (KeyError, TypeError):
        raise ClipstudioError(f"unknown sampler '{name}'; choose one of: {', '.join(SAMPLER_REGISTRY)}") from None


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
        return self.text_encoder(ids.to(self.text_encoder.device))[0]


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
    (a VAE decode for latent models, a reshape for pixel models; None: the UNet space is the image)."""
    unet: object
    text_encoder: Callable[[Sequence[str]], torch.Tensor]
    prediction: str = "epsilon"                     # 'epsilon' or 'v_prediction' (DDPM family) or 'flow'
    scheduler_config: dict = field(default_factory=dict)
    decoder: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    default_sampler: str = "ddim"
    default_guidance: float = 4.0
    default_steps: int = 50
    default_guidance_rescale: float = 0.0

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
        if entry["prediction"] != self.family:
            raise ClipstudioError(
                f"sampler '{sampler}' is for {entry['prediction']} models, this model predicts {self.prediction}; "
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
        if not float(guidance) >= 0:
            raise ClipstudioError(f"guidance must be >= 0, got {guidance}")
        if eta < 0:
            raise ClipstudioError(f"eta must be >= 0, got {eta}")
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
        return [k for k, v in SAMPLER_REGISTRY.items() if v["prediction"] == self.family]


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
    try:
        return snapshot_download(name_or_path, allow_patterns=patterns, etag_timeout=10)
    except Exception as e:
        raise ClipstudioError(
            f"could not get pipeline '{name_or_path}': not a local directory, not in the hub cache, and the "
            f"Hugging Face hub is unreachable ({type(e).__name__}); download it elsewhere and pass its directory"
        ) from None


def load_sd_pipeline(name_or_path: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                     default_guidance: float = 7.5) -> CFGBackend:
    """A CFGBackend from StableDiffusionPipeline pieces (unet, vae, tokenizer + CLIPTextModel, scheduler config)."""
    path = resolve_pipeline_dir(name_or_path)
    diffusers = _diffusers("Stable Diffusion pipelines")
    try:
        import transformers  # noqa: F401  (the pipeline's text encoder)
    except ImportError:
        raise missing_extra("transformers", "diffusion", "Stable Diffusion pipelines") from None
    try:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(
            path, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False, local_files_only=True)
    except Exception as e:
        raise ClipstudioError(f"could not load the pipeline in '{path}': {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
    pipe.to(device)
    pred = pipe.scheduler.config.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction"):
        raise ClipstudioError(f"pipeline '{name_or_path}' predicts '{pred}'; only epsilon and v prediction are supported")
    vae = pipe.vae

    def decode(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z / vae.config.scaling_factor).sample

    return CFGBackend(unet=pipe.unet, text_encoder=HFTextEncoder(pipe.tokenizer, pipe.text_encoder),
                      prediction=pred, scheduler_config=dict(pipe.scheduler.config), decoder=decode,
                      default_guidance=default_guidance)


# --------------------------------------------------------------------------- CLI

DEFAULT_MODEL = "shapes-diffusion"  # moves to the diffuse command with the parser


def load_embedded_backend(name: str, device: str = "cpu") -> "CFGBackend":
    """An embedded diffusion model of a world (see :mod:`clipstudio.embedded`), loaded by its world's loader."""
    import importlib

    from clipstudio import embedded

    model = embedded.embedded_model(name, "diffusion")
    if not model.loader:
        raise ClipstudioError(f"the embedded model '{name}' names no loader in its world.json")
    module_name, func_name = model.loader.split(":")
    return getattr(importlib.import_module(module_name), func_name)(model.checkpoint, device=device)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`clipstudio diffuse PROMPT -o out.png [--negative TEXT] [--guidance W] [--steps N] [--seed S] [--n K]
    [--sampler NAME] [--eta E] [--pipeline DIR|HUB_NAME] [--scale F]`: sample the CFG backend."""
    import argparse
    import sys
    ap = argparse.ArgumentParser(prog="clipstudio diffuse",
                                 description="Sample the classifier-free-guidance diffusion backend.")
    ap.add_argument("prompt", nargs="?", default=None)
    ap.add_argument("-o", "--output", default="diffuse.png", help="PNG; with --n K > 1: NAME_0.png ... NAME_K-1.png")
    ap.add_argument("--negative", default=None, help="negative prompt (replaces the empty unconditional prompt)")
    ap.add_argument("--guidance", type=float, default=None, help="CFG weight w (default: the model's)")
    ap.add_argument("--guidance-rescale", type=float, default=None,
                    help="phi in [0, 1]: rescale the guided prediction's std to the conditional one's "
                         "(Lin et al. 2023; default: the model's)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=1, help="images in the batch")
    ap.add_argument("--sampler", default=None, help=f"one of: {', '.join(SAMPLER_REGISTRY)}")
    ap.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity")
    ap.add_argument("--pipeline", default=None,
                    help="Stable-Diffusion-style pipeline directory or hub name (default: the embedded shapes model)")
    ap.add_argument("--scale", type=int, default=1, help="nearest-neighbour upscaling of the saved PNG")
    ap.add_argument("--list-samplers", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    check_numbers(guidance=(args.guidance, 0, 1e3), guidance_rescale=(args.guidance_rescale, 0, 1), eta=(args.eta, 0, 1), seed=(args.seed, 0, SEED_MAX), n=(args.n, 1, 256), scale=(args.scale, 1, 64), steps=(args.steps, 1, 10_000))
    if args.list_samplers:
        for k, v in SAMPLER_REGISTRY.items():
            print(f"{k:12s} {v['scheduler']:34s} {v['about']}")
        return 0
    if not args.prompt:
        raise ClipstudioError("diffuse needs a prompt")
    check_writable(args.output)  # a directory, a device node or a FIFO is refused before any work
    if args.scale < 1:
        raise ClipstudioError(f"--scale must be >= 1, got {args.scale}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pipeline:
        be = load_sd_pipeline(args.pipeline)
    else:
        be = load_embedded_backend(DEFAULT_MODEL)
    images = be.generate(args.prompt, negative=args.negative, guidance=args.guidance, steps=args.steps,
                         guidance_rescale=args.guidance_rescale,
                         seed=args.seed, n=args.n, sampler=args.sampler, eta=args.eta,
                         progress=sys.stderr.isatty())
    pils = to_pil(images)
    out = Path_(args.output)
    paths = [out] if len(pils) == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}")
                                          for i in range(len(pils))]
    for im, p in zip(pils, paths):
        if args.scale > 1:
            from PIL import Image
            im = im.resize((im.width * args.scale, im.height * args.scale), Image.NEAREST)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        im.save(tmp, format="PNG")
        os.replace(tmp, p)
        print(f"wrote {p}")
    return 0
