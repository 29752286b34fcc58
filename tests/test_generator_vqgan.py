"""The vqgan generator on tiny random taming models written as Lightning-style .ckpt + .yaml files."""
from __future__ import annotations

import pytest
import torch
from generator_fixtures import disc_image, write_tiny_vqgan

from clipstudio.errors import ClipstudioError
from clipstudio.generators import build_generator
from clipstudio.generators.vqgan import vector_quantize


pytestmark = pytest.mark.usefixtures("one_thread")


def build(tmp_path, size=(32, 24), gumbel=False, **options):
    ckpt, config = write_tiny_vqgan(tmp_path, gumbel=gumbel)
    return build_generator("vqgan", size, checkpoint=str(ckpt), config=str(config), **options)


@pytest.mark.parametrize("gumbel", [False, True])
def test_forward_shape_range_and_latent_grid(tmp_path, gumbel):
    gen = build(tmp_path, size=(32, 24), gumbel=gumbel)
    assert type(gen.model.quantize).__name__ == ("GumbelQuantize" if gumbel else "VectorQuantizer2")
    assert gen.factor == 2 and gen.z.shape == (1, 8, 12, 16)
    image = gen()
    assert image.shape == (1, 3, 24, 32)
    assert image.min() >= 0 and image.max() <= 1
    assert [n for n, p in gen.named_parameters() if p.requires_grad] == ["z"]


def test_random_init_lies_on_codebook(tmp_path):
    gen = build(tmp_path)
    vectors = gen.z.detach().permute(0, 2, 3, 1).reshape(-1, gen.z.shape[1])
    assert torch.cdist(vectors, gen.model.codebook).min(dim=1).values.max() < 1e-6


def test_output_size_not_divisible_by_factor_is_resized(tmp_path):
    gen = build(tmp_path, size=(33, 21))
    assert gen.z.shape[-2:] == (10, 16)  # round(21/2)=10 (banker's rounding), round(33/2)=16
    assert gen().shape == (1, 3, 21, 33)


@pytest.mark.parametrize("gumbel", [False, True])
def test_straight_through_gradient_reaches_z(tmp_path, gumbel):
    gen = build(tmp_path, gumbel=gumbel)
    target = torch.rand(1, 3, 24, 32)
    loss = (gen() - target).pow(2).mean()
    loss.backward()
    assert gen.z.grad is not None and gen.z.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in gen.named_parameters() if n != "z")


def test_vector_quantize_forward_is_nearest_code_backward_is_identity():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0]])
    z = torch.tensor([[[[0.1, 0.9]], [[-0.2, 1.2]]]], requires_grad=True)  # (1, 2, 1, 2): vectors (.1,-.2), (.9,1.2)
    out = vector_quantize(z, codebook, chunk=1)
    assert torch.equal(out.detach()[0, :, 0, 0], codebook[0]) and torch.equal(out.detach()[0, :, 0, 1], codebook[1])
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    assert torch.equal(z.grad, weights)


def test_post_step_clamps_z_to_codebook_range(tmp_path):
    gen = build(tmp_path)
    low = gen.model.codebook.min(dim=0).values.view(1, -1, 1, 1)
    high = gen.model.codebook.max(dim=0).values.view(1, -1, 1, 1)
    with torch.no_grad():
        gen.z.mul_(100)
    assert (gen.z > high).any() and (gen.z < low).any()
    gen.post_step()
    assert (gen.z >= low).all() and (gen.z <= high).all()
    assert ((gen.z == high) | (gen.z == low)).any()


@pytest.mark.parametrize("gumbel", [False, True])
def test_init_image_is_encoded(tmp_path, gumbel):
    ckpt, config = write_tiny_vqgan(tmp_path, gumbel=gumbel)
    image = disc_image(64)
    gen = build_generator("vqgan", (32, 32), init_image=image, checkpoint=str(ckpt), config=str(config))
    with torch.no_grad():
        small = torch.nn.functional.interpolate(image, size=(32, 32), mode="bicubic", antialias=True).clamp(0, 1)
        expected = gen.model.encode_to_codes(small * 2 - 1)
    torch.testing.assert_close(gen.z.detach(), expected)
    other = build_generator("vqgan", (32, 32), init_image=1 - image, checkpoint=str(ckpt), config=str(config))
    assert not torch.allclose(gen.z, other.z)


def test_loss_keys_are_ignored_and_config_beside_checkpoint_is_found(tmp_path):
    ckpt, _ = write_tiny_vqgan(tmp_path)  # writes tiny_vq.ckpt and tiny_vq.yaml side by side
    gen = build_generator("vqgan", (16, 16), checkpoint=str(ckpt))
    assert not any(k.startswith("loss.") for k in gen.model.state_dict())


def test_checkpoint_with_pickled_objects_loads_without_trust(tmp_path):
    """A Lightning-style checkpoint with hyper-parameter objects loads through the restricted unpickler."""
    ckpt, config = write_tiny_vqgan(tmp_path, extra_objects=True)
    gen = build_generator("vqgan", (16, 16), checkpoint=str(ckpt), config=str(config))
    assert gen().shape == (1, 3, 16, 16)


@pytest.mark.parametrize("case, pattern", [
    ("missing", "checkpoint not found"),
    ("corrupt", "corrupt or not a checkpoint"),
    ("mismatch", "does not match config"),
    ("bad-yaml", "lacks model.params"),
    ("unknown-model", "choose one of: vqgan_imagenet_f16_1024"),
    ("trust-as-option", "no option"),
])
def test_bad_input_is_one_line(tmp_path, case, pattern):
    ckpt, config = write_tiny_vqgan(tmp_path)
    options = {"checkpoint": str(ckpt), "config": str(config)}
    if case == "missing":
        options["checkpoint"] = str(tmp_path / "absent.ckpt")
    elif case == "corrupt":
        ckpt.write_bytes(ckpt.read_bytes()[:200])
    elif case == "mismatch":
        gumbel_ckpt, _ = write_tiny_vqgan(tmp_path / "g", gumbel=True)
        options["checkpoint"] = str(gumbel_ckpt)
        config.write_text(config.read_text().replace("n_embed: 16", "n_embed: 32"))
    elif case == "bad-yaml":
        config.write_text("model: {target: x}\n")
    elif case == "unknown-model":
        options = {"model": "vqgan_nope"}
    elif case == "trust-as-option":  # trust is a runtime argument, never a generator option
        options["trust_checkpoint"] = "true"
    with pytest.raises(ClipstudioError, match=pattern) as info:
        build_generator("vqgan", (16, 16), **options)
    assert "\n" not in str(info.value)


def test_named_model_offline_without_files_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    monkeypatch.delenv("CLIPSTUDIO_WEIGHTS", raising=False)
    with pytest.raises(ClipstudioError, match="vqgan_gumbel_f8_8192.ckpt"):
        build_generator("vqgan", (16, 16), model="vqgan_gumbel_f8_8192")


def test_named_model_found_in_weights_dir(tmp_path):
    ckpt, config = write_tiny_vqgan(tmp_path / "src")
    folder = tmp_path / "weights" / "vqgan_imagenet_f16_16384"
    folder.mkdir(parents=True)
    ckpt.rename(folder / "vqgan_imagenet_f16_16384.ckpt")
    config.rename(folder / "vqgan_imagenet_f16_16384.yaml")
    gen = build_generator("vqgan", (16, 16), model="vqgan_imagenet_f16_16384", weights_dir=str(tmp_path / "weights"))
    assert gen().shape == (1, 3, 16, 16)


def test_a_few_optimizer_steps_reduce_the_loss(tmp_path):
    torch.manual_seed(0)
    gen = build(tmp_path, size=(16, 16))
    target = disc_image(16)
    opt = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = (gen() - target).pow(2).mean()
        loss.backward()
        opt.step()
        gen.post_step()
        losses.append(loss.item())
    assert min(losses[5:]) < losses[0]
