"""CLIP ranking: generate several candidates and keep those a CLIP model scores best."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .config import GenerateConfig
from .devices import resolve_device
from .errors import ClipstudioError
from .guide.clip import load_clip
from .guide.prompts import Prompt, negative_prompt, parse_prompts
from .guide.targets import target_embeddings
from .studio import GenerateResult, Studio


def _to_batch(images: Sequence[Image.Image | np.ndarray], size: int) -> torch.Tensor:
    """Images (PIL, or HxWx3 uint8 arrays) as one NCHW batch at ``size``, resized bicubic with antialiasing."""
    arrays = [np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img, dtype=np.float32) / 255.0
              for img in images]
    batch = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])
    return torch.nn.functional.interpolate(batch, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)


@torch.no_grad()
def clip_scores(images: Sequence[Image.Image], prompts: Sequence[Prompt], clip: str, device: str = "cpu") -> list[float]:
    """Weighted cosine similarity of each whole image to the text prompts (negative weights subtract)."""
    texts = [p for p in prompts if not p.is_image]
    if not texts:
        raise ClipstudioError("ranking needs at least one text prompt")
    device = str(resolve_device(device))
    guide = load_clip(clip, device)
    image_embeds = guide.encode_image(_to_batch(images, guide.image_size).to(device))
    text_embeds = target_embeddings(texts, guide, device)  # texts, and embedding-arithmetic combinations
    weights = torch.tensor([p.weight for p in texts], device=image_embeds.device)
    return ((image_embeds @ text_embeds.T) * weights).sum(-1).div(weights.abs().sum()).tolist()


@torch.no_grad()
def score_images(images: Sequence[Image.Image | np.ndarray], texts: Sequence[str], clip: str,
                 device: str = "cpu") -> list[float]:
    """Cosine similarity of each whole image to its own text (``texts[i]`` for ``images[i]``): the one
    image-scoring function, for evaluators and reports alike."""
    if len(images) != len(texts):
        raise ClipstudioError(f"score_images needs one text per image, got {len(images)} and {len(texts)}")
    device = str(resolve_device(device))
    guide = load_clip(clip, device)
    image_embeds = guide.encode_image(_to_batch(images, guide.image_size).to(device))
    return (image_embeds * guide.encode_text(list(texts))).sum(-1).tolist()


def rank_images(images: Sequence[Image.Image], prompt: str, clip: str, negative: Sequence[str] = (),
                device: str = "cpu") -> list[int]:
    """Indices of ``images`` from best to worst by :func:`clip_scores`."""
    prompts = parse_prompts(prompt) + [negative_prompt(n) for n in negative]
    scores = clip_scores(images, prompts, clip, device)
    return sorted(range(len(images)), key=lambda i: -scores[i])


def generate_ranked(config: GenerateConfig, keep: int = 1, rank_clip: str | None = None
                    ) -> list[tuple[float, GenerateResult]]:
    """Run one guided generation per seed ``seed .. seed+candidates-1`` and return the ``keep`` best
    ``(score, result)`` pairs, best first. ``rank_clip`` defaults to the first guiding model.

    Each result records the settings of its own run (its seed, one candidate), so ``--from`` on a kept
    image reproduces exactly that image.
    """
    candidates = config.candidates
    if candidates < 1 or not 1 <= keep <= candidates:
        raise ClipstudioError(f"need candidates >= 1 and 1 <= keep <= candidates, got {candidates} and {keep}")
    runs = [config.replace(seed=config.seed + i, candidates=1) for i in range(candidates)]
    results = [Studio(run).run() for run in runs]
    clip = rank_clip or config.clip[0]
    prompts = parse_prompts(config.prompt) + [negative_prompt(n) for n in config.negative] if config.prompt.strip() else []
    scores = clip_scores([r.image for r in results], prompts, clip, config.device)
    order = sorted(range(candidates), key=lambda i: -scores[i])
    return [(scores[i], results[i]) for i in order[:keep]]


def ensemble_scores(images: Sequence[Image.Image], prompt: str, clips: Sequence[str], negative: Sequence[str] = (),
                    device: str = "cpu") -> tuple[list[float], dict[str, list[float]]]:
    """Each image's :func:`clip_scores` averaged over several CLIP models, and each model's own scores (so a
    ranking can be judged by models that did not guide the images)."""
    if not clips:
        raise ClipstudioError("give at least one CLIP model to score with")
    prompts = parse_prompts(prompt) + [negative_prompt(n) for n in negative]
    per_model = {clip: clip_scores(images, prompts, clip, device) for clip in clips}
    mean = [sum(scores[i] for scores in per_model.values()) / len(per_model) for i in range(len(images))]
    return mean, per_model


def contact_sheet(images: Sequence[Image.Image], captions: Sequence[str], columns: int = 4,
                  cell: int = 128) -> Image.Image:
    """The images in a grid, each at ``cell`` px with its caption (e.g. rank and score) below it."""
    from PIL import ImageDraw

    if not images:
        raise ClipstudioError("a contact sheet needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    caption_h = 14 * max(len(c.splitlines()) for c in captions) + 4
    sheet = Image.new("RGB", (columns * cell, rows * (cell + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (image, caption) in enumerate(zip(images, captions)):
        x, y = (index % columns) * cell, (index // columns) * (cell + caption_h)
        sheet.paste(image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        draw.multiline_text((x + 3, y + cell + 2), caption, fill="black", spacing=2)
    return sheet


# --------------------------------------------------------------------------- how well a score picks

def best_of_k_rate(passed: torch.Tensor, scores: torch.Tensor, k: int) -> float:
    """Fraction of rows whose best-scored candidate among the first ``k`` passes (best-of-N selection;
    ``passed`` and ``scores`` are (prompts, candidates); ties go to the earlier candidate)."""
    best = scores[:, :k].argmax(dim=1)
    return float(passed[torch.arange(len(passed)), best].float().mean())


def within_prompt_auc(passed: torch.Tensor, scores: torch.Tensor) -> float | None:
    """Probability that a passing candidate outscores a failing one of the same prompt (ties count half): the
    ROC AUC pooled over prompts with both kinds, None where no prompt has both. 0.5 is a score blind to what
    the check sees, 1.0 one that always picks a passing candidate when there is one."""
    wins = pairs = 0.0
    for ok, s in zip(passed.bool(), scores.float()):
        good, bad = s[ok], s[~ok]
        if len(good) and len(bad):
            diff = good[:, None] - bad[None, :]
            wins += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
            pairs += len(good) * len(bad)
    return wins / pairs if pairs else None
