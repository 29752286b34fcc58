"""Tiny, fast generator setups written into a tmp folder, shared by the generator tests.

``TINY_GENERATOR_OPTIONS[name](tmp_path)`` writes whatever files generator ``name`` needs into ``tmp_path`` and
returns the options that build a tiny instance of it through ``build_generator(name, size, **options)``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

# The real TAEF2 files: ${CLIPSTUDIO_SHARED:-<repo>/../shared}/weights/taef2 (absent on some machines).
SHARED = Path(os.environ.get("CLIPSTUDIO_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SHARED_TAEF2 = SHARED / "weights" / "taef2"
HAVE_TAEF2 = all((SHARED_TAEF2 / f"taef2_{part}.pth").is_file() for part in ("encoder", "decoder"))


def tiny_vqgan_config(gumbel: bool = False) -> dict[str, Any]:
    """A taming model config as in the released YAMLs, shrunk: ch 32 (taming's GroupNorm needs 32 groups),
    two levels (down-sampling factor 2), an attention block at the lower level."""
    ddconfig = {
        "double_z": False, "z_channels": 8, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 1], "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0,
    }
    target = "taming.models.vqgan.GumbelVQ" if gumbel else "taming.models.vqgan.VQModel"
    params: dict[str, Any] = {"embed_dim": 8, "n_embed": 16, "ddconfig": ddconfig,
                              "lossconfig": {"target": "taming.modules.losses.vqperceptual.DummyLoss"}}
    if gumbel:
        params["kl_weight"] = 1e-8
        params["temperature_scheduler_config"] = {"target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler"}
    return {"model": {"base_learning_rate": 4.5e-6, "target": target, "params": params}}


def write_tiny_vqgan(folder: Path, gumbel: bool = False, extra_objects: bool = False,
                     seed: int = 0) -> tuple[Path, Path]:
    """Write a random tiny VQGAN as a Lightning-style ``.ckpt`` (state dict under "state_dict", with the
    training-only "loss." keys real checkpoints carry) and its ``.yaml``; return (ckpt, yaml).

    ``extra_objects`` also pickles an ``argparse.Namespace`` of hyper-parameters, as old Lightning versions
    did, which ``torch.load(weights_only=True)`` refuses.
    """
    from clipstudio.generators.vqgan import VQGANAutoencoder, read_config

    folder.mkdir(parents=True, exist_ok=True)
    name = "tiny_gumbel" if gumbel else "tiny_vq"
    config_path = folder / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(tiny_vqgan_config(gumbel)))
    torch.manual_seed(seed)
    model = VQGANAutoencoder(read_config(config_path))
    with torch.no_grad():  # taming initialises the codebook in a tiny range; spread it like a trained one
        model.codebook.normal_()
    state = dict(model.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.zeros(2, 3, 4, 4)
    ckpt: dict[str, Any] = {"epoch": 1, "global_step": 10, "state_dict": state}
    if extra_objects:
        ckpt["hparams"] = argparse.Namespace(lr=4.5e-6)
    ckpt_path = folder / f"{name}.ckpt"
    torch.save(ckpt, ckpt_path)
    return ckpt_path, config_path


def write_tiny_taef2(folder: Path, width: int = 8, latent_channels: int = 4, seed: int = 0) -> Path:
    """Write a random narrow TAEF2 pair as ``taef2_encoder.pth`` / ``taef2_decoder.pth``; return the folder."""
    from clipstudio.generators.taef2 import taef2_decoder, taef2_encoder

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(taef2_encoder(latent_channels, width).half().state_dict(), folder / "taef2_encoder.pth")
    torch.save(taef2_decoder(latent_channels, width).half().state_dict(), folder / "taef2_decoder.pth")
    return folder


def disc_image(size: int = 96) -> torch.Tensor:
    """A synthetic test image (1,3,size,size) in [0, 1]: an orange disc with a soft 1-px edge on a blue
    background."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    dist = np.hypot(yy - 0.45 * size, xx - 0.55 * size) - 0.3 * size
    inside = np.clip(0.5 - dist, 0.0, 1.0)[..., None]
    image = inside * np.array([0.9, 0.6, 0.15], np.float32) + (1 - inside) * np.array([0.2, 0.35, 0.7], np.float32)
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).contiguous()


def _tiny_vqgan_options(tmp_path: Path) -> dict[str, Any]:
    ckpt, config = write_tiny_vqgan(tmp_path / "vqgan")
    return {"checkpoint": str(ckpt), "config": str(config)}


def _tiny_latent_options(tmp_path: Path) -> dict[str, Any]:
    return {"vae": "taef2", "weights_dir": str(write_tiny_taef2(tmp_path / "taef2"))}


TINY_GENERATOR_OPTIONS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "vqgan": _tiny_vqgan_options,
    "latent": _tiny_latent_options,
}
