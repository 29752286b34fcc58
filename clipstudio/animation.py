"""Animations: a guided image moved a little every frame (zoom, pan, rotate) and refined again, with prompts,
learning rate and cutouts following keyframe schedules (:class:`clipstudio.keyframes.AnimateConfig`).

Each frame is the previous frame's image warped by the frame's motion (kornia), put back into the generator
through its optional ``set_image`` (pixels directly, latent and VQGAN generators by encoding), then refined
for ``steps_per_frame`` steps: the zoom videos of the VQGAN+CLIP notebooks. Frames are PNG files in a folder,
then a video (:mod:`clipstudio.video`). With a checkpoint, the run state is saved atomically after every
frame, and a run started again continues from the frame it reached.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ._version import __version__
from .config import GenerateConfig
from .errors import ClipstudioError
from .guide.cutouts import Cutouts
from .guide.prompts import Prompt, image_prompt, negative_prompt, parse_prompt
from .images import save_png
from .keyframes import AnimateConfig, prompt_blend
from .studio import Studio
from .video import check_video_path, write_video

FrameCallback = Callable[["AnimationStudio", int, Image.Image], Any]


def motion_matrix(zoom: float, angle: float, pan_x: float, pan_y: float, width: int, height: int) -> torch.Tensor:
    """The (1, 2, 3) affine matrix that scales by ``zoom`` and rotates by ``angle`` degrees about the image
    centre, then shifts by (``pan_x``, ``pan_y``) pixels."""
    from kornia.geometry.transform import get_rotation_matrix2d

    centre = torch.tensor([[(width - 1) / 2, (height - 1) / 2]])
    matrix = get_rotation_matrix2d(centre, torch.tensor([float(angle)]), torch.tensor([[float(zoom)] * 2]))
    matrix[:, 0, 2] += pan_x
    matrix[:, 1, 2] += pan_y
    return matrix


def move_image(image: torch.Tensor, zoom: float = 1.0, angle: float = 0.0, pan_x: float = 0.0,
               pan_y: float = 0.0) -> torch.Tensor:
    """An NCHW image warped by :func:`motion_matrix`; borders uncovered by a zoom-out or pan are reflected."""
    from kornia.geometry.transform import warp_affine

    height, width = image.shape[-2:]
    matrix = motion_matrix(zoom, angle, pan_x, pan_y, width, height).to(image)
    moved = warp_affine(image, matrix.expand(image.shape[0], 2, 3), (height, width), mode="bilinear",
                        padding_mode="reflection", align_corners=True)
    return moved.clamp(0, 1)


def is_still(zoom: float, angle: float, pan_x: float, pan_y: float) -> bool:
    return zoom == 1.0 and angle == 0.0 and pan_x == 0.0 and pan_y == 0.0


class AnimationStudio(Studio):
    """A :class:`Studio` that also knows the animation's settings and the frame it reached (both in its
    checkpoints), takes its learning rate from the ``lr`` schedule and moves its image between frames."""

    def __init__(self, config: GenerateConfig, animation: AnimateConfig):
        self.animation = animation.validate()
        super().__init__(config)
        self.frame = 0  # frames finished
        self.lr_now = config.lr
        self.cutout_settings = (config.cutn, config.cut_min)
        self.guided_by: list[tuple[str, float]] | None = None
        self.warned_still = False

    def _set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_now

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "animation": self.animation.to_full_dict(), "frame": self.frame}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("animation") != self.animation.to_full_dict():
            raise ClipstudioError("the checkpoint was made with other animation settings; refusing to resume")
        super().load_state_dict(state)
        self.frame = int(state["frame"])

    def frame_steps(self, frame: int) -> int:
        """How many optimizer steps frame ``frame`` gets."""
        first = self.animation.first_frame_steps
        return (self.config.steps if first is None else first) if frame == 0 else self.animation.steps_per_frame

    def begin_frame(self, frame: int) -> None:
        """Set the frame's prompts, learning rate and cutouts, and (after frame 0) move the image."""
        a, c = self.animation, self.config
        self._guide_frame(frame)
        self.lr_now = a.value("lr", frame, c.lr)
        cutouts = (max(1, round(a.value("cutn", frame, c.cutn))), a.value("cut_min", frame, c.cut_min))
        if cutouts != self.cutout_settings:
            size = max(g.image_size for g in self.guides)
            self.cutouts = Cutouts(size, cutouts[0], c.cut_pow, cutouts[1], c.augments, c.cut_noise,
                                   fast=c.fast_augments, batched_draw=c.batched_draw).to(self.device)
            self.cutout_settings = cutouts
        if frame > 0:
            self.move(a.value("zoom", frame, 1.0), a.value("rotate", frame, 0.0),
                      a.value("pan_x", frame, 0.0), a.value("pan_y", frame, 0.0))

    def _guide_frame(self, frame: int) -> None:
        keys = self.animation.prompt_keys()
        if keys is None:
            return
        blend = prompt_blend(keys, frame, self.animation.transition)
        if blend == self.guided_by:
            return
        prompts = [_weighted(text, weight) for text, weight in blend]
        prompts += [negative_prompt(text) for text in self.config.negative]
        prompts += [image_prompt(spec) for spec in self.config.image_prompts]
        self.set_prompts(prompts)
        self.guided_by = blend

    def move(self, zoom: float, angle: float, pan_x: float, pan_y: float) -> bool:
        """Warp the current image and put it back into the generator; the optimizer's moments belong to the
        old pixels, so they start again (as the lineage's zoom scripts start a new run per frame).
        False (with one warning) when the generator cannot take an image."""
        if is_still(zoom, angle, pan_x, pan_y):
            return True
        moved = move_image(self.image_tensor(), zoom, angle, pan_x, pan_y)
        if not self.generator.set_image(moved):
            if not self.warned_still:
                warnings.warn(f"generator '{self.config.generator}' cannot take an image, so the frames are not "
                              "moved (zoom, pan and rotate are skipped)")
                self.warned_still = True
            return False
        self.optimizer.state.clear()
        self.reset_ema()  # the average of the unmoved parameters would drag the moved image back
        return True

    def frame_metadata(self, frame: int) -> dict[str, Any]:
        return {"version": __version__, "settings": self.config.to_full_dict(),
                "animation": self.animation.to_full_dict(), "frame": frame}


def _weighted(text: str, weight: float) -> Prompt:
    prompt = parse_prompt(text)
    return Prompt(prompt.text, prompt.weight * weight, prompt.stop, prompt.is_image, prompt.terms)


@dataclass
class AnimationResult:
    """A finished (or stopped) animation: its frame files, the video if one was written, and timings."""

    frames: list[Path]
    video: Path | None
    seconds: float
    frames_run: int
    resumed_at: int = 0
    settings: GenerateConfig | None = None
    animation: AnimateConfig = field(default_factory=AnimateConfig)


def frame_path(frames_dir: str | Path, frame: int) -> Path:
    return Path(frames_dir) / f"frame-{frame:05d}.png"


def animate(config: GenerateConfig, animation: AnimateConfig, output: str | Path | None = None,
            frames_dir: str | Path | None = None, callback: FrameCallback | None = None,
            checkpoint: str | Path | None = None, progress: bool = False) -> AnimationResult:
    """Render ``animation.frames`` frames into ``frames_dir`` (default: beside ``output``, ``NAME_frames``) and,
    with ``output`` (.mp4 or .gif), a video of them. ``callback(studio, frame, image)`` runs after each frame;
    returning False stops (the video then holds the frames made so far). With ``checkpoint``, the run resumes
    from the frame a previous run reached."""
    animation.validate()
    keys = animation.prompt_keys()
    if keys and not config.prompt.strip():  # the first keyframe names the run's prompt
        config = config.replace(prompt=keys[0][1])
    if output is not None:
        output = check_video_path(output)
    if frames_dir is None:
        if output is None:
            raise ClipstudioError("give a video output or a frames folder")
        frames_dir = output.with_name(output.stem + "_frames")
    frames_dir = Path(frames_dir)
    frames_dir.mkdir(parents=True, exist_ok=True)
    studio = AnimationStudio(config, animation)
    if checkpoint:
        studio.resume(checkpoint)
    resumed_at, start = studio.frame, time.perf_counter()
    bar = _frames_bar(animation.frames - resumed_at, progress)
    for frame in range(resumed_at, animation.frames):
        studio.begin_frame(frame)
        for _ in range(studio.frame_steps(frame)):
            studio.step()
        image = studio.image()
        save_png(image, frame_path(frames_dir, frame), studio.frame_metadata(frame))
        studio.frame = frame + 1
        if checkpoint:
            studio.save_checkpoint(checkpoint)
        bar.update(1)
        if callback is not None and callback(studio, frame, image) is False:
            break
    bar.close()
    frames = [frame_path(frames_dir, f) for f in range(studio.frame)]
    missing = [p for p in frames if not p.is_file()]
    if missing:
        raise ClipstudioError(f"frame {missing[0]} is missing: delete the checkpoint to render every frame again")
    video = write_video(frames, output, animation.fps, animation.quality) if output is not None and frames else None
    return AnimationResult(frames, video, time.perf_counter() - start, studio.frame - resumed_at, resumed_at,
                           studio.config, animation)


def _frames_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="animate", unit="frame", leave=False)

