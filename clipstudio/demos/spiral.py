"""The 2-D spiral demo: DDPM, DDIM and flow matching with and without CFG on a 3-armed spiral.

A tiny MLP denoiser (eps prediction) and a tiny velocity MLP (flow matching) are trained in
seconds on points of a spiral whose arms are the classes; the class is dropped 30% of the time so
one network gives both the conditional and the unconditional prediction (classifier-free guidance,
Ho & Salimans 2022). Sampling reuses the pure functions of :mod:`clipstudio.diffusion.sampling`.

:func:`run_demo` writes a PNG (matplotlib, Agg) with the data, reverse-time trajectories of each
sampler, the collapse of a DDPM-trained ancestral sampler whose noise is removed, and CFG; the command is
``clipstudio demo spiral``. Which model a sampler uses comes from the one sampler registry,
:data:`clipstudio.diffusion.sampling.SAMPLERS` (its ``prediction``: 'epsilon' or 'flow').
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from clipstudio.diffusion import sampling as S
from clipstudio.errors import ClipstudioError
from clipstudio.schedules import lr_factor

N_ARMS = 3
NULL_CLASS = N_ARMS            # the "no class" token used for the unconditional branch
NUM_TRAIN_TIMESTEPS = 1000


# --------------------------------------------------------------------------- data

def arm_curve(k: int, n: int = 400, n_arms: int = N_ARMS) -> torch.Tensor:
    """Noise-free centre line of arm k: an Archimedean spiral segment, n points (n x 2)."""
    r = torch.linspace(0.15, 1.0, n)
    theta = 1.5 * math.pi * r + 2 * math.pi * k / n_arms
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1) * 2.0


def sample_spiral(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.07,
                  n_arms: int = N_ARMS) -> tuple[torch.Tensor, torch.Tensor]:
    """n points of the spiral (n x 2, roughly unit scale) and their arm labels (n,)."""
    labels = torch.randint(0, n_arms, (n,), generator=generator)
    r = torch.rand(n, generator=generator) * 0.85 + 0.15
    theta = 1.5 * math.pi * r + 2 * math.pi * labels / n_arms
    pts = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1) * 2.0
    pts = pts + noise * torch.randn(n, 2, generator=generator)
    return pts, labels


_CURVES = None


def nearest_arm(x: torch.Tensor) -> torch.Tensor:
    """The simple classifier: the arm whose centre line passes closest to each point."""
    global _CURVES
    if _CURVES is None:
        _CURVES = torch.stack([arm_curve(k) for k in range(N_ARMS)])      # A x n x 2
    d = torch.cdist(x.float().unsqueeze(0).expand(N_ARMS, -1, -1), _CURVES)  # A x N x n
    return d.min(dim=2).values.argmin(dim=0)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (Szekely & Rizzo) between two point sets."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def rbf_mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float = 0.1) -> float:
    """Squared MMD with a Gaussian kernel (Gretton et al. 2012), biased V-statistic; small bandwidth sees the arms."""
    x, y = x.double(), y.double()

    def k(a, b):
        return torch.exp(-torch.cdist(a, b) ** 2 / (2 * bandwidth ** 2)).mean()
    return float(k(x, x) + k(y, y) - 2 * k(x, y))


# --------------------------------------------------------------------------- model

class TinyDenoiser(nn.Module):
    """Residual MLP f(x, t, class) -> R^2: Fourier features of x, FiLM blocks fed by time + class embeddings.

    Class index ``NULL_CLASS`` is the unconditional (dropped-class) input used by CFG.
    """

    def __init__(self, hidden: int = 128, n_blocks: int = 3, n_freq: int = 16, n_xfreq: int = 6,
                 n_classes: int = N_ARMS, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
        super().__init__()
        self.n_freq = n_freq
        self.num_train_timesteps = num_train_timesteps
        self.register_buffer("x_freqs", 2.0 ** torch.arange(n_xfreq, dtype=torch.float32), persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(2 * n_freq, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.class_emb = nn.Embedding(n_classes + 1, hidden)
        self.inp = nn.Linear(2 + 4 * n_xfreq, hidden)
        self.blocks = nn.ModuleList(_FiLMBlock(hidden) for _ in range(n_blocks))
        self.out = nn.Linear(hidden, 2)

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        tt = t.float().reshape(-1, 1) / self.num_train_timesteps
        freqs = torch.exp(torch.arange(self.n_freq, device=t.device) * (math.log(1000.0) / self.n_freq))
        ang = tt * freqs * math.pi
        return torch.cat([ang.sin(), ang.cos()], 1)

    def x_features(self, x: torch.Tensor) -> torch.Tensor:
        ang = (x.unsqueeze(-1) * self.x_freqs).flatten(1)          # Fourier features of the input
        return torch.cat([x, ang.sin(), ang.cos()], 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        e = F.silu(self.time_mlp(self.time_features(t)) + self.class_emb(cls))
        h = self.inp(self.x_features(x))
        for block in self.blocks:
            h = block(h, e)
        return self.out(h)


class _FiLMBlock(nn.Module):
    """h + MLP(LayerNorm(h) * (1 + scale(e)) + shift(e))."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.film = nn.Linear(hidden, 2 * hidden)
        self.lin1 = nn.Linear(hidden, hidden)
        self.lin2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(e).chunk(2, dim=1)
        z = self.norm(h) * (1 + scale) + shift
        return h + self.lin2(F.silu(self.lin1(F.silu(z))))


@dataclass
class SpiralModels:
    eps_model: TinyDenoiser        # DDPM-trained noise predictor
    flow_model: TinyDenoiser       # flow-matching velocity predictor
    schedule: S.DiffusionSchedule
    flow_schedule: S.FlowSchedule
    train_seconds: float


def train_spiral(steps: int = 1500, batch: int = 512, lr: float = 2e-3, seed: int = 0,
                 p_uncond: float = 0.3, objective: str = "eps", hidden: int = 128) -> TinyDenoiser:
    """Train one TinyDenoiser on the spiral, seeded: objective 'eps' (DDPM, Ho et al. 2020) or 'flow' (v = noise - x0)."""
    if objective not in ("eps", "flow"):
        raise ClipstudioError(f"unknown objective '{objective}'; choose eps or flow")
    S.check_steps(steps)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TinyDenoiser(hidden=hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(      # linear warm-up, cosine decay to 0 (the package's one schedule)
        opt, lambda i: lr_factor("cosine", i, steps, warm, floor=0.0))
    abar = S.DiffusionSchedule.linear(NUM_TRAIN_TIMESTEPS).alphas_cumprod.float()
    for _ in range(steps):
        x0, cls = sample_spiral(batch, g)
        drop = torch.rand(batch, generator=g) < p_uncond
        cls = torch.where(drop, torch.full_like(cls, NULL_CLASS), cls)
        noise = torch.randn(batch, 2, generator=g)
        if objective == "eps":
            t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=g)
            xt = S.q_sample(x0, t, noise, abar)
            target = noise
        else:
            s = torch.rand(batch, generator=g)
            xt = S.flow_interpolate(x0, s, noise)
            t = s * NUM_TRAIN_TIMESTEPS
            target = S.flow_velocity(x0, noise)
        loss = (model(xt, t, cls) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def train_models(steps: int = 1500, seed: int = 0) -> SpiralModels:
    """Train the eps model and the flow model (seeded) and return them with their schedules."""
    t0 = time.perf_counter()
    eps_model = train_spiral(steps, seed=seed, objective="eps")
    flow_model = train_spiral(steps, seed=seed + 1, objective="flow")
    return SpiralModels(eps_model, flow_model, S.DiffusionSchedule.linear(NUM_TRAIN_TIMESTEPS),
                        S.FlowSchedule(NUM_TRAIN_TIMESTEPS), time.perf_counter() - t0)


# --------------------------------------------------------------------------- sampling

@torch.no_grad()
def generate(models: SpiralModels, sampler: str, n: int = 1000, steps: int = 50, seed: int = 0,
             cls: Optional[int] = None, w: float = 1.0, trajectory: Optional[list] = None,
             **options) -> torch.Tensor:
    """n samples (n x 2) from a registered sampler; cls=None is unconditional, else CFG with weight w."""
    entry = S.sampler_entry(sampler)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    if entry.prediction == "epsilon":
        model, schedule = models.eps_model, models.schedule
    else:
        model, schedule = models.flow_model, models.flow_schedule
    uncond = torch.full((n,), NULL_CLASS, dtype=torch.long)
    if cls is None:
        model_fn = S.bind_cond(model, uncond)
    else:
        if not 0 <= cls < N_ARMS:
            raise ClipstudioError(f"class must be in 0..{N_ARMS - 1}, got {cls}")
        cond = torch.full((n,), cls, dtype=torch.long)
        model_fn = S.cfg_model(model, cond, uncond, w)
    return entry.fn(model_fn, x, steps, schedule, generator=g, trajectory=trajectory, **options)


def class_accuracy(models: SpiralModels, sampler: str, w: float, n_per_class: int = 300,
                   steps: int = 50, seed: int = 0) -> float:
    """Share of CFG samples (weight w) that the nearest-arm classifier assigns to the requested arm."""
    hits = 0
    for k in range(N_ARMS):
        x = generate(models, sampler, n_per_class, steps, seed=seed + k, cls=k, w=w)
        hits += int((nearest_arm(x) == k).sum())
    return hits / (N_ARMS * n_per_class)


# --------------------------------------------------------------------------- figure

# plot() is one figure laid out panel by panel; split up, its axes would be passed around for no gain in reading.
def plot(models: SpiralModels, out: str, steps: int = 50, collapse_steps: int = 10, seed: int = 0) -> dict:
    """Write the demo figure to `out` and return the energy distances and accuracies it shows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ["tab:red", "tab:blue", "tab:green"]
    data, labels = sample_spiral(1000, torch.Generator().manual_seed(seed + 100))
    stats = {}
    fig, axes = plt.subplots(2, 4, figsize=(18, 9))
    ax = axes[0, 0]
    for k in range(N_ARMS):
        m = labels == k
        ax.scatter(data[m, 0], data[m, 1], s=3, c=colors[k], label=f"arm {k}")
    ax.set_title("training data (classes = arms)")
    ax.legend(markerscale=4, fontsize=8)

    panels = [("ddpm", {}, f"DDPM ancestral, {steps} steps"),
              ("ddim", {}, f"DDIM (eta=0), {steps} steps"),
              ("flow-euler", {}, f"flow matching Euler, {steps} steps"),
              ("euler", {}, f"Euler (Karras sigmas), {steps} steps")]
    for ax, (name, opts, title) in zip([axes[0, 1], axes[0, 2], axes[0, 3], axes[1, 0]], panels):
        traj: list = []
        x = generate(models, name, 1000, steps, seed=seed, trajectory=traj, **opts)
        ed = energy_distance(x, data)
        stats[f"energy_{name}"] = ed
        tr = torch.stack(traj)                       # steps+1 x n x 2
        for i in range(25):
            ax.plot(tr[:, i, 0], tr[:, i, 1], lw=0.6, alpha=0.6, color="gray")
        ax.scatter(data[:, 0], data[:, 1], s=1, c="lightgray")
        ax.scatter(x[:, 0], x[:, 1], s=2, c="black")
        ax.scatter(tr[0, :25, 0], tr[0, :25, 1], s=8, c="orange", label="start (noise)")
        ax.set_title(f"{title}\nenergy distance {ed:.4f}")
        ax.legend(fontsize=8)

    ax = axes[1, 1]
    x_ok = generate(models, "ddpm", 1000, collapse_steps, seed=seed)
    x_col = generate(models, "ddpm", 1000, collapse_steps, seed=seed, noise_scale=0.0)
    stats["energy_ddpm_few_steps"] = energy_distance(x_ok, data)
    stats["energy_ddpm_no_noise"] = energy_distance(x_col, data)
    ax.scatter(data[:, 0], data[:, 1], s=1, c="lightgray", label="data")
    ax.scatter(x_ok[:, 0], x_ok[:, 1], s=2, c="tab:blue", label=f"with noise (ED {stats['energy_ddpm_few_steps']:.3f})")
    ax.scatter(x_col[:, 0], x_col[:, 1], s=2, c="tab:red", label=f"noise removed (ED {stats['energy_ddpm_no_noise']:.3f})")
    ax.set_title(f"DDPM ancestral, {collapse_steps} steps: noise removed\ncollapses toward the mean")
    ax.legend(fontsize=8, markerscale=4)

    for ax, w in zip([axes[1, 2], axes[1, 3]], [1.0, 4.0]):
        acc = class_accuracy(models, "ddim", w, n_per_class=300, steps=steps, seed=seed)
        stats[f"accuracy_ddim_w{w:g}"] = acc
        ax.scatter(data[:, 0], data[:, 1], s=1, c="lightgray")
        for k in range(N_ARMS):
            x = generate(models, "ddim", 300, steps, seed=seed + k, cls=k, w=w)
            ax.scatter(x[:, 0], x[:, 1], s=2, c=colors[k])
        ax.set_title(f"DDIM conditional on arm, CFG w={w:g}\nnearest-arm accuracy {acc:.3f}")

    for ax in axes.flat:
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_aspect("equal")
    fig.suptitle(f"clipstudio spiral demo (training {models.train_seconds:.1f} s on CPU)")
    fig.tight_layout()
    from clipstudio.images import atomic_write
    try:
        atomic_write(out, lambda handle: fig.savefig(handle, format="png", dpi=80))
    finally:
        plt.close(fig)
    return stats


def run_demo(out: str, steps: int = 50, train_steps: int = 1500, seed: int = 0) -> tuple[SpiralModels, dict]:
    """Train the tiny models (seeded) and write the figure to ``out``; returns the models and its figures."""
    from clipstudio.images import check_writable
    S.check_steps(steps)
    S.check_steps(train_steps)
    check_writable(out)                      # before a minute of training, not after
    models = train_models(train_steps, seed)
    return models, plot(models, out, steps=steps, seed=seed)
