"""Reward fine-tuning (issue 18): DRaFT-K and RWR maths, the L2 anchor, LoRA, exact resume, the shippable format,
bad input. Tiny seeded random UNets (pixel space, 32 px) and toy rewards, so every test takes seconds."""
import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diffusion_fixtures import write_tiny_checkpoint  # noqa: E402

from clipstudio.cli import main as cli_main  # noqa: E402
from clipstudio.diffusion import reward as R  # noqa: E402
from clipstudio.errors import ClipstudioError  # noqa: E402
from clipstudio.worlds.shapes import train_reward as TR  # noqa: E402

torch.set_num_threads(1)


def brightness(images, prompts):
    """A toy differentiable reward: mean brightness of the red channel."""
    return images[:, 0].mean(dim=(1, 2))


def red_majority(images, prompts):
    """A toy black-box reward: 1 where red is the brightest channel on average (numpy, no gradient)."""
    arr = images.detach().numpy()
    return torch.tensor([float(a[0].mean() > max(a[1].mean(), a[2].mean())) for a in arr])


@pytest.fixture
def toy_rewards(monkeypatch):
    """The shapes-guide slot (used by the curve too) holds the brightness toy; 'red' is a black-box toy."""
    monkeypatch.setitem(TR.REWARDS, "shapes-guide", TR.Reward(lambda: brightness, True, "toy"))
    monkeypatch.setitem(TR.REWARDS, "red", TR.Reward(lambda: red_majority, False, "toy black box"))
    monkeypatch.setattr(TR, "eval_scores", lambda arrays, prompts: [0.0] * len(prompts))


@pytest.fixture
def tiny_ckpt(tmp_path):
    return str(write_tiny_checkpoint(tmp_path / "tiny.pt", seed=3))


def config(tmp_path, tiny_ckpt, **kw):
    base = dict(checkpoint=tiny_ckpt, steps=4, batch=3, lr=1e-3, sample_steps=3, grad_steps=1, eval_every=4,
                curve_prompts=3, curve_steps=2, diversity_prompts=1, diversity_seeds=2, train_prompts=30,
                guidance=[3.0], out=str(tmp_path / "r.pt"), save_every=2)
    base.update(kw)
    return TR.RewardTrainConfig(**base)


def quiet(*args, **kw):
    return TR.train(*args, progress=False, log=lambda s: None, **kw)


# --------------------------------------------------------------------------- the pure maths

def test_trailing_timesteps_match_the_backends_ddim_scheduler():
    from diffusers import DDIMScheduler
    for steps in (1, 4, 20, 50):
        s = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing", set_alpha_to_one=True)
        s.set_timesteps(steps)
        assert R.trailing_timesteps(1000, steps) == s.timesteps.tolist()
    with pytest.raises(ClipstudioError, match="sampling steps"):
        R.trailing_timesteps(1000, 0)


def test_draft_sampler_matches_the_cfg_backend(tiny_ckpt):
    """The differentiable sampler is the one `diffuse` runs: same noise, same images."""
    from clipstudio.worlds.shapes.diffusion_model import load_shapes_backend
    backend = load_shapes_backend(tiny_ckpt)
    parts = TR.load_parts(tiny_ckpt)
    prompts = ["a red circle on a blue background", "a green square on a white background"]
    expected = backend.generate(prompts, guidance=3.0, steps=4, seed=11)
    noise = torch.randn((2,) + backend.sample_shape, generator=torch.Generator().manual_seed(11))
    got = TR.generate_batched(parts, prompts, 3.0, 4, noise)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_draft_k_gradient_reaches_only_through_the_last_k_steps(tiny_ckpt):
    parts = TR.load_parts(tiny_ckpt)
    noise = torch.randn((2,) + parts.sample_shape, generator=torch.Generator().manual_seed(0))
    seen = []
    parts.unet.register_forward_hook(lambda m, i, o: seen.append(o.sample.requires_grad))
    z = TR.sample_latents(parts, ["a red circle on a blue background"] * 2, 3.0, 5, noise, grad_steps=2)
    assert seen == [False, False, False, True, True] and z.requires_grad
    z.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in parts.unet.parameters())


def test_ancestral_draft_samples_are_seeded_and_keep_the_gradient(tiny_ckpt):
    """--sample-eta 1: DDPM-like training samples, the same for the same generator, other than DDIM's."""
    parts = TR.load_parts(tiny_ckpt)
    noise = torch.randn((2,) + parts.sample_shape, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle on a blue background"] * 2

    def sample(eta, seed, grad_steps=0):
        return TR.sample_latents(parts, prompts, 3.0, 4, noise, grad_steps, eta=eta,
                                 generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a, b, c, ddim = sample(1.0, 5), sample(1.0, 5), sample(1.0, 6), sample(0.0, 5)
    assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(a, ddim)
    z = sample(1.0, 5, grad_steps=1)
    torch.testing.assert_close(z.detach(), a)
    z.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in parts.unet.parameters())


def test_v_to_eps_inverts_the_v_target():
    x0, eps = torch.randn(4, 3), torch.randn(4, 3)
    abar = torch.tensor(0.3)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    torch.testing.assert_close(R.v_to_eps(R.v_target(x0, eps, abar), xt, abar), eps)


def test_rwr_weights_are_relative_within_each_group():
    rewards = torch.tensor([0.0, 1.0, 5.0, 5.0, 9.0, 10.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    w = R.rwr_weights(rewards, groups, beta=1.0)
    torch.testing.assert_close(w[2], w[3])                       # equal rewards, equal weights
    assert w[1] > w[0] and w[5] > w[4]
    torch.testing.assert_close(w[:2], w[4:])                     # only differences within a group matter
    for g in range(3):
        torch.testing.assert_close(w[groups == g].mean(), torch.tensor(1.0))
    sharp = R.rwr_weights(rewards, groups, beta=1e-3)
    assert sharp[0] < 1e-6 and sharp[1] == pytest.approx(2.0)
    with pytest.raises(ClipstudioError, match="beta"):
        R.rwr_weights(rewards, groups, beta=0.0)


def test_lora_starts_at_the_base_and_merges_into_the_original_keys(tiny_ckpt):
    parts = TR.load_parts(tiny_ckpt)
    keys = set(parts.unet.state_dict())
    x = torch.randn((2,) + parts.sample_shape)
    t = torch.tensor([10, 500])
    c = parts.text(["a red circle on a blue background"] * 2)
    before = parts.unet(x, t, encoder_hidden_states=c).sample
    adapters = R.add_lora(parts.unet, rank=2)
    assert adapters and all(not p.requires_grad for n, p in parts.unet.named_parameters() if "lora_" not in n)
    torch.testing.assert_close(parts.unet(x, t, encoder_hidden_states=c).sample, before)   # B = 0
    with torch.no_grad():
        for a in adapters:
            a.lora_b.normal_()
    adapted = parts.unet(x, t, encoder_hidden_states=c).sample
    assert not torch.allclose(adapted, before)
    R.merge_lora(parts.unet)
    assert set(parts.unet.state_dict()) == keys
    torch.testing.assert_close(parts.unet(x, t, encoder_hidden_states=c).sample, adapted, atol=1e-5, rtol=1e-4)
    with pytest.raises(ClipstudioError, match="rank"):
        R.add_lora(parts.unet, rank=0)


# --------------------------------------------------------------------------- training

def test_prompt_sets_are_disjoint_from_evaluation_and_each_other():
    train, curve = TR.training_and_curve_prompts(500, 40)
    evaluation = TR.evaluation_prompts()
    assert len(train) == 500 and len(curve) == 40
    assert not set(train) & evaluation and not set(curve) & evaluation and not set(train) & set(curve)


def test_draft_raises_a_toy_reward(tmp_path, tiny_ckpt, toy_rewards):
    cfg = config(tmp_path, tiny_ckpt, steps=8, eval_every=8, lr=3e-3)
    summary = quiet(cfg)
    rewards = [h["reward"] for h in json.loads(Path(cfg.curve_path).read_text())["history"]]
    assert len(rewards) == 8
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.02
    curve = summary["curve"]
    assert [p["step"] for p in curve] == [0, 8] and curve[-1]["guide_reward"] > curve[0]["guide_reward"]
    assert {"eval_score", "pass_rate", "diversity", "free_colours"} <= set(curve[0])


def test_anchor_keeps_weights_near_the_start(tmp_path, tiny_ckpt, toy_rewards):
    from clipstudio.checkpoints import load_checkpoint

    def drift(anchor, name):
        cfg = config(tmp_path, tiny_ckpt, steps=6, eval_every=6, lr=3e-3, anchor=anchor, out=str(tmp_path / name))
        quiet(cfg)
        a, b = load_checkpoint(tiny_ckpt)["unet"], load_checkpoint(cfg.out)["unet"]
        return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in a)
    free, anchored = drift(0.0, "free.pt"), drift(1e3, "anchored.pt")
    assert anchored < 0.5 * free


def test_resume_is_exact_and_output_loads_like_the_shipped_model(tmp_path, tiny_ckpt, toy_rewards):
    from clipstudio.checkpoints import load_checkpoint
    from clipstudio.worlds.shapes.diffusion_model import load_shapes_backend
    straight = config(tmp_path, tiny_ckpt, out=str(tmp_path / "s.pt"), lora_rank=2)
    quiet(straight)
    cut = config(tmp_path, tiny_ckpt, out=str(tmp_path / "c.pt"), lora_rank=2, stop_after=2)
    assert quiet(cut)["step"] == 2
    cut.stop_after, cut.resume = None, True
    assert quiet(cut)["step"] == 4
    a, b = load_checkpoint(straight.state_path), load_checkpoint(cut.state_path)
    assert a["trainable"].keys() == b["trainable"].keys() and all("lora_" in k for k in a["trainable"])
    for k in a["trainable"]:
        assert torch.equal(a["trainable"][k], b["trainable"][k]), k
    assert [h["reward"] for h in a["history"]] == [h["reward"] for h in b["history"]]
    base, out = load_checkpoint(tiny_ckpt), load_checkpoint(straight.out)
    assert out["unet"].keys() == base["unet"].keys()
    assert all(v.dtype == torch.float16 for v in out["unet"].values())
    assert any(not torch.equal(out["unet"][k], base["unet"][k]) for k in base["unet"])
    assert load_shapes_backend(straight.out).generate("a red circle on a blue background", steps=2).shape[0] == 1
    card = json.loads(Path(straight.out).with_suffix(".json").read_text())
    assert card["step"] == 4 and card["config"]["lora_rank"] == 2 and card["curve"]
    assert Path(straight.best_path).is_file()


def test_default_sampler_is_written_into_the_shipped_checkpoint(tmp_path, tiny_ckpt, toy_rewards):
    from clipstudio.checkpoints import load_checkpoint
    from clipstudio.worlds.shapes.diffusion_model import load_shapes_backend
    kept = config(tmp_path, tiny_ckpt, out=str(tmp_path / "kept.pt"), steps=1, eval_every=1)
    quiet(kept)
    assert load_shapes_backend(kept.out).default_sampler == load_shapes_backend(tiny_ckpt).default_sampler == "ddim"
    ddpm = config(tmp_path, tiny_ckpt, out=str(tmp_path / "ddpm.pt"), steps=1, eval_every=1, default_sampler="ddpm")
    quiet(ddpm)
    assert load_checkpoint(ddpm.out)["default_sampler"] == "ddpm"
    assert load_shapes_backend(ddpm.out).default_sampler == "ddpm"
    assert load_checkpoint(ddpm.best_path)["default_sampler"] == "ddpm"
    a, b = load_checkpoint(kept.out)["unet"], load_checkpoint(ddpm.out)["unet"]
    assert all(torch.equal(a[k], b[k]) for k in a)     # it changes what ships with the weights, not the training


def test_black_box_reward_trains_with_rwr(tmp_path, tiny_ckpt, toy_rewards):
    from clipstudio.checkpoints import load_checkpoint
    cfg = config(tmp_path, tiny_ckpt, method="rwr", reward="red", rwr_samples=3, steps=2, eval_every=2)
    summary = quiet(cfg)
    assert summary["step"] == 2
    history = json.loads(Path(cfg.curve_path).read_text())["history"]
    assert all(h["reward"] in (0.0, 1 / 3, 2 / 3, 1.0) or 0 <= h["reward"] <= 1 for h in history)
    base, out = load_checkpoint(tiny_ckpt)["unet"], load_checkpoint(cfg.out)["unet"]
    assert any(not torch.equal(out[k], base[k]) for k in base)
    with pytest.raises(ClipstudioError, match="not differentiable: use --method rwr"):
        TR.RewardTrainConfig(method="draft", reward="red").validate()


def test_raft_keeps_the_best_sample_per_prompt_and_builds_its_data_in_resumable_chunks(tmp_path, tiny_ckpt,
                                                                                         toy_rewards):
    """Each prompt's kept latent is the one its reward ranks first among its own n seeded samples (RAFT), and a
    dataset built in two chunks, or continued after a cut, equals one built at once."""
    cfg = config(tmp_path, tiny_ckpt, method="raft", reward="red", rwr_samples=3, train_prompts=5).validate()
    parts = TR.load_parts(tiny_ckpt)
    prompts, _ = TR.training_and_curve_prompts(5, 3)
    best, rewards = TR.best_of_n_chunk(parts, cfg, brightness, prompts[:2], 0)
    assert best.shape == (2, *parts.sample_shape) and rewards.shape == (2, 3)
    for i, p in enumerate(prompts[:2]):
        z = TR.sample_latents(parts, [p] * 3, cfg.raft_guidance, cfg.sample_steps,
                              TR.prompt_noise(cfg.seed, i, 3, parts.sample_shape))
        scores = brightness(parts.decode(z), [p] * 3)
        assert torch.allclose(scores, rewards[i], atol=1e-5)
        assert torch.allclose(best[i], z[int(scores.argmax())], atol=1e-5)
    whole = TR.raft_dataset(parts, cfg, brightness, prompts, chunk=5, log=lambda s: None)
    Path(cfg.raft_path).unlink()
    TR.raft_dataset(parts, cfg, brightness, prompts[:2], chunk=2, log=lambda s: None)    # "cut" after 2 prompts
    resumed = TR.raft_dataset(parts, cfg, brightness, prompts, chunk=2, log=lambda s: None)
    assert torch.allclose(whole["latents"], resumed["latents"], atol=1e-5)
    assert torch.allclose(whole["rewards"], resumed["rewards"], atol=1e-5)
    fewer = TR.raft_dataset(parts, cfg, brightness, prompts[:3], log=lambda s: None)     # a smaller --train-prompts
    assert torch.equal(fewer["latents"], resumed["latents"][:3])
    with pytest.raises(ClipstudioError, match="built on other training prompts"):
        TR.raft_dataset(parts, cfg, brightness, prompts[1:], log=lambda s: None)
    cfg.rwr_samples = 2
    with pytest.raises(ClipstudioError, match="was built with other settings"):
        TR.raft_dataset(parts, cfg, brightness, prompts, log=lambda s: None)


def test_raft_regresses_on_its_kept_samples_and_resumes_exactly(tmp_path, tiny_ckpt, toy_rewards):
    """A black-box reward trains with RAFT: the denoising loss on the kept samples falls, the weights move, and a
    cut-and-resumed run (which reuses OUT.raft.pt) ends bit for bit where an uncut one does."""
    from clipstudio.checkpoints import load_checkpoint
    common = dict(method="raft", reward="red", rwr_samples=2, train_prompts=6, batch=6, lr=3e-3, steps=6,
                  eval_every=6, p_uncond=0.0)
    straight = config(tmp_path, tiny_ckpt, out=str(tmp_path / "s.pt"), **common)
    quiet(straight)
    losses = [h["loss"] for h in json.loads(Path(straight.curve_path).read_text())["history"]]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    cut = config(tmp_path, tiny_ckpt, out=str(tmp_path / "c.pt"), stop_after=3, **common)
    quiet(cut)
    data_written = Path(cut.raft_path).stat().st_mtime_ns
    cut.stop_after, cut.resume = None, True
    assert quiet(cut)["step"] == 6
    assert Path(cut.raft_path).stat().st_mtime_ns == data_written          # the data was reused, not rebuilt
    a, b = load_checkpoint(straight.state_path), load_checkpoint(cut.state_path)
    for k in a["trainable"]:
        assert torch.equal(a["trainable"][k], b["trainable"][k]), k
    base, out = load_checkpoint(tiny_ckpt)["unet"], load_checkpoint(straight.out)["unet"]
    assert any(not torch.equal(out[k], base[k]) for k in base)


def test_the_checker_is_a_black_box_reward():
    from clipstudio.worlds.shapes.render import render, sample_scene
    from clipstudio.worlds.shapes.captions import canonical_caption
    import numpy as np
    scene = sample_scene(np.random.default_rng(0), "plain")
    image = torch.from_numpy(render(scene, 64)).permute(2, 0, 1)[None].float() / 255
    reward = TR.check_reward()
    assert reward(image, [canonical_caption(scene)]).tolist() == [1.0]
    assert reward(torch.zeros_like(image), [canonical_caption(scene)]).tolist() == [0.0]


def test_diversity_measures():
    same = torch.zeros(4, 3, 8, 8)
    assert TR.mean_pairwise_distance(same) == 0.0
    two = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    assert TR.mean_pairwise_distance(two) == pytest.approx(1.0)


# --------------------------------------------------------------------------- the command

def test_update_ema_is_a_polyak_average():
    ema, params = {"w": torch.zeros(3)}, {"w": torch.ones(3)}
    TR.update_ema(ema, params, 0.75)
    assert torch.allclose(ema["w"], torch.full((3,), 0.25))
    TR.update_ema(ema, params, 0.75)
    assert torch.allclose(ema["w"], torch.full((3,), 1 - 0.75 ** 2))


def test_ema_ships_the_average_and_resumes_exactly(tmp_path, tiny_ckpt, toy_rewards):
    """With --ema-decay the shipped UNet is the average (between the start and the trained weights, nearer the
    start), the trained weights stay in the state, and a cut-and-resumed run ends bit for bit where an uncut one
    does, its average included."""
    from clipstudio.checkpoints import load_checkpoint
    common = dict(method="raft", reward="red", rwr_samples=2, train_prompts=6, batch=6, lr=3e-3, steps=6,
                  eval_every=6, p_uncond=0.0, ema_decay=0.9)
    straight = config(tmp_path, tiny_ckpt, out=str(tmp_path / "s.pt"), **common)
    quiet(straight)
    cut = config(tmp_path, tiny_ckpt, out=str(tmp_path / "c.pt"), stop_after=3, **common)
    quiet(cut)
    cut.stop_after, cut.resume = None, True
    assert quiet(cut)["step"] == 6
    a, b = load_checkpoint(straight.state_path), load_checkpoint(cut.state_path)
    for k in a["trainable"]:
        assert torch.equal(a["trainable"][k], b["trainable"][k]) and torch.equal(a["ema"][k], b["ema"][k]), k
    start, shipped = load_checkpoint(tiny_ckpt)["unet"], load_checkpoint(straight.out)["unet"]
    moved = [k for k in a["trainable"] if not torch.equal(a["trainable"][k], start[k].float())]
    assert moved
    for k in moved:
        assert torch.equal(shipped[k], a["ema"][k].half()), k
        assert (shipped[k].float() - start[k].float()).norm() < (a["trainable"][k] - start[k].float()).norm(), k
    no_ema = config(tmp_path, tiny_ckpt, out=str(tmp_path / "n.pt"), **{**common, "ema_decay": 0.0})
    quiet(no_ema)
    assert load_checkpoint(no_ema.state_path)["ema"] is None
    assert all(torch.equal(load_checkpoint(no_ema.out)["unet"][k], a["trainable"][k].half()) for k in moved)


def train_cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli_main(["train", "reward", *map(str, argv)])
    return code, err.getvalue().strip()


@pytest.mark.parametrize("argv, message", [
    (["--method", "draft", "--reward", "check"], "not differentiable: use --method rwr"),
    (["--grad-steps", "0"], "--grad-steps must be in 1..--sample-steps"),
    (["--grad-steps", "30", "--sample-steps", "20"], "--grad-steps must be in"),
    (["--batch", "0"], "--batch must be a positive integer"),
    (["--batch", "9", "--train-prompts", "8"], "--batch (9) cannot exceed --train-prompts (8)"),
    (["--lr", "nan"], "--lr must be"),
    (["--guidance", "abc"], "--guidance must be a number"),
    (["--guidance", "-1"], "--guidance must be a finite number >= 0"),
    (["--rwr-beta", "0"], "--rwr-beta must be a positive number"),
    (["--anchor", "inf"], "--anchor must be a finite number"),
    (["--method", "raft", "--p-uncond", "1"], "--p-uncond must be below 1"),
    (["--raft-guidance", "-2"], "--raft-guidance must be a finite number >= 0"),
    (["--ema-decay", "1"], "--ema-decay must be below 1"),
    (["--sample-eta", "2"], "--sample-eta must be in [0, 1]"),
    (["--default-sampler", "flow-euler"], "unknown --default-sampler 'flow-euler'; choose one of: ddpm, ddim"),
    (["--model", "no-such-model"], "unknown embedded model 'no-such-model'"),
    (["--checkpoint", "/no/such.pt"], "no diffusion checkpoint at /no/such.pt"),
    (["--model", "shapes-flow", "--steps", "1"], "is a flow-matching model; reward fine-tuning needs"),
])
def test_bad_input_is_one_line(argv, message, tmp_path):
    code, err = train_cli([*argv, "--out", tmp_path / "x.pt", "--no-progress"])
    assert code == 2 and message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


def test_corrupt_resume_state_is_one_line(tmp_path, tiny_ckpt, toy_rewards):
    cfg = config(tmp_path, tiny_ckpt, steps=2, eval_every=2)
    quiet(cfg)
    st = torch.load(cfg.state_path, weights_only=True)
    st["config"]["seed"] = 99
    torch.save(st, cfg.state_path)
    cfg.resume, cfg.steps = True, 4
    with pytest.raises(ClipstudioError, match="--resume: .* was trained with --seed 99"):
        quiet(cfg)


def test_compare_takes_another_embedded_diffusion_model_as_a_method(tmp_path, monkeypatch):
    from clipstudio import embedded
    from clipstudio.diffusion.config import DiffuseConfig
    from clipstudio.worlds.shapes import compare as C
    from diffusion_fixtures import TINY_MODEL, write_tiny_world
    monkeypatch.setenv("CLIPSTUDIO_WORLDS", str(write_tiny_world(tmp_path / "world")))
    embedded.worlds.cache_clear()
    try:
        plan = C.plan_compare(["a red circle on a blue background"], [0], ["cfg-diffusion", f"cfg-diffusion:{TINY_MODEL}"],
                              diffuse=DiffuseConfig(model="shapes-diffusion", steps=2))
        assert plan.runs["cfg-diffusion"][0]["model"] == "shapes-diffusion"
        assert plan.runs[f"cfg-diffusion:{TINY_MODEL}"][0]["model"] == TINY_MODEL
        made = C._run_method(f"cfg-diffusion:{TINY_MODEL}", plan.runs[f"cfg-diffusion:{TINY_MODEL}"], 0)
        assert made["images"][0].shape == (32, 32, 3)
        with pytest.raises(ClipstudioError, match="unknown embedded model 'nope'"):
            C.plan_compare(["a red circle on a blue background"], [0], ["cfg-diffusion:nope"], diffuse=DiffuseConfig())
    finally:
        monkeypatch.undo()
        embedded.worlds.cache_clear()


def test_colour_spread_counts_distinct_object_colours(tiny_ckpt, tmp_path, monkeypatch):
    from clipstudio.worlds.shapes.diffusion_model import load_shapes_backend
    spread = TR.colour_spread(load_shapes_backend(tiny_ckpt), n=4, steps=2)
    assert spread["n"] == 4 and spread["distinct"] == len(spread["counts"]) and sum(spread["counts"].values()) <= 4
    monkeypatch.setattr(TR, "object_colours", lambda images, background="white": ["red", "blue", None, "red"])
    assert TR.colour_spread(load_shapes_backend(tiny_ckpt), n=4, steps=2)["counts"] == {"blue": 1, "red": 2}
    out = tmp_path / "figures.json"
    code = cli_main(["eval", "diffusion", "--checkpoint", tiny_ckpt, "--prompts", "0", "--sweep", "",
                     "--negative-seeds", "0", "--colour-seeds", "4", "--steps", "2", "--json", str(out)])
    assert code == 0 and json.loads(out.read_text())["colour_spread"]["distinct"] == 2


def test_eval_colour_check_samples_with_the_chosen_sampler(tiny_ckpt, monkeypatch):
    from clipstudio.diffusion.backend import CFGBackend
    used = []
    generate = CFGBackend.generate

    def spy(self, *args, sampler=None, **kw):
        used.append(sampler or self.default_sampler)
        return generate(self, *args, sampler=sampler, **kw)
    monkeypatch.setattr(CFGBackend, "generate", spy)
    code = cli_main(["eval", "diffusion", "--checkpoint", tiny_ckpt, "--prompts", "0", "--sweep", "",
                     "--negative-seeds", "0", "--colour-seeds", "2", "--steps", "2", "--sampler", "ddpm"])
    assert code == 0 and used == ["ddpm"]


def test_over_optimization_onset_and_the_figure(tmp_path):
    def pt(step, guide, rate):
        return {"step": step, "guide_reward": guide, "eval_score": 0.9, "pass_rate": rate, "diversity": 0.2}
    rising = [pt(0, 0.90, 0.90), pt(10, 0.91, 0.95), pt(20, 0.93, 0.92), pt(30, 0.95, 0.85)]
    assert TR.over_optimization_onset(rising) == 10
    assert TR.over_optimization_onset([pt(0, 0.90, 0.90), pt(10, 0.91, 0.95), pt(20, 0.90, 0.92)]) is None
    assert TR.over_optimization_onset([pt(0, 0.9, 0.9), pt(10, 0.95, 0.97)]) is None
    assert TR.over_optimization_onset([]) is None
    path = tmp_path / "curve.png"
    history = [{"step": i, "reward": 0.9 + i / 1000} for i in range(30)]
    assert TR.windowed_rewards(history, 10) == ([10, 20, 30], [pytest.approx(0.9045), pytest.approx(0.9145),
                                                               pytest.approx(0.9245)])
    assert TR.plot_curve({"a": rising, "b": rising[:2]}, path, histories={"a": history}, window=10) == 10
    from PIL import Image
    assert Image.open(path).size[0] > 300


def test_plot_with_bad_item_is_one_line(tmp_path):
    code, err = train_cli(["--plot", tmp_path / "c.png", "--plot-with", "nolabel", "--out", tmp_path / "x.pt"])
    assert code == 2 and "--plot-with takes LABEL=CURVE.json" in err and len(err.splitlines()) == 1
    code, err = train_cli(["--plot", tmp_path / "c.png", "--plot-with", f"a={tmp_path / 'none.json'}",
                           "--out", tmp_path / "x.pt"])
    assert code == 2 and "cannot read a curve" in err


def test_hard_negatives_change_one_attribute():
    negatives = TR.hard_negatives("a white triangle to the left of a black circle on a blue background")
    assert "a black circle to the left of a white triangle on a blue background" in negatives
    assert "a white triangle above a black circle on a blue background" in negatives
    assert "a white square to the left of a black circle on a blue background" in negatives
    assert "a white triangle to the left of a black circle on a blue background" not in negatives
    assert TR.hard_negatives("a large red circle on a white background").count(
        "a small red circle on a white background") == 1
    from clipstudio.worlds.shapes.captions import parse_caption
    for n in negatives:
        parse_caption(n)                                       # every near miss is a caption of the grammar


def test_guide_rewards_prefer_the_right_picture():
    import numpy as np
    from clipstudio.worlds.shapes.render import render, sample_scene
    from clipstudio.worlds.shapes.captions import canonical_caption
    rng = np.random.default_rng(4)
    scenes = [sample_scene(rng, "plain") for _ in range(2)]
    images = torch.stack([torch.from_numpy(render(s, 64)).permute(2, 0, 1).float() / 255 for s in scenes])
    right = [canonical_caption(s) for s in scenes]
    for name in ("shapes-guide", "shapes-guide-contrast"):
        reward = TR.REWARDS[name].make()
        assert (reward(images, right) > reward(images, right[::-1])).all(), name
    images.requires_grad_(True)
    TR.REWARDS["shapes-guide-contrast"].make()(images, right).sum().backward()
    assert images.grad.abs().sum() > 0


# --------------------------------------------------------------------------- the KL term (DPOK) on free-colour captions

def test_kl_term_is_zero_at_the_reference_and_its_gradient_pulls_back_to_it(tmp_path, tiny_ckpt):
    other = str(write_tiny_checkpoint(tmp_path / "other.pt", seed=4))
    cfg = TR.RewardTrainConfig(checkpoint=tiny_ckpt, batch=3, sample_steps=2, kl_weight=1.0)
    parts, reference = TR.load_parts(other), TR.load_parts(tiny_ckpt)
    prompts = TR.free_colour_prompts(20)
    assert float(TR.kl_objective(reference, reference, cfg, 0, prompts).detach()) == 0.0
    before = float(TR.kl_objective(parts, reference, cfg, 0, prompts).detach())
    assert before > 0
    opt = torch.optim.Adam(parts.unet.parameters(), lr=1e-3)
    for _ in range(5):
        opt.zero_grad()
        TR.kl_objective(parts, reference, cfg, 0, prompts).backward()
        opt.step()
    assert float(TR.kl_objective(parts, reference, cfg, 0, prompts).detach()) < 0.7 * before
    assert all(p.grad is None for p in reference.unet.parameters())


def test_kl_weight_keeps_the_fine_tune_near_its_reference(tmp_path, tiny_ckpt, toy_rewards):
    from clipstudio.checkpoints import load_checkpoint
    reference = TR.load_parts(tiny_ckpt)
    prompts = TR.free_colour_prompts(20)

    def distance(kl_weight, name):
        cfg = config(tmp_path, tiny_ckpt, steps=6, eval_every=6, lr=3e-3, kl_weight=kl_weight,
                     out=str(tmp_path / name))
        quiet(cfg)
        history = load_checkpoint(cfg.state_path)["history"]
        assert all((h["kl"] > 0) == bool(kl_weight) for h in history[1:])
        tuned = TR.load_parts(cfg.out)
        return sum(float(TR.kl_objective(tuned, reference, cfg, step, prompts).detach()) for step in range(3))
    free, held = distance(0.0, "free.pt"), distance(1e3, "held.pt")
    assert held < 0.5 * free


def test_free_colour_prompts_leave_the_colour_free_and_skip_the_measured_prompts():
    from clipstudio.worlds.shapes.render import COLOURS, SHAPES
    prompts = TR.free_colour_prompts(150)
    assert prompts == TR.free_colour_prompts(150) and len(set(prompts)) == len(prompts) > 100
    assert not set(prompts) & set(TR.DIVERSITY_PROMPTS)
    for p in prompts:
        subject = p.split(" on a ")[0]
        assert any(s in subject for s in SHAPES) and not any(c in subject.split() for c in COLOURS), p


def test_kl_settings_are_checked_and_resume_refuses_another_kl_weight(tmp_path, tiny_ckpt, toy_rewards):
    code, err = train_cli(["--kl-weight", "-1", "--out", tmp_path / "x.pt", "--no-progress"])
    assert code == 2 and "--kl-weight must be a finite number >= 0" in err and len(err.splitlines()) == 1
    code, err = train_cli(["--kl-weight", "1", "--kl-reference", "no-such-model", "--steps", "1",
                           "--out", tmp_path / "x.pt", "--no-progress"])
    assert code == 2 and "unknown embedded model 'no-such-model'" in err and len(err.splitlines()) == 1
    cfg = config(tmp_path, tiny_ckpt, steps=2, eval_every=2, kl_weight=1.0)
    quiet(cfg)
    cfg.resume, cfg.steps, cfg.kl_weight = True, 4, 2.0
    with pytest.raises(ClipstudioError, match="was trained with --kl-weight 1.0"):
        quiet(cfg)
