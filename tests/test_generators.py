"""The generator contract, checked for every registered generator (new ones must add fixtures here)."""
from pathlib import Path

import pytest
import torch

from clipstudio.errors import ClipstudioError
from clipstudio.generators import GENERATORS, build_generator, clamp_with_grad, list_generators
from clipstudio.generators.base import Choice

try:  # the latent generators' fixtures come with their tests
    from generator_fixtures import TINY_GENERATOR_OPTIONS
except ImportError:  # pragma: no cover
    TINY_GENERATOR_OPTIONS = {}

VARIANTS = {
    "pixels": [{"parametrization": "fourier"}, {"parametrization": "rgb"}, {"parametrization": "rgb", "downscale": 4},
               {"parametrization": "palette", "palette": "#ff0000,#00ff00,#0000ff", "downscale": 2},
               {"parametrization": "palette", "palette": "#ff0000,#00ff00,#0000ff", "hard": True}],
    "primitives": [{"count": 2}, {"count": 1, "edge": 2.0, "palette": "none"}, {"palette": "#ff0000,#00ff00,#0000ff", "edge": 2.0}],
}

PALETTE = "#dc2828,#f58c1e,#f0dc28,#28aa46,#285adc,#8c3cbe,#f5f5f5,#191919"  # eight colours, as a world's recipe gives them


# Quantized latents only change the image once a step crosses to another code, so they take bigger steps.
STEP_LR = {"vqgan": 1.0}


def cases():
    for name in list_generators():
        if name in VARIANTS:
            yield from ((name, opts) for opts in VARIANTS[name])
        else:
            yield name, None


def options_for(name, extra, tmp_path: Path) -> dict:
    if extra is not None:
        return dict(extra)
    if name not in TINY_GENERATOR_OPTIONS:
        pytest.fail(f"generator '{name}' is registered but has no tiny test fixture in generator_fixtures.py")
    return TINY_GENERATOR_OPTIONS[name](tmp_path)


def build(name, extra, tmp_path, size=(24, 16), init=None):
    torch.manual_seed(0)
    return build_generator(name, size, init_image=init, **options_for(name, extra, tmp_path))


@pytest.mark.parametrize("name,extra", list(cases()))
def test_shape_range_and_gradient(name, extra, tmp_path):
    gen = build(name, extra, tmp_path)
    out = gen()
    assert out.shape == (1, 3, 16, 24)
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    out.mean().backward()
    grads = [p.grad for p in gen.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name,extra", list(cases()))
def test_one_step_lowers_loss_on_fixed_target(name, extra, tmp_path):
    gen = build(name, extra, tmp_path)
    target = torch.zeros(1, 3, 16, 24)
    target[:, 0] = 0.9  # a red image
    opt = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=STEP_LR.get(name, 0.05))
    before = (gen() - target).pow(2).mean()
    before.backward()
    opt.step()
    gen.post_step()
    after = (gen() - target).pow(2).mean()
    assert after < before


@pytest.mark.parametrize("name,extra", list(cases()))
def test_init_image_is_accepted(name, extra, tmp_path):
    init = torch.rand(1, 3, 20, 30)
    out = build(name, extra, tmp_path, init=init)()
    assert out.shape == (1, 3, 16, 24)


@pytest.mark.parametrize("name,extra", list(cases()))
def test_bad_input(name, extra, tmp_path):
    with pytest.raises(ClipstudioError):
        build(name, {**options_for(name, extra, tmp_path), "no_such_option": 1}, tmp_path)
    with pytest.raises(ClipstudioError):
        build(name, extra, tmp_path, size=(0, 16))


@pytest.mark.parametrize("name,extra", list(cases()))
def test_a_code_is_none_or_a_trainable_latent_the_image_depends_on(name, extra, tmp_path):
    from clipstudio.generators.base import LatentCode

    gen = build(name, extra, tmp_path)
    code = gen.code()
    assert (code is not None) == (name == "latent")  # only an autoencoder's latent is a code
    if code is None:
        return
    assert isinstance(code, LatentCode) and code.space
    assert any(code.latent is p for p in gen.parameters() if p.requires_grad)
    gen().mean().backward()
    assert code.latent.grad is not None and code.latent.grad.abs().sum() > 0


def test_unknown_generator_lists_valid_names():
    with pytest.raises(ClipstudioError, match="pixels"):
        build_generator("nope", (16, 16))


def test_every_registered_generator_has_a_fixture():
    assert set(GENERATORS) - set(VARIANTS) <= set(TINY_GENERATOR_OPTIONS)


def test_pixels_init_image_round_trips():
    init = torch.rand(1, 3, 16, 16) * 0.9 + 0.05
    for parametrization in ("fourier", "rgb"):
        out = build_generator("pixels", (16, 16), init_image=init, parametrization=parametrization)()
        assert (out - init).abs().max() < 5e-3


def test_clamp_with_grad_passes_only_inward_gradients():
    x = torch.tensor([-0.5, 0.5, 1.5], requires_grad=True)
    y = clamp_with_grad(x)
    assert y.tolist() == [0.0, 0.5, 1.0]
    # Gradient +1 everywhere: descent lowers x; at -0.5 that goes further out, at 1.5 it comes back in.
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_primitives_draw_shapes_the_world_checker_recognises(shape):
    from clipstudio.images import tensor_to_pil
    from clipstudio.worlds.shapes.check import check_image

    gen = build_generator("primitives", (64, 64), count=1, palette="none")
    with torch.no_grad():
        gen.background.copy_(torch.logit(torch.tensor([40.0, 90.0, 220.0]) / 255))
        gen.colour.copy_(torch.logit(torch.tensor([[220.0, 40.0, 40.0]]) / 255))
        gen.opacity.fill_(10.0)
        gen.shape_logits.zero_()
        gen.shape_logits[0, ["circle", "square", "triangle"].index(shape)] = 5.0
        gen.position.copy_(torch.logit(torch.tensor([[0.27, 0.5]])))
        gen.size_logit.copy_(torch.logit(torch.tensor([(0.56 - 0.1) / 0.65])))
    image = tensor_to_pil(gen())
    assert check_image(image, f"a large red {shape} on a blue background").passed
    assert check_image(image, f"a red {shape} at the left on a blue background").passed
    other = {"circle": "square", "square": "triangle", "triangle": "circle"}[shape]
    assert not check_image(image, f"a red {other} on a blue background").passed


@pytest.mark.parametrize("name,extra", list(cases()))
def test_choices_round_trip_and_change_the_image(name, extra, tmp_path):
    """Every discrete choice a generator offers the search reads back what was set, stays within the
    contract's output range, and at least one option changes the image."""
    for index in range(len(build(name, extra, tmp_path).choices())):
        gen = build(name, extra, tmp_path)  # fresh, so an earlier choice (say, hiding a shape) has no say
        choice = gen.choices()[index]
        assert choice.options >= 2
        images = []
        for option in range(choice.options):
            choice.set(option)
            assert choice.get() == option, choice.name
            with torch.no_grad():
                out = gen()
            assert out.shape == (1, 3, 16, 24) and out.min() >= 0 and out.max() <= 1
            images.append(out)
        if choice.name.endswith((".size", ".type", ".position", ".colour", "background")):
            assert any(not torch.equal(images[0], other) for other in images[1:]), choice.name


def test_primitives_with_a_palette_search_colours_kept_apart():
    torch.manual_seed(0)
    gen = build_generator("primitives", (32, 32), palette=PALETTE, count=2)
    by_name = {c.name: c for c in gen.choices()}
    assert set(by_name) >= {"background", "shape0.colour", "shape0.type", "shape0.position", "shape0.size", "swap"}
    by_name["background"].set(3)
    by_name["shape0.colour"].set(4)
    hidden = by_name["shape1.colour"].options - 1
    assert not by_name["shape1.colour"].allowed(3) and not by_name["shape1.colour"].allowed(4)
    assert by_name["shape1.colour"].allowed(5) and by_name["shape1.colour"].allowed(hidden)
    assert not by_name["background"].allowed(4)
    by_name["shape1.colour"].set(hidden)  # a hidden shape is not drawn at all
    by_name["shape0.colour"].set(hidden)
    image = gen()
    assert torch.allclose(image, image[:, :, :1, :1].expand_as(image))


@pytest.mark.parametrize("options", [{"palette": PALETTE, "count": 2}, {"palette": "none", "count": 3},
                                     {"palette": PALETTE, "count": 2, "anneal_steps": 10}])
def test_primitives_render_every_option_at_once_as_forward_draws_each(options):
    """The search's batched draw gives, for every choice, the images forward() gives one option at a time (bit for
    bit with hard choices; to rounding while annealing, whose soft choices go through a batched product)."""
    torch.manual_seed(2)
    exact = "anneal_steps" not in options
    for index in range(len(build_generator("primitives", (24, 16), **options).choices())):
        torch.manual_seed(index)
        gen = build_generator("primitives", (24, 16), **options)
        choice = gen.choices()[index]
        options_tried = list(range(choice.options))
        state = {k: v.clone() for k, v in gen.state_dict().items()}
        with torch.no_grad():
            batched = gen.render_options(choice, options_tried)
            gen.load_state_dict(state)
            one_by_one = torch.cat([(choice.set(o), gen())[1] for o in options_tried])
        assert batched.shape == (len(options_tried), 3, 16, 24), choice.name
        if exact:
            assert torch.equal(batched, one_by_one), choice.name
        else:
            torch.testing.assert_close(batched, one_by_one, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,extra", list(cases()))
def test_render_options_sets_each_option_in_turn_and_draws_forwards_image(name, extra, tmp_path):
    """Every generator's render_options (the contract's default, or its own batched draw) sets the options in
    the order given and returns forward()'s image for each."""
    gen = build(name, extra, tmp_path)
    calls = []
    choice = Choice("probe", 3, lambda: calls[-1] if calls else 0, calls.append)  # sets nothing in the generator
    with torch.no_grad():
        images = gen.render_options(choice, [2, 0, 1])
        expected = gen()
    assert calls == [2, 0, 1] and images.shape == (3, 3, 16, 24)
    torch.testing.assert_close(images, expected.expand(3, -1, -1, -1), rtol=0, atol=1e-6)
