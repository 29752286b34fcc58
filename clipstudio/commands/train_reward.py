"""``clipstudio train reward``: fine-tune the shapes diffusion model toward a reward (the guide CLIP's score, or
the colour-and-geometry checker as a black box) and measure the over-optimization curve. Every option derives
from :class:`clipstudio.worlds.shapes.train_reward.RewardTrainConfig`, where its default lives."""
from __future__ import annotations

import argparse

from ..errors import ClipstudioError
from ._options import add_trainer_parser, apply_threads, command_line, typed_settings

HELPS = {
    "model": "the embedded diffusion model to start from",
    "checkpoint": "a shapes-diffusion checkpoint file to start from instead of --model",
    "reward": "what to maximise: shapes-guide (guide-CLIP cosine, differentiable) or check (the checker, black box)",
    "method": "draft: DRaFT-K, backpropagate through the last K sampling steps; rwr: reward-weighted regression; "
              "raft: regress on the best of --rwr-samples samples per training prompt",
    "steps": "optimizer steps",
    "batch": "prompts per step",
    "guidance": "CFG weights a step draws from (repeat the option for several)",
    "sample_steps": "DDIM steps of the training samples",
    "sample_eta": "--method draft: stochasticity of the training samples' DDIM steps (0 deterministic, 1 ancestral "
                  "as DDPM)",
    "grad_steps": "DRaFT's K: sampling steps the reward's gradient flows through",
    "grad_checkpoint": "recompute the K steps' activations in the backward pass (less memory)",
    "anchor": "weight of the L2 pull to the starting weights",
    "lora_rank": "0: fine-tune every UNet weight; else a LoRA of this rank on to_q/to_k/to_v/to_out",
    "lora_alpha": "LoRA scale numerator (None: the rank, so scale 1)",
    "rwr_samples": "images per prompt for --method rwr and raft",
    "raft_guidance": "CFG weight of --method raft's samples",
    "p_uncond": "--method raft: probability of training a sample with the empty caption (keeps CFG's unconditional half)",
    "ema_decay": "0: ship the trained weights; else an average of them with this decay per step, started at "
                 "the starting weights (it evens out the step-to-step noise of fine-tuning)",
    "rwr_beta": "RWR temperature: weights exp(reward / beta) within a prompt's samples",
    "kl_weight": "weight of a KL term (DPOK) between the fine-tuned and the reference model's denoising steps, on "
                 "free-colour captions and the reference's own samples of them (keeps the colours it leaves free)",
    "kl_reference": "the KL term's reference: a checkpoint file or an embedded model (None: the starting model)",
    "default_sampler": "the sampler the shipped checkpoint names as its default, for diffuse, eval and compare "
                       "(None: the starting model's; it does not change the training)",
    "train_prompts": "size of the training prompt set (prompt_set seed 2026, evaluation prompts removed)",
    "eval_every": "measure the held-out curve every this many steps",
    "curve_prompts": "held-out curve prompts (prompt_set seed 4242, evaluation and training prompts removed)",
    "curve_guidance": "CFG weight of the curve's samples",
    "curve_steps": "DDIM steps of the curve's samples",
    "diversity_prompts": "curve prompts whose samples over --diversity-seeds seeds measure diversity",
    "diversity_seeds": "seeds per diversity prompt",
    "out": "the shippable checkpoint (a .json card beside it; OUT.best.pt holds the best curve point)",
    "state": "full training state for --resume (None: OUT.state)",
    "curve": "the curve as JSON (None: OUT.curve.json)",
    "resume": "continue from --state if it exists",
    "max_minutes": "stop (and save) after this many wall-clock minutes of this invocation (curve included)",
    "stop_after": "stop (and save) at this step; --resume later",
}


def register(sub: argparse._SubParsersAction) -> None:
    from ..worlds.shapes.train_reward import METHODS, OPTIONAL_TYPES, RewardTrainConfig, list_rewards

    parser = add_trainer_parser(
        sub, "reward", RewardTrainConfig, help="fine-tune the shapes diffusion model toward a reward (DRaFT or RWR)",
        description="Fine-tune the shapes world's diffusion model toward a reward and measure where it starts to "
                    "please the reward rather than the checker.",
        helps=HELPS, run=run, types=OPTIONAL_TYPES, choices={"method": METHODS, "reward": list_rewards()})
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also draw the curve (of this run, and of --plot-with runs) as one figure")
    parser.add_argument("--plot-with", action="append", default=None, metavar="LABEL=CURVE.json",
                        help="another run's curve JSON to draw beside this one (repeatable)")


def run(args: argparse.Namespace) -> int:
    from ..images import check_writable
    from ..worlds.shapes.train_reward import RewardTrainConfig, plot_curve, train

    apply_threads(args.threads)
    settings = typed_settings(args, RewardTrainConfig)
    config = RewardTrainConfig(**settings).validate()
    others = read_other_curves(args.plot_with or [])
    if args.plot:
        check_writable(args.plot)
    summary = train(config, progress=not args.quiet, command=command_line("train reward", settings))
    best = summary["best"]
    print(f"saved {config.out} at step {summary['step']} ({summary['train_seconds']:.0f} s); best curve point: "
          f"step {best['step']}, pass rate {best['pass_rate']:.3f} -> {config.best_path}")
    if args.plot:
        label = f"{config.method} / {config.reward} / lr {config.lr:g}"
        histories = {label: summary["history"]} if config.reward == "shapes-guide" else None
        onset = plot_curve({label: summary["curve"], **others}, args.plot, histories=histories,
                           window=config.eval_every)
        print(f"wrote {args.plot}" + (f"; over-optimization after step {onset}" if onset is not None else ""))
    return 0


def read_other_curves(items: list[str]) -> dict:
    """LABEL=CURVE.json options -> {label: curve points}; a bad item is one line of error."""
    import json

    curves = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ClipstudioError(f"--plot-with takes LABEL=CURVE.json, got '{item}'")
        try:
            curves[label] = json.loads(open(path).read())["curve"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ClipstudioError(f"--plot-with: cannot read a curve from {path} ({type(e).__name__})") from None
    return curves
