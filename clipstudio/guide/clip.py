"""CLIP models through open_clip: open_clip names, ``NAME:PRETRAINED`` tags, local checkpoints, and the
embedded models that worlds ship (see :mod:`clipstudio.embedded`), all loaded by the same open_clip code path."""
from __future__ import annotations

import functools
import json
import logging
import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import embedded
from ..errors import ClipstudioError

DEFAULT_CLIP = "ViT-B-32:openai"  # the lineage's guide; worlds' recipes name their own
RANDOM_TAG = "random"
HUB_PREFIX = "hf-hub:"  # open_clip's name for a model whose config and weights live in a Hugging Face repo
# Adversarially robust CLIPs (perceptually aligned gradients), published as open_clip hub models; any other
# ``hf-hub:ORG/REPO`` of open_clip's layout loads the same way.
HUB_CLIPS: dict[str, str] = {
    "hf-hub:chs20/fare2-clip": "ViT-L-14, FARE eps 2/255 (Schlarmann et al. 2024), robust image tower",
    "hf-hub:chs20/fare4-clip": "ViT-L-14, FARE eps 4/255 (Schlarmann et al. 2024), robust image tower",
    "hf-hub:chs20/tecoa2-clip": "ViT-L-14, TeCoA eps 2/255 (Mao et al. 2023), robust image tower",
    "hf-hub:chs20/tecoa4-clip": "ViT-L-14, TeCoA eps 4/255 (Mao et al. 2023), robust image tower",
}
HUB_FILES = ("open_clip_config.json", "open_clip_pytorch_model.bin")  # what open_clip reads from such a repo


@functools.cache
def _register_configs() -> None:
    """Register our model configs with open_clip, and any folders named in ``CLIPSTUDIO_MODEL_CONFIGS``."""
    import open_clip

    folders = [*embedded.model_config_dirs(),
               *(Path(f) for f in os.environ.get("CLIPSTUDIO_MODEL_CONFIGS", "").split(os.pathsep) if f)]
    for folder in folders:
        _check_model_configs(folder)  # open_clip would raise a bare JSONDecodeError on the first bad file
    for folder in folders:
        open_clip.add_model_config(folder)


def _check_model_configs(folder: Path) -> None:
    """Each model-config JSON in ``folder`` is a readable JSON object with the sections open_clip needs."""
    for path in sorted(Path(folder).glob("*.json")) if Path(folder).is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as err:
            raise ClipstudioError(f"corrupt CLIP model config {path}: {str(err).splitlines()[0]}") from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), dict) for k in ("vision_cfg", "text_cfg")):
            raise ClipstudioError(f"CLIP model config {path} needs 'vision_cfg' and 'text_cfg' objects")


def clip_input_size(spec: str) -> int:
    """The image side the CLIP model ``spec`` takes, read from its open_clip config without loading (or
    downloading) anything; 224 when the config does not say."""
    import open_clip

    _register_configs()
    if spec.startswith(HUB_PREFIX):
        return _hub_input_size(spec)
    arch = spec if spec in embedded.embedded_models("clip") else spec.partition(":")[0]
    path = Path(spec)
    if arch not in open_clip.list_models() and path.is_file():
        arch = _sidecar_arch(path) or arch
    size = ((open_clip.get_model_config(arch) or {}).get("vision_cfg") or {}).get("image_size", 224)
    try:
        return int(size[0] if isinstance(size, (tuple, list)) else size)
    except (TypeError, ValueError):
        return 224


def list_clip_models() -> list[str]:
    """Names ``--clip`` accepts: the embedded models, then open_clip's ``NAME:PRETRAINED`` pairs."""
    import open_clip

    _register_configs()
    pretrained = [f"{name}:{tag}" for name, tag in open_clip.list_pretrained()]
    return embedded.list_embedded("clip") + list(HUB_CLIPS) + pretrained


def _hub_repo(spec: str) -> str:
    """``ORG/REPO`` of an ``hf-hub:ORG/REPO`` name; anything else is a one-line error."""
    repo = spec[len(HUB_PREFIX):]
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in repo):
        raise ClipstudioError(f"a hub CLIP is named hf-hub:ORG/REPO, got '{spec}'")
    return repo


def _hub_folder(spec: str, offline: bool | None = None) -> Path:
    """The local folder holding the open_clip config and weights of ``hf-hub:ORG/REPO`` (downloaded through
    ``hf_hub_download`` into its cache; offline, a missing file is one line naming it)."""
    from .. import weights

    files = [weights.hub_file(_hub_repo(spec), name, offline) for name in HUB_FILES]
    return files[0].parent


def _hub_input_size(spec: str) -> int:
    """A hub model's image side from its cached config, without downloading; 224 when unknown."""
    try:
        config = json.loads((_hub_folder(spec, offline=True) / HUB_FILES[0]).read_text())
        size = config["model_cfg"]["vision_cfg"].get("image_size", 224)
        return int(size[0] if isinstance(size, (tuple, list)) else size)
    except (ClipstudioError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return 224


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
            data = json.loads(sidecar.read_text())
            return data.get("model") if isinstance(data, dict) and isinstance(data.get("model"), str) else None
        except (OSError, ValueError, RecursionError):
            return None
    return None


def resolve_clip_spec(spec: str, weights_dir: str | None = None) -> ClipSpec:
    """Turn ``NAME``, ``NAME:PRETRAINED``, ``NAME:random``, ``NAME:PATH`` or ``PATH`` into a :class:`ClipSpec`."""
    import open_clip

    _register_configs()
    if spec in embedded.embedded_models("clip"):
        return ClipSpec(spec, str(embedded_checkpoint(spec)))
    if spec.startswith(HUB_PREFIX):  # open_clip reads the repo's folder as a local-dir model
        folder = _hub_folder(spec)
        return ClipSpec(f"local-dir:{folder}", str(folder))
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
    if os.sep in tag or Path(tag).suffix in {".pt", ".pth", ".bin", ".safetensors"}:
        raise ClipstudioError(f"CLIP checkpoint not found: {tag}")
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


class CachedTokenizer:
    """A tokenizer with a per-string cache (training captions and evaluation candidates repeat)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            for text, row in zip(missing, self.tokenizer(missing)):
                self.cache[text] = row
        return torch.stack([self.cache[t] for t in texts])


class ClipGuide(nn.Module):
    """A CLIP model with its tokenizer and input normalization; embeddings come out unit-length.

    Guides are frozen (``freeze=True``); a trainer wraps the model it is training with ``freeze=False`` to
    evaluate it through the same code path."""

    def __init__(self, name: str, model: nn.Module, tokenizer, image_size: int, mean, std, freeze: bool = True):
        super().__init__()
        self.name = name
        self.model = fold_batch_norms(model.eval().requires_grad_(False)) if freeze else model
        self.tokenizer = tokenizer if isinstance(tokenizer, CachedTokenizer) else CachedTokenizer(tokenizer)
        self.image_size = image_size
        self._pooled_token_path = pooled_token_path(getattr(self.model, "visual", None))  # the layout is fixed
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_open_clip(cls, name: str, model: nn.Module, tokenizer, freeze: bool = True) -> "ClipGuide":
        """Wrap an open_clip model, reading its input size, mean and std from its preprocess config."""
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(model)
        device = next(model.parameters()).device
        return cls(name, model, tokenizer, _image_size(cfg), cfg["mean"], cfg["std"], freeze).to(device)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """NCHW [0, 1] images as the model's input (its mean and std)."""
        return (images - self.mean) / self.std

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit text embeddings, one row per text (frozen targets: computed under inference mode, then
        cloned into an ordinary tensor that autograd may use)."""
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts)).to(self.mean.device)
            embeds = nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return embeds.clone()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings of NCHW [0, 1] images already at ``image_size`` (differentiable)."""
        inputs = self.normalize(images)
        if self._pooled_token_path is not None:
            features = self._pooled_token_path(self.model.visual, inputs)
        else:
            features = self.model.encode_image(inputs)
        return nn.functional.normalize(features.float(), dim=-1)


def class_token_only(visual: nn.Module | None) -> bool:
    """Whether ``visual`` is an open_clip VisionTransformer whose embedding is its class token's (no attention
    pooling, no tokens returned, plain pre-norm blocks, batch-first), so that :func:`class_token_features`
    computes it."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if (type(visual) is not VisionTransformer or not hasattr(visual, "_embeds")  # older open_clip: its forward
            or getattr(visual, "attn_pool", None) is not None or getattr(visual, "output_tokens", True)):
        return False
    transformer = visual.transformer
    blocks = getattr(transformer, "resblocks", [])
    return (getattr(visual, "pool_type", None) == "tok" and getattr(transformer, "batch_first", False)
            and not getattr(transformer, "grad_checkpointing", True) and len(blocks) > 0
            and type(blocks[-1]) is ResidualAttentionBlock and not hasattr(blocks[-1], "ln_1_kv"))


def class_token_features(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``visual(images)`` computing only what the class token needs in the last block (Dosovitskiy et al.
    2021, ViT: the embedding is the class token's): every token's keys and values, but the class token's query,
    attention output and MLP alone. The same values to float32 rounding; for ViT-B-32's 50 tokens the last block
    costs a fifth of the others: ViT-B-32's forward+backward on 32 cutouts, 6.17 -> 5.82 s. Call it where
    :func:`class_token_only` holds."""
    x = visual._embeds(images)  # (N, tokens, width): patches, class token first, positions, ln_pre
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x)
    last, normed = blocks[-1], blocks[-1].ln_1(x)
    token = x[:, :1]
    token = token + last.ls_1(last.attention(q_x=normed[:, :1], k_x=normed, v_x=normed))
    token = token + last.ls_2(last.mlp(last.ln_2(token)))
    pooled = visual.ln_post(token[:, 0])  # LayerNorm is per token, so before or after picking it is the same
    return pooled @ visual.proj if visual.proj is not None else pooled


def mean_token_only(visual: nn.Module | None) -> bool:
    """Whether ``visual`` is an open_clip ModifiedResNet whose embedding is its attention pool's mean token, with
    the forward :func:`mean_token_features` computes (stem, four layers, attention pool)."""
    from open_clip.modified_resnet import AttentionPool2d, ModifiedResNet

    return (type(visual) is ModifiedResNet and type(getattr(visual, "attnpool", None)) is AttentionPool2d
            and callable(getattr(visual, "stem", None)) and all(hasattr(visual, f"layer{i}") for i in range(1, 5)))


def mean_token_features(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``visual(images)`` with the attention pool querying its mean token only (Radford et al. 2021, CLIP: the
    embedding is the mean token's output; OpenAI's own AttentionPool2d queries ``x[:1]``), where open_clip's
    queries every token and keeps the first: every token's keys and values, the mean token's query, attention
    and output projection. The same values to float32 rounding. Call it where :func:`mean_token_only` holds."""
    x = visual.stem(images)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    pool = visual.attnpool
    x = x.flatten(2).permute(2, 0, 1)  # NCHW -> (HW, N, C)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + pool.positional_embedding[:, None, :].to(x.dtype)
    out, _ = nn.functional.multi_head_attention_forward(
        query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=pool.training, need_weights=False)
    return out[0]


def pooled_token_path(visual: nn.Module | None) -> Callable[[nn.Module, torch.Tensor], torch.Tensor] | None:
    """The function that computes ``visual``'s embedding for its pooled token alone (:func:`class_token_features`
    for a ViT, :func:`mean_token_features` for a ModifiedResNet), or None where open_clip's forward must run."""
    if class_token_only(visual):
        return class_token_features
    if mean_token_only(visual):
        return mean_token_features
    return None


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d that directly follows a convolution into that convolution, in place (the
    BatchNorm becomes an Identity): the same function to float32 rounding, one layer fewer forward and backward.
    shapes-guide's forward+backward on 16 cutouts: 7.1 -> 6.5 ms, its forward on 120 images 12.6 -> 11.4 ms.

    Only where the forward is known to apply one straight to the other: in an ``nn.Sequential``, and the
    ``convN`` / ``bnN`` pairs of open_clip's ModifiedResNet stem and bottlenecks."""
    from open_clip.modified_resnet import Bottleneck, ModifiedResNet
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def foldable(conv, bn) -> bool:
        return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and not bn.training
                and bn.track_running_stats and bn.running_mean is not None)

    for module in list(model.modules()):
        if isinstance(module, (ModifiedResNet, Bottleneck)):
            pairs = [(f"conv{i}", f"bn{i}") for i in (1, 2, 3)]
        elif isinstance(module, nn.Sequential):
            names = list(module._modules)
            pairs = list(zip(names, names[1:]))
        else:
            continue
        for conv_name, bn_name in pairs:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if foldable(conv, bn):
                fused = fuse_conv_bn_eval(conv, bn)
                setattr(module, conv_name, fused.requires_grad_(conv.weight.requires_grad))
                setattr(module, bn_name, nn.Identity())
    return model


def random_weights_seed(arch: str) -> int:
    """The seed of ``ARCH:random`` weights: fixed by the name, so every process draws the same model."""
    return zlib.crc32(arch.encode())


def _create_model(resolved: ClipSpec, device: str, seed: int | None = None) -> nn.Module:
    import open_clip

    if resolved.openai_jit:
        # OpenAI's released files are TorchScript archives, which weights_only loading refuses; open_clip
        # reads them with torch.jit.load (no unpickling of arbitrary objects) and rebuilds the model.
        return open_clip.load_openai_model(resolved.checkpoint, device=device, jit=False)
    if resolved.arch.startswith("local-dir:"):
        return open_clip.create_model(resolved.arch, device=device)
    if resolved.checkpoint is None:
        # Random weights come from their own seeded generator, not from whatever the global RNG holds when
        # the model is first loaded; drawn on the CPU so every device gets the same model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_weights_seed(resolved.arch) if seed is None else seed)
            return open_clip.create_model(resolved.arch, pretrained=None).to(device)
    return open_clip.create_model(resolved.arch, pretrained=resolved.checkpoint, device=device)


def _image_size(cfg: dict) -> int:
    size = cfg.get("size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def create_clip_model(spec: str, device: str = "cpu", weights_dir: str | None = None,
                      seed: int | None = None) -> tuple[nn.Module, object]:
    """A trainable fp32 open_clip model and its tokenizer for a ``--clip`` value: the one loader, which
    :func:`load_clip` and the trainers share. ``NAME:random`` weights are drawn from ``seed``, by default
    :func:`random_weights_seed` of the name."""
    import open_clip

    resolved = resolve_clip_spec(spec, weights_dir)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # open_clip logs at root
    try:
        model = _create_model(resolved, device, seed)
    except Exception as err:  # unpickling and state-dict errors come in many types; all mean a bad file
        if resolved.checkpoint is None:
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ClipstudioError(f"could not load CLIP checkpoint '{resolved.checkpoint}': {reason}") from None
    return model.float(), open_clip.get_tokenizer(resolved.arch)


@functools.lru_cache(maxsize=4)
def load_clip(spec: str = DEFAULT_CLIP, device: str = "cpu", weights_dir: str | None = None) -> ClipGuide:
    """Load a frozen CLIP model for guidance and scoring (cached, so notebooks and ranking loops reuse it)."""
    if spec.partition(":")[2] == RANDOM_TAG:
        warnings.warn(f"CLIP '{spec}' has random weights: use it for tests and timing only")
    model, tokenizer = create_clip_model(spec, device, weights_dir)
    return ClipGuide.from_open_clip(spec, model, tokenizer)
