"""A tiny seeded shapes-diffusion checkpoint (random weights, pixel space, 32 px) and a test world that ships it
as an embedded model, so the diffuse command runs end to end in about a second (diffusers style)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_MODEL = "tiny-diffusion"


def tiny_unet_config(text_width: int) -> dict:
    """A two-level UNet over the 16x16x12 space-to-depth input: about 0.2 M parameters."""
    return dict(sample_size=16, in_channels=12, out_channels=12, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=text_width, attention_head_dim=8, norm_num_groups=8)


def write_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A seeded random shapes-diffusion checkpoint in the shipped format (fp16 UNet, text-tower snapshot)."""
    from clipstudio.worlds.shapes import diffusion_model as SM

    text_cfg = SM.guide_text_cfg()
    torch.manual_seed(seed)
    tower = SM.build_text_tower(text_cfg, embed_dim=text_cfg["width"])
    snapshot = SM.text_tower_snapshot(tower.state_dict(), SM.world_vocabulary(SM.make_tokenizer(text_cfg), 20))
    ucfg = tiny_unet_config(text_cfg["width"])
    unet = SM.build_unet(ucfg)
    torch.save({"unet_config": ucfg, "unet": {k: v.half() for k, v in unet.state_dict().items()},
                "text_cfg": text_cfg, "text_tower": snapshot, "scheduler_config": SM.scheduler_config("pixel"),
                "default_guidance": 3.0, "default_steps": 4}, path)
    return path


def write_tiny_world(folder: Path, seed: int = 0) -> Path:
    """A world folder whose world.json embeds the tiny checkpoint as ``tiny-diffusion``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_checkpoint(folder / "tiny.pt", seed)
    (folder / "world.json").write_text(json.dumps({
        "name": "tiny-test-world",
        "diffusion": {TINY_MODEL: {"checkpoint": "tiny.pt",
                                   "loader": "clipstudio.worlds.shapes.diffusion_model:load_shapes_backend"}}}))
    return folder


def assert_sds_gives_each_image_a_value_and_a_gradient(loss, size: int) -> None:
    """A score-distillation loss on two random images: one finite value each, and a gradient on the pixels."""
    from clipstudio.losses import LossContext

    image = torch.rand(2, 3, size, size, requires_grad=True)
    torch.manual_seed(0)
    value = loss(LossContext(image=image, cutouts=None, init_image=None, step=0))
    assert value.shape == (2,) and torch.isfinite(value).all()
    value.sum().backward()
    assert image.grad.abs().sum() > 0
