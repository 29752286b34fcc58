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
from clipstudio.train import diffusion_train as DT  # noqa: E402

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
    DT.main(["--space", "pixel", "--steps", "5", "--stop-after", "3", "--batch", "4", "--save-every", "2",
             "--out", out, "--state", state, "--guide", str(d / "no-guide.pt"), "--no-progress"])
    return d, out, state


def test_train_writes_checkpoint_sidecar_and_resumes_exactly(tiny_run):
    d, out, state = tiny_run
    meta = json.loads(open(out[:-3] + ".json").read())
    assert meta["step"] == 3 and "--steps 5" in meta["command"] and meta["config"]["p_uncond"] == 0.15
    assert os.path.getsize(out) < 12e6
    # stopped at 3 of 5, then resumed to 5 == 5 steps straight
    DT.main(["--space", "pixel", "--steps", "5", "--batch", "4", "--out", out, "--state", state, "--resume",
             "--no-progress", "--guide", str(d / "no-guide.pt")])
    straight = str(d / "s.pt")
    DT.main(["--space", "pixel", "--steps", "5", "--batch", "4", "--out", straight, "--state", str(d / "s.state"),
             "--no-progress", "--guide", str(d / "no-guide.pt")])
    a = torch.load(state, weights_only=False)
    b = torch.load(str(d / "s.state"), weights_only=False)
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
    r = SM.check_pass_rate(be, SM.canonical_prompts(5), steps=2, batch=5)
    assert 0 <= r["rate"] <= 1 and r["n"] == 5


def test_bad_checkpoints_and_arguments(tmp_path, monkeypatch):
    with pytest.raises(ClipstudioError, match="missing diffusion checkpoint"):
        SM.load_shapes_backend(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipstudioError, match="could not load|corrupt or not a checkpoint"):
        SM.load_shapes_backend(bad)
    with pytest.raises(ClipstudioError, match="steps"):
        DT.main(["--steps", "0", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(ClipstudioError, match="p-uncond"):
        DT.main(["--p-uncond", "1.5", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(ClipstudioError, match="dataset"):
        DT.main(["--dataset", "0", "--out", str(tmp_path / "x.pt")])
    monkeypatch.setenv("CLIPSTUDIO_OFFLINE", "1")
    monkeypatch.setenv("CLIPSTUDIO_HOME", str(tmp_path / "home"))
    with pytest.raises(ClipstudioError, match="not found offline: put taef2_encoder.pth"):
        DT.main(["--weights-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "x.pt")])


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
    DT.main(args + ["--steps", "4", "--stop-after", "2"])
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
    DT.main(args + ["--steps", "4", "--resume"])
    assert os.path.getmtime(state + ".latents") == before
    assert torch.load(state, weights_only=False)["step"] == 4


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
        DT.main([a if a != "taef2" else "pixel" for a in args] + ["--steps", "4", "--resume"])


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
