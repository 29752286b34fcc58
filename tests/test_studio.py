"""The guidance loop: determinism by seed, the NaN guard, callbacks, ensembles, image and init prompts."""
import copy

import numpy as np
import pytest
import torch

import clipstudio
import clipstudio.studio as studio_module
from clipstudio.guide.cutouts import Cutouts
from clipstudio.errors import ClipstudioError
from clipstudio.images import save_png
from clipstudio.losses import TVLoss

PALETTE = "#dc2828,#f58c1e,#f0dc28,#28aa46,#285adc,#8c3cbe,#f5f5f5,#191919"


def pixels(result) -> np.ndarray:
    return np.asarray(result.image)


def test_same_seed_same_image(tiny_options):
    a = clipstudio.generate("a red circle", seed=3, **tiny_options)
    b = clipstudio.generate("a red circle", seed=3, **tiny_options)
    c = clipstudio.generate("a red circle", seed=4, **tiny_options)
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_result_holds_image_losses_and_settings(tiny_options):
    result = clipstudio.generate("a red circle", losses={"tv": 0.5}, **tiny_options)
    assert result.image.size == (32, 32)
    assert set(result.losses) == {"clip", "tv", "total"}
    assert result.weights == {"clip": 1.0, "tv": 0.5}
    assert result.settings.prompt == "a red circle" and result.settings.losses == {"tv": 0.5}
    assert result.steps_run == 3 and len(result.history) == 3


def test_guidance_lowers_the_clip_loss(tiny_options):
    studio = clipstudio.Studio(clipstudio.make_config("a red circle", **{**tiny_options, "steps": 30, "lr": 0.1}))
    torch.manual_seed(0)
    before = studio.evaluate()["clip"]
    studio.run()
    torch.manual_seed(0)  # the same cutouts for the comparison
    assert studio.evaluate()["clip"] < before


def test_nan_loss_skips_the_step_and_never_reaches_the_output(tiny_options, monkeypatch, tmp_path):
    calls = {"n": 0}
    original = TVLoss.forward

    def sometimes_nan(self, ctx):
        calls["n"] += 1
        value = original(self, ctx)
        return value * float("nan") if calls["n"] == 2 else value

    monkeypatch.setattr(TVLoss, "forward", sometimes_nan)
    studio = clipstudio.Studio(clipstudio.make_config("a red circle", tv=1.0, **tiny_options))
    with pytest.warns(UserWarning, match="step 1: loss is not finite; step skipped"):
        infos = [studio.step() for _ in range(3)]
    assert [i.skipped for i in infos] == [False, True, False]
    assert all(torch.isfinite(p).all() for p in studio.generator.parameters())
    assert np.isfinite(np.asarray(studio.image(), dtype=float)).all()


def test_nan_gradient_is_caught(tiny_options, monkeypatch):
    studio = clipstudio.Studio(clipstudio.make_config("a red circle", **tiny_options))
    hook = studio.generator.spectrum.register_hook(lambda g: g * float("nan"))
    with pytest.warns(UserWarning, match="gradient is not finite"):
        info = studio.step()
    hook.remove()
    assert info.skipped and torch.isfinite(studio.generator.spectrum).all()


def test_callback_sees_every_step_and_can_stop(tiny_options):
    seen = []
    result = clipstudio.generate("a red circle", callback=lambda s, info: seen.append(info.step) or info.step < 1,
                                 **{**tiny_options, "steps": 5})
    assert seen == [0, 1] and result.steps_run == 2


def test_ensemble_averages_models(tiny_options, tiny_clip):
    """Two copies of one model, weighted a half each, guide exactly as the model alone does."""
    alone = clipstudio.generate("a red circle", seed=3, **tiny_options)
    pair = clipstudio.generate("a red circle", seed=3, **{**tiny_options, "clip": [tiny_clip, tiny_clip]})
    assert pair.weights == {"clip0": 0.5, "clip1": 0.5}
    assert pair.losses["total"] == pytest.approx(alone.losses["total"], abs=1e-5)
    assert np.abs(pixels(alone).astype(int) - pixels(pair).astype(int)).max() <= 1


# Issue 15 made batched draws and the linear colour jitter the defaults (other cutouts for a seed); the
# draws through kornia with its HSV jitter still give the numbers pinned before.
PINNED_RUNS = [
    ({}, [[131, 132, 132], [130, 131, 132], [130, 131, 133], [125, 126, 128]],
     [[120, 120, 121], [119, 117, 119], [119, 116, 117], [128, 126, 122]]),
    ({"batched_draw": False, "augments": ["affine", "jitter"]},
     [[128, 129, 129], [127, 128, 128], [128, 128, 129], [131, 131, 131]],
     [[119, 115, 116], [128, 125, 123], [128, 124, 125], [128, 126, 127]]),
]


@pytest.mark.parametrize("options, expected_corner, expected_centre", PINNED_RUNS)
def test_tiny_seeded_generate_gives_the_expected_pixels(tiny_options, options, expected_corner, expected_centre):
    """Expected output slices of a tiny seeded run, as diffusers' tests pin theirs: a change to the loop, the
    cutouts, the pixel generator or the seeding of ``NAME:random`` weights shows here. Update the numbers
    only for a deliberate change, and say why in the commit."""
    image = pixels(clipstudio.generate("a red circle", seed=3, **tiny_options, **options)).astype(int)
    np.testing.assert_allclose(image[0, :4], expected_corner, atol=2)
    np.testing.assert_allclose(image[16, 16:20], expected_centre, atol=2)


def test_image_prompt_and_init_image_losses(tiny_options, tmp_path):
    path = tmp_path / "init.png"
    save_png(clipstudio.images.tensor_to_pil(torch.rand(1, 3, 20, 20)), path)
    result = clipstudio.generate("", image_prompts=[f"{path}:0.5"], init_image=str(path), anchor=1.0,
                                 perceptual=0.1, perceptual_net="alex:random", **tiny_options)
    assert {"clip", "anchor", "perceptual"} <= set(result.losses)


@pytest.mark.parametrize("bad", [{"steps": -1}, {"size": (0, 0)}, {"clip": ["no-such-model"]},
                                 {"generator": "nope"}, {"augments": ["nope"]}, {"init_image": "/no/such.png"},
                                 {"perceptual": 1.0}, {"lr": float("nan")}, {"bogus_option": 1}])
def test_bad_options_raise_one_line(bad, tiny_options):
    with pytest.raises(ClipstudioError) as info:
        clipstudio.generate("a red circle", **{**tiny_options, **bad})
    assert "\n" not in str(info.value)


def test_resume_after_interruption_gives_the_same_image(tiny_options, tmp_path):
    config = clipstudio.make_config("a red circle", **{**tiny_options, "steps": 6})
    straight = clipstudio.Studio(config).run()
    ckpt = tmp_path / "run.ckpt"
    first = clipstudio.Studio(config)
    first.run(callback=lambda s, info: info.step < 2, checkpoint=ckpt, checkpoint_every=1)  # "power cut" at step 3
    second = clipstudio.Studio(config)
    assert second.resume(ckpt) and second.step_index == 3
    resumed = second.run()
    assert np.array_equal(pixels(straight), pixels(resumed))


def test_resume_refuses_other_settings_and_torn_files(tiny_options, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    clipstudio.Studio(clipstudio.make_config("a red circle", **tiny_options)).run(checkpoint=ckpt)
    other = clipstudio.Studio(clipstudio.make_config("a blue circle", **tiny_options))
    with pytest.raises(ClipstudioError, match="other settings"):
        other.resume(ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ClipstudioError, match="cannot resume"):
        clipstudio.Studio(clipstudio.make_config("a red circle", **tiny_options)).resume(ckpt)


def test_a_state_saved_after_the_search_resumes_with_other_search_settings(tiny_options, tmp_path):
    """What only the search before step 0 reads (its sweeps, restarts, cutouts, the generator's
    ``search_options``) is spent once the run has stepped: an installation's state resumes after the recipe's
    search changed, and goes on to the image the interrupted run would have made. Before step 0 it is refused."""
    before = {**tiny_options, "steps": 6, "generator": "primitives", "search": 1, "search_restarts": 2,
              "generator_options": {"palette": PALETTE, "count": 1, "shape_cost": 0.02}}
    after = {**before, "search_restarts": 5, "search_cutn": 2,
             "generator_options": {"palette": PALETTE, "count": 1, "shape_cost": 0.035}}
    config = clipstudio.make_config("a red circle", **before)
    straight = clipstudio.Studio(config).run()
    ckpt = tmp_path / "run.ckpt"
    clipstudio.Studio(config).run(callback=lambda s, info: info.step < 2, checkpoint=ckpt, checkpoint_every=1)
    resumed = clipstudio.Studio(clipstudio.make_config("a red circle", **after))
    assert resumed.resume(ckpt) and resumed.step_index == 3
    assert np.array_equal(pixels(straight), pixels(resumed.run()))
    clipstudio.Studio(config).run(callback=lambda s, info: False, checkpoint=ckpt, checkpoint_every=1)
    other_palette = {**after, "generator_options": {"palette": PALETTE[:-8], "count": 1}}  # not a search option
    with pytest.raises(ClipstudioError, match="generator_options differ"):
        clipstudio.Studio(clipstudio.make_config("a red circle", **other_palette)).resume(ckpt)
    state = torch.load(ckpt, weights_only=True)  # a run state is plain tensors and containers
    state["step"], state["skipped"], state["history"] = 0, 0, []
    torch.save(state, ckpt)
    with pytest.raises(ClipstudioError, match="search_restarts"):
        clipstudio.Studio(clipstudio.make_config("a red circle", **after)).resume(ckpt)


def _search_studio(tiny_options, **changes):
    options = {**tiny_options, "generator": "primitives", "generator_options": {"palette": PALETTE, "count": 1},
               **changes}
    return clipstudio.Studio(clipstudio.make_config("a red circle on a blue background", **options))


def test_search_never_raises_the_loss_on_its_cutouts(tiny_options, monkeypatch):
    """Coordinate descent keeps each choice's current option among its candidates, so from a start on the
    search's lattice (centres on the grid, sizes among the search sizes) whose options are all allowed, the
    loss plus the choices' costs never rises. A random start is neither: snapping it onto the lattice and
    moving colours apart (what ``allowed()`` demands) may raise the loss, which is the search's rule, not a
    bug; the next test covers that case."""
    studio = _search_studio(tiny_options, seed=1)
    choices = studio.generator.choices()
    for choice in choices:
        choice.set(choice.get())  # onto the lattice
    assert all(choice.allowed(choice.get()) for choice in choices)  # this seed's start keeps colours apart
    params = studio.cutouts.draw(32, 32)
    monkeypatch.setattr(studio.cutouts, "draw", lambda *size: params)
    with torch.no_grad():
        before = float(studio._objective(None, params)[0][0])
    before += sum(c.cost(c.get()) for c in choices)
    choices_before = [c.get() for c in choices]
    best = studio.search(sweeps=1)
    assert best <= before + 1e-5
    costs = sum(c.cost(c.get()) for c in studio.generator.choices())   # search adds the choices' costs
    with torch.no_grad():
        assert best == pytest.approx(float(studio._objective(None, params)[0][0]) + costs, abs=1e-5)
    assert [c.get() for c in studio.generator.choices()] != choices_before


def test_search_moves_a_start_that_breaks_the_colour_rule_to_one_that_keeps_it(tiny_options):
    studio = _search_studio(tiny_options, seed=0)  # a random start with the shape in the background's colour
    choices = studio.generator.choices()
    assert not all(choice.allowed(choice.get()) for choice in choices)
    studio.search(sweeps=1)
    assert all(choice.allowed(choice.get()) for choice in studio.generator.choices())


def test_search_with_restarts_is_seeded_and_runs_once(tiny_options):
    options = {**tiny_options, "generator": "primitives", "search": 1, "search_restarts": 2, "steps": 1,
               "generator_options": {"palette": PALETTE, "count": 1}}
    a, b = clipstudio.generate("a red circle", **options), clipstudio.generate("a red circle", **options)
    assert np.array_equal(pixels(a), pixels(b))
    studio = _search_studio(tiny_options, search=1, search_restarts=2)
    calls = []
    studio.search = lambda *args: calls.append(args)
    studio.run()
    assert calls == [(1, 2)]  # before the first step only


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: how a matrix product splits its rows among threads can depend on the
    batch size, and with two threads the same image judged in a batch of 9 or of 27 differs in the last float bit,
    enough to flip a near tie of the search (these tests compare batchings, not BLAS's batch invariance)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_restarts_in_lockstep_end_where_each_restart_alone_would(tiny_options, monkeypatch, one_thread):
    """The restarts share their judgements' batches, not their states: each ends where a search from its
    start alone ends, and the best of them is kept."""
    studio = _search_studio(tiny_options, seed=3, generator_options={"palette": PALETTE, "count": 2})
    params = studio._search_cutouts().draw(32, 32)
    monkeypatch.setattr(Cutouts, "draw", lambda *args, **kwargs: params)
    start = copy.deepcopy(studio.generator.state_dict())
    starts, randomize = [], studio_module._randomize

    def recording_randomize(choices):
        randomize(choices)
        starts.append([c.get() for c in choices])

    monkeypatch.setattr(studio_module, "_randomize", recording_randomize)
    best = studio.search(sweeps=1, restarts=3)
    kept = [c.get() for c in studio.generator.choices()]
    assert len(starts) == 2
    alone = []
    for values in [None] + starts:
        studio.generator.load_state_dict(start)
        for choice, value in zip(studio.generator.choices(), values or []):
            choice.set(value)
        alone.append((studio.search(sweeps=1, restarts=1), [c.get() for c in studio.generator.choices()]))
    assert best == pytest.approx(min(loss for loss, _ in alone), abs=1e-5)
    assert kept == min(alone, key=lambda pair: pair[0])[1]
    assert len({tuple(found) for _, found in alone}) > 1  # the restarts did end in different places


def test_a_small_search_batch_judges_one_restart_at_a_time_and_ends_in_the_same_place(tiny_options, monkeypatch,
                                                                                    one_thread):
    """Large images must not multiply the search's peak memory by the restarts: below the pixel budget each
    restart's options are judged alone, and the search ends where the shared batch ends."""
    studio = _search_studio(tiny_options, seed=3, generator_options={"palette": PALETTE, "count": 2})
    params = studio._search_cutouts().draw(32, 32)
    monkeypatch.setattr(Cutouts, "draw", lambda *args, **kwargs: params)
    start = copy.deepcopy(studio.generator.state_dict())
    judge, batches = studio._objective, []

    def counting(images=None, *args, **kwargs):
        batches.append(len(images))
        return judge(images, *args, **kwargs)

    monkeypatch.setattr(studio, "_objective", counting)
    torch.manual_seed(5)
    shared = studio.search(sweeps=1, restarts=3), [c.get() for c in studio.generator.choices()]
    assert max(batches) > 9  # at 32 px the three restarts share each batch
    monkeypatch.setattr(studio_module, "SEARCH_BATCH_PIXELS", 1)
    batches.clear()
    studio.generator.load_state_dict(start)
    torch.manual_seed(5)
    alone = studio.search(sweeps=1, restarts=3), [c.get() for c in studio.generator.choices()]
    assert max(batches) <= 9  # the most options one choice has: 8 colours and "not drawn"
    assert alone[0] == pytest.approx(shared[0], abs=1e-5) and alone[1] == shared[1]


def test_a_restart_copy_owns_its_trainable_state_and_shares_frozen_weights():
    generator = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    generator[1].requires_grad_(False)  # a decoder: read by every restart, changed by none
    twin = studio_module._search_copy(generator)
    assert twin[1].weight is generator[1].weight
    twin[0].weight.data.add_(1.0)
    assert not torch.equal(twin[0].weight, generator[0].weight)


def test_search_settings_are_checked(tiny_options):
    for bad, message in (({"search": -1}, "search must be between 0 and 1000, got -1"),
                         ({"search_restarts": 0}, "search-restarts must be between 1 and 1000, got 0")):
        with pytest.raises(ClipstudioError, match=message):
            clipstudio.make_config("a red circle", **{**tiny_options, **bad}).validate()


def test_layout_runs_only_when_asked_and_useful(tiny_options):
    from clipstudio.studio import resolve_layout, validate_config

    def layout(**changes):
        return resolve_layout(clipstudio.make_config("a red circle", **{**tiny_options, **changes}))

    assert layout(generator="latent") is None  # neutral default: no layout
    assert layout(generator="pixels", layout="primitives") == "primitives"
    assert layout(generator="primitives", layout="primitives") is None  # its own generator
    assert layout(generator="pixels", layout="primitives", init_image="x.png") is None  # an init is given
    with pytest.raises(ClipstudioError, match="layout"):
        validate_config(clipstudio.make_config("a red circle", layout="sketch"))


def test_layout_result_is_the_init_of_the_run(tiny_options, monkeypatch):
    from clipstudio import studio as studio_module

    full_layout_config = studio_module.layout_config

    def quick_layout_config(config, layout):  # a short layout stage: this test is about the hand-over
        return full_layout_config(config, layout).replace(search=1, search_restarts=1, steps=2,
                                                           generator_options={"count": 1})

    monkeypatch.setattr(studio_module, "layout_config", quick_layout_config)
    options = {**tiny_options, "layout": "primitives", "steps": 0, "generator_options": {"parametrization": "rgb"}}
    studio = clipstudio.Studio(clipstudio.make_config("a red circle on a blue background", **options))
    layout = studio_module.Studio(quick_layout_config(studio.config, "primitives"))
    layout.run()
    assert studio.init_image is not None
    assert (studio.image_tensor() - layout.image_tensor()).abs().max() < 0.02
