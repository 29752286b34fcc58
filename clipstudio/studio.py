"""The CLIP-guidance loop: a :class:`Studio` that a notebook can step, or run to the end."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ._version import __version__
from .checkpoints import load_checkpoint
from .config import GenerateConfig
from .devices import autocast, resolve_device, rng_state, set_rng_state
from .errors import ClipstudioError
from .generators import build_generator, generator_class
from .generators.base import Choice
from .guide.clip import clip_input_size, load_clip
from .guide.cutouts import CutoutParams, Cutouts
from .guide.prompts import Prompt, image_prompt, negative_prompt, parse_prompts
from .guide.targets import combination_embedding
from .images import atomic_write, load_image, save_png, tensor_to_pil
from .losses import ClipLoss, LossContext, build_loss
from .resources import check_fits, estimate_peak_bytes
from .schedules import ema_decay, lr_factor


# The search judges at most this many pixels (option images plus their cutouts) in one batch, unless one
# restart's options alone hold more: at the shapes world's 64 px every restart's options share one batch (the
# guide's time per image falls with the batch), while at 4096 px each restart's options go alone, as before.
SEARCH_BATCH_PIXELS = 1 << 22


@dataclass
class StepInfo:
    """What one step did: its index, each loss term (unweighted), the total, and whether it was skipped."""

    step: int
    losses: dict[str, float]
    total: float
    skipped: bool = False
    reason: str = ""


@dataclass
class GenerateResult:
    """A finished run: the image, the final losses, and the settings that reproduce it."""

    image: Image.Image
    losses: dict[str, float]
    settings: GenerateConfig
    weights: dict[str, float]
    steps_run: int = 0
    skipped_steps: int = 0
    seconds: float = 0.0
    history: list[float] = field(default_factory=list)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps_run, 1)

    def metadata(self) -> dict[str, Any]:
        """What goes into the PNG: version, settings, loss weights and final losses."""
        return {"version": __version__, "settings": self.settings.to_full_dict(),
                "weights": self.weights, "losses": self.losses}

    def save(self, path: str | Path) -> Path:
        """Write the image as PNG atomically, with the settings in its metadata."""
        return save_png(self.image, path, self.metadata())


def validate_config(config: GenerateConfig) -> GenerateConfig:
    """:meth:`GenerateConfig.validate`, and the names it holds checked against the registries."""
    from .generators import GENERATORS, list_generators
    from .guide.cutouts import AUGMENTS, list_augments
    from .losses import LOSSES, list_losses

    config.validate()
    resolve_device(config.device)  # a CUDA device on a machine without one fails here, before any work
    if config.prompt.strip():
        parse_prompts(config.prompt)  # malformed or unbounded weights fail before models load
    for text in config.negative:
        negative_prompt(text)
    for spec in config.image_prompts:
        _require_file(image_prompt(spec).text, "image prompt")
    if config.init_image:
        _require_file(config.init_image, "init image")
    if config.weights_dir and not Path(config.weights_dir).expanduser().is_dir():
        raise ClipstudioError(f"weights folder not found: {config.weights_dir}")
    if config.generator not in GENERATORS:
        raise ClipstudioError(f"unknown generator '{config.generator}'; choose one of: {', '.join(list_generators())}")
    if config.layout != "none" and config.layout not in GENERATORS:
        raise ClipstudioError(f"unknown layout '{config.layout}'; choose none or one of: {', '.join(list_generators())}")
    unknown = [name for name in config.augments if name not in AUGMENTS]
    if unknown:
        raise ClipstudioError(f"unknown augment '{unknown[0]}'; choose from: {', '.join(list_augments())}")
    unknown = [name for name in config.losses if name not in LOSSES]
    if unknown:
        raise ClipstudioError(f"unknown loss '{unknown[0]}'; choose from: {', '.join(list_losses())}")
    return config


def _require_file(path: str, what: str) -> None:
    if not Path(path).expanduser().is_file():
        raise ClipstudioError(f"image not found: {path} (the {what})")


def check_memory(config: GenerateConfig) -> None:
    """Fail in a second, with one line naming the setting to lower, when the run's estimated peak memory
    (:func:`clipstudio.resources.estimate_peak_bytes`) exceeds what the device has free."""
    guide_size = max(clip_input_size(spec) for spec in config.clip)
    parts = estimate_peak_bytes(config.width, config.height, config.cutn, guide_size, config.generator,
                                guides=len(config.clip))
    check_fits(parts, str(resolve_device(config.device)))


class Studio:
    """One guided-generation run that can be stepped: ``studio.step()``, ``studio.image()``, ``studio.run()``.

    The optimizer uses only the generator contract: ``parameters()``, ``forward()`` and ``post_step()``.
    """

    def __init__(self, config: GenerateConfig, *, trust_checkpoint: bool = False):
        self.config = validate_config(config)
        # Not a setting: trust comes from the command line of the current run, never from a file.
        self.trust_checkpoint = trust_checkpoint is True
        check_memory(config)  # before any model loads
        self.device = resolve_device(config.device)
        self.guides = [load_clip(spec, str(self.device), config.weights_dir) for spec in config.clip]
        torch.manual_seed(config.seed)  # after model loading, which may or may not draw random numbers
        self.init_image = load_image(config.init_image).to(self.device) if config.init_image else None
        layout = resolve_layout(config)
        if layout:  # coarse to fine: the layout generator's searched image is the init of this one
            layout_studio = Studio(layout_config(config, layout), trust_checkpoint=self.trust_checkpoint)
            layout_studio.run()
            self.init_image = layout_studio.image_tensor()
        self.generator = build_generator(
            config.generator, (config.width, config.height), init_image=self.init_image, **self._generator_options()
        ).to(self.device)
        if self.init_image is not None:
            self.init_image = self.generator().detach()  # the init as the generator renders it, at output size
        if config.channels_last:  # the same numbers; convolutions run faster in this layout on CPU
            to_channels_last(self.generator)
            for guide in self.guides:  # shapes-guide's forward+backward on 16 cutouts: 14.5 ms -> 11.7 ms
                to_channels_last(guide)
        self.cutouts = Cutouts(max(g.image_size for g in self.guides), config.cutn, config.cut_pow,
                               config.cut_min, config.augments, config.cut_noise, config.cut_mode,
                               fast=config.fast_augments, batched_draw=config.batched_draw).to(self.device)
        self.losses, self.weights = self._build_losses()
        params = [p for p in self.generator.parameters() if p.requires_grad]
        if not params:
            raise ClipstudioError(f"generator '{config.generator}' has no trainable parameters")
        opt_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        fused = {"fused": True} if config.fused_optimizer and self.device.type in ("cpu", "cuda") else {}
        self.optimizer = opt_class(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
        # The latent L2's pull: toward the init image's latents (the anchor the lineage used), else toward zero.
        self.latent_targets = [p.detach().clone() if self.init_image is not None else torch.zeros_like(p)
                               for p in params] if config.latent_l2 else []
        self.ema: list[torch.Tensor] = [p.detach().clone() for p in params] if config.ema else []
        self.ema_updates = 0
        self.step_index = 0
        self.skipped = 0
        self.history: list[float] = []
        self.last: StepInfo | None = None
        self.searched = False

    def _generator_options(self) -> dict[str, Any]:
        """The generator's options, plus ``weights_dir`` for generators that load model files."""
        options = dict(self.config.generator_options)
        accepts = inspect.signature(generator_class(self.config.generator).__init__).parameters
        if self.config.weights_dir and "weights_dir" in accepts:
            options.setdefault("weights_dir", self.config.weights_dir)
        if self.trust_checkpoint and "trusted" in accepts:
            options["trusted"] = True
        return options

    def _prompts(self) -> list[Prompt]:
        prompts = parse_prompts(self.config.prompt) if self.config.prompt.strip() else []
        prompts += [negative_prompt(text) for text in self.config.negative]
        prompts += [image_prompt(spec) for spec in self.config.image_prompts]
        return prompts

    def set_prompts(self, prompts: list[Prompt]) -> None:
        """Guide the following steps toward other prompts (a schedule, a live playlist), keeping the
        generator and optimizer state: each CLIP loss gets the new targets and weights.

        The run's settings keep the prompts it started with; whoever changes them records the change.
        """
        if not prompts:
            raise ClipstudioError("give at least one prompt")
        for index, guide in enumerate(self.guides):
            key = f"clip{index}" if len(self.guides) > 1 else "clip"
            self.losses[key] = ClipLoss(guide, prompts, self._image_prompt_embeds(prompts, guide)).to(self.device)
        for loss in self.losses.values():
            if loss.needs_prompts:  # score distillation conditions its model on the new prompts
                loss.set_prompts(prompts)

    def _image_prompt_embeds(self, prompts: list[Prompt], guide) -> dict[str, torch.Tensor]:
        embeds = {}
        for prompt in prompts:
            if prompt.terms:  # embedding arithmetic: one target from several texts and images
                embeds[prompt.text] = combination_embedding(prompt, guide, self.device)
            elif prompt.is_image:
                image = load_image(prompt.text).to(self.device)
                image = torch.nn.functional.interpolate(image, size=(guide.image_size,) * 2,
                                                        mode="bicubic", antialias=True).clamp(0, 1)
                with torch.no_grad():
                    embeds[prompt.text] = guide.encode_image(image)[0]
        return embeds

    def _build_losses(self) -> tuple[torch.nn.ModuleDict, dict[str, float]]:
        prompts = self._prompts()
        losses, weights = torch.nn.ModuleDict(), {}
        for index, guide in enumerate(self.guides):
            key = f"clip{index}" if len(self.guides) > 1 else "clip"
            losses[key] = ClipLoss(guide, prompts, self._image_prompt_embeds(prompts, guide))
            weights[key] = 1.0 / len(self.guides)  # an ensemble averages its models' losses
        for name, weight in self.config.losses.items():
            if weight > 0:
                losses[name] = build_loss(name, prompts, **self.config.loss_options.get(name, {}))
                weights[name] = float(weight)
        if self.config.latent_l2:  # a term on the latents, not the image: computed in _objective
            weights[LATENT_L2] = float(self.config.latent_l2)
        return losses.to(self.device), weights

    def _objective(self, images: torch.Tensor | None = None, cutout_params: CutoutParams | None = None,
                   cutter: Cutouts | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total and unweighted terms, one value per image: of the generator's image by default, or
        of given ``images`` (N, 3, H, W), all judged on the same cutouts (``cutout_params``, else new ones,
        made by ``cutter``, else by the run's cutouts)."""
        cutter = cutter or self.cutouts
        with autocast(self.device, self.config.dtype):  # mixed precision, if asked for
            image = self.generator() if images is None else images
            cutouts = None
            if any(loss.needs_cutouts for loss in self.losses.values()):
                params = cutout_params or cutter.draw(image.shape[-2], image.shape[-1])
                cutouts = cutter.apply(image.float(), params)
            code = self.generator.code() if images is None else None
            ctx = LossContext(image=image.float(), cutouts=cutouts, init_image=self.init_image, step=self.step_index,
                              code=code)
            terms = {name: loss(ctx).float() for name, loss in self.losses.items()}
        if self.config.latent_l2:
            terms[LATENT_L2] = self._latent_l2().expand(image.shape[0])
        total = sum(self._weight(name) * value for name, value in terms.items())
        return total, terms

    def _weight(self, name: str) -> float:
        """A term's weight at this step: the latent L2's decays over the run by ``latent_l2_schedule``."""
        if name != LATENT_L2:
            return self.weights[name]
        c = self.config
        return self.weights[name] * lr_factor(c.latent_l2_schedule, self.step_index, c.steps, floor=0.0)

    def _latent_l2(self) -> torch.Tensor:
        """Mean squared distance of the trainable latents from their targets (the MSE-regularized VQGAN+CLIP's
        latent loss, toward zero from noise, toward the init's latents from an init image)."""
        params = list(self.optimizer_params())
        squared = sum(((p - t) ** 2).sum() for p, t in zip(params, self.latent_targets))
        return squared / sum(p.numel() for p in params)

    @torch.no_grad()
    def search(self, sweeps: int, restarts: int = 1) -> float:
        """Coordinate search over the generator's discrete choices; returns the best loss (plus the choices'
        costs) found.

        Each choice is set to each of its allowed options, the images are judged together and the best
        option is kept, sweep after sweep until one changes nothing. ``restarts`` runs start from random
        options and the best end state wins. The restarts run in lockstep on copies of the generator, so
        one judgement scores every restart's options in one batch (CLIP's time per image falls with the
        batch: on the CPU, 0.34 ms at 20 images and 0.20 ms at 120 for shapes-guide). All judgements use
        the same cutouts, so they compare images rather than augmentation noise.
        """
        choices = self.generator.choices()
        if not choices or sweeps < 1:
            return math.inf
        cutter = self._search_cutouts()
        params = cutter.draw(self.config.height, self.config.width)
        generators = [self.generator] + [_search_copy(self.generator) for _ in range(max(restarts, 1) - 1)]
        runs = [choices] + [generator.choices() for generator in generators[1:]]
        for run in runs[1:]:
            _randomize(run)
        losses = self._coordinate_descent(generators, runs, sweeps, params, cutter)
        totals = [loss + sum(choice.cost(choice.get()) for choice in run) for loss, run in zip(losses, runs)]
        best = min(range(len(totals)), key=totals.__getitem__)
        if best:
            self.generator.load_state_dict(generators[best].state_dict())
        return totals[best]

    def _search_cutouts(self) -> Cutouts:
        """The cutouts that judge the search: the run's, or as many as ``config.search_cutn`` of the same kind
        (judging options needs fewer views than a gradient step, and costs their number in CLIP passes)."""
        c = self.config
        if not c.search_cutn or c.search_cutn == c.cutn:
            return self.cutouts
        return Cutouts(self.cutouts.size, c.search_cutn, c.cut_pow, c.cut_min, c.augments, c.cut_noise,
                       c.cut_mode, fast=c.fast_augments, batched_draw=c.batched_draw).to(self.device)

    def _coordinate_descent(self, generators: list[torch.nn.Module], runs: list[list[Choice]], sweeps: int,
                            params: CutoutParams, cutter: Cutouts) -> list[float]:
        """Sweeps of coordinate descent for every run (a generator and its choices) in lockstep; each run
        stops when a sweep changes none of its choices. Returns each run's last judged loss."""
        losses = [math.inf] * len(runs)
        active = list(range(len(runs)))
        # Pixels (images plus their cutouts) judged in one batch: several runs' options share a batch up to
        # this, and one run's options always do (as before the lockstep), so large images cost what they did.
        per_image = self.config.width * self.config.height + cutter.cutn * cutter.size ** 2
        runs_per_batch = max(1, SEARCH_BATCH_PIXELS // (per_image * max(c.options for c in runs[0])))
        for _ in range(sweeps):
            changed = set()
            for index in range(len(runs[0])):
                for start in range(0, len(active), runs_per_batch):
                    batch = active[start:start + runs_per_batch]
                    changed |= self._judge_choice([runs[run][index] for run in batch],
                                                  [generators[run] for run in batch], batch, losses, params, cutter)
            active = [run for run in active if run in changed]
            if not active:
                break
        return losses

    def _judge_choice(self, choices: list[Choice], generators: list[torch.nn.Module], ids: list[int],
                      losses: list[float], params: CutoutParams, cutter: Cutouts) -> set[int]:
        """Set each choice (one per run ``ids``) to its best allowed option, all options judged in one batch;
        records each run's loss and returns the runs whose choice changed."""
        tried, images = [], []
        for choice, generator in zip(choices, generators):
            before = choice.get()
            options = [o for o in range(choice.options) if choice.allowed(o)] or [before]
            images.append(generator.render_options(choice, options))
            tried.append((options, before))
        totals = self._objective(torch.cat(images), params, cutter)[0]
        totals = torch.where(torch.isfinite(totals), totals, torch.full_like(totals, math.inf)).tolist()
        changed = set()
        for run, choice, (options, before) in zip(ids, choices, tried):
            scores, totals = totals[:len(options)], totals[len(options):]
            best = min(range(len(options)), key=lambda k: scores[k] + choice.cost(options[k]))
            choice.set(options[best])
            losses[run] = scores[best]
            if options[best] != before:
                changed.add(run)
        return changed

    def _search_once(self) -> None:
        """The configured search, once, before the first step (a resumed run has done it already)."""
        if not self.searched and self.step_index == 0 and self.config.search:
            self.search(self.config.search, self.config.search_restarts)
        self.searched = True

    def step(self) -> StepInfo:
        """One optimizer step. A NaN or inf in the loss or a gradient skips the step (and says so).

        Before the first step, the generator's discrete choices are searched (``config.search`` sweeps).
        """
        self._search_once()
        self.optimizer.zero_grad(set_to_none=True)
        total, terms = self._objective()
        total, terms = total[0], {name: value[0] for name, value in terms.items()}
        if total.requires_grad:  # also when not finite (no sync to ask): the step is then skipped, and a skip is rare
            total.backward()
        host_terms, host_total, reason = self._check_finite(total, terms)
        info = StepInfo(self.step_index, host_terms, host_total)
        if reason:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            info.skipped, info.reason = True, reason
            warnings.warn(f"step {self.step_index}: {reason}; step skipped")
        else:
            if self.config.grad_norm:
                self._normalize_gradients()
            self._set_lr()
            self.optimizer.step()
            self.generator.post_step()
            self._update_ema()
            self.history.append(info.total)
        self.step_index += 1
        self.last = info
        return info

    def _check_finite(self, total: torch.Tensor, terms: dict[str, torch.Tensor]
                      ) -> tuple[dict[str, float], float, str]:
        """The terms and total as floats, and why the step must be skipped ("" if it need not): one
        device-to-host copy for all of them and the gradients' finiteness (each ``float()`` would be a sync)."""
        grads = [p.grad for p in self.optimizer_params() if p.grad is not None]
        grad_norm = torch.stack(torch._foreach_norm(grads)).sum() if grads else total.new_zeros(())
        values = torch.stack([*(v.detach().float() for v in terms.values()), total.detach().float(),
                              grad_norm.float()]).tolist()
        host_terms, host_total = dict(zip(terms, values[:-2])), values[-2]
        if not math.isfinite(host_total):
            return host_terms, host_total, "loss is not finite"
        return host_terms, host_total, "" if math.isfinite(values[-1]) else "gradient is not finite"

    @torch.no_grad()
    def _normalize_gradients(self) -> None:
        """Each parameter's gradient to unit L2 norm (the lineage's "normalized gradient" variants): every step
        moves the latents as far, however weak the guide's gradient has become."""
        for p in self.optimizer_params():
            if p.grad is not None:
                p.grad.div_(p.grad.norm().clamp(min=1e-12))

    @torch.no_grad()
    def _update_ema(self) -> None:
        """Move the parameter EMA toward the parameters (warmed-up decay, :func:`clipstudio.schedules.ema_decay`)."""
        if not self.ema:
            return
        decay = ema_decay(self.config.ema, self.ema_updates)
        torch._foreach_lerp_(self.ema, [p.detach() for p in self.optimizer_params()], 1 - decay)
        self.ema_updates += 1

    def reset_ema(self) -> None:
        """Restart the EMA at the current parameters (after an animation moves the image into them)."""
        if self.ema:
            self.ema = [p.detach().clone() for p in self.optimizer_params()]
            self.ema_updates = 0

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Within this block the generator holds the EMA of its parameters (if ``config.ema``), so what it
        renders is the output image; the optimized parameters come back after it."""
        if not self.ema:
            yield
            return
        params = list(self.optimizer_params())
        current = [p.detach().clone() for p in params]
        try:
            _copy_into(params, self.ema)
            yield
        finally:
            _copy_into(params, current)

    def _set_lr(self) -> None:
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = c.lr * lr_factor(c.schedule, self.step_index, c.steps, c.warmup)

    def optimizer_params(self) -> Iterator[torch.nn.Parameter]:
        for group in self.optimizer.param_groups:
            yield from group["params"]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: latents, optimizer, step, RNG and settings.

        The RNG states are CPU tensors (:func:`clipstudio.devices.rng_state`), so a run saved on a GPU resumes
        on a CPU and the other way round."""
        state = {"settings": self.config.to_full_dict(), "step": self.step_index, "skipped": self.skipped,
                 "history": list(self.history), "generator": self.generator.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "rng": rng_state()}
        if self.ema:  # the output image is the EMA's, so it resumes too
            state["ema"] = {"params": [t.detach().cpu().clone() for t in self.ema], "updates": self.ema_updates}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; a run with other settings, or a state with a missing or malformed
        part, is refused with one line (and leaves this studio as it was)."""
        if not isinstance(state, dict):
            raise ClipstudioError(f"the checkpoint is not a run state (a {type(state).__name__})")
        missing = [key for key in ("settings", "step", "skipped", "history", "generator", "optimizer", "rng")
                   if key not in state]
        if missing:
            raise ClipstudioError(f"the checkpoint lacks {', '.join(missing)}; it is not a clipstudio run state")
        saved, current = _portable(_with_defaults(state["settings"])), _portable(self.config.to_full_dict())
        # Searched already, and no layout's search made the init image: the search's settings are spent.
        if isinstance(state["step"], int) and state["step"] > 0 and resolve_layout(self.config) is None:
            saved, current = self._without_search_settings(saved), self._without_search_settings(current)
        if saved != current:  # device may differ
            differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k)) \
                if isinstance(saved, dict) else []
            detail = f" ({', '.join(differ[:4])} differ)" if differ else ""
            raise ClipstudioError(f"the checkpoint was made with other settings{detail}; refusing to resume from it")
        step, skipped, history, rng = state["step"], state["skipped"], state["history"], state["rng"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (step, skipped)) \
                or not 0 <= skipped <= step:  # an animation runs more steps than config.steps
            raise ClipstudioError(f"the checkpoint's step counts are impossible (step {step!r}, skipped {skipped!r})")
        if not isinstance(history, list) or not all(isinstance(v, float) for v in history):
            raise ClipstudioError("the checkpoint's loss history is not a list of numbers")
        ema = self._checked_ema(state.get("ema"))
        generator_before = copy.deepcopy(self.generator.state_dict())
        try:
            self.generator.load_state_dict(state["generator"])
            self.optimizer.load_state_dict(state["optimizer"])  # casts its state to the parameters' device
            set_rng_state(rng)  # saved device-neutral; a malformed one is one line
        except ClipstudioError:
            self.generator.load_state_dict(generator_before)
            raise
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            self.generator.load_state_dict(generator_before)
            detail = " ".join(str(err).split())[:200] or type(err).__name__
            raise ClipstudioError(f"the checkpoint does not fit this run ({detail})") from None
        self.step_index, self.skipped, self.history = step, skipped, list(history)
        if ema is not None:
            self.ema, self.ema_updates = ema

    def _without_search_settings(self, settings: Any) -> Any:
        """Settings less those only the search before step 0 reads: the search's own and the generator's
        ``search_options`` (a shapes installation's state resumes after the recipe's search changed)."""
        if not isinstance(settings, dict):
            return settings
        spent = set(getattr(type(self.generator), "search_options", ()))
        kept = {k: v for k, v in settings.items() if k not in _SEARCH_SETTINGS}
        if isinstance(kept.get("generator_options"), dict):
            kept["generator_options"] = {k: v for k, v in kept["generator_options"].items() if k not in spent}
        return kept

    def _checked_ema(self, saved: Any) -> tuple[list[torch.Tensor], int] | None:
        """The saved EMA as this run's tensors, or None when the run keeps none; one line if it does not fit."""
        if not self.ema:
            return None
        params = list(self.optimizer_params())
        tensors = saved.get("params") if isinstance(saved, dict) else None
        updates = saved.get("updates") if isinstance(saved, dict) else None
        if not isinstance(tensors, list) or not isinstance(updates, int) or isinstance(updates, bool) \
                or updates < 0 or len(tensors) != len(params) \
                or not all(isinstance(t, torch.Tensor) and t.shape == p.shape for t, p in zip(tensors, params)):
            raise ClipstudioError("the checkpoint lacks this run's parameter EMA (or it does not fit the generator)")
        return [t.to(p) for t, p in zip(tensors, params)], updates

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write :meth:`state_dict` atomically, so a power cut leaves the previous checkpoint intact."""
        return atomic_write(path, lambda handle: torch.save(self.state_dict(), handle))

    def resume(self, path: str | Path) -> bool:
        """Load a checkpoint written by :meth:`save_checkpoint` if there is one; True if it was loaded."""
        path = Path(path)
        if not path.is_file():
            return False
        try:
            self.load_state_dict(load_checkpoint(path, map_location="cpu"))
        except ClipstudioError as err:  # a torn or foreign file: say so rather than start over silently
            raise ClipstudioError(f"cannot resume from {path}: {err}; delete it to start over") from None
        return True

    @torch.no_grad()
    def image_tensor(self) -> torch.Tensor:
        """The current image, (1, 3, H, W) in [0, 1]: the EMA parameters' if ``config.ema``."""
        with self.averaged():
            return self.generator().detach()

    def image(self) -> Image.Image:
        """The current image as PIL; NaNs raise rather than reach a file."""
        return tensor_to_pil(self.image_tensor())

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The current unweighted losses (of the output image: the EMA's if ``config.ema``), without a step."""
        with self.averaged():
            total, terms = self._objective()
        return {**{k: float(v[0]) for k, v in terms.items()}, "total": float(total[0])}

    def run(self, callback: Callable[[Studio, StepInfo], Any] | None = None, progress: bool = False,
            frames_dir: str | Path | None = None, save_every: int = 0,
            checkpoint: str | Path | None = None, checkpoint_every: int = 50) -> GenerateResult:
        """Run the remaining steps; ``callback(studio, info)`` after each, returning False stops early.

        With ``checkpoint``, the run state is saved there every ``checkpoint_every`` steps and at the end.
        """
        bar = _progress_bar(self.config.steps - self.step_index, progress)
        start = time.perf_counter()
        steps_at_start = self.step_index
        bar.set_description("search")  # the search before step 0 can take longer than the steps
        self._search_once()
        bar.set_description("generate")
        while self.step_index < self.config.steps:
            info = self.step()
            bar.update(1)
            bar.set_postfix(loss=f"{info.total:.4f}", skipped=self.skipped)
            if frames_dir and save_every and self.step_index % save_every == 0:
                save_png(self.image(), Path(frames_dir) / f"{self.step_index:05d}.png")
            if checkpoint and self.step_index % max(checkpoint_every, 1) == 0:
                self.save_checkpoint(checkpoint)
            if callback is not None and callback(self, info) is False:
                break
        bar.close()
        if checkpoint:
            self.save_checkpoint(checkpoint)
        ran = self.step_index - steps_at_start
        if ran and self.skipped >= self.step_index and not self.history:
            raise ClipstudioError(f"all {self.step_index} steps were skipped (the loss or its gradient was never "
                                  "finite): nothing was written; check the prompt weights and --lr")
        return self.result(seconds=time.perf_counter() - start, steps_run=self.step_index - steps_at_start)

    def result(self, seconds: float = 0.0, steps_run: int = 0) -> GenerateResult:
        """The run so far as a :class:`GenerateResult`."""
        return GenerateResult(image=self.image(), losses=self.evaluate(), settings=dataclasses.replace(self.config),
                              weights=dict(self.weights), steps_run=steps_run, skipped_steps=self.skipped,
                              seconds=seconds, history=list(self.history))


@torch.no_grad()
def _copy_into(params: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    for param, value in zip(params, values):
        param.copy_(value)


# Settings whose default is not what runs did before the setting existed: their value then.
_BEFORE_THEY_EXISTED = {"batched_draw": False}  # issue 15: runs drew through kornia's forward_parameters


def _with_defaults(settings: Any) -> Any:
    """Saved settings with the settings added since they were saved: at their defaults where the default
    changes nothing, else at what runs did before (``_BEFORE_THEY_EXISTED``)."""
    if not isinstance(settings, dict):
        return settings
    return {**GenerateConfig().to_full_dict(), **_BEFORE_THEY_EXISTED, **settings}


# Read by the search before step 0 only.
_SEARCH_SETTINGS = ("search", "search_restarts", "search_cutn")

# Where it runs, and how fast (the same results to float32 rounding): not what it makes.
_NOT_COMPARED_ON_RESUME = ("device", "fast_augments", "fused_optimizer")


def _portable(settings: Any) -> Any:
    """Settings without those that change where or how fast a run goes, not what it makes (device,
    ``fast_augments``, ``fused_optimizer``): a checkpoint resumes on another machine, with the other
    augmentation path or the other optimizer kernel. Settings added after a checkpoint was written are filled
    in by :func:`_with_defaults`."""
    if not isinstance(settings, dict):
        return settings
    return {k: v for k, v in settings.items() if k not in _NOT_COMPARED_ON_RESUME}


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """Put every 2-D convolution's weight in channels_last memory, in place: PyTorch then runs the convolution
    and what follows it in that layout (the numbers stay the same up to rounding)."""
    for conv in module.modules():
        if isinstance(conv, torch.nn.Conv2d):
            conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
    return module


def resolve_layout(config: GenerateConfig) -> str | None:
    """The generator whose result starts this run (``config.layout``), or None: none is asked for, an init
    image is given, or the layout generator is this run's own."""
    if config.layout in ("none", "") or config.init_image or config.layout == config.generator:
        return None
    return config.layout


def layout_config(config: GenerateConfig, layout: str) -> GenerateConfig:
    """The settings of the layout stage: this run's prompts, guides, size, seed, cutouts and search; the
    layout generator with ``layout_options`` and the default schedule."""
    keep = ("prompt", "negative", "image_prompts", "clip", "width", "height", "seed", "cutn", "cut_pow",
            "cut_min", "cut_noise", "augments", "weights_dir", "device", "dtype", "search", "search_restarts",
            "search_cutn", "cut_mode", "channels_last", "fast_augments", "batched_draw", "fused_optimizer")
    return GenerateConfig(**{name: getattr(config, name) for name in keep}, generator=layout,
                          generator_options=dict(config.layout_options), steps=_LAYOUT_STEPS)


LATENT_L2 = "latent_l2"  # the name of the latent L2 term among the losses
_LAYOUT_STEPS = 20  # gradient steps after the layout's search: it only has to place things


def _search_copy(generator: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``generator`` for one search restart: its own trainable state, but frozen parameters (a
    decoder, a codebook) shared with the original rather than copied once per restart."""
    frozen = {id(p): p for p in generator.parameters() if not p.requires_grad}
    return copy.deepcopy(generator, memo=frozen)


def _randomize(choices: list[Choice]) -> None:
    """Set every choice to a random allowed option (a search restart); uses torch's seeded generator."""
    for choice in choices:
        options = [o for o in range(choice.options) if choice.allowed(o)] or [choice.get()]
        choice.set(options[int(torch.randint(len(options), ()))])


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="generate", unit="step", leave=False)
