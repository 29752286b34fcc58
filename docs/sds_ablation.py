"""Score distillation alone, with no CLIP guide: the ablation behind issue 12's SDS figures (README).

    python docs/sds_ablation.py --generator pixels -n 20 --prompt-seed 31 --steps 200 --lr 0.2 --guidance 3
    python docs/sds_ablation.py --generator direct -n 50 --prompt-seed 31 --steps 100 --lr 0.1 --guidance 7.5

``pixels`` and ``latent`` optimize that generator against the ``sds`` loss only (Adam; pixels by image-space SDS,
the TAEF2 latent generator on its own latent, as the loss's default ``space: auto`` does in a run);
``direct`` optimizes the diffusion model's own normalized latents with DreamFusion's latent-space loss.
``--denoise-steps K`` sets the loss's multi-step target. ``--parametrization rgb`` gives the pixels generator
the recipe's plain RGB pixels. Each image is judged by the world's colour-and-geometry check.
"""
import argparse
import time

import numpy as np
import torch

from clipstudio.diffusion.distillation import noise_to_time, score_distillation_loss
from clipstudio.generators import build_generator
from clipstudio.guide.prompts import parse_prompts
from clipstudio.losses import LossContext, build_loss
from clipstudio.worlds.shapes.check import check_image
from clipstudio.worlds.shapes.prompts import prompt_set


def direct_image(sds, steps: int, lr: float) -> torch.Tensor:
    """SDS on the model's normalized latents themselves, decoded at the end (images in [0, 1])."""
    z = torch.nn.Parameter(torch.randn(1, 32, 8, 8))  # the shapes model's 8x8x32 latent of a 64 px image
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        frac = torch.empty(1).uniform_(sds.t_min, sds.t_max)
        with torch.no_grad():
            x_t, t = noise_to_time(z.detach(), torch.randn_like(z), frac, sds.prediction, sds.alphas_cumprod)
            target = sds._guided_x0(x_t, t)
        opt.zero_grad()
        score_distillation_loss(z, target).sum().backward()
        opt.step()
    with torch.no_grad():
        return (sds.decoder(z) + 1) / 2


def generator_image(sds, name: str, steps: int, lr: float, parametrization: str) -> torch.Tensor:
    """The generator's image after ``steps`` Adam steps on the SDS loss alone."""
    options = {"vae": "taef2"} if name == "latent" else {"parametrization": parametrization}
    generator = build_generator(name, (64, 64), **options)
    opt = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        opt.zero_grad()
        sds(LossContext(generator(), None, None, step, code=generator.code())).sum().backward()
        opt.step()
    with torch.no_grad():
        return generator()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", choices=("pixels", "latent", "direct"), default="pixels")
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--prompt-seed", type=int, default=31)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--parametrization", choices=("fourier", "rgb"), default="fourier")
    parser.add_argument("--denoise-steps", type=int, default=1, help="the sds option denoise_steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = "latent" if args.generator == "direct" else "auto"
    sds = build_loss("sds", parse_prompts("x"), model="shapes-diffusion", guidance=args.guidance, space=space,
                     denoise_steps=args.denoise_steps)
    passed, start = 0, time.perf_counter()
    prompts = prompt_set(args.n, args.prompt_seed)
    for index, prompt in enumerate(prompts):
        torch.manual_seed(index)
        sds.set_prompts(parse_prompts(prompt))
        if args.generator == "direct":
            image = direct_image(sds, args.steps, args.lr)
        else:
            image = generator_image(sds, args.generator, args.steps, args.lr, args.parametrization)
        pixels = (image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        passed += check_image(pixels, prompt).passed
    seconds = (time.perf_counter() - start) / len(prompts)
    print(f"{vars(args)}: {passed}/{len(prompts)} pass ({passed / len(prompts):.0%}), {seconds:.1f} s per image")


if __name__ == "__main__":
    main()
