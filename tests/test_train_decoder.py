"""``clipstudio train decoder`` (issue 18): fitting a latent diffusion checkpoint's TAEF2 decoder to the shapes
world. Runs on the embedded latent model's small decoder with a few scenes a step, so each test takes seconds."""
import contextlib
import io

import pytest
import torch

pytest.importorskip("diffusers")

from clipstudio.checkpoints import load_checkpoint  # noqa: E402
from clipstudio.cli import main as cli_main  # noqa: E402
from clipstudio.errors import ClipstudioError  # noqa: E402
from clipstudio.worlds.shapes import train_decoder as TD  # noqa: E402

torch.set_num_threads(1)


def config(tmp_path, **kw):
    settings = dict(steps=4, batch=2, lr=1e-4, eval_scenes=0, ema_decay=0.5, save_every=2,
                    out=str(tmp_path / "dec.pt"))
    return TD.DecoderTrainConfig(**{**settings, **kw})


def quiet(cfg):
    return TD.train(cfg, progress=False, log=lambda _: None)


def test_only_the_decoder_changes_and_the_result_loads_as_a_backend(tmp_path):
    from clipstudio.worlds.shapes.diffusion_model import load_shapes_backend
    cfg = config(tmp_path)
    quiet(cfg)
    start = load_checkpoint(TD.resolve_start(cfg))
    tuned = load_checkpoint(cfg.out)
    assert tuned["unet"].keys() == start["unet"].keys()
    assert all(torch.equal(tuned["unet"][k], start["unet"][k]) for k in start["unet"])
    assert all(torch.equal(tuned["text_tower"][k], start["text_tower"][k]) for k in start["text_tower"])
    assert any(not torch.equal(tuned["decoder"][k], start["decoder"][k]) for k in start["decoder"])
    assert all(tuned["decoder"][k].dtype == start["decoder"][k].dtype for k in start["decoder"])
    assert tuned["decoder_finetune"]["step"] == 4
    image = load_shapes_backend(cfg.out).generate("a red circle on a blue background", steps=2, seed=0)
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_resume_is_exact(tmp_path):
    straight = config(tmp_path, out=str(tmp_path / "a.pt"))
    quiet(straight)
    cut = config(tmp_path, out=str(tmp_path / "b.pt"), steps=2)
    quiet(cut)
    cut.steps, cut.resume = 4, True
    assert quiet(cut)["step"] == 4
    a, b = load_checkpoint(straight.state_path), load_checkpoint(cut.state_path)
    for part in ("decoder", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    st = load_checkpoint(cut.state_path)
    st["config"]["latent_noise"] = 0.7
    torch.save(st, cut.state_path)
    with pytest.raises(ClipstudioError, match="was trained with --latent-noise 0.7"):
        quiet(cut)


def test_batches_depend_on_seed_and_step_only():
    first, again, other = TD.batch_scenes(0, 5, 3), TD.batch_scenes(0, 5, 3), TD.batch_scenes(0, 6, 3)
    assert first == again and first != other
    z = torch.zeros(4, 2, 3, 3)
    noisy = TD.noisy_latents(z, 0.3, 0, 5)
    assert torch.equal(noisy, TD.noisy_latents(z, 0.3, 0, 5)) and not torch.equal(noisy, TD.noisy_latents(z, 0.3, 0, 6))
    assert 0 < noisy.std() < 0.3 and torch.equal(TD.noisy_latents(z, 0.0, 0, 5), z)


def test_the_loss_falls_on_a_fixed_batch():
    """Adam on the reconstruction loss lowers it: the decoder learns from the renders (a broken gradient or a
    mis-normalized latent would not)."""
    from clipstudio.worlds.shapes.render import render_batch
    ck = load_checkpoint(TD.resolve_start(TD.DecoderTrainConfig()))
    decoder, encoder = TD.load_latent_parts(ck, "embedded")
    images = render_batch(TD.batch_scenes(0, 0, 4), encoder.size)
    with torch.no_grad():
        latents = encoder(images)
    opt = torch.optim.Adam(decoder.parameters(), lr=5e-5)
    losses = []
    for _ in range(20):
        loss = (TD.decode(decoder, encoder, latents) - images).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_roundtrip_check_finds_a_broken_decoder():
    ck = load_checkpoint(TD.resolve_start(TD.DecoderTrainConfig()))
    decoder, encoder = TD.load_latent_parts(ck, "embedded")
    scenes = TD.eval_scenes(6)
    assert len(TD.roundtrip_failures(decoder.eval(), encoder, scenes)) <= 1
    with torch.no_grad():
        decoder[-1].weight.zero_()
        decoder[-1].bias.fill_(0.5)   # a flat grey image: every scene fails
    failed = TD.roundtrip_failures(decoder, encoder, scenes)
    assert len(failed) == 6 and all(f["failures"] and f["caption"] for f in failed)


def train_cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli_main(["train", "decoder", *map(str, argv)])
    return code, err.getvalue().strip()


def test_command_writes_a_card_with_the_exact_command_and_round_trip(tmp_path):
    import json
    out = tmp_path / "d.pt"
    code, _ = train_cli(["--steps", "2", "--batch", "2", "--eval-scenes", "3", "--out", out, "--quiet", "--threads", "1"])
    assert code == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["command"].startswith("clipstudio train decoder --steps 2 --batch 2 --eval-scenes 3")
    assert card["roundtrip"]["scenes"] == 3 and card["step"] == 2
    assert card["roundtrip"]["failed_after"] == len(card["roundtrip"]["failures_after"])


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--latent-noise", "nan"], "--latent-noise must be a finite number >= 0"),
    (["--ema-decay", "1"], "--ema-decay must be in [0, 1)"),
    (["--lr", "-1"], "--lr must be"),
    (["--model", "no-such-model"], "unknown embedded model 'no-such-model'"),
    (["--checkpoint", "/no/such.pt"], "no diffusion checkpoint at /no/such.pt"),
])
def test_bad_input_is_one_line(argv, message, tmp_path):
    code, err = train_cli([*argv, "--out", tmp_path / "x.pt", "--quiet"])
    assert code == 2 and message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


def test_a_checkpoint_without_a_decoder_is_one_line(tmp_path):
    ck = load_checkpoint(TD.resolve_start(TD.DecoderTrainConfig()))
    ck["space"] = {"kind": "pixel"}
    del ck["decoder"]
    path = tmp_path / "pixel.pt"
    torch.save(ck, path)
    code, err = train_cli(["--checkpoint", path, "--out", tmp_path / "x.pt", "--quiet"])
    assert code == 2 and "has no decoder to fine-tune" in err and len(err.splitlines()) == 1
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, err = train_cli(["--checkpoint", tmp_path / "junk.pt", "--out", tmp_path / "x.pt", "--quiet"])
    assert code == 2 and "could not load diffusion checkpoint" in err and len(err.splitlines()) == 1
