"""CLIP models through open_clip: open_clip names, ``NAME:PRETRAINED`` tags, local checkpoints, and the
embedded models that worlds ship (see :mod:`clipstudio.embedded`), all loaded by the same open_clip code path."""
from __future__ import annotations

import functools
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import embedded
from ..errors import ClipstudioError

DEFAULT_CLIP = "ViT-B-32:openai"  # the lineage's guide; worlds' recipes name their own
RANDOM_TAG = "random"


@functools.cache
def _register_configs() -> None:
    """Register our model configs with open_clip, and any folders named in ``CLIPSTUDIO_MODEL_CONFIGS``."""
    import open_clip

    for folder in embedded.model_config_dirs():
        open_clip.add_model_config(folder)
    for folder in os.environ.get("CLIPSTUDIO_MODEL_CONFIGS", "").split(os.pathsep):
        if folder:
            open_clip.add_model_config(Path(folder))


def list_clip_models() -> list[str]:
    """Names ``--clip`` accepts: the embedded models, then open_clip's ``NAME:PRETRAINED`` pairs."""
    import open_clip

    _register_configs()
    pretrained = [f"{name}:{tag}" for name, tag in open_clip.list_pretrained()]
    return embedded.list_embedded("clip") + pretrained


def embedded_checkpoint(name: str) -> Path:
    """Path of an embedded CLIP's checkpoint; a missing one is a one-line error."""
    return embedded.embedded_model(name, "clip").checkpoint


@dataclass(frozen=True)
class ClipSpec:
    """A resolved ``--clip`` value: open_clip architecture and where its weights come from."""

    arch: str
    checkpoint: str | None  # a local file, or None for random weights
    openai_jit: bool = False  # an OpenAI TorchScript release file


def _sidecar_arch(path: Path) -> str | None:
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text()).get("model")
        except (OSError, ValueError):
            return None
    return None


def resolve_clip_spec(spec: str, weights_dir: str | None = None) -> ClipSpec:
    """Turn ``NAME``, ``NAME:PRETRAINED``, ``NAME:random``, ``NAME:PATH`` or ``PATH`` into a :class:`ClipSpec`."""
    import open_clip

    _register_configs()
    if spec in embedded.embedded_models("clip"):
        return ClipSpec(spec, str(embedded_checkpoint(spec)))
    arch, _, tag = spec.partition(":")
    if arch not in open_clip.list_models():
        path = Path(spec)
        if path.is_file() and _sidecar_arch(path):
            return ClipSpec(_sidecar_arch(path), str(path))
        if path.suffix in {".pt", ".pth", ".bin", ".safetensors"} and not path.is_file():
            raise ClipstudioError(f"CLIP checkpoint not found: {spec}")
        choices = ", ".join(embedded.list_embedded("clip") + ["any open_clip name, e.g. ViT-B-32:openai"])
        raise ClipstudioError(f"unknown CLIP model '{spec}'; choose one of: {choices} (see 'clipstudio models')")
    if tag == RANDOM_TAG:
        return ClipSpec(arch, None)
    if tag and Path(tag).expanduser().is_file():
        return ClipSpec(arch, str(Path(tag).expanduser()))
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not tag:
        if not tags:
            raise ClipstudioError(f"CLIP '{arch}' has no pretrained weights; use '{arch}:random' or '{arch}:PATH'")
        tag = tags[0]
    if tag not in tags:
        raise ClipstudioError(
            f"unknown pretrained tag '{tag}' for CLIP '{arch}'; choose one of: {', '.join(tags + [RANDOM_TAG])}"
        )
    from .. import weights

    path = weights.fetch(f"open_clip:{arch}:{tag}", weights_dir=weights_dir)
    return ClipSpec(arch, str(path), openai_jit=(tag == "openai"))


class ClipGuide(nn.Module):
    """A frozen CLIP model with its tokenizer and input normalization; embeddings come out unit-length."""

    def __init__(self, name: str, model: nn.Module, tokenizer, image_size: int, mean, std):
        super().__init__()
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unit text embeddings, one row per text (frozen targets: computed under inference mode, then
        cloned into an ordinary tensor that autograd may use)."""
        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.mean.device)
            embeds = nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return embeds.clone()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings of NCHW [0, 1] images already at ``image_size`` (differentiable)."""
        return nn.functional.normalize(self.model.encode_image((images - self.mean) / self.std).float(), dim=-1)


def _create_model(resolved: ClipSpec, device: str) -> nn.Module:
    import open_clip

    if resolved.openai_jit:
        # OpenAI's released files are TorchScript archives, which weights_only loading refuses; open_clip
        # reads them with torch.jit.load (no unpickling of arbitrary objects) and rebuilds the model.
        return open_clip.load_openai_model(resolved.checkpoint, device=device, jit=False)
    return open_clip.create_model(resolved.arch, pretrained=resolved.checkpoint, device=device)


def _image_size(cfg: dict) -> int:
    size = cfg.get("size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


@functools.lru_cache(maxsize=4)
def load_clip(spec: str = DEFAULT_CLIP, device: str = "cpu", weights_dir: str | None = None) -> ClipGuide:
    """Load a CLIP model for guidance (cached, so notebooks and ranking loops reuse it)."""
    import open_clip

    resolved = resolve_clip_spec(spec, weights_dir)
    if resolved.checkpoint is None:
        warnings.warn(f"CLIP '{resolved.arch}' has random weights: use it for tests and timing only")
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # open_clip logs at root
    try:
        model = _create_model(resolved, device)
    except Exception as err:  # unpickling and state-dict errors come in many types; all mean a bad file
        if resolved.checkpoint is None:
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ClipstudioError(f"could not load CLIP checkpoint '{resolved.checkpoint}': {reason}") from None
    cfg = open_clip.get_model_preprocess_cfg(model)
    tokenizer = open_clip.get_tokenizer(resolved.arch)
    guide = ClipGuide(spec, model.float(), tokenizer, _image_size(cfg), cfg["mean"], cfg["std"])
    return guide.to(device)
