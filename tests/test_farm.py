"""The render farm (issue 17): job files, keys, the manifest, and batches on Ray and on the local process pool
(the same tests for both), with a job that fails on purpose, a killed worker and a driver restart."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import tempfile

import pytest
import yaml

from clipstudio import cli
from clipstudio.errors import ClipstudioError
from clipstudio.farm import load_job_file, parse_job_file, run_batch
from clipstudio.farm import executors
from clipstudio.farm.driver import WORKER_DIED
from clipstudio.farm.executors import LocalPool, RayPool, make_executor
from clipstudio.farm.jobs import job_key
from clipstudio.farm.manifest import MANIFEST_NAME, Manifest, latest_by_key, read_manifest
from clipstudio.images import read_png_settings


@pytest.fixture
def tiny_generate(tiny_options) -> dict:
    """generate settings for fast jobs on the tiny random CLIP (no layout stage, no search)."""
    return {**tiny_options, "layout": "none", "search": 0, "steps": 2}


BROKEN_IMAGE = Path(tempfile.gettempdir()) / "clipstudio-farm-test-broken.png"


def _tiny_file(tiny_generate, prompts=("a red circle", "a blue square"), seeds=(0, 1), failing=True, **extra):
    data = {"prompts": list(prompts), "seeds": list(seeds), "generate": tiny_generate, "retries": 1, **extra}
    if failing:  # fails in the worker, on every attempt: its init image exists (so it validates) but is no image
        BROKEN_IMAGE.write_bytes(b"not a png")
        data["jobs"] = [{"prompt": "doomed", "seed": 0, "init_image": str(BROKEN_IMAGE)}]
    return parse_job_file(data)


# --------------------------------------------------------------------------- job files


def test_smallest_file_is_the_offline_default_generate_for_every_pair():
    job_file = parse_job_file({"prompts": ["a red circle", "a blue square"], "seeds": [0, 1, 2]})
    assert len(job_file.jobs) == 6
    assert {(j.prompt, j.seed) for j in job_file.jobs} == {(p, s) for p in ("a red circle", "a blue square")
                                                           for s in (0, 1, 2)}
    for job in job_file.jobs:
        assert (job.backend, job.recipe) == ("generate", "shapes")
        assert job.settings["clip"] == ["shapes-guide"] and job.settings["seed"] == job.seed
        assert job.settings["candidates"] == 1
    assert len({j.key for j in job_file.jobs}) == 6
    assert job_file.score_clip == "shapes-guide"


def test_keys_follow_the_settings_and_not_the_device(tiny_generate):
    settings = parse_job_file({"prompts": ["x"], "seeds": [3], "generate": tiny_generate}).jobs[0].settings
    assert job_key("generate", settings) == job_key("generate", {**settings, "device": "cuda"})
    assert job_key("generate", settings) != job_key("generate", {**settings, "steps": settings["steps"] + 1})
    assert job_key("generate", settings) != job_key("diffuse", settings)
    again = parse_job_file({"prompts": ["x"], "seeds": [3], "generate": tiny_generate}).jobs[0]
    assert again.key == job_key("generate", settings)


def test_sweep_over_recipes_and_backends_runs_diffuse_once_per_pair(tmp_path):
    (tmp_path / "prompts.txt").write_text("# a comment\na red circle\n\na blue square\n")
    (tmp_path / "jobs.yaml").write_text(yaml.safe_dump({
        "prompt_file": "prompts.txt", "seeds": 2, "recipes": ["shapes", "shapes-pixels"],
        "backends": ["generate", "diffuse"], "diffuse": {"steps": 4},
        "jobs": [{"prompt": "a red circle", "seed": 0, "backend": "diffuse", "steps": 4}]}))  # a repeat
    job_file = load_job_file(tmp_path / "jobs.yaml")
    kinds = [(j.backend, j.recipe) for j in job_file.jobs]
    assert kinds.count(("generate", "shapes")) == kinds.count(("generate", "shapes-pixels")) == 4
    assert kinds.count(("diffuse", None)) == 4 and job_file.duplicates == 5
    assert all(j.settings["steps"] == 4 for j in job_file.jobs if j.backend == "diffuse")


@pytest.mark.parametrize("data, message", [
    ({"prompts": ["x"], "seed": [1]}, "unknown key(s) seed"),
    ({"prompts": ["x"], "backends": ["paint"]}, "unknown backend 'paint'"),
    ({"prompts": ["x"], "seeds": ["one"]}, "seeds must be integers"),
    ({"prompts": ["x"], "generate": {"stepz": 3}}, "unknown setting(s): stepz"),
    ({"prompts": ["x"], "backends": ["diffuse"], "diffuse": {"cutn": 3}}, "unknown diffuse setting(s): cutn"),
    ({"prompts": ["x"], "generate": {"candidates": 4}}, "sweep seeds and use rank.keep"),
    ({"seeds": [1]}, "a sweep needs prompts"),
    ({}, "holds no jobs"),
    ({"prompts": ["x"], "retries": -1}, "retries must be an integer >= 0"),
    ({"prompts": ["x"], "rank": {"keep": 2, "best": 1}}, "rank: give a mapping"),
    ([1, 2], "must be a mapping"),
])
def test_bad_job_files_are_one_line(data, message):
    with pytest.raises(ClipstudioError) as err:
        parse_job_file(data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_manifest_skips_a_torn_line_and_keeps_appending(tmp_path):
    path = tmp_path / MANIFEST_NAME
    with Manifest(path) as manifest:
        manifest.append({"key": "a", "status": "retry"})
        manifest.append({"key": "a", "status": "done"})
    with open(path, "a") as handle:
        handle.write('{"key": "b", "sta')  # a driver killed mid-line
    with Manifest(path) as manifest:
        manifest.append({"key": "c", "status": "failed"})
    latest = latest_by_key(read_manifest(path))
    assert {k: r["status"] for k, r in latest.items()} == {"a": "done", "c": "failed"}


def test_executor_choice_and_bad_options(monkeypatch):
    assert isinstance(make_executor("local", workers=2), LocalPool)
    monkeypatch.setattr(executors, "_has_module", lambda name: False)  # as if the farm extra were missing
    assert isinstance(make_executor("auto"), LocalPool)  # degrades to the process pool
    with pytest.raises(ClipstudioError, match=r"pip install 'clipstudio\[farm\]'"):
        make_executor("ray")
    with pytest.raises(ClipstudioError, match=r"pip install 'clipstudio\[farm\]'"):
        make_executor("auto", address="auto")
    monkeypatch.undo()
    with pytest.raises(ClipstudioError, match="need the Ray executor"):
        make_executor("local", address="auto")
    with pytest.raises(ClipstudioError, match="workers must be at least 1"):
        make_executor("auto", workers=0)


# --------------------------------------------------------------------------- batches, on both executors


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module's Ray tests: 2 CPU workers, a small object store, no dashboard."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=80 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.slow)])
def executor(request):
    """A fresh pool of 2 one-thread workers: local processes, or actors on the module's Ray cluster (slow:
    starting Ray takes 15 s or more, and each actor imports torch)."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        return RayPool(workers=2, threads=1)
    return LocalPool(workers=2, threads=1)


def _pngs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.png"))


def _no_temporaries(out: Path) -> None:
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_batch_runs_retries_fails_and_skips_on_rerun(executor, tiny_generate, tmp_path):
    job_file = _tiny_file(tiny_generate)
    summary = run_batch(job_file, tmp_path, executor, workers=2)
    assert (summary.done, summary.failed, summary.skipped) == (4, 1, 0)
    records = read_manifest(tmp_path / MANIFEST_NAME)
    doomed = [r for r in records if r["prompt"] == "doomed"]
    assert [r["status"] for r in doomed] == ["retry", "failed"]  # retries: 1, then failed with one line
    assert doomed[-1]["error"].startswith(f"cannot read image {BROKEN_IMAGE}")
    assert "\n" not in doomed[-1]["error"]
    outputs = _pngs(tmp_path)
    assert len(outputs) == 4
    for job in job_file.jobs[:4]:
        meta = read_png_settings(job.output(tmp_path))
        assert meta["farm"]["key"] == job.key and meta["settings"]["seed"] == job.seed
        assert meta["settings"]["prompt"] == job.prompt and meta["settings"]["steps"] == 2
        done = latest_by_key(records)[job.key]
        assert done["status"] == "done" and done["seconds"] > 0
        assert set(done["scores"]) == {tiny_generate["clip"][0]}
    _no_temporaries(tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in outputs}
    again = run_batch(job_file, tmp_path, executor.__class__(workers=2, threads=1), workers=2)
    assert (again.skipped, again.done, again.failed) == (4, 0, 1)  # only the failed job runs again
    assert {p: p.stat().st_mtime_ns for p in _pngs(tmp_path)} == mtimes


@pytest.mark.slow  # spawns fresh workers (each imports torch); the rerun test above covers skipping
def test_a_restarted_driver_finishes_only_what_is_missing(executor, tiny_generate, tmp_path):
    job_file = _tiny_file(tiny_generate, seeds=(0, 1, 2), failing=False)

    def stop_after_two(record):
        if sum(r["status"] == "done" for r in read_manifest(tmp_path / MANIFEST_NAME)) >= 2:
            raise KeyboardInterrupt  # the driver is interrupted; its pool is closed on the way out

    with pytest.raises(KeyboardInterrupt):
        run_batch(job_file, tmp_path, executor, workers=2, on_event=stop_after_two)
    first = {p: p.stat().st_mtime_ns for p in _pngs(tmp_path)}
    assert 2 <= len(first) < 6
    summary = run_batch(job_file, tmp_path, executor.__class__(workers=2, threads=1), workers=2)
    assert (summary.skipped, summary.done, summary.failed) == (len(first), 6 - len(first), 0)
    assert len(_pngs(tmp_path)) == 6
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    done = [r["key"] for r in read_manifest(tmp_path / MANIFEST_NAME) if r["status"] == "done"]
    assert sorted(done) == sorted(j.key for j in job_file.jobs)  # each job done exactly once


@pytest.mark.slow  # spawns fresh workers (each imports torch); the rerun test above covers skipping
def test_a_killed_worker_job_runs_again(executor, tiny_generate, tmp_path):
    job_file = _tiny_file(tiny_generate, seeds=(0, 1, 2), failing=False)
    killed = []

    def kill_once(record):
        if not killed and record["status"] == "done":
            killed.append(record["pid"])  # that worker was just handed the next job: kill it holding it
            os.kill(record["pid"], signal.SIGKILL)

    summary = run_batch(job_file, tmp_path, executor, workers=2, on_event=kill_once)
    assert killed and summary.workers_lost == 1
    assert (summary.done, summary.failed) == (6, 0)
    records = read_manifest(tmp_path / MANIFEST_NAME)
    lost = [r for r in records if r["status"] == "retry"]
    assert len(lost) == 1 and lost[0]["error"] == WORKER_DIED
    assert latest_by_key(records)[lost[0]["key"]]["status"] == "done"
    assert len(_pngs(tmp_path)) == 6
    _no_temporaries(tmp_path)


# --------------------------------------------------------------------------- the command


def test_batch_command_ranks_and_writes_a_contact_sheet(tiny_generate, tmp_path, capsys):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(yaml.safe_dump({"prompts": ["a red circle", "a blue square"], "seeds": [0, 1, 2],
                                    "backends": ["generate", "diffuse"], "generate": tiny_generate,
                                    "diffuse": {"steps": 2}, "rank": {"keep": 2}}))
    out = tmp_path / "out"
    code = cli.main(["batch", str(jobs), "--out", str(out), "--executor", "local", "--workers", "2",
                     "--threads", "1", "--quiet"])
    assert code == 0
    assert "12 done, 0 failed" in capsys.readouterr().out
    sampled = read_png_settings(next((out / "a-red-circle").glob("diffuse-s1-*.png")))
    assert sampled["settings"]["model"] == "shapes-diffusion" and sampled["settings"]["steps"] == 2
    ranking = json.loads((out / "best" / "ranking.json").read_text())
    assert ranking["keep"] == 2 and set(ranking["ranking"]) == {"a red circle", "a blue square"}
    latest = latest_by_key(read_manifest(out / MANIFEST_NAME))
    for prompt, kept in ranking["ranking"].items():
        scores = sorted((r["scores"][ranking["clip"]] for r in latest.values() if r["prompt"] == prompt),
                        reverse=True)
        assert [k["score"] for k in kept] == pytest.approx(scores[:2])
        assert all((out / k["copy"]).is_file() for k in kept)
    assert sorted(p.name for p in (out / "best").glob("*.png")) == [
        "a-blue-square-1.png", "a-blue-square-2.png", "a-red-circle-1.png", "a-red-circle-2.png"]
    assert read_png_settings(out / "contact.png")["ranking"] == ranking["ranking"]


def test_batch_command_bad_input_is_one_line(tmp_path, capsys):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("prompts: [x]\nbackends: [paint]\n")
    assert cli.main(["batch", str(jobs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown backend 'paint'" in err and "\n" not in err
    assert cli.main(["batch", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)]) == 2
    assert "job file not found" in capsys.readouterr().err
