"""The shapes-world text-to-image diffusion model: a small diffusers UNet2DConditionModel over TAEF2 latents.

Design (chosen for CPU training time, and measured):

* **TAEF2 latent space, 64 px (the default, ``space: taef2``).** A 64 px image is an 8x8x32 latent of the
  real, pretrained TAEF2 tiny autoencoder (madebyollin/taesd, MIT; its decoder is embedded in the checkpoint
  as fp16, 1.3 MB, so the package needs no weights folder). The UNet runs at 8, 4 and 2 px, which is why it
  trains about twice as fast per image as the 32 px pixel model. The decoder also forgives the UNet's errors:
  on 128 rendered scenes, decoding the latents plus Gaussian noise of 20% of their std still passed the
  colour-and-geometry check 128/128 (40%: 123/128), where a pixel-space model's errors land straight in the
  image as blobs and speckle. Latents are normalized per channel with the statistics of the encoded training
  set; the schedule is Stable Diffusion's latent one (scaled_linear) with v prediction.
* **Pixel space, 32 px, space-to-depth (``space: pixel``, the earlier model).** The 32x32x3 image is rearranged
  losslessly into 16x16x12 (``pixel_unshuffle(x, 2)``), a permutation, so i.i.d. noise stays i.i.d. and the
  diffusion is exactly a pixel-space one.
* **Text conditioning: token states of the guide's text tower.** Cross-attention reads the
  per-token hidden states (after ``ln_final``) of the open_clip ``shapes-guide`` text transformer,
  frozen. A snapshot of that tower is stored inside the checkpoint (transformer, positions,
  ``ln_final`` and only the token-embedding rows of the world's vocabulary, so it stays small), so
  the model keeps working when the guide is retrained.
* **v prediction** (Salimans & Ho 2022), so DDPM, DDIM and Euler all apply; caption dropout (empty caption)
  trains the unconditional branch for CFG, and partial captions ("a circle on a white background", "red")
  give a colour-free prompt and a negative prompt their meaning.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from clipstudio import weights
from clipstudio.checkpoints import load_checkpoint
from clipstudio.errors import ClipstudioError, missing_extra
from clipstudio.generators.latent import fit_output

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_CHECKPOINT = ASSETS_DIR / "shapes-diffusion.pt"
# TAEF2's encoder (fp16, as published), for checkpoints that embed only the decoder: score distillation needs a
# differentiable way from images into the latent space.
TAEF2_ENCODER = ASSETS_DIR / "taef2-encoder.pt"
GUIDE_CONFIG = Path(__file__).resolve().parent / "model_configs" / "shapes-guide.json"
IMAGE_SIZE = 32
PATCH = 2                                     # space-to-depth factor: 32x32x3 <-> 16x16x12

# v-prediction (Salimans & Ho 2022). clip_sample stays off: clipping the x_0 estimate while the
# direction term keeps the unclipped (guided) output pulled DDIM samples off the prompt at w=3
# (measured: background right in 0/16 prompts with clipping, 16/16 without).
SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "linear",
                    "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "v_prediction", "clip_sample": False}
# Keys of a checkpoint's scheduler config that describe training; the rest are sampling choices (code's).
TRAINING_SCHEDULER_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")

# The TAEF2 latent space: 64 px images (the world's reference size) <-> 8x8x32 latents.
LATENT_IMAGE_SIZE = 64
LATENT_CHANNELS = 32
# Stable Diffusion's latent schedule (scaled_linear 0.00085..0.012, Rombach et al. 2022), with v prediction.
LATENT_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                           "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction",
                           "clip_sample": False}


def flow_scheduler_config() -> dict:
    """The time axis of a flow-matching model: s in [0, 1] fed to the UNet as s * 1000, no shift."""
    return {"num_train_timesteps": 1000, "shift": 1.0}


def scheduler_config(space: str) -> dict:
    """The training noise schedule for a model space ('pixel' or 'taef2')."""
    return dict(SCHEDULER_CONFIG if space == "pixel" else LATENT_SCHEDULER_CONFIG)


def unet_config(text_width: int = 64) -> dict:
    """The UNet2DConditionModel config: 16x16x12 input, three levels, cross-attention at 8 and 4 px."""
    return dict(
        sample_size=IMAGE_SIZE // PATCH, in_channels=3 * PATCH * PATCH, out_channels=3 * PATCH * PATCH,
        block_out_channels=(32, 64, 96), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_width, attention_head_dim=16, norm_num_groups=16,
    )


def latent_unet_config(text_width: int = 64) -> dict:
    """The UNet for 8x8x32 TAEF2 latents: levels at 8, 4 and 2 px, cross-attention at 4 and 2 px only
    (self-attention over the 64 tokens of the 8 px level halved the training throughput for little gain)."""
    return dict(
        sample_size=LATENT_IMAGE_SIZE // 8, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=(64, 96, 128), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_width, attention_head_dim=32, norm_num_groups=32,
    )


def latent_decoder(space: dict, decoder_state: dict):
    """(the TAEF2 decoder, a :class:`LatentDecoder` around it) for a checkpoint's latent space."""
    from clipstudio.generators.taef2 import load_into, taef2_decoder
    width = int(decoder_state["1.weight"].shape[0])
    decoder = load_into(taef2_decoder(int(decoder_state["1.weight"].shape[1]), width),
                        {k: v.float() for k, v in decoder_state.items()}, "diffusion checkpoint's TAEF2 decoder")
    decoder.eval()
    return decoder, LatentDecoder(space, decoder)


class LatentDecoder(torch.nn.Module):
    """UNet space -> images in [-1, 1]: un-normalize with the dataset's latent statistics, TAEF2-decode (no
    gradient). A module, so that whoever holds it (a loss) moves it to the run's device."""

    def __init__(self, space: dict, decoder: torch.nn.Module):
        super().__init__()
        self.decoder = decoder
        self.register_buffer("mean", torch.tensor(space["latent_mean"])[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(space["latent_std"])[:, None, None], persistent=False)

    @torch.no_grad()
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z.float() * self.std + self.mean).clamp(0, 1) * 2 - 1


class LatentEncoder(torch.nn.Module):
    """Images in [0, 1] -> the UNet's space: resized to the model's size, TAEF2-encoded, normalized with the
    dataset's latent statistics (the inverse of :func:`latent_decoder`), differentiably."""

    def __init__(self, space: dict, encoder_state: dict):
        super().__init__()
        from clipstudio.generators.taef2 import load_into, taef2_encoder
        width, channels = int(encoder_state["0.weight"].shape[0]), len(space["latent_mean"])
        self.encoder = load_into(taef2_encoder(channels, width), {k: v.float() for k, v in encoder_state.items()},
                                 "TAEF2 encoder").eval().requires_grad_(False)
        self.size = int(space["image_size"])
        self.register_buffer("mean", torch.tensor(space["latent_mean"])[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(space["latent_std"])[:, None, None], persistent=False)

    latent_space = "taef2"  # the latent generator's codes in this space map in without the encoder

    def from_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """A raw TAEF2 latent -> the UNet's space (the normalization alone), differentiably."""
        return (latent - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.from_latent(self.encoder(fit_output(images, self.size, self.size)))


class PixelEncoder(torch.nn.Module):
    """Images in [0, 1] -> the pixel model's space (resized to 32 px, then :func:`to_model_space`)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_space(fit_output(images, IMAGE_SIZE, IMAGE_SIZE))


def taef2_encoder_state(ck: dict) -> Optional[dict]:
    """The checkpoint's embedded TAEF2 encoder, else the one shipped beside the world's models (None if gone)."""
    if "encoder" in ck:
        return ck["encoder"]
    if TAEF2_ENCODER.is_file():
        return load_checkpoint(TAEF2_ENCODER)["encoder"]
    return None


def build_unet(config: dict):
    """A UNet2DConditionModel from a config dict (diffusers imported lazily)."""
    try:
        from diffusers import UNet2DConditionModel
    except ImportError:
        raise missing_extra("diffusers", "diffusion", "the shapes diffusion model") from None
    return UNet2DConditionModel(**config)


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """Images N x 3 x 32 x 32 in [0, 1] -> UNet space N x 12 x 16 x 16 in [-1, 1] (lossless)."""
    return F.pixel_unshuffle(images * 2 - 1, PATCH)


def from_model_space(x: torch.Tensor) -> torch.Tensor:
    """UNet space -> images in [-1, 1] (the backend maps them to [0, 1])."""
    return F.pixel_shuffle(x, PATCH)


# --------------------------------------------------------------------------- the text tower

def guide_text_cfg() -> dict:
    """The text_cfg of the shapes-guide open_clip config."""
    with open(GUIDE_CONFIG) as f:
        return json.load(f)["text_cfg"]


def build_text_tower(text_cfg: dict, embed_dim: int):
    """An open_clip TextTransformer with the guide's architecture (random weights)."""
    from open_clip.model import CLIPTextCfg, _build_text_tower
    return _build_text_tower(embed_dim, CLIPTextCfg(**text_cfg))


def world_vocabulary(tokenizer, n_captions: int = 1000, seed: int = 0) -> list[int]:
    """Token ids used by the shapes world's captions and paraphrases, plus each word alone (for negatives)."""
    import numpy as np

    from clipstudio.worlds.shapes.captions import paraphrases, random_caption, canonical_caption
    from clipstudio.worlds.shapes.render import sample_scene
    rng = np.random.default_rng(seed)
    texts: list[str] = [""]
    for _ in range(n_captions):
        scene = sample_scene(rng)
        texts.append(random_caption(rng, scene))
        texts.append(canonical_caption(scene))
        texts.extend(paraphrases(scene))
    words = sorted({w.strip(",.") for t in texts for w in t.split()})
    texts.extend(words)
    texts.extend(["bright", "dark", "colour", "color", "shape", "object", "big", "tiny"])
    ids = tokenizer(texts).unique().tolist()
    return sorted(int(i) for i in ids)


def text_tower_snapshot(clip_state: dict, token_ids: Sequence[int]) -> dict:
    """The text-tower tensors of an open_clip CLIP state dict, with only `token_ids` rows of the embedding."""
    keep = {}
    for k, v in clip_state.items():
        if k.startswith(("transformer.", "ln_final.")) or k in ("positional_embedding", "text_projection"):
            keep[k] = v.detach().half().clone()
    ids = torch.tensor(list(token_ids), dtype=torch.long)
    keep["token_ids"] = ids
    keep["token_rows"] = clip_state["token_embedding.weight"][ids].detach().half().clone()
    return keep


def load_text_tower(snapshot: dict, text_cfg: dict):
    """Rebuild the frozen text tower from a snapshot; words outside the stored vocabulary embed as zeros."""
    proj = snapshot.get("text_projection")
    tower = build_text_tower(text_cfg, embed_dim=int(proj.shape[1]) if proj is not None else text_cfg["width"])
    state = {k: v.float() for k, v in snapshot.items() if k not in ("token_ids", "token_rows")}
    emb = torch.zeros_like(tower.token_embedding.weight)
    emb[snapshot["token_ids"]] = snapshot["token_rows"].float()
    state["token_embedding.weight"] = emb
    missing, unexpected = tower.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("text_projection")] + list(unexpected)
    if bad:
        raise ClipstudioError(f"corrupt text-tower snapshot in the diffusion checkpoint (keys: {bad[:3]})")
    return tower.eval()


def make_tokenizer(text_cfg: dict):
    """The open_clip tokenizer the guide uses (SimpleTokenizer at the config's context length)."""
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer(context_length=text_cfg["context_length"])


def load_guide_clip_state(path: Optional[str], seed: int = 0) -> tuple[dict, str]:
    """(state dict, description) of the guide CLIP at `path`, or of a seeded random one if path is None/missing."""
    text_cfg = guide_text_cfg()
    if path and os.path.isfile(path):
        sd = load_checkpoint(path)
        if "state_dict" in sd:
            sd = sd["state_dict"]
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        return sd, f"{path} (sha256 {weights.file_sha256(path)[:16]})"
    torch.manual_seed(seed)
    tower = build_text_tower(text_cfg, embed_dim=text_cfg["width"])
    return tower.state_dict(), f"random shapes-guide text tower (seed {seed}); guide checkpoint not found"


# --------------------------------------------------------------------------- checkpoint -> backend

def load_shapes_backend(path: Optional[str | os.PathLike] = None, device: str = "cpu"):
    """A CFGBackend for the shipped shapes-diffusion checkpoint (or one at `path`)."""
    from clipstudio.diffusion.backend import CFGBackend, OpenClipTextEncoder
    path = Path(path) if path else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise ClipstudioError(f"missing diffusion checkpoint {path}; train one with 'clipstudio train diffusion'")
    try:
        ck = load_checkpoint(path)
        unet = build_unet(ck["unet_config"])
        unet.load_state_dict({k: v.float() for k, v in ck["unet"].items()})
        tower = load_text_tower(ck["text_tower"], ck["text_cfg"])
        space = ck.get("space") or {"kind": "pixel"}
        decode, image_encoder = from_model_space, PixelEncoder()
        if space["kind"] == "taef2":
            _, decode = latent_decoder(space, ck["decoder"])
            decode.to(device)
            encoder_state = taef2_encoder_state(ck)
            image_encoder = LatentEncoder(space, encoder_state).to(device) if encoder_state else None
        elif space["kind"] != "pixel":
            raise ClipstudioError(f"diffusion checkpoint {path} has an unknown model space '{space['kind']}'")
    except ClipstudioError:
        raise
    except Exception as e:
        raise ClipstudioError(f"could not load diffusion checkpoint {path}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
    unet.eval().to(device)
    encoder = OpenClipTextEncoder(tower.to(device), make_tokenizer(ck["text_cfg"]))
    saved = ck.get("scheduler_config", {})
    if ck.get("prediction") == "flow":
        prediction, sched_cfg = "flow", {**flow_scheduler_config(), **saved}
    else:
        sched_cfg = {**SCHEDULER_CONFIG, **{k: saved[k] for k in TRAINING_SCHEDULER_KEYS if k in saved}}
        prediction = sched_cfg.get("prediction_type", "epsilon")
    return CFGBackend(unet=unet, text_encoder=encoder, prediction=prediction, scheduler_config=sched_cfg,
                      decoder=decode, default_sampler=str(ck.get("default_sampler", "ddim")),
                      default_guidance=float(ck.get("default_guidance", 3.0)),
                      default_steps=int(ck.get("default_steps", 50)), encoder=image_encoder)


def unet_param_count(config: Optional[dict] = None) -> int:
    """Number of UNet parameters for a config (default: ours)."""
    return sum(p.numel() for p in build_unet(config or unet_config()).parameters())


# --------------------------------------------------------------------------- evaluation

def canonical_prompts(n: int, seed: int = 1234) -> list[str]:
    """n canonical-grammar prompts, the five forms in turn (the world's one prompt-set generator)."""
    from clipstudio.worlds.shapes.prompts import prompt_set

    return prompt_set(n, seed)


def to_uint8(images: torch.Tensor) -> list:
    """HxWx3 uint8 arrays from an n x 3 x H x W tensor in [0, 1]."""
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return list(arr)


def check_pass_rate(backend, prompts: Sequence[str], guidance: Optional[float] = None, steps: int = 50,
                    seed: int = 0, batch: int = 25, sampler: Optional[str] = None,
                    guidance_rescale: Optional[float] = None) -> dict:
    """Share of prompts whose image passes clipstudio.worlds.shapes.check.check_image, overall and per form, and
    each failing prompt with the checker's reasons (where a model fails: size, shape, colour, ...)."""
    from clipstudio.worlds.shapes.captions import parse_caption
    from clipstudio.worlds.shapes.check import check_image
    per_form: dict[str, list[int]] = {}
    failures: list[dict] = []
    for i in range(0, len(prompts), batch):
        chunk = list(prompts[i:i + batch])
        imgs = to_uint8(backend.generate(chunk, guidance=guidance, steps=steps, seed=seed + i, sampler=sampler,
                                         guidance_rescale=guidance_rescale))
        for p, img in zip(chunk, imgs):
            result = check_image(img, p)
            per_form.setdefault(parse_caption(p).form, []).append(int(result.passed))
            if not result.passed:
                failures.append({"prompt": p, "failures": list(result.failures)})
    return {"rate": (len(prompts) - len(failures)) / len(prompts), "n": len(prompts),
            "per_form": {k: sum(v) / len(v) for k, v in per_form.items()}, "failures": failures}


def object_colour(img, background: str) -> Optional[str]:
    """The most common palette colour other than the background (None if under 1% of pixels)."""
    import numpy as np

    from clipstudio.worlds.shapes.check import classify_pixels
    from clipstudio.worlds.shapes.render import COLOURS
    lab = classify_pixels(img)
    counts = np.bincount(lab[lab >= 0].ravel(), minlength=len(COLOURS)).astype(float)
    counts[COLOURS.index(background)] = 0
    if counts.max() < 0.01 * lab.size:
        return None
    return COLOURS[int(counts.argmax())]


def colour_rate(backend, prompt: str, colour: str, background: str, n: int = 64, negative: Optional[str] = None,
                guidance: Optional[float] = None, steps: int = 50, seed: int = 0, sampler: Optional[str] = None
                ) -> float:
    """Share of n seeded images for `prompt` (with an optional negative) whose object is `colour`."""
    imgs = to_uint8(backend.generate(prompt, n=n, negative=negative, guidance=guidance, steps=steps, seed=seed,
                                     sampler=sampler))
    return sum(object_colour(im, background) == colour for im in imgs) / n


NEGATIVE_PROMPT = ("a circle on a white background", "red", "white")  # prompt, negative colour, background


def evaluate(backend, *, prompts: int = 100, sweep: Sequence[float] = (1.0, 2.0, 4.0, 8.0), sweep_prompts: int = 50,
             negative_seeds: int = 64, steps: Optional[int] = None, guidance: Optional[float] = None,
             guidance_rescale: Optional[float] = None, sampler: Optional[str] = None,
             steps_sweep: Sequence[int] = (), prompt_seed: int = 1234, log=print) -> dict:
    """The model's figures: check pass rate on ``prompts`` canonical prompts (``prompt_seed``) at ``guidance`` (the
    model's by default), the pass rate and seconds per image for each step count of ``steps_sweep`` on the same
    prompts, the pass rate per guidance weight of ``sweep`` (prompt seed 99), and how often the object of
    "a circle on a white background" is red without and with the negative prompt "red". ``steps`` and
    ``sampler`` default to the model's."""
    import time
    steps = backend.default_steps if steps is None else steps
    sampler = sampler or backend.default_sampler
    out: dict = {"steps": steps, "sampler": sampler,
                 "guidance": backend.default_guidance if guidance is None else guidance}
    t0 = time.perf_counter()
    by_steps: dict[int, dict] = {}
    for n_steps in (steps_sweep if prompts else ()):
        t1 = time.perf_counter()
        by_steps[n_steps] = check_pass_rate(backend, canonical_prompts(prompts, prompt_seed), guidance, n_steps,
                                            sampler=sampler, guidance_rescale=guidance_rescale)
        per_image = (time.perf_counter() - t1) / prompts
        out.setdefault("steps_sweep", {})[n_steps] = {"rate": by_steps[n_steps]["rate"], "seconds_per_image": per_image}
        log(f"{n_steps} {sampler} steps: pass rate {by_steps[n_steps]['rate']:.3f} over {prompts} prompts, "
            f"{per_image:.3f} s per image")
    if prompts:              # the same prompts and seeds as the sweep: a swept step count is not sampled twice
        r = by_steps.get(steps) or check_pass_rate(backend, canonical_prompts(prompts, prompt_seed), guidance, steps,
                                                   sampler=sampler, guidance_rescale=guidance_rescale)
        out["pass_rate"] = r
        log(f"check pass rate at w={out['guidance']}: {r['rate']:.3f} over {r['n']} prompts; per form {r['per_form']}")
    if sweep:
        out["sweep"] = {}
        sweep_set = canonical_prompts(sweep_prompts, seed=99)
        for w in sweep:
            r = check_pass_rate(backend, sweep_set, w, steps, seed=1, sampler=sampler,
                                guidance_rescale=guidance_rescale)
            out["sweep"][w] = r["rate"]
            log(f"guidance {w:g}: pass rate {r['rate']:.3f} over {r['n']} prompts")
    if negative_seeds:
        p, colour, background = NEGATIVE_PROMPT
        base = colour_rate(backend, p, colour, background, negative_seeds, None, guidance, steps, 5, sampler)
        neg = colour_rate(backend, p, colour, background, negative_seeds, colour, guidance, steps, 5, sampler)
        out["negative"] = {"prompt": p, "negative": colour, "n": negative_seeds, "base_red": base, "neg_red": neg}
        log(f"'{p}': {colour} objects {base:.3f} without, {neg:.3f} with --negative {colour} ({negative_seeds} seeds)")
    out["seconds"] = time.perf_counter() - t0
    return out
