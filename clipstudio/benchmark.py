"""Benchmarks (issue 15): seconds per step of the guidance loop against its floor, the classic VQGAN+CLIP loop
written plainly beside ours, and the CFG sampler of the diffusion backend.

The *floor* of a guidance step is what no implementation can skip: the CLIP forward and backward passes on
the step's cutouts plus the generator's forward and backward passes, timed apart in the same process.
``overhead = step_s / floor_s`` is then what the loop adds (cutouts, augmentations, losses, optimizer).

Every timing is the median over ``repeat`` samples after ``warmup`` untimed ones, and the samples of the
things compared (step, floor, plain loop) are interleaved, so load from other processes falls on all alike.
Each sample records wall seconds and, on CPU, the process's CPU seconds: with one thread, CPU seconds are
what the wall seconds would be on an idle core, which is the fairer figure on a shared machine.
"""
from __future__ import annotations

import copy
import dataclasses
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import GenerateConfig
from .devices import autocast, native_precision, resolve_device
from .generators.base import clamp_with_grad
from .guide.cutouts import CLASSIC_AUGMENTS
from .studio import Studio, validate_config

DEFAULT_PROMPT = "a red circle on a blue background"

# The classic VQGAN+CLIP notebook's per-step work (``bench --preset classic``); see :class:`PlainClassicLoop`.
CLASSIC_SETTINGS: dict[str, Any] = {
    "generator": "vqgan", "generator_options": {"model": "vqgan_imagenet_f16_16384"},
    "clip": ["ViT-B-32:openai"], "width": 256, "height": 256, "cutn": 32, "cut_mode": "pooled",
    "augments": list(CLASSIC_AUGMENTS), "cut_noise": 0.1, "lr": 0.1, "optimizer": "adam",
    "schedule": "constant", "weight_decay": 0.0, "losses": {}, "search": 0, "layout": "none",
}
PRESETS = {"classic": CLASSIC_SETTINGS}

# The keys of a generate benchmark's JSON, and of a diffuse benchmark's (tests check them).
GENERATE_KEYS = ("backend", "settings", "step_s", "floor_s", "overhead", "floor_parts", "search_s",
                 "peak_memory_mb", "memory", "repeat", "clock", "samples")
DIFFUSE_KEYS = ("backend", "settings", "step_s", "floor_s", "overhead", "peak_memory_mb", "memory", "repeat",
                "clock", "samples")


@dataclass
class BenchResult:
    """One benchmark's figures; :meth:`to_dict` is the ``--json`` output."""

    backend: str
    settings: dict[str, Any]
    step_s: float
    floor_s: float
    peak_memory_mb: float
    memory: str  # "rss" (CPU: the process's peak resident set) or "cuda_max_allocated"
    repeat: int
    clock: str  # "cpu" (process CPU seconds) or "wall"
    samples: dict[str, list[float]] = field(default_factory=dict)  # the timed samples, by name, in seconds
    floor_parts: dict[str, float] = field(default_factory=dict)
    search_s: float = 0.0
    plain_step_s: float | None = None  # the classic preset: the plain reference loop's step
    kornia_step_s: float | None = None  # --kornia-baseline: the same step with kornia's augmentation forward
    # --breakdown: each stage of the step beyond the floor, timed alone (see overhead_jobs)
    overhead_parts: dict[str, float] | None = None

    @property
    def overhead(self) -> float:
        return self.step_s / self.floor_s if self.floor_s > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        data["overhead"] = self.overhead
        if self.plain_step_s is not None:
            data["ours_vs_plain"] = self.step_s / self.plain_step_s
        if self.kornia_step_s is not None:
            data["ours_vs_kornia"] = self.step_s / self.kornia_step_s
        if self.overhead_parts is not None:  # what the stages alone do not account for: losses, bookkeeping
            data["overhead_rest_s"] = self.step_s - self.floor_s - sum(self.overhead_parts.values())
        if self.backend == "diffuse":
            data.pop("floor_parts", None), data.pop("search_s", None)
        return data


# --- timing and memory -----------------------------------------------------------------------------------

class Timer:
    """Times calls on one clock ("cpu": process CPU seconds; "wall"), synchronizing CUDA around each call."""

    def __init__(self, device: torch.device, clock: str = "auto"):
        self.device = device
        if clock == "auto":
            clock = "wall" if device.type == "cuda" else "cpu"
        self.clock = clock
        self._now = time.process_time if clock == "cpu" else time.perf_counter

    def __call__(self, fn: Callable[[], Any]) -> float:
        self._sync()
        start = self._now()
        fn()
        self._sync()
        return self._now() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def interleaved(timer: Timer, jobs: dict[str, Callable[[], Any]], repeat: int, warmup: int
                ) -> dict[str, list[float]]:
    """``warmup`` untimed rounds, then ``repeat`` timed rounds of every job in turn; samples by job name."""
    for _ in range(warmup):
        for job in jobs.values():
            job()
    samples: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeat):
        for name, job in jobs.items():
            samples[name].append(timer(job))
    return samples


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory in MiB and what it is: CUDA's max_memory_allocated, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "rss"


# --- the guidance loop -----------------------------------------------------------------------------------

def preset_settings(preset: str | None, random_weights: bool = False) -> dict[str, Any]:
    """The settings of a named preset (none: {}), with random-weight models if asked."""
    if preset is None:
        settings: dict[str, Any] = {}
    elif preset in PRESETS:
        settings = copy.deepcopy(PRESETS[preset])
    else:
        from .errors import ClipstudioError

        raise ClipstudioError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    return with_random_weights(settings) if random_weights else settings


def with_random_weights(settings: dict[str, Any]) -> dict[str, Any]:
    """The same architectures with random weights, so nothing is downloaded: open_clip models get the
    ``:random`` tag, a VQGAN the ``random_weights`` option (embedded models are files already)."""
    settings = dict(settings)
    clips = settings.get("clip", GenerateConfig().clip)
    settings["clip"] = [f"{spec.partition(':')[0]}:random" if _is_open_clip(spec) else spec for spec in clips]
    if settings.get("generator") == "vqgan":
        settings["generator_options"] = {**settings.get("generator_options", {}), "random_weights": True}
    return settings


def _is_open_clip(spec: str) -> bool:
    import open_clip

    return spec.partition(":")[0] in open_clip.list_models()


def describe(config: GenerateConfig) -> dict[str, Any]:
    """The settings a benchmark reports."""
    return {"generator": config.generator, "generator_options": dict(config.generator_options),
            "clip": list(config.clip), "size": [config.width, config.height], "cutn": config.cutn,
            "cut_mode": config.cut_mode, "augments": list(config.augments), "dtype": config.dtype,
            "channels_last": config.channels_last,
            "fast_augments": config.fast_augments, "batched_draw": config.batched_draw,
            "fused_optimizer": config.fused_optimizer, **machine(resolve_device(config.device), config.dtype)}


def machine(device: torch.device, dtype: str = "float32") -> dict[str, Any]:
    """Where a benchmark ran: the device, torch's threads, and on a CPU its vector instruction set and whether
    it computes ``dtype`` natively (emulated bfloat16 is slower than float32, native bfloat16 faster)."""
    facts: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cpu":
        facts["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        facts["native_dtype"] = native_precision(dtype)
    return facts


def floor_jobs(studio: Studio) -> dict[str, Callable[[], None]]:
    """The floor's two parts: every CLIP's forward+backward on ``cutn`` inputs, the generator's forward+backward."""
    device = studio.device
    inputs = [torch.rand(studio.config.cutn, 3, g.image_size, g.image_size, device=device, requires_grad=True)
              for g in studio.guides]

    def clip_pass() -> None:
        with autocast(studio.device, studio.config.dtype):
            total = sum(guide.encode_image(x).float().sum() for guide, x in zip(studio.guides, inputs))
        total.backward()

    def generator_pass() -> None:
        with autocast(studio.device, studio.config.dtype):
            image = studio.generator().float()
        image.backward(torch.ones_like(image))
        studio.optimizer.zero_grad(set_to_none=True)

    return {"clip": clip_pass, "generator": generator_pass}


OVERHEAD_PREFIX = "part:"  # the sample names of --breakdown's jobs


def overhead_jobs(studio: Studio) -> dict[str, Callable[[], None]]:
    """The step's own work beyond the floor, each stage alone on this run's image and cutouts: the draw of the
    cutouts' parameters, the views (forward+backward), each augmentation in turn on the previous one's output
    (forward+backward), the noise and clamp (forward+backward), and the optimizer's update (on copies of the
    parameters, so the run's own are not moved). The losses and the loop's bookkeeping are what is left."""
    cutouts = studio.cutouts
    with torch.no_grad():
        image = studio.generator().float()
    params = cutouts.draw(image.shape[-2], image.shape[-1])
    if image.shape[0] > 1:
        params = params.tiled(image.shape[0])

    def backward_through(stage: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
        x = x.detach().clone().requires_grad_(True)

        def run() -> None:
            out = stage(x)
            out.backward(torch.ones_like(out))
            x.grad = None

        return run

    jobs = {"draw": lambda: cutouts.draw(image.shape[-2], image.shape[-1]),
            "views": backward_through(lambda x: cutouts.views(x, params.boxes, params.same_view), image)}
    with torch.no_grad():
        cuts = cutouts.views(image, params.boxes, params.same_view)
    for index, (name, aug, aug_params) in enumerate(zip(cutouts.augment_names, cutouts.augments, params.augment)):
        key = name if name not in jobs else f"{name}.{index}"
        jobs[key] = backward_through(lambda x, aug=aug, p=aug_params: cutouts.augment(aug, x, p), cuts)
        with torch.no_grad():
            cuts = cutouts.augment(aug, cuts, aug_params)
    jobs["noise"] = backward_through(lambda x: cutouts.add_noise(x, params.noise), cuts)
    jobs["optimizer"] = _optimizer_on_copies(studio.optimizer)
    return jobs


def _optimizer_on_copies(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """``optimizer``'s kind and settings stepping copies of its parameters, with small random gradients."""
    groups = []
    for group in optimizer.param_groups:
        copies = [p.detach().clone().requires_grad_(True) for p in group["params"]]
        for p in copies:
            p.grad = torch.randn_like(p) * 1e-3
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": copies})
    twin = type(optimizer)(groups)
    return twin.step


def bench_studio(config: GenerateConfig, repeat: int = 3, warmup: int = 1, clock: str = "auto",
                 plain: bool = False, trust_checkpoint: bool = False, kornia_baseline: bool = False,
                 breakdown: bool = False) -> BenchResult:
    """Seconds per step of ``Studio.step`` (its search timed apart), against the floor; with ``plain``, the
    classic preset's plain reference loop (:class:`PlainClassicLoop`) is timed in the same rounds; with
    ``kornia_baseline``, the same studio's step with its augmentations through kornia's ``forward``
    (``fast_augments`` off), so a run measures what the fast replay saves; with ``breakdown``, each stage of
    the step beyond the floor alone (:func:`overhead_jobs`), in the same rounds."""
    config = validate_config(config)
    studio = Studio(config, trust_checkpoint=trust_checkpoint)
    timer = Timer(studio.device, clock)
    search_s = timer(studio._search_once)
    jobs: dict[str, Callable[[], Any]] = {"step": studio.step, **floor_jobs(studio)}
    if plain:
        jobs["plain"] = PlainClassicLoop.beside(studio).step
    if kornia_baseline:
        jobs["kornia_step"] = _kornia_step(studio)
    if breakdown:
        jobs.update({OVERHEAD_PREFIX + name: job for name, job in overhead_jobs(studio).items()})
    reset_peak_memory(studio.device)
    samples = interleaved(timer, jobs, repeat, warmup)
    median = {name: statistics.median(values) for name, values in samples.items()}
    memory, kind = peak_memory(studio.device)
    parts = {name[len(OVERHEAD_PREFIX):]: value for name, value in median.items() if name.startswith(OVERHEAD_PREFIX)}
    return BenchResult(
        backend="generate", settings=describe(config), step_s=median["step"],
        floor_s=median["clip"] + median["generator"], peak_memory_mb=memory, memory=kind, repeat=repeat,
        clock=timer.clock, samples=samples, search_s=search_s,
        floor_parts={"clip": median["clip"], "generator": median["generator"]},
        plain_step_s=median.get("plain"), kornia_step_s=median.get("kornia_step"), overhead_parts=parts or None,
    )


def _kornia_step(studio: Studio) -> Callable[[], Any]:
    """``studio.step`` with every cutout augmentation run through kornia's ``forward``."""

    def step() -> None:
        fast = studio.cutouts.fast
        studio.cutouts.fast = False
        try:
            studio.step()
        finally:
            studio.cutouts.fast = fast

    return step


# --- the plain reference of the classic loop -------------------------------------------------------------

class NotebookCutouts(nn.Module):
    """The classic notebooks' ``MakeCutouts`` as written there: a Python loop pooling the whole image once
    per cutout, then the kornia augmentations on the batch, then noise ``U(0, 0.1) * N(0, 1)``."""

    def __init__(self, cut_size: int, cutn: int, noise_fac: float = 0.1):
        super().__init__()
        import kornia.augmentation as K

        self.cut_size, self.cutn, self.noise_fac = cut_size, cutn, noise_fac
        self.augs = nn.Sequential(
            K.RandomAffine(degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="zeros"),
            K.RandomPerspective(0.7, p=0.7),
            K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7),
            K.RandomErasing((0.1, 0.4), (0.3, 1 / 0.3), same_on_batch=True, p=0.7),
        )
        self.av_pool = nn.AdaptiveAvgPool2d((cut_size, cut_size))
        self.max_pool = nn.AdaptiveMaxPool2d((cut_size, cut_size))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        cutouts = []
        for _ in range(self.cutn):
            cutouts.append((self.av_pool(image) + self.max_pool(image)) / 2)
        batch = self.augs(torch.cat(cutouts, dim=0))
        facs = batch.new_empty([self.cutn, 1, 1, 1]).uniform_(0, self.noise_fac)
        return batch + facs * torch.randn_like(batch)


class ReplaceGrad(torch.autograd.Function):
    """The notebooks' straight-through helper: the value of ``x_forward``, the gradient of ``x_backward``."""

    @staticmethod
    def forward(ctx, x_forward: torch.Tensor, x_backward: torch.Tensor) -> torch.Tensor:
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx, grad_in: torch.Tensor):
        return None, grad_in.sum_to_size(ctx.shape)


def notebook_vector_quantize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The notebooks' quantizer: full distance matrix, argmin, one-hot product, straight-through."""
    d = x.pow(2).sum(dim=-1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * x @ codebook.T
    x_q = nn.functional.one_hot(d.argmin(-1), codebook.shape[0]).to(d.dtype) @ codebook
    return ReplaceGrad.apply(x_q, x)


class PlainClassicLoop:
    """The classic VQGAN+CLIP step written plainly, as in the notebooks (Crowson's VQGAN+CLIP, with the later
    pooled ``MakeCutouts``): synth (quantize, decode, clamp with gradient), cutouts, CLIP, spherical distance
    to one text prompt, Adam at lr 0.1, latents clamped to the codebook's range. It shares the models of
    the studio it is built beside (its own contiguous copy of the VQGAN), so only the loop differs."""

    def __init__(self, vqgan: nn.Module, clip_model: nn.Module, mean: torch.Tensor, std: torch.Tensor,
                 text_embed: torch.Tensor, size: tuple[int, int], cutn: int, cut_size: int, lr: float = 0.1):
        self.vqgan, self.perceptor, self.mean, self.std = vqgan, clip_model, mean, std
        self.embed = nn.functional.normalize(text_embed.view(1, -1), dim=-1)
        self.make_cutouts = NotebookCutouts(cut_size, cutn)
        codebook = vqgan.quantize.embedding.weight
        factor = 2 ** (vqgan.decoder.num_resolutions - 1)
        toks_x, toks_y, n_toks = size[0] // factor, size[1] // factor, codebook.shape[0]
        one_hot = nn.functional.one_hot(torch.randint(n_toks, [toks_y * toks_x]), n_toks).float().to(codebook.device)
        z = (one_hot @ codebook).view(1, toks_y, toks_x, -1).permute(0, 3, 1, 2)
        self.z = z.detach().clone().requires_grad_(True)
        self.z_min = codebook.min(dim=0).values[None, :, None, None]
        self.z_max = codebook.max(dim=0).values[None, :, None, None]
        self.opt = torch.optim.Adam([self.z], lr=lr)

    @classmethod
    def beside(cls, studio: Studio) -> PlainClassicLoop:
        """The plain loop on the models of a classic-preset ``studio`` (one CLIP, a VQGAN generator)."""
        vqgan = copy.deepcopy(studio.generator.model)
        for conv in vqgan.modules():  # undo the studio's channels_last: the plain loop is the stock one
            if isinstance(conv, nn.Conv2d):
                conv.weight.data = conv.weight.data.contiguous()
        guide, loss = studio.guides[0], next(iter(studio.losses.values()))
        config = studio.config
        return cls(vqgan, guide.model, guide.mean, guide.std, loss.targets[0], (config.width, config.height),
                   config.cutn, guide.image_size, config.lr)

    def synth(self) -> torch.Tensor:
        z_q = notebook_vector_quantize(self.z.movedim(1, 3), self.vqgan.quantize.embedding.weight).movedim(3, 1)
        return clamp_with_grad(self.vqgan.decode(z_q).add(1).div(2), 0, 1)

    def loss(self) -> torch.Tensor:
        cutouts = self.make_cutouts(self.synth())
        image_embeds = self.perceptor.encode_image((cutouts - self.mean) / self.std).float()
        input_normed = nn.functional.normalize(image_embeds.unsqueeze(1), dim=2)
        embed_normed = nn.functional.normalize(self.embed.unsqueeze(0), dim=2)
        dists = input_normed.sub(embed_normed).norm(dim=2).div(2).arcsin().pow(2).mul(2)
        return dists.mean()

    def step(self) -> float:
        self.opt.zero_grad()
        loss = self.loss()
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            self.z.copy_(self.z.maximum(self.z_min).minimum(self.z_max))
        return loss.item()


# --- the diffusion backend -------------------------------------------------------------------------------

def bench_diffuse(model: str | None = None, steps: int = 20, n: int = 1, repeat: int = 3, warmup: int = 1,
                  device: str = "cpu", clock: str = "auto", prompt: str = DEFAULT_PROMPT) -> BenchResult:
    """Seconds per sampler step of the CFG loop (one ``cfg_sample`` of ``steps`` steps, divided), against the
    floor: one batched UNet call on the conditional and unconditional halves."""
    from .diffusion.backend import cfg_sample, encode_prompts, load_embedded_backend, make_scheduler

    from .embedded import world_default

    model = model or world_default("diffusion")
    backend = load_embedded_backend(model, device=device)
    unet = backend.unet
    dev, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    cond, uncond = encode_prompts(backend.text_encoder, prompt, None, n)
    shape = (n, *backend.sample_shape)
    timer = Timer(dev, clock)

    @torch.no_grad()
    def sample() -> None:
        scheduler = make_scheduler(backend.default_sampler, config=backend.scheduler_config)
        cfg_sample(unet, scheduler, cond, uncond, shape, guidance=backend.default_guidance, steps=steps,
                   generator=torch.Generator().manual_seed(0))

    x = torch.randn((2 * n, *backend.sample_shape), device=dev, dtype=dtype)
    emb = torch.cat([cond, uncond]).to(dev, dtype)
    t = torch.tensor(500, device=dev)

    @torch.no_grad()
    def unet_call() -> None:
        unet(x, t, encoder_hidden_states=emb)

    reset_peak_memory(dev)
    samples = interleaved(timer, {"sample": sample, "unet": unet_call}, repeat, warmup)
    samples["step"] = [s / steps for s in samples.pop("sample")]
    memory, kind = peak_memory(dev)
    dtype_name = str(dtype).replace("torch.", "")
    settings = {"model": model, "sampler": backend.default_sampler, "steps": steps, "n": n,
                "guidance": backend.default_guidance, "dtype": dtype_name, **machine(dev, dtype_name)}
    return BenchResult(backend="diffuse", settings=settings, step_s=statistics.median(samples["step"]),
                       floor_s=statistics.median(samples["unet"]), peak_memory_mb=memory, memory=kind,
                       repeat=repeat, clock=timer.clock, samples=samples)


def format_table(result: BenchResult) -> str:
    """The result as a small two-column table."""
    data = result.to_dict()
    rows = [(key, value) for key, value in data["settings"].items()]
    rows += [("clock", data["clock"]), ("step_s", data["step_s"]), ("floor_s", data["floor_s"])]
    rows += [(f"  floor {name}_s", value) for name, value in data.get("floor_parts", {}).items()]
    rows += [("overhead", data["overhead"])]
    if "plain_step_s" in data:
        rows += [("plain_step_s", data["plain_step_s"]), ("ours_vs_plain", data["ours_vs_plain"])]
    if "kornia_step_s" in data:
        rows += [("kornia_step_s", data["kornia_step_s"]), ("ours_vs_kornia", data["ours_vs_kornia"])]
    if "overhead_parts" in data:
        rows += [(f"  part {name}_s", value) for name, value in data["overhead_parts"].items()]
        rows += [("  rest_s (losses, bookkeeping)", data["overhead_rest_s"])]
    if data["backend"] == "generate":
        rows += [("search_s (not in step_s)", data["search_s"])]
    rows += [(f"peak_memory_mb ({data['memory']})", data["peak_memory_mb"]), ("repeat", data["repeat"])]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {_show(value)}" for name, value in rows)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return str(value)
