"""`clipstudio bench`: the JSON it prints, the classic preset's settings, the plain reference loop and the
pooled cutouts; tiny random models only, and no timing thresholds (timings belong in the benchmark)."""
import json
import math

import pytest
import torch
from generator_fixtures import write_tiny_vqgan

from clipstudio import benchmark
from clipstudio.cli import main
from clipstudio.config import GenerateConfig
from clipstudio.guide.cutouts import AUGMENTS, CLASSIC_AUGMENTS, Cutouts
from clipstudio.studio import Studio


def bench_json(argv, capsys) -> dict:
    assert main(["bench", *argv, "--json", "--repeat", "2", "--warmup-steps", "0", "--threads", "1"]) == 0
    return json.loads(capsys.readouterr().out)


def check_schema(data: dict, keys: tuple, repeat: int = 2) -> None:
    assert set(keys) <= set(data)
    for key in ("step_s", "floor_s", "overhead", "peak_memory_mb"):
        assert isinstance(data[key], float) and math.isfinite(data[key]) and data[key] > 0, key
    assert data["overhead"] == pytest.approx(data["step_s"] / data["floor_s"])
    assert data["memory"] in ("rss", "cuda_max_allocated") and data["clock"] in ("cpu", "wall")
    assert data["repeat"] == repeat and all(len(v) == repeat for v in data["samples"].values())


def test_generate_bench_json_schema(tiny_clip, capsys):
    data = bench_json(["a red circle", "--clip", tiny_clip, "--size", "32", "32", "--cutn", "3",
                       "--generator", "pixels"], capsys)
    check_schema(data, benchmark.GENERATE_KEYS)
    assert data["backend"] == "generate" and set(data["floor_parts"]) == {"clip", "generator"}
    assert data["floor_s"] == pytest.approx(sum(data["floor_parts"].values()))
    settings = data["settings"]
    assert settings["generator"] == "pixels" and settings["clip"] == [tiny_clip] and settings["size"] == [32, 32]
    assert settings["cutn"] == 3 and settings["dtype"] == "float32" and settings["device"] == "cpu"
    assert {"augments", "cut_mode", "channels_last", "threads"} <= set(settings)
    assert settings["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert settings["native_dtype"] is True  # float32 is native everywhere
    assert "plain_step_s" not in data  # only the classic preset runs the plain loop


def test_kornia_baseline_times_the_same_step_through_kornias_forward(tiny_clip, capsys):
    data = bench_json(["a red circle", "--clip", tiny_clip, "--size", "32", "32", "--cutn", "3",
                       "--generator", "pixels", "--kornia-baseline"], capsys)
    check_schema(data, benchmark.GENERATE_KEYS)
    assert data["settings"]["fast_augments"] is True
    assert len(data["samples"]["kornia_step"]) == data["repeat"] and data["kornia_step_s"] > 0
    assert data["ours_vs_kornia"] == pytest.approx(data["step_s"] / data["kornia_step_s"])


def test_breakdown_times_each_stage_beyond_the_floor(tiny_clip, capsys):
    augments = ["--augment", "affine", "--augment", "jitter-linear", "--augment", "affine"]
    data = bench_json(["a red circle", "--clip", tiny_clip, "--size", "32", "32", "--cutn", "3",
                       "--generator", "pixels", *augments, "--breakdown"], capsys)
    check_schema(data, benchmark.GENERATE_KEYS)
    parts = data["overhead_parts"]
    assert list(parts) == ["draw", "views", "affine", "jitter-linear", "affine.2", "noise", "optimizer"]
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in parts.values())
    assert all(len(data["samples"][f"part:{name}"]) == data["repeat"] for name in parts)
    assert data["overhead_rest_s"] == pytest.approx(data["step_s"] - data["floor_s"] - sum(parts.values()))


def test_breakdown_stages_leave_the_run_as_it_was(tiny_clip):
    config = GenerateConfig(prompt="a red circle", clip=[tiny_clip], width=32, height=32, cutn=2, steps=3,
                            generator="pixels")
    studio = Studio(config)
    studio.step()
    before = [p.detach().clone() for p in studio.optimizer_params()]
    for job in benchmark.overhead_jobs(studio).values():
        job()
    assert all(torch.equal(a, b) for a, b in zip(before, studio.optimizer_params()))
    assert studio.step_index == 1


def test_cutout_stages_compose_to_apply():
    cut = Cutouts(16, cutn=4, cut_min=0.5)
    image = torch.rand(1, 3, 40, 48)
    params = cut.draw(40, 48)
    staged = cut.views(image, params.boxes, params.same_view)
    for aug, aug_params in zip(cut.augments, params.augment):
        staged = cut.augment(aug, staged, aug_params)
    assert torch.equal(cut.add_noise(staged, params.noise), cut.apply(image, params))


def test_kornia_baseline_leaves_the_fast_path_on(tiny_clip):
    config = GenerateConfig(prompt="a red circle", clip=[tiny_clip], width=32, height=32, cutn=2, steps=3,
                            generator="pixels")
    studio = Studio(config)
    benchmark._kornia_step(studio)()
    assert studio.cutouts.fast and studio.step_index == 1


def test_table_names_every_figure(tiny_clip, capsys):
    assert main(["bench", "a red circle", "--clip", tiny_clip, "--size", "32", "32", "--cutn", "2",
                 "--generator", "pixels", "--repeat", "1", "--warmup-steps", "0"]) == 0
    out = capsys.readouterr().out
    for word in ("step_s", "floor_s", "overhead", "peak_memory_mb", "search_s"):
        assert word in out


def test_classic_preset_settings():
    config = GenerateConfig.from_dict({**benchmark.preset_settings("classic"), "prompt": "x"}).validate()
    assert (config.width, config.height, config.cutn) == (256, 256, 32)
    assert config.clip == ["ViT-B-32:openai"] and config.generator == "vqgan"
    assert config.generator_options == {"model": "vqgan_imagenet_f16_16384"}
    assert config.cut_mode == "pooled" and config.cut_noise == 0.1 and config.augments == list(CLASSIC_AUGMENTS)
    assert (config.optimizer, config.lr, config.schedule, config.weight_decay) == ("adam", 0.1, "constant", 0.0)
    assert config.losses == {} and config.search == 0 and config.layout == "none"
    random = benchmark.preset_settings("classic", random_weights=True)
    assert random["clip"] == ["ViT-B-32:random"] and random["generator_options"]["random_weights"] is True


def test_classic_augmentations_are_the_notebooks():
    affine, perspective, jitter, erasing = (AUGMENTS[name]() for name in CLASSIC_AUGMENTS)
    assert all(aug.p == 0.7 for aug in (affine, perspective, jitter, erasing))
    gen = affine._param_generator
    assert (gen.degrees, gen.translate, gen.shear) == (15, 0.1, 5)
    assert perspective._param_generator.distortion_scale == 0.7
    assert all(getattr(jitter._param_generator, k) == 0.1 for k in ("brightness", "contrast", "saturation", "hue"))
    assert erasing.same_on_batch and erasing._param_generator.scale == (0.1, 0.4)
    assert erasing._param_generator.ratio == pytest.approx((0.3, 1 / 0.3))


def test_pooled_cutouts_are_avg_plus_max_pool_of_the_whole_image():
    cut = Cutouts(16, cutn=3, augments=[], noise=0.0, mode="pooled")
    image = torch.rand(2, 3, 40, 40)
    expected = (torch.nn.functional.adaptive_avg_pool2d(image, 16) + torch.nn.functional.adaptive_max_pool2d(image, 16)) / 2
    assert torch.allclose(cut(image), expected.repeat_interleave(3, dim=0))


def test_classic_preset_runs_ours_beside_the_plain_loop(tmp_path, tiny_clip, capsys):
    ckpt, config = write_tiny_vqgan(tmp_path)
    data = bench_json(["--preset", "classic", "--clip", tiny_clip, "--size", "32", "32", "--cutn", "2",
                       "--gen-opt", f"checkpoint={ckpt}", "--gen-opt", f"config={config}", "--breakdown"], capsys)
    check_schema(data, benchmark.GENERATE_KEYS)
    assert data["settings"]["cut_mode"] == "pooled" and data["settings"]["generator"] == "vqgan"
    assert data["plain_step_s"] > 0 and data["ours_vs_plain"] == pytest.approx(data["step_s"] / data["plain_step_s"])
    assert list(data["overhead_parts"]) == ["draw", "views", *CLASSIC_AUGMENTS, "noise", "optimizer"]


def test_plain_loop_lowers_its_loss(tmp_path, tiny_clip):
    from clipstudio.studio import Studio

    torch.manual_seed(0)
    ckpt, config = write_tiny_vqgan(tmp_path)
    settings = {**benchmark.preset_settings("classic"), "prompt": "a red circle", "clip": [tiny_clip],
                "width": 32, "height": 32, "cutn": 4, "augments": [],
                "generator_options": {"checkpoint": str(ckpt), "config": str(config)}}
    plain = benchmark.PlainClassicLoop.beside(Studio(GenerateConfig.from_dict(settings)))
    plain.make_cutouts.noise_fac = 1e-6
    plain.make_cutouts.augs = torch.nn.Sequential()  # no random augmentation: the loss is then comparable
    losses = [plain.step() for _ in range(8)]
    assert losses[-1] < losses[0]
    assert torch.all(plain.z >= plain.z_min) and torch.all(plain.z <= plain.z_max)


def test_diffuse_bench_json_schema(capsys):
    data = bench_json(["--backend", "diffuse", "--diffusion-steps", "2"], capsys)
    check_schema(data, benchmark.DIFFUSE_KEYS)
    assert data["backend"] == "diffuse" and data["settings"]["steps"] == 2
    assert {"device", "threads", "cpu_capability", "native_dtype"} <= set(data["settings"])
    assert set(data["samples"]) == {"step", "unet"}


def test_unknown_preset_is_one_line():
    from clipstudio.errors import ClipstudioError

    with pytest.raises(ClipstudioError, match="unknown preset"):
        benchmark.preset_settings("nope")


@pytest.mark.slow
def test_random_weight_vqgan_has_the_released_architecture():
    from clipstudio.generators import build_generator

    gen = build_generator("vqgan", (32, 32), model="vqgan_imagenet_f16_16384", random_weights=True)
    assert gen.model.codebook.shape == (16384, 256) and gen.z.shape == (1, 256, 2, 2)
    assert gen().shape == (1, 3, 32, 32)


def test_whole_image_crops_are_resized_once_like_the_warp():
    from kornia.geometry.transform import crop_and_resize

    torch.manual_seed(0)
    cut = Cutouts(16, cutn=3, cut_min=1.0, augments=[], noise=0.0)
    image = torch.rand(2, 3, 40, 40)
    params = cut.draw(40, 40)
    assert params.same_view
    warped = crop_and_resize(image.repeat_interleave(3, dim=0), params.tiled(2).boxes, (16, 16), padding_mode="border")
    assert torch.allclose(cut.apply(image, params), warped, atol=1e-4)
    assert not cut.draw(40, 48).same_view  # a crop of a non-square image moves


def test_search_is_judged_on_search_cutn_cutouts(tiny_clip):
    from clipstudio.studio import Studio

    settings = {"prompt": "a red circle", "clip": [tiny_clip], "width": 32, "height": 32, "cutn": 6,
                "generator": "primitives", "search": 1, "steps": 1}
    studio = Studio(GenerateConfig.from_dict({**settings, "search_cutn": 2}))
    assert studio._search_cutouts().cutn == 2 and studio.cutouts.cutn == 6
    assert math.isfinite(studio.search(1))
    default = Studio(GenerateConfig.from_dict(settings))
    assert default._search_cutouts() is default.cutouts  # search_cutn 0: the run's own cutouts
