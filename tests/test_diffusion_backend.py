"""Fast tests of the sampling maths and the CFG backend on tiny seeded random components."""
import math

import pytest
import torch

from clipstudio.diffusion import sampling as S
from clipstudio.errors import ClipstudioError

diffusers = pytest.importorskip("diffusers")
open_clip = pytest.importorskip("open_clip")

from clipstudio.diffusion import backend as B  # noqa: E402

torch.set_num_threads(1)


# --------------------------------------------------------------------------- tiny components

def tiny_text_encoder(seed=0):
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    )
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    return B.OpenClipTextEncoder(model, tok)


def tiny_unet(seed=0, size=8):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32,
    ).eval()


@pytest.fixture(scope="module")
def parts():
    return tiny_unet(), tiny_text_encoder()


def backend_for(parts, sampler):
    unet, enc = parts
    pred = S.SAMPLERS[sampler].prediction
    return B.CFGBackend(unet=unet, text_encoder=enc, prediction=pred, default_steps=4, default_guidance=3.0)


# --------------------------------------------------------------------------- backend, every sampler

@pytest.mark.parametrize("sampler", B.list_samplers())
def test_sampler_smoke_shape_range(parts, sampler):
    be = backend_for(parts, sampler)
    img = be.generate("a red circle", sampler=sampler, steps=3, n=2, seed=1)
    assert img.shape == (2, 3, 8, 8)
    assert img.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert img.min() >= 0 and img.max() <= 1
    assert img.std() > 0           # not a constant image
    pil = B.to_pil(img)
    assert len(pil) == 2 and pil[0].size == (8, 8)


@pytest.mark.parametrize("sampler", B.list_samplers())
def test_sampler_determinism_by_seed(parts, sampler):
    be = backend_for(parts, sampler)
    a = be.generate("a blue square", sampler=sampler, steps=3, seed=7)
    b = be.generate("a blue square", sampler=sampler, steps=3, seed=7)
    c = be.generate("a blue square", sampler=sampler, steps=3, seed=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("sampler", B.list_samplers())
@pytest.mark.parametrize("steps", [0, -1, 2.5])
def test_bad_steps(parts, sampler, steps):
    be = backend_for(parts, sampler)
    with pytest.raises(ClipstudioError, match="steps"):
        be.generate("x", sampler=sampler, steps=steps)


def test_unknown_sampler(parts):
    be = backend_for(parts, "ddim")
    with pytest.raises(ClipstudioError, match="unknown sampler 'plms'"):
        be.generate("x", sampler="plms")
    with pytest.raises(ClipstudioError, match="unknown sampler"):
        B.make_scheduler("nope")
    with pytest.raises(ClipstudioError, match="unknown sampler"):
        S.get_sampler("nope")


def test_sampler_prediction_mismatch(parts):
    be = backend_for(parts, "ddim")
    with pytest.raises(ClipstudioError, match="flow"):
        be.generate("x", sampler="flow-euler", steps=2)


def test_bad_n_and_guidance(parts):
    be = backend_for(parts, "ddim")
    with pytest.raises(ClipstudioError, match="n must"):
        be.generate("x", n=0, steps=2)
    with pytest.raises(ClipstudioError, match="guidance"):
        be.generate("x", guidance=-1.0, steps=2)


def test_list_samplers_and_schedulers():
    names = B.list_samplers()
    assert set(names) >= {"ddpm", "ddim", "euler", "flow-euler"}
    kinds = {n: type(B.make_scheduler(n)).__name__ for n in names}
    assert kinds["ddpm"] == "DDPMScheduler"
    assert kinds["ddim"] == "DDIMScheduler"
    assert kinds["euler"] == "EulerDiscreteScheduler"
    assert kinds["flow-euler"] == "FlowMatchEulerDiscreteScheduler"


def test_guidance_changes_output_and_w1_is_conditional(parts):
    be = backend_for(parts, "ddim")
    a = be.generate("a red circle", guidance=1.0, steps=3, seed=0)
    b = be.generate("a red circle", guidance=5.0, steps=3, seed=0)
    assert not torch.allclose(a, b)


def test_ddim_eta_is_stochastic_but_seeded(parts):
    be = backend_for(parts, "ddim")
    a = be.generate("a red circle", steps=4, seed=0, eta=0.0)
    b = be.generate("a red circle", steps=4, seed=0, eta=1.0)
    c = be.generate("a red circle", steps=4, seed=0, eta=1.0)
    assert not torch.allclose(a, b)
    assert torch.equal(b, c)


# --------------------------------------------------------------------------- CFG wrapper and prompts

def test_cfg_wrapper_equals_formula_in_one_batched_call():
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    calls = []

    def model_fn(x, t, c):
        calls.append(x.shape[0])
        return lin(torch.cat([x, c, t.float().unsqueeze(1)], 1))

    x = torch.randn(4, 3)
    cond, uncond = torch.randn(4, 1), torch.randn(4, 1)
    t = torch.tensor(17)
    w = 3.5
    got = S.cfg_model(model_fn, cond, uncond, w)(x, t)
    tt = torch.full((4,), 17)
    e_c = model_fn(x, tt, cond)
    e_u = model_fn(x, tt, uncond)
    assert calls[0] == 8 and len(calls) == 3          # one doubled call for the guided output
    torch.testing.assert_close(got, e_u + w * (e_c - e_u))
    torch.testing.assert_close(S.cfg_model(model_fn, cond, uncond, 1.0)(x, t), e_c)
    torch.testing.assert_close(S.cfg_model(model_fn, cond, uncond, 0.0)(x, t), e_u)


def test_guidance_rescale_matches_the_conditional_std():
    torch.manual_seed(0)
    cond, guided = torch.randn(3, 4, 5, 5), 4 * torch.randn(3, 4, 5, 5)
    full = S.cfg_rescale(guided, cond, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))
    torch.testing.assert_close(S.cfg_rescale(guided, cond, 0.0), guided)
    torch.testing.assert_close(S.cfg_rescale(guided, cond, 0.5), 0.5 * full + 0.5 * guided)


def test_backend_guidance_rescale_option(parts):
    be = backend_for(parts, "ddim")
    a = be.generate("a red circle", steps=2, guidance=6.0, seed=0)
    b = be.generate("a red circle", steps=2, guidance=6.0, seed=0, guidance_rescale=1.0)
    assert not torch.equal(a, b)
    with pytest.raises(ClipstudioError, match="rescale"):
        be.generate("a red circle", steps=2, guidance_rescale=1.5)


def test_negative_prompt_changes_uncond(parts):
    _, enc = parts
    cond, uncond = B.encode_prompts(enc, "a circle", None, 2)
    _, uncond_neg = B.encode_prompts(enc, "a circle", "red", 2)
    _, empty = B.encode_prompts(enc, "", None, 1)
    assert cond.shape == (2, 16, 32) and uncond.shape == (2, 16, 32)
    torch.testing.assert_close(uncond[:1], empty)       # no negative: the empty prompt
    assert not torch.allclose(uncond, uncond_neg)        # negative: its own embedding
    torch.testing.assert_close(uncond_neg[:1], enc(["red"]))


def test_negative_prompt_changes_images(parts):
    be = backend_for(parts, "ddim")
    a = be.generate("a circle", steps=3, seed=0, guidance=4.0)
    b = be.generate("a circle", negative="red", steps=3, seed=0, guidance=4.0)
    assert not torch.allclose(a, b)


def test_token_states_match_open_clip_pooled_features(parts):
    _, enc = parts
    model = enc.model
    tokens = enc.tokenizer(["a red circle", "two blue squares"])
    states = B.openclip_token_states(model, tokens)
    assert states.shape == (2, 16, 32)
    eot = tokens.argmax(dim=-1)
    pooled = states[torch.arange(2), eot] @ model.text_projection
    torch.testing.assert_close(pooled, model.encode_text(tokens))


# --------------------------------------------------------------------------- pure sampling maths

def _gauss_eps(schedule, mu, s):
    """Exact eps for data N(mu, s^2 I): eps = sqrt(1-a) (x - sqrt(a) mu) / (a s^2 + 1 - a)."""
    ab = schedule.alphas_cumprod

    def fn(x, t):
        tt = t.double()
        i = tt.floor().long().clamp(0, len(ab) - 2)
        w = (tt - i).unsqueeze(1)
        a = (ab[i].unsqueeze(1) * (1 - w) + ab[i + 1].unsqueeze(1) * w)
        return ((1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s * s + 1 - a)).to(x.dtype)
    return fn


@pytest.mark.parametrize("name", ["ddpm", "ddim", "euler"])
def test_samplers_recover_gaussian_with_exact_eps(name):
    sched = S.DiffusionSchedule.linear(1000)
    mu, s = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.5
    g = torch.Generator().manual_seed(0)
    x = S.get_sampler(name)(_gauss_eps(sched, mu, s), torch.randn(20000, 2, generator=g, dtype=torch.float64),
                         200, sched, generator=g)
    assert torch.allclose(x.mean(0), mu, atol=0.03)
    assert abs(float(x.std(0).mean()) - s) < 0.03


def test_flow_euler_recovers_gaussian_with_exact_velocity():
    mu, s = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.5

    def v_fn(x, t):      # exact E[noise - x0 | x_s] for x0 ~ N(mu, s^2), x_s = (1-u) x0 + u noise
        u = (t.double() / 1000).unsqueeze(1)
        var = (1 - u) ** 2 * s * s + u ** 2
        m = (1 - u) * mu
        e_noise = u * (x - m) / var
        e_x0 = mu + (1 - u) * s * s * (x - m) / var
        return e_noise - e_x0

    g = torch.Generator().manual_seed(0)
    x = S.sample_flow_euler(v_fn, torch.randn(20000, 2, generator=g, dtype=torch.float64), 100,
                            S.FlowSchedule(), generator=g)
    assert torch.allclose(x.mean(0), mu, atol=0.03)
    assert abs(float(x.std(0).mean()) - s) < 0.03


def test_ddim_eta1_equals_ddpm_step():
    torch.manual_seed(0)
    x, eps, noise = torch.randn(3, 2), torch.randn(3, 2), torch.randn(3, 2)
    a_t, a_prev = torch.tensor(0.3), torch.tensor(0.6)
    torch.testing.assert_close(S.ddim_step(x, eps, a_t, a_prev, 1.0, noise), S.ddpm_step(x, eps, a_t, a_prev, noise))


def test_q_sample_and_predict_x0_invert():
    sched = S.DiffusionSchedule.linear(100)
    x0, noise = torch.randn(4, 2), torch.randn(4, 2)
    t = torch.tensor([0, 10, 50, 99])
    xt = S.q_sample(x0, t, noise, sched.alphas_cumprod.float())
    a = sched.alphas_cumprod.float()[t].unsqueeze(1)
    torch.testing.assert_close(S.predict_x0(xt, noise, a), x0, atol=1e-4, rtol=1e-4)


def test_karras_sigmas_endpoints():
    s = S.karras_sigmas(10, 0.1, 80.0)
    assert len(s) == 11 and s[-1] == 0
    assert math.isclose(float(s[0]), 80.0, rel_tol=1e-6) and math.isclose(float(s[-2]), 0.1, rel_tol=1e-6)
    assert (s[:-1][1:] < s[:-1][:-1]).all()


def test_pure_sampler_bad_input():
    sched = S.DiffusionSchedule.linear(100)
    f = lambda x, t: torch.zeros_like(x)  # noqa: E731
    for name in S.list_samplers():
        fn = S.get_sampler(name)
        sch = S.FlowSchedule() if name == "flow-euler" else sched
        with pytest.raises(ClipstudioError, match="steps"):
            fn(f, torch.zeros(2, 2), 0, sch)
    with pytest.raises(ClipstudioError, match="needs a DiffusionSchedule"):
        S.sample_ddim(f, torch.zeros(2, 2), 5, S.FlowSchedule())


# --------------------------------------------------------------------------- pipelines

def test_hub_name_unreachable_gives_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ClipstudioError) as e:
        B.load_sd_pipeline("nobody-here/no-such-model")
    assert "\n" not in str(e.value) and "nobody-here/no-such-model" in str(e.value)


def test_pipeline_dir_without_model_index(tmp_path):
    with pytest.raises(ClipstudioError, match="model_index.json"):
        B.load_sd_pipeline(str(tmp_path))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler"])
def test_v_prediction_models_use_the_diffusion_samplers(parts, sampler):
    unet, enc = parts
    be = B.CFGBackend(unet=unet, text_encoder=enc, prediction="v_prediction",
                      scheduler_config={"prediction_type": "v_prediction", "clip_sample": True})
    assert be.samplers() == ["ddpm", "ddim", "euler"]
    sched = B.make_scheduler(sampler, config=be.scheduler_config)
    assert sched.config.prediction_type == "v_prediction"
    img = be.generate("a red circle", sampler=sampler, steps=3, seed=0)
    assert img.shape == (1, 3, 8, 8) and torch.isfinite(img).all()
    with pytest.raises(ClipstudioError, match="flow"):
        be.generate("a red circle", sampler="flow-euler", steps=2)


def test_one_sampler_registry_feeds_the_backend_and_the_pure_samplers(parts, monkeypatch):
    """A sampler registered once in sampling.SAMPLERS is listed, stepped by the backend and callable as a pure
    function: no second list to keep in step."""
    monkeypatch.setitem(S.SAMPLERS, "ddim-copy", S.Sampler(S.sample_ddim, "DDIMScheduler", "epsilon", "test"))
    be = backend_for(parts, "ddim")
    assert "ddim-copy" in be.samplers() and "ddim-copy" in B.list_samplers("epsilon")
    assert "ddim-copy" not in S.list_samplers("flow")
    assert type(B.make_scheduler("ddim-copy")).__name__ == "DDIMScheduler"
    assert S.get_sampler("ddim-copy") is S.sample_ddim
    torch.testing.assert_close(be.generate("a red circle", sampler="ddim-copy", steps=3, seed=2),
                               be.generate("a red circle", sampler="ddim", steps=3, seed=2))


def test_backend_refuses_non_finite_guidance_and_eta(parts):
    be = backend_for(parts, "ddim")
    with pytest.raises(ClipstudioError, match="guidance must be a finite"):
        be.generate("x", guidance=float("inf"), steps=2)
    with pytest.raises(ClipstudioError, match="eta must be a finite"):
        be.generate("x", eta=float("nan"), steps=2)
