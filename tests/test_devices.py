"""Devices (issue 16): ``auto`` resolution, mixed precision by name, and checkpoints that resume across devices
(RNG states saved as CPU tensors, files loaded with ``map_location="cpu"``). No test needs a GPU: a GPU-saved
checkpoint is simulated by tagging every storage ``cuda:0`` when it is written."""
from __future__ import annotations

import platform
import resource
import sys

import numpy as np
import pytest
import torch

import clipstudio
from clipstudio import devices
from clipstudio.cli import main
from clipstudio.errors import ClipstudioError

NO_CUDA = not torch.cuda.is_available()


def test_auto_resolves_to_an_available_device():
    device = devices.resolve_device("auto")
    expected = "cuda" if torch.cuda.is_available() else None
    assert device.type in ("cuda", "mps", "cpu")
    if expected:
        assert device.type == expected
    assert devices.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_one_line(capsys, tiny_clip, tmp_path):
    with pytest.raises(ClipstudioError, match="no CUDA GPU") as info:
        devices.resolve_device("cuda")
    assert "\n" not in str(info.value)
    out = tmp_path / "out.png"
    code = main(["generate", "a red circle", "--clip", tiny_clip, "--size", "32", "32", "--steps", "1",
                 "--device", "cuda", "--quiet", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no CUDA GPU" in err and not out.exists()


def test_the_default_device_is_auto():
    assert clipstudio.GenerateConfig().device == "auto"


def test_dtype_is_checked_and_autocast_runs_in_it():
    with pytest.raises(ClipstudioError, match="unknown dtype 'float8'"):
        clipstudio.GenerateConfig(prompt="x", dtype="float8").validate()
    cpu = torch.device("cpu")
    with devices.autocast(cpu, "bfloat16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with devices.autocast(cpu, "float32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_native_precision_reads_the_cpus_instruction_sets(monkeypatch):
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported", "_is_amx_fp16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert devices.native_precision("float32") and not devices.native_precision("bfloat16")
    assert not devices.native_precision(torch.float16)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert devices.native_precision("bfloat16") and not devices.native_precision("float16")


def test_emulated_low_precision_is_said_once(monkeypatch, recwarn):
    """Autocast in a dtype that this CPU only emulates runs, slower than float32, and says so once."""
    monkeypatch.setattr(devices, "native_precision", lambda dtype: False)
    devices._warn_emulated.cache_clear()
    cpu = torch.device("cpu")
    for _ in range(2):
        with devices.autocast(cpu, "bfloat16"):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    said = [w for w in recwarn if "emulated" in str(w.message)]
    assert len(said) == 1 and "bfloat16" in str(said[0].message) and "\n" not in str(said[0].message)
    devices._warn_emulated.cache_clear()
    monkeypatch.setattr(devices, "native_precision", lambda dtype: True)
    with devices.autocast(cpu, "bfloat16"):
        pass
    assert len([w for w in recwarn if "emulated" in str(w.message)]) == 1
    devices._warn_emulated.cache_clear()


def test_bfloat16_run_has_finite_float32_losses(tiny_options):
    def fresh(**changes):
        return clipstudio.Studio(clipstudio.make_config("a red circle", **{**tiny_options, **changes}))

    half, full = fresh(dtype="bfloat16").evaluate()["clip"], fresh().evaluate()["clip"]  # same seed, same cutouts
    assert half != full and abs(half - full) < 0.05  # the CLIP forward really ran in bfloat16, and close to float32
    studio = fresh(dtype="bfloat16")
    info = studio.step()
    assert not info.skipped and np.isfinite(info.total) and isinstance(info.total, float)


def test_rng_state_is_saved_device_neutral(tiny_options):
    state = clipstudio.Studio(clipstudio.make_config("a red circle", **tiny_options)).state_dict()
    rng = state["rng"]
    assert rng["cpu"].device.type == "cpu" and rng["cpu"].dtype == torch.uint8
    assert all(s.device.type == "cpu" for s in rng.get("cuda", []))


def _straight_and_checkpoint(tiny_options, tmp_path):
    config = clipstudio.make_config("a red circle", **{**tiny_options, "steps": 6})
    straight = np.asarray(clipstudio.Studio(config).run().image)
    ckpt = tmp_path / "run.ckpt"
    clipstudio.Studio(config).run(callback=lambda s, info: info.step < 2, checkpoint=ckpt, checkpoint_every=1)
    return config, straight, ckpt


def test_cpu_to_cpu_resume_is_bit_exact_after_the_rng_was_disturbed(tiny_options, tmp_path):
    config, straight, ckpt = _straight_and_checkpoint(tiny_options, tmp_path)
    second = clipstudio.Studio(config)
    torch.manual_seed(12345)  # whatever happened to the global RNG in between, the checkpoint's state wins
    assert second.resume(ckpt) and second.step_index == 3
    assert np.array_equal(straight, np.asarray(second.run().image))


def _cuda_tagger(storage):
    """Record every storage as a CUDA one, as a checkpoint written on a GPU machine would."""
    return "cuda:0"


def _rewrite_as_if_saved_on_a_gpu(ckpt, monkeypatch):
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["rng"]["cuda"] = [torch.get_rng_state()[:16].clone()]  # a CUDA generator's state, as a GPU run has
    state["settings"]["device"] = "cuda"  # the run was started with --device cuda
    registry = [(-1, _cuda_tagger, lambda obj, location: None), *torch.serialization._package_registry]
    monkeypatch.setattr(torch.serialization, "_package_registry", registry)
    torch.save(state, ckpt)
    monkeypatch.undo()


@pytest.mark.skipif(not NO_CUDA, reason="the simulation needs a machine without CUDA")
def test_a_checkpoint_saved_on_a_gpu_resumes_on_the_cpu(tiny_options, tmp_path, monkeypatch):
    config, straight, ckpt = _straight_and_checkpoint(tiny_options, tmp_path)
    _rewrite_as_if_saved_on_a_gpu(ckpt, monkeypatch)
    with pytest.raises(RuntimeError, match="CUDA"):  # the simulation is faithful: a plain load wants the GPU
        torch.load(ckpt, weights_only=True)
    second = clipstudio.Studio(config)
    assert second.resume(ckpt) and second.step_index == 3
    assert np.array_equal(straight, np.asarray(second.run().image))


def test_the_device_setting_does_not_block_a_resume(tiny_options, tmp_path):
    config, straight, ckpt = _straight_and_checkpoint(tiny_options, tmp_path)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["settings"]["device"] = "cuda"  # written by a run on a GPU machine
    second = clipstudio.Studio(config)
    second.load_state_dict(state)
    assert np.array_equal(straight, np.asarray(second.run().image))
    state["settings"]["seed"] = 99
    with pytest.raises(ClipstudioError, match="other settings"):
        clipstudio.Studio(config).load_state_dict(state)


def test_old_and_bad_rng_states(tiny_options):
    studio = clipstudio.Studio(clipstudio.make_config("a red circle", **tiny_options))
    state = studio.state_dict()
    before = torch.get_rng_state()
    devices.set_rng_state(before)  # older checkpoints hold the bare CPU state
    assert torch.equal(torch.get_rng_state(), before)
    for bad in (None, {"cpu": torch.zeros(3, dtype=torch.uint8)}, {"gpu": before}):
        with pytest.raises(ClipstudioError, match="RNG state") as info:
            studio.load_state_dict({**state, "rng": bad})
        assert "\n" not in str(info.value)


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt's settings are glibc's")
def test_keep_freed_memory_reuses_pages_and_can_be_turned_off(monkeypatch):
    """After ``keep_freed_memory`` a loop that allocates and frees the same activations every step touches no
    new pages (the CLI calls it first); ``CLIPSTUDIO_KEEP_FREED_MEMORY=0`` leaves malloc alone."""
    from clipstudio.resources import keep_freed_memory

    monkeypatch.setenv("CLIPSTUDIO_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
    monkeypatch.delenv("CLIPSTUDIO_KEEP_FREED_MEMORY")
    assert keep_freed_memory() is True

    def step() -> None:  # activations of 4 to 32 MiB, freed at the end, as in a guidance step; with glibc's
        # defaults the 32 MiB blocks are mapped and unmapped each time: 42 000 faults a step, every step
        blocks = [torch.ones(n << 20) for n in (6, 6, 8, 6, 6, 8, 1)]
        assert sum(float(b[-1]) for b in blocks) == 7

    faults = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    assert sum(faults[4:]) < 5000, faults  # once the heap has settled; 170 000 with the defaults


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_release_freed_memory_hands_freed_heap_back():
    """What a search freed stays in the process until ``release_freed_memory`` gives it back (the live loop calls
    it after each search); the blocks here are kept by ``keep_freed_memory``'s settings, as in the CLI."""
    from clipstudio.resources import keep_freed_memory, release_freed_memory

    def rss_mb() -> float:
        return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20

    assert keep_freed_memory()
    blocks = [torch.ones(1 << 19) for _ in range(128)]  # 128 blocks of 2 MiB, touched
    assert sum(float(b[0]) for b in blocks) == 128
    del blocks
    kept = rss_mb()
    assert release_freed_memory()
    assert kept - rss_mb() > 128  # of the 256 MiB freed
