"""Stable Diffusion-style pipelines end to end (issue 16): a tiny random pipeline built the way diffusers' own
tests build theirs (tiny UNet2DConditionModel, tiny CLIPTextModel and CLIPTokenizer, tiny AutoencoderKL, a
scheduler), saved with ``save_pretrained`` and sampled through ``clipstudio diffuse --pipeline DIR``.

The tokenizer is made from a vocabulary written here (the 256 byte-level symbols, their end-of-word forms, a
few merges), so nothing is downloaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from clipstudio.cli import main  # noqa: E402
from clipstudio.diffusion import backend as B  # noqa: E402
from clipstudio.errors import ClipstudioError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MAX_TOKENS = 16
WIDTH = 16  # the text encoder's hidden size, the UNet's cross-attention width


def _tiny_tokenizer(folder: Path):
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges = ["r e", "re d</w>", "c i", "ci r"]
    for merged in ("re", "red</w>", "ci", "cir", "<|startoftext|>", "<|endoftext|>"):
        vocab[merged] = len(vocab)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_TOKENS), len(vocab)


def _tiny_components(tmp: Path) -> dict:
    """Random tiny parts, seeded, with the shapes diffusers' tiny-stable-diffusion test pipeline uses."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer, vocab_size = _tiny_tokenizer(tmp / "tokenizer-src")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, hidden_size=WIDTH,
        intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, vocab_size=vocab_size,
        max_position_embeddings=MAX_TOKENS, layer_norm_eps=1e-5))
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=WIDTH, norm_num_groups=2, attention_head_dim=2)
    vae = diffusers.AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=16)
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    """Two saved tiny pipelines: an epsilon one (DDIM scheduler) and a flow-matching one (same parts)."""
    import diffusers

    tmp = tmp_path_factory.mktemp("pipelines")
    parts = _tiny_components(tmp)
    epsilon = diffusers.StableDiffusionPipeline(
        **parts, scheduler=diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                   clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    epsilon.save_pretrained(tmp / "sd-tiny")
    flow = diffusers.StableDiffusionPipeline(
        **parts, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    flow.save_pretrained(tmp / "flow-tiny")
    return {"epsilon": tmp / "sd-tiny", "flow": tmp / "flow-tiny"}


def _diffuse(pipeline: Path, out: Path, *extra: str) -> int:
    return main(["diffuse", "a red circle", "--pipeline", str(pipeline), "--steps", "3", "--seed", "1",
                 "-o", str(out), *extra])


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.slow  # a fresh interpreter imports torch, diffusers and transformers: a minute on a shared CPU
def test_diffuse_pipeline_through_the_command_line(pipelines, tmp_path):
    out = tmp_path / "cli.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-m", "clipstudio.cli", "diffuse", "a red circle", "--pipeline", str(pipelines["epsilon"]),
         "--negative", "a blue square", "--sampler", "ddim", "--guidance", "5", "--steps", "3", "--seed", "1",
         "-o", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"wrote {out}" in done.stdout
    assert Image.open(out).size == (16, 16)  # 8x8 latents, a VAE that upsamples once


@pytest.fixture(scope="module")
def epsilon_backend(pipelines):
    return B.load_sd_pipeline(str(pipelines["epsilon"]), device="cpu")


def _as_png_pixels(images: torch.Tensor) -> np.ndarray:
    return np.asarray(B.to_pil(images)[0])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler"])
def test_each_sampler_with_cfg_and_a_negative_prompt(pipelines, epsilon_backend, tmp_path, sampler):
    out = tmp_path / "a.png"
    assert _diffuse(pipelines["epsilon"], out, "--sampler", sampler, "--guidance", "5", "--negative", "a blue square") == 0
    image = _pixels(out)
    assert image.shape == (16, 16, 3) and image.std() > 0
    settings = {"sampler": sampler, "guidance": 5.0, "steps": 3, "seed": 1}
    same = epsilon_backend.generate("a red circle", negative="a blue square", **settings)
    assert np.array_equal(image, _as_png_pixels(same))  # the command ran exactly these settings, seeded
    plain = epsilon_backend.generate("a red circle", **settings)
    assert not np.array_equal(image, _as_png_pixels(plain))  # the negative prompt replaced the empty uncond one


def test_guidance_changes_the_image(epsilon_backend):
    be = epsilon_backend
    assert be.prediction == "epsilon" and be.default_sampler == "ddim"
    w1 = be.generate("a red circle", guidance=1.0, steps=3, seed=2)
    w5 = be.generate("a red circle", guidance=5.0, steps=3, seed=2)
    assert w1.shape == (1, 3, 16, 16) and 0 <= float(w1.min()) and float(w1.max()) <= 1
    assert not torch.equal(w1, w5)
    batch = be.generate(["a red circle", "a blue square"], negative="green", steps=2, sampler="euler")
    assert batch.shape == (2, 3, 16, 16)


def test_flow_euler_on_an_epsilon_pipeline_is_one_line(pipelines, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert _diffuse(pipelines["epsilon"], out, "--sampler", "flow-euler") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "flow-euler" in err and "ddim" in err and not out.exists()


def test_a_flow_matching_pipeline_samples_with_flow_euler(pipelines, tmp_path, capsys):
    be = B.load_sd_pipeline(str(pipelines["flow"]), device="cpu")
    assert be.prediction == "flow" and be.default_sampler == "flow-euler" and be.samplers() == ["flow-euler"]
    out = tmp_path / "flow.png"
    assert _diffuse(pipelines["flow"], out, "--negative", "a blue square", "--guidance", "4") == 0
    assert _pixels(out).shape == (16, 16, 3)
    assert _diffuse(pipelines["flow"], tmp_path / "y.png", "--sampler", "ddim") == 2
    assert "flow" in capsys.readouterr().err


def test_pipelines_we_cannot_run_are_one_line(pipelines, tmp_path):
    sdxl = tmp_path / "sdxl"
    sdxl.mkdir()
    index = json.loads((pipelines["epsilon"] / "model_index.json").read_text())
    (sdxl / "model_index.json").write_text(json.dumps({**index, "tokenizer_2": index["tokenizer"]}))
    with pytest.raises(ClipstudioError, match="two text encoders"):
        B.load_sd_pipeline(str(sdxl))
    (sdxl / "model_index.json").write_text(json.dumps({"_class_name": "Foo", "transformer": ["x", "y"]}))
    with pytest.raises(ClipstudioError, match="not Stable Diffusion-style.*unet"):
        B.load_sd_pipeline(str(sdxl))
    if not torch.cuda.is_available():
        with pytest.raises(ClipstudioError, match="no CUDA GPU"):
            B.load_sd_pipeline(str(pipelines["epsilon"]), device="cuda")
    with pytest.raises(ClipstudioError, match="unknown dtype"):
        B.load_sd_pipeline(str(pipelines["epsilon"]), dtype="float8")


def test_bfloat16_weights_load_and_sample(pipelines):
    be = B.load_sd_pipeline(str(pipelines["epsilon"]), device="cpu", dtype="bfloat16")
    assert next(be.unet.parameters()).dtype == torch.bfloat16
    images = be.generate("a red circle", steps=2, seed=0)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


def test_a_hub_pipeline_offline_is_one_line(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    with pytest.raises(ClipstudioError, match="not in the Hugging Face cache.*hf download org/tiny-sd") as info:
        B.load_sd_pipeline("org/tiny-sd")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["epsilon", "flow"])
@pytest.mark.parametrize("space", ["image", "latent"])
def test_score_distillation_with_a_pipeline_gives_the_image_a_gradient(pipelines, kind, space):
    from diffusion_fixtures import assert_sds_gives_each_image_a_value_and_a_gradient

    from clipstudio.guide.prompts import parse_prompts
    from clipstudio.losses import build_loss

    loss = build_loss("sds", parse_prompts("a red circle|a blue square:-1"), pipeline=str(pipelines[kind]),
                      space=space)
    assert_sds_gives_each_image_a_value_and_a_gradient(loss, 16)
