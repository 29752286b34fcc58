"""The latent generator: real TAEF2 when the shared weights are present, tiny random autoencoders otherwise."""
from __future__ import annotations

import math

import pytest
import torch
from generator_fixtures import HAVE_TAEF2, SHARED_TAEF2, disc_image, write_tiny_taef2

from clipstudio.errors import ClipstudioError
from clipstudio.generators import build_generator
from clipstudio.generators.latent import LatentGenerator, build_codec
from clipstudio.generators.taef2 import taef2_decoder, taef2_encoder


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def taef2_dir(tmp_path, monkeypatch):
    """CLIPSTUDIO_WEIGHTS pointed at the real TAEF2 files, or at a random narrow pair when they are absent."""
    folder = SHARED_TAEF2 if HAVE_TAEF2 else write_tiny_taef2(tmp_path / "taef2")
    monkeypatch.setenv("CLIPSTUDIO_WEIGHTS", str(folder))
    monkeypatch.setenv("CLIPSTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    return folder


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / (a - b).pow(2).mean().item())


@pytest.mark.skipif(not HAVE_TAEF2, reason="shared TAEF2 weights not present")
def test_real_taef2_round_trip_psnr(taef2_dir):
    image = disc_image(96)
    gen = build_generator("latent", (96, 96), init_image=image)  # vae=taef2 is the default
    assert gen.latent.shape == (1, 32, 12, 12)
    with torch.no_grad():
        decoded = gen()
    value = psnr(decoded, image)
    assert value >= 28.0, f"TAEF2 round trip PSNR {value:.1f} dB"


def test_taef2_gradients_reach_the_latent_only(taef2_dir):
    gen = build_generator("latent", (64, 48))
    image = gen()
    assert image.shape == (1, 3, 48, 64) and image.min() >= 0 and image.max() <= 1
    (image - 0.5).pow(2).mean().backward()
    assert gen.latent.grad is not None and gen.latent.grad.abs().sum() > 0
    assert [n for n, p in gen.named_parameters() if p.requires_grad] == ["latent"]


def test_taef2_random_start_matches_encoder_statistics(taef2_dir):
    torch.manual_seed(0)
    gen = build_generator("latent", (128, 128), init_scale="0.5")
    with torch.no_grad():
        real = gen.codec.encode(disc_image(128))
    # Drawn around the encoder's own scale: not orders of magnitude off in either direction.
    ratio = gen.latent.std().item() / real.std().item()
    assert 0.05 < ratio < 5


def test_taef2_key_layout_matches_published_indices():
    encoder_keys = set(taef2_encoder().state_dict())
    decoder_keys = set(taef2_decoder().state_dict())
    assert {"0.weight", "2.weight", "11.pool.0.weight", "11.pool.1.bias", "14.bias"} <= encoder_keys
    assert {"1.weight", "3.pool.3.weight", "7.weight", "17.weight", "19.bias"} <= decoder_keys
    assert "0.weight" not in decoder_keys and "2.weight" not in decoder_keys  # Clamp and ReLU hold no weights
    if HAVE_TAEF2:
        for name, keys in (("encoder", encoder_keys), ("decoder", decoder_keys)):
            published = torch.load(SHARED_TAEF2 / f"taef2_{name}.pth", weights_only=True)
            assert set(published) == keys


def test_tiny_random_autoencoder_tiny(tmp_path):
    torch.manual_seed(0)
    gen = build_generator("latent", (40, 24), vae="tiny-random")
    assert gen.latent.shape == (1, 4, 3, 5)
    image = gen()
    assert image.shape == (1, 3, 24, 40)
    image.mean().backward()
    assert gen.latent.grad.abs().sum() > 0
    with_init = build_generator("latent", (32, 32), init_image=disc_image(64), vae="tiny-random")
    assert with_init.latent.shape == (1, 4, 4, 4)


def test_taesd_pth_files_load_into_autoencoder_tiny(tmp_path):
    """The taesd repo's .pth layout: encoder keys as EncoderTiny.layers, decoder keys one higher (Clamp at 0)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    reference = AutoencoderTiny(latent_channels=16, encoder_block_out_channels=(8,) * 4,
                                decoder_block_out_channels=(8,) * 4)
    folder = tmp_path / "w"
    folder.mkdir()
    torch.save(reference.encoder.layers.state_dict(), folder / "taesd3_encoder.pth")
    shifted = {f"{int(k.split('.', 1)[0]) + 1}.{k.split('.', 1)[1]}": v
               for k, v in reference.decoder.layers.state_dict().items()}
    torch.save(shifted, folder / "taesd3_decoder.pth")
    codec = build_codec("taesd3", weights_dir=str(folder))
    latent = torch.randn(1, 16, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(codec.decode(latent), (reference.decoder(latent) + 1) / 2)
        image = disc_image(24)
        torch.testing.assert_close(codec.encode(image), reference.encoder(image * 2 - 1))


def test_sd_vae_from_a_local_folder(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  sample_size=32).save_pretrained(tmp_path / "vae")
    gen = build_generator("latent", (16, 16), init_image=disc_image(32), vae="sd-vae", vae_path=str(tmp_path))
    assert gen.latent.shape == (1, 4, 8, 8)  # found in the vae/ subfolder; factor 2 for two levels
    image = gen()
    assert image.shape == (1, 3, 16, 16)
    image.sum().backward()
    assert gen.latent.grad.abs().sum() > 0


def test_from_modules_injection():
    decoder = torch.nn.Sequential(torch.nn.Upsample(scale_factor=4), torch.nn.Conv2d(2, 3, 1))
    encoder = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Conv2d(3, 2, 1))
    gen = LatentGenerator.from_modules((32, 16), decoder, encoder, factor=4, latent_channels=2)
    assert gen.latent.shape == (1, 2, 4, 8) and gen().shape == (1, 3, 16, 32)
    assert not any(p.requires_grad for p in decoder.parameters())
    no_encoder = LatentGenerator.from_modules((32, 16), decoder, factor=4, latent_channels=2)
    assert no_encoder().shape == (1, 3, 16, 32)
    with pytest.raises(ClipstudioError, match="no encoder"):
        LatentGenerator.from_modules((32, 16), decoder, factor=4, latent_channels=2, init_image=disc_image(32))


@pytest.mark.parametrize("options, pattern", [
    ({"vae": "nope"}, "choose one of: taef2"),
    ({"vae": "sd-vae", "vae_path": "/nonexistent/vae"}, "VAE folder not found"),
    ({"vae": "tiny-random", "init_scale": "lots"}, "init_scale must be a number"),
    ({"vae": "tiny-random", "colour": "red"}, "has no option"),
])
def test_bad_options_are_one_line(options, pattern):
    with pytest.raises(ClipstudioError, match=pattern) as info:
        build_generator("latent", (16, 16), **options)
    assert "\n" not in str(info.value)


def test_missing_taef2_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSTUDIO_WEIGHTS", str(tmp_path / "empty"))
    monkeypatch.setenv("CLIPSTUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    with pytest.raises(ClipstudioError, match="taef2_encoder.pth"):
        build_generator("latent", (16, 16))


def test_corrupt_weights_file_is_one_line(tmp_path):
    folder = write_tiny_taef2(tmp_path / "w")
    (folder / "taef2_decoder.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ClipstudioError, match="TAEF2 decoder") as info:
        build_generator("latent", (16, 16), weights_dir=str(folder))
    assert "\n" not in str(info.value)


def test_guiding_taef2_latents_with_the_embedded_clip_lowers_the_loss(taef2_dir):
    import clipstudio

    config = clipstudio.make_config("a red circle on a blue background", generator="latent", candidates=1,
                                    steps=12, lr=0.1, cutn=4, generator_options={"vae": "taef2"},
                                    clip=["shapes-guide"], width=64, height=64)
    studio = clipstudio.Studio(config)
    torch.manual_seed(0)
    before = studio.evaluate()["clip"]
    studio.run()
    torch.manual_seed(0)  # the same cutouts for the comparison
    assert studio.evaluate()["clip"] < before
