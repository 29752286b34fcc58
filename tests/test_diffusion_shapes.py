"""Shapes-world diffusion model: space-to-depth, text-tower snapshot, training/resume, loading, evaluation."""
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

from clipstudio.worlds.shapes import diffusion_model as SM  # noqa: E402
from clipstudio.errors import ClipstudioError  # noqa: E402
from clipstudio.worlds.shapes import train_diffusion as DT  # noqa: E402
from clipstudio.cli import main as cli_main  # noqa: E402


def train_cli(argv):
    """``clipstudio train diffusion ARGV``; a failure's one-line error is raised as ClipstudioError."""
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli_main(["train", "diffusion", *argv])
    if code == 2:
        raise ClipstudioError(err.getvalue().strip())
    assert code == 0, err.getvalue()

torch.set_num_threads(1)


def test_space_to_depth_roundtrip():
    img = torch.rand(2, 3, 32, 32)
    z = SM.to_model_space(img)
    assert z.shape == (2, 12, 16, 16)
    torch.testing.assert_close((SM.from_model_space(z) + 1) / 2, img)
    # a permutation: i.i.d. noise statistics are unchanged
    assert sorted(z.flatten().tolist()) == sorted((img * 2 - 1).flatten().tolist())


def test_text_tower_snapshot_keeps_world_token_states():
    cfg = SM.guide_text_cfg()
    torch.manual_seed(0)
    tower = SM.build_text_tower(cfg, embed_dim=cfg["width"]).eval()
    tok = SM.make_tokenizer(cfg)
    ids = SM.world_vocabulary(tok, n_captions=200)
    snap = SM.text_tower_snapshot(tower.state_dict(), ids)
    assert snap["token_rows"].shape == (len(ids), cfg["width"]) and len(ids) < 1000
    back = SM.load_text_tower(snap, cfg)
    from clipstudio.diffusion.backend import openclip_token_states
    t = tok(["a red circle on a blue background", "a photo of a small green square on a white background", ""])
    with torch.no_grad():
        a = openclip_token_states(tower, t)
        b = openclip_token_states(back, t)
    assert a.shape == (3, cfg["context_length"], cfg["width"])
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)    # the snapshot is fp16


def test_make_batch_is_seeded_and_drops_captions():
    a_img, a_cap = DT.make_batch(0, 5, 40, p_uncond=0.3)
    b_img, b_cap = DT.make_batch(0, 5, 40, p_uncond=0.3)
    c_img, _ = DT.make_batch(0, 6, 40, p_uncond=0.3)
    assert torch.equal(a_img, b_img) and a_cap == b_cap
    assert not torch.equal(a_img, c_img)
    assert a_img.shape == (40, 3, 32, 32)
    assert 0 < a_cap.count("") < 40


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    out, state = str(d / "m.pt"), str(d / "m.state")
    train_cli(["--space", "pixel", "--steps", "5", "--stop-after", "3", "--batch", "4", "--save-every", "2",
             "--out", out, "--state", state, "--guide", str(d / "no-guide.pt"), "--no-progress"])
    return d, out, state


def test_train_writes_checkpoint_sidecar_and_resumes_exactly(tiny_run):
    d, out, state = tiny_run
    meta = json.loads(open(out[:-3] + ".json").read())
    assert meta["step"] == 3 and meta["config"]["p_uncond"] == 0.15
    assert meta["command"].startswith("clipstudio train diffusion ") and "--steps 5" in meta["command"]
    assert os.path.getsize(out) < 12e6
    # stopped at 3 of 5, then resumed to 5 == 5 steps straight
    train_cli(["--space", "pixel", "--steps", "5", "--batch", "4", "--out", out, "--state", state, "--resume",
             "--no-progress", "--guide", str(d / "no-guide.pt")])
    straight = str(d / "s.pt")
    train_cli(["--space", "pixel", "--steps", "5", "--batch", "4", "--out", straight, "--state", str(d / "s.state"),
             "--no-progress", "--guide", str(d / "no-guide.pt")])
    a = torch.load(state, weights_only=True)
    b = torch.load(str(d / "s.state"), weights_only=True)
    assert a["step"] == b["step"] == 5
    for k in a["unet"]:
        torch.testing.assert_close(a["unet"][k], b["unet"][k], atol=1e-5, rtol=1e-4)


def test_load_backend_and_generate(tiny_run):
    _, out, _ = tiny_run
    be = SM.load_shapes_backend(out)
    img = be.generate("a red circle on a blue background", steps=3, n=2, seed=0)
    assert img.shape == (2, 3, 32, 32) and 0 <= img.min() and img.max() <= 1
    again = be.generate("a red circle on a blue background", steps=3, n=2, seed=0)
    assert torch.equal(img, again)
    many = be.generate(["a red circle on a blue background", "a green square on a black background"], steps=2)
    assert many.shape == (2, 3, 32, 32)
    from clipstudio.worlds.shapes.check import check_image
    prompts = SM.canonical_prompts(5)
    r = SM.check_pass_rate(be, prompts, steps=2, batch=5)
    images = SM.to_uint8(be.generate(prompts, steps=2, seed=0))
    checks = [check_image(im, p) for im, p in zip(images, prompts)]
    assert r["n"] == 5 and r["rate"] == sum(c.passed for c in checks) / 5
    assert r["failures"] == [{"prompt": p, "failures": c.failures} for p, c in zip(prompts, checks) if not c.passed]
    assert r["failures"], "a 2-step sample of a tiny model should fail somewhere"


def test_flow_objective_warm_starts_resumes_and_samples_with_flow_euler(tiny_run, tmp_path):
    """--objective flow --init-from: the init UNet's weights and text tower, a flow model that loads with
    flow-euler as its default sampler, rejects DDIM, and resumes exactly."""
    d, init, _ = tiny_run
    args = ["--space", "pixel", "--objective", "flow", "--init-from", init, "--steps", "4", "--batch", "4",
            "--no-progress"]
    out, state = str(tmp_path / "f.pt"), str(tmp_path / "f.state")
    train_cli(args + ["--stop-after", "2", "--out", out, "--state", state])
    train_cli(args + ["--resume", "--out", out, "--state", state])
    straight = str(tmp_path / "s.state")
    train_cli(args + ["--out", str(tmp_path / "s.pt"), "--state", straight])
    a, b = torch.load(state, weights_only=True), torch.load(straight, weights_only=True)
    for k in a["unet"]:
        torch.testing.assert_close(a["unet"][k], b["unet"][k], atol=1e-5, rtol=1e-4)
    ck, start = torch.load(out, weights_only=True), torch.load(init, weights_only=True)
    assert ck["prediction"] == "flow" and ck["default_sampler"] == "flow-euler"
    assert torch.equal(ck["text_tower"]["token_rows"], start["text_tower"]["token_rows"])
    assert "warm start from" in json.loads(open(out[:-3] + ".json").read())["config"]["history"][0]
    be = SM.load_shapes_backend(out)
    assert be.prediction == "flow" and be.default_sampler == "flow-euler" and be.samplers() == ["flow-euler"]
    img = be.generate("a red circle on a blue background", steps=3, seed=0)
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()
    with pytest.raises(ClipstudioError, match="for epsilon models"):
        be.generate("a red circle", steps=2, sampler="ddim")
    r = SM.evaluate(be, prompts=2, sweep=[], negative_seeds=0, steps_sweep=[1, 2], log=lambda _: None)
    assert r["sampler"] == "flow-euler" and set(r["steps_sweep"]) == {1, 2}
    assert all(0 <= v["rate"] <= 1 and v["seconds_per_image"] > 0 for v in r["steps_sweep"].values())


def test_flow_training_pair_is_the_straight_path():
    """noised_pair('flow'): x_s = (1 - s) x0 + s noise with target noise - x0, and t = 1000 s."""
    from diffusers import DDPMScheduler
    sched = DDPMScheduler(num_train_timesteps=1000)
    x0 = torch.randn(6, 3, 4, 4)
    xt, t, target, w = DT.noised_pair("flow", x0, torch.Generator().manual_seed(1), sched, torch.ones(1000))
    g = torch.Generator().manual_seed(1)
    noise, s = torch.randn(x0.shape, generator=g), torch.rand(6, generator=g)
    torch.testing.assert_close(xt, (1 - s)[:, None, None, None] * x0 + s[:, None, None, None] * noise)
    torch.testing.assert_close(target, noise - x0)
    torch.testing.assert_close(t, s * 1000)
    assert torch.equal(w, torch.ones(6))


def test_bad_checkpoints_and_arguments(tmp_path, monkeypatch):
    with pytest.raises(ClipstudioError, match="missing diffusion checkpoint"):
        SM.load_shapes_backend(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipstudioError, match="could not load|corrupt or not a checkpoint"):
        SM.load_shapes_backend(bad)
    with pytest.raises(ClipstudioError, match="steps"):
        train_cli(["--steps", "0", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(ClipstudioError, match="p-uncond"):
        train_cli(["--p-uncond", "1.5", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(ClipstudioError, match="lr must be a finite"):
        train_cli(["--lr", "nan", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(ClipstudioError, match="min-snr"):
        DT.train(DT.DiffusionTrainConfig(min_snr=float("inf"), out=str(tmp_path / "x.pt")))
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(ClipstudioError, match="dataset"):
        train_cli(["--dataset", "0", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(ClipstudioError, match="unknown --objective 'ode'"):
        train_cli(["--objective", "ode", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(ClipstudioError, match="not-there.pt"):
        train_cli(["--space", "pixel", "--init-from", str(tmp_path / "not-there.pt"), "--out", str(tmp_path / "x.pt")])
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    monkeypatch.setenv("CLIPSTUDIO_HOME", str(tmp_path / "home"))
    with pytest.raises(ClipstudioError, match="not found offline: put taef2_encoder.pth"):
        train_cli(["--weights-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "x.pt")])


def test_training_defaults_live_once_in_the_config():
    """The command's options show the dataclass defaults, and a run with no options trains with them."""
    import argparse

    from clipstudio.commands import train_diffusion
    sub = argparse.ArgumentParser().add_subparsers()
    train_diffusion.register(sub)
    parser = sub.choices["diffusion"]
    assert vars(parser.parse_args([])) == {"quiet": False, "threads": 0, "run": train_diffusion.run}
    shown = parser.format_help()
    assert "default: 4000" in shown and "default: 0.0005" in shown
    config = DT.DiffusionTrainConfig(**{"steps": 7})
    assert config.batch == 32 and config.space == "taef2" and config.to_dict() == {"steps": 7}


def test_evaluate_reports_every_figure(tiny_run):
    _, out, _ = tiny_run
    be = SM.load_shapes_backend(out)
    lines = []
    r = SM.evaluate(be, prompts=2, sweep=[0.0, 2.0], sweep_prompts=2, negative_seeds=2, steps=2, log=lines.append)
    assert r["pass_rate"]["n"] == 2 and list(r["sweep"]) == [0.0, 2.0] and r["negative"]["n"] == 2
    assert r["guidance"] == be.default_guidance and len(lines) == 4


def test_eval_command_writes_figures(tiny_run, tmp_path, capsys):
    _, out, _ = tiny_run
    figures = tmp_path / "f.json"
    code = cli_main(["eval", "diffusion", "--checkpoint", out, "--prompts", "2", "--sweep", "", "--negative-seeds", "0",
                     "--steps", "2", "--threads", "1", "--json", str(figures)])
    printed = capsys.readouterr().out
    assert code == 0 and "check pass rate at w=3.0" in printed
    data = json.loads(figures.read_text())
    assert data["model"] == out and data["pass_rate"]["n"] == 2 and "sweep" not in data
    failed = data["pass_rate"]["failures"]
    assert len(failed) == round(2 * (1 - data["pass_rate"]["rate"]))
    assert all(f"  failed: {f['prompt']}: {'; '.join(f['failures'])}" in printed for f in failed)


@pytest.mark.parametrize("argv,message", [(["--sweep", "1,inf"], "--sweep weights must be finite"),
                                          (["--guidance", "nan"], "--guidance must be a finite"),
                                          (["--steps", "0"], "--steps must be a positive"),
                                          (["--prompts", "-1"], "--prompts must be 0 or more")])
def test_eval_command_bad_input(argv, message, capsys):
    assert cli_main(["eval", "diffusion", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_object_colour_and_prompts():
    from clipstudio.worlds.shapes.render import render, sample_scene
    rng = np.random.default_rng(0)
    scene = sample_scene(rng, "plain", background="white", colours=["red"])
    assert SM.object_colour(render(scene, 32), "white") == "red"
    ps = SM.canonical_prompts(10)
    assert len(ps) == 10 and len(set(ps)) > 5


# --------------------------------------------------------------------------- the TAEF2 latent space

@pytest.fixture(scope="module")
def tiny_latent_run(tmp_path_factory):
    from generator_fixtures import write_tiny_taef2
    d = tmp_path_factory.mktemp("latent")
    tae = write_tiny_taef2(d / "taef2", width=8, latent_channels=SM.LATENT_CHANNELS)
    out, state = str(d / "m.pt"), str(d / "m.state")
    args = ["--space", "taef2", "--dataset", "24", "--batch", "4", "--save-every", "2", "--out", out,
            "--state", state, "--guide", str(d / "no-guide.pt"), "--weights-dir", str(tae), "--no-progress"]
    train_cli(args + ["--steps", "4", "--stop-after", "2"])
    return d, out, state, args


def test_latent_dataset_is_seeded_and_cached(tiny_latent_run):
    d, out, state, args = tiny_latent_run
    cache = torch.load(state + ".latents", weights_only=True)
    assert cache["latents"].shape == (24, SM.LATENT_CHANNELS, 8, 8) and cache["latents"].dtype == torch.float16
    assert cache["fingerprint"]["n"] == 24 and len(cache["fingerprint"]["encoder_sha256"]) == 64
    scenes = DT.dataset_scenes(0, 24)
    assert [s.background for s in scenes] == [s.background for s in DT.dataset_scenes(0, 24)]
    z1, c1 = DT.make_latent_batch(0, 7, 6, scenes, cache["latents"], 0.3, 0.2)
    z2, c2 = DT.make_latent_batch(0, 7, 6, scenes, cache["latents"], 0.3, 0.2)
    assert torch.equal(z1, z2) and c1 == c2 and z1.shape == (6, SM.LATENT_CHANNELS, 8, 8)
    # resuming reuses the cache (same fingerprint) instead of encoding again
    before = os.path.getmtime(state + ".latents")
    train_cli(args + ["--steps", "4", "--resume"])
    assert os.path.getmtime(state + ".latents") == before
    assert torch.load(state, weights_only=True)["step"] == 4


def test_latent_checkpoint_generates_64px_images(tiny_latent_run):
    _, out, _, _ = tiny_latent_run
    ck = torch.load(out, weights_only=True)
    assert ck["space"]["kind"] == "taef2" and len(ck["space"]["latent_std"]) == SM.LATENT_CHANNELS
    assert ck["scheduler_config"]["beta_schedule"] == "scaled_linear"
    assert all(v.dtype == torch.float16 for v in ck["decoder"].values())
    be = SM.load_shapes_backend(out)
    img = be.generate("a red circle on a blue background", steps=3, n=2, seed=0)
    assert img.shape == (2, 3, 64, 64) and 0 <= img.min() and img.max() <= 1
    assert torch.equal(img, be.generate("a red circle on a blue background", steps=3, n=2, seed=0))


def test_latent_resume_refuses_another_space(tiny_latent_run):
    _, _, _, args = tiny_latent_run
    with pytest.raises(ClipstudioError, match="space taef2"):
        train_cli([a if a != "taef2" else "pixel" for a in args] + ["--steps", "4", "--resume"])


def test_corrupt_latent_checkpoint_is_one_line(tiny_latent_run, tmp_path):
    _, out, _, _ = tiny_latent_run
    ck = torch.load(out, weights_only=True)
    ck["decoder"] = {k: v[:1] for k, v in ck["decoder"].items()}
    p = tmp_path / "bad-decoder.pt"
    torch.save(ck, p)
    with pytest.raises(ClipstudioError, match="could not load|do not fit"):
        SM.load_shapes_backend(p)


# --------------------------------------------------------------------------- the shipped model (slow)

@pytest.mark.slow
def test_shipped_model_meets_targets():
    if not SM.DEFAULT_CHECKPOINT.is_file():
        pytest.skip("no shipped shapes-diffusion checkpoint")
    be = SM.load_shapes_backend()
    r = SM.check_pass_rate(be, SM.canonical_prompts(100), steps=50)
    assert r["rate"] >= 0.9, r
    # measured: adherence rises from w=0 (unconditional) to w=1 and w=2, and falls beyond w=4 (over-guidance
    # distorts shapes; guidance rescale did not help), so the default is w=3
    sweep = [SM.check_pass_rate(be, SM.canonical_prompts(50, seed=99), w, 50, seed=1)["rate"] for w in (0, 1, 2)]
    assert sweep[0] < 0.1 < 0.8 < sweep[1] <= sweep[2], sweep
    base = SM.colour_rate(be, "a circle on a white background", "red", "white", 64, seed=5)
    neg = SM.colour_rate(be, "a circle on a white background", "red", "white", 64, negative="red", seed=5)
    assert base > 0 and neg < base / 3, (base, neg)


def test_embedded_flow_model_samples_with_flow_euler():
    """`diffuse --model shapes-flow`: the world's flow model loads with its own sampler and step count."""
    from clipstudio.diffusion.backend import load_embedded_backend
    be = load_embedded_backend("shapes-flow")
    assert (be.prediction, be.default_sampler, be.default_steps) == ("flow", "flow-euler", 25)
    img = be.generate("a red circle on a blue background", steps=2, seed=0)
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()


def test_embedded_reward_model_is_shapes_diffusion_fine_tuned_with_its_rounds_on_record():
    """`diffuse --model shapes-diffusion-reward`: the reward fine-tune (issue 18: two RAFT rounds, DRaFT-1, its
    decoder fitted to the world, DRaFT-1 with a KL) loads like shapes-diffusion, its weights differ, and its card
    names every round's command and its figures."""
    import json
    from clipstudio import embedded
    from clipstudio.checkpoints import load_checkpoint
    from clipstudio.diffusion.backend import load_embedded_backend
    be = load_embedded_backend("shapes-diffusion-reward")
    assert be.default_sampler == "ddpm"       # chosen in session 14: w=1 0.943 -> 0.977 over six prompt sets
    img = be.generate("a red circle on a blue background", steps=2, seed=0)
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()
    tuned = load_checkpoint(embedded.embedded_model("shapes-diffusion-reward", "diffusion").checkpoint)
    base = load_checkpoint(embedded.embedded_model("shapes-diffusion", "diffusion").checkpoint)
    assert tuned["reward_finetune"]["method"] == "draft" and tuned["unet"].keys() == base["unet"].keys()
    assert any(not torch.equal(tuned["unet"][k], base["unet"][k]) for k in base["unet"])
    card = json.loads(embedded.embedded_model("shapes-diffusion-reward", "diffusion").card.read_text())
    assert [r["round"] for r in card["rounds"]] == [1, 2, 3, 4]
    assert [r["command"].split("--method ")[1].split()[0] for r in card["rounds"]] == ["raft", "raft", "draft", "draft"]
    assert "--ema-decay" in card["rounds"][2]["command"] and "--kl-weight" in card["rounds"][3]["command"]
    assert "--default-sampler ddpm" in card["rounds"][3]["command"] and card["eval"]["sampler"] == "ddpm"
    spread = card["eval"]["colour_spread"]
    assert card["eval"]["pass_rate"]["n"] == 100 and spread["n"] == 64 and spread["distinct"] == len(spread["counts"])
    # between rounds 3 and 4 its decoder was fitted to the world (session 13), and round 4 kept it
    assert card["decoder"]["command"].startswith("clipstudio train decoder")
    assert card["decoder"]["roundtrip"]["failed_after"] < card["decoder"]["roundtrip"]["failed_before"]
    assert tuned["decoder_finetune"]["step"] == card["decoder"]["step"] and tuned["reward_finetune"]["step"] == 600
    assert any(not torch.equal(tuned["decoder"][k], base["decoder"][k]) for k in base["decoder"])


@pytest.mark.slow
def test_shipped_flow_model_meets_its_target_on_unseen_prompts():
    """Issue 16's target, >= 90% at 25 flow-euler steps, on a prompt set that chose nothing about the model."""
    from clipstudio.diffusion.backend import load_embedded_backend
    from clipstudio.worlds.shapes.prompts import prompt_set
    r = SM.check_pass_rate(load_embedded_backend("shapes-flow"), prompt_set(100, seed=31337), steps=25)
    assert r["rate"] >= 0.9, r


@pytest.mark.slow
def test_shipped_reward_model_meets_its_targets_on_unseen_prompts():
    """Issue 18's targets with the model's own sampler (DDPM), on prompt sets that chose nothing about the model:
    w=3 >= 97%, w=1 >= 95% (200 prompts: it is the closer one), and >= 5 colours where the colour is free."""
    from clipstudio.diffusion.backend import load_embedded_backend
    from clipstudio.worlds.shapes.prompts import prompt_set
    from clipstudio.worlds.shapes.train_reward import colour_spread
    be = load_embedded_backend("shapes-diffusion-reward")
    w3 = SM.check_pass_rate(be, prompt_set(100, seed=27182), guidance=3.0)
    w1 = SM.check_pass_rate(be, prompt_set(200, seed=27183), guidance=1.0)
    spread = colour_spread(be, seed=27184)
    assert w3["rate"] >= 0.97 and w1["rate"] >= 0.95 and spread["distinct"] >= 5, (w3, w1, spread)


def test_loader_takes_training_keys_from_checkpoint_and_sampling_keys_from_code(tiny_run, tmp_path):
    _, out, _ = tiny_run
    ck = torch.load(out, weights_only=True)
    ck["scheduler_config"] = dict(ck["scheduler_config"], clip_sample=True, prediction_type="epsilon")
    p = tmp_path / "edited.pt"
    torch.save(ck, p)
    be = SM.load_shapes_backend(p)
    assert be.prediction == "epsilon" and be.scheduler_config["prediction_type"] == "epsilon"
    assert be.scheduler_config["clip_sample"] is False
    assert SM.load_shapes_backend(out).prediction == "v_prediction"


def test_text_cache_survives_being_cleared():
    calls = []

    def encoder(texts):
        calls.append(list(texts))
        return torch.stack([torch.full((2, 3), float(len(t))) for t in texts])

    cache = DT.TextCache(encoder, max_items=3)
    cache(["", "ab"])
    out = cache(["abc", "abcd", ""])        # 2 + 2 > 3: the cache is cleared, "" must be encoded again
    assert [float(r[0, 0]) for r in out] == [3.0, 4.0, 0.0]
    assert calls[-1] == ["abc", "abcd", ""]
    assert float(cache(["abc"])[0, 0, 0]) == 3.0 and len(calls) == 2


def test_unreadable_latent_cache_is_encoded_again(tmp_path):
    from clipstudio.generators.taef2 import taef2_encoder
    torch.manual_seed(0)
    encoder = taef2_encoder(SM.LATENT_CHANNELS, 8).eval()
    scenes = DT.dataset_scenes(0, 3)
    cache = tmp_path / "cache.latents"
    cache.write_bytes(b"torn")
    z = DT.encode_dataset(scenes, encoder, cache, {"n": 3}, 64, progress=False)
    assert z.shape == (3, SM.LATENT_CHANNELS, 8, 8)
    assert torch.equal(torch.load(cache, weights_only=True)["latents"], z)
