"""Job files: a sweep (prompts or a prompt file x seeds x recipes x backends) and/or a list of jobs, expanded
into :class:`Job` s that each name one output with its full settings and a key made from them.

The smallest file is ``prompts: [...]`` and ``seeds: [...]``: the offline default ``generate`` (the ``shapes``
recipe) for every pair. Settings for every job of a backend go under the backend's name::

    prompts: [a red circle, a blue square]     # or prompt_file: prompts.txt (one a line; '#' comments)
    seeds: 4                                    # a list, or N for 0..N-1
    recipes: [shapes, shapes-pixels]           # generate only; default: shapes
    backends: [generate, diffuse]              # default: generate
    generate: {steps: 30}
    diffuse: {steps: 20, guidance: 4}
    jobs:                                       # single jobs beside (or instead of) the sweep
      - {prompt: a green triangle, seed: 7, backend: diffuse, guidance: 6}
    rank: {keep: 2, clip: shapes-guide}        # keep the best 2 per prompt, write a contact sheet
    retries: 2                                  # attempts after the first before a job is failed
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ClipstudioError
from .backends import BACKENDS, DEFAULT_SCORE_CLIP, backend

SWEEP_KEYS = ("prompts", "prompt_file", "seeds", "recipes", "backends")
FILE_KEYS = (*SWEEP_KEYS, "jobs", "rank", "retries")
JOB_KEYS = ("prompt", "seed", "recipe", "backend")
KEY_IGNORES = ("device",)  # where a job runs is not what it makes
DEFAULT_RETRIES = 2


@dataclass(frozen=True)
class Job:
    """One output: its backend, prompt, seed, recipe, full settings and the key made from them."""

    key: str
    backend: str
    prompt: str
    seed: int
    recipe: str | None
    settings: dict[str, Any]

    def output(self, out_dir: str | Path) -> Path:
        """Where the PNG goes: ``DIR/<prompt slug>/<backend>-s<seed>-<key>.png``."""
        return Path(out_dir) / slug(self.prompt) / f"{self.backend}-s{self.seed}-{self.key}.png"

    def message(self, score_clip: str | None) -> dict[str, Any]:
        """What a worker needs (plain data, so it crosses to a Ray actor or a process cheaply)."""
        return {"key": self.key, "backend": self.backend, "prompt": self.prompt, "recipe": self.recipe,
                "settings": self.settings, "score_clip": score_clip}


@dataclass
class JobFile:
    """A parsed job file: its jobs (unique keys, file order), ranking and retry settings."""

    jobs: list[Job]
    keep: int = 0
    rank_clip: str | None = None
    retries: int = DEFAULT_RETRIES
    source: str = ""
    duplicates: int = 0

    @property
    def score_clip(self) -> str:
        """The CLIP model every job is scored with: the file's rank clip, else the first generate job's guide."""
        if self.rank_clip:
            return self.rank_clip
        guides = [job.settings["clip"][0] for job in self.jobs if job.backend == "generate" and job.settings["clip"]]
        return guides[0] if guides else DEFAULT_SCORE_CLIP


def slug(text: str, limit: int = 60) -> str:
    """A folder name for a prompt: lower-case words joined by '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "prompt"


def job_key(backend_name: str, settings: dict[str, Any]) -> str:
    """16 hex digits of SHA-256 over the backend and its settings (canonical JSON, device left out)."""
    kept = {k: v for k, v in settings.items() if k not in KEY_IGNORES}
    text = json.dumps({"backend": backend_name, "settings": kept}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_job(backend_name: str, prompt: Any, seed: Any, recipe: Any, settings: dict[str, Any]) -> Job:
    """A :class:`Job` with resolved, validated settings."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ClipstudioError(f"every job needs a prompt (a non-empty string), got {prompt!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ClipstudioError(f"seeds must be integers, got {seed!r}")
    entry = backend(backend_name)
    # A sweep over recipes x backends: a backend without recipes runs once (the same key dedupes it).
    recipe = (recipe or entry.default_recipe) if entry.default_recipe else None
    try:
        full = entry.resolve(prompt, seed, recipe, dict(settings))
    except ClipstudioError as err:
        raise ClipstudioError(f"job '{prompt}' (seed {seed}, {backend_name}): {err}") from None
    return Job(job_key(backend_name, full), backend_name, prompt, seed, recipe, full)


def _seeds(value: Any) -> list[Any]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ClipstudioError(f"seeds: give a list or a count >= 1, got {value}")
        return list(range(value))
    if isinstance(value, list) and value:
        return value
    raise ClipstudioError(f"seeds: give a list of integers or a count, got {value!r}")


def _strings(data: dict[str, Any], name: str, default: list[Any]) -> list[Any]:
    value = data.get(name, default)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ClipstudioError(f"{name}: give a non-empty list, got {value!r}")
    return value


def _prompts(data: dict[str, Any], base: Path) -> list[Any]:
    prompts = list(_strings(data, "prompts", [])) if "prompts" in data else []
    if "prompt_file" in data:
        path = base / str(data["prompt_file"])
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            raise ClipstudioError(f"cannot read prompt_file {path}: {err.strerror or err}") from None
        prompts += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return prompts


def _backend_settings(data: dict[str, Any], name: str) -> dict[str, Any]:
    settings = data.get(name, {}) or {}
    if not isinstance(settings, dict):
        raise ClipstudioError(f"{name}: give a mapping of setting: value")
    return settings


def _sweep(data: dict[str, Any], base: Path) -> Iterator[Job]:
    prompts = _prompts(data, base)
    if not prompts:
        if any(k in data for k in SWEEP_KEYS):
            raise ClipstudioError("a sweep needs prompts (or a prompt_file with at least one line)")
        return
    seeds = _seeds(data.get("seeds", [0]))
    recipes = _strings(data, "recipes", [None])
    for name in _strings(data, "backends", ["generate"]):
        settings = _backend_settings(data, name) if name in BACKENDS else {}
        for recipe in recipes:
            for prompt in prompts:
                for seed in seeds:
                    yield make_job(name, prompt, seed, recipe, settings)


def _listed(data: dict[str, Any]) -> Iterator[Job]:
    entries = data.get("jobs", [])
    if not isinstance(entries, list):
        raise ClipstudioError("jobs: give a list of mappings (prompt, seed, backend, recipe, settings)")
    for entry in entries:
        if not isinstance(entry, dict):
            raise ClipstudioError(f"jobs: each job is a mapping, got {entry!r}")
        name = entry.get("backend", "generate")
        settings = {**(_backend_settings(data, name) if name in BACKENDS else {}),
                    **{k: v for k, v in entry.items() if k not in JOB_KEYS}}
        yield make_job(name, entry.get("prompt"), entry.get("seed", 0), entry.get("recipe"), settings)


def _rank(data: dict[str, Any]) -> tuple[int, str | None]:
    rank = data.get("rank", {}) or {}
    if not isinstance(rank, dict) or set(rank) - {"keep", "clip"}:
        raise ClipstudioError("rank: give a mapping with keep (best K per prompt) and optionally clip")
    keep = rank.get("keep", 0)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ClipstudioError(f"rank.keep must be an integer >= 0, got {keep!r}")
    return keep, rank.get("clip")


def parse_job_file(data: Any, base: str | Path = ".", source: str = "the job file") -> JobFile:
    """Expand a job file's mapping into unique jobs (a repeated key runs once); one line of error otherwise."""
    if not isinstance(data, dict):
        raise ClipstudioError(f"{source} must be a mapping (prompts, seeds, ... or jobs)")
    unknown = sorted(str(k) for k in data if k not in FILE_KEYS and k not in BACKENDS)
    if unknown:
        raise ClipstudioError(f"{source}: unknown key(s) {', '.join(unknown)}; "
                              f"choose from: {', '.join([*FILE_KEYS, *list(BACKENDS)])}")
    unique: dict[str, Job] = {}
    count = 0
    for job in [*_sweep(data, Path(base)), *_listed(data)]:
        count += 1
        unique.setdefault(job.key, job)
    if not unique:
        raise ClipstudioError(f"{source} holds no jobs: give prompts and seeds, or jobs")
    retries = data.get("retries", DEFAULT_RETRIES)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ClipstudioError(f"retries must be an integer >= 0, got {retries!r}")
    keep, clip = _rank(data)
    return JobFile(list(unique.values()), keep, clip, retries, source, count - len(unique))


def load_job_file(path: str | Path) -> JobFile:
    """Read and expand a YAML job file (a prompt_file is found beside it)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ClipstudioError(f"job file not found: {path}") from None
    except (OSError, yaml.YAMLError) as err:
        raise ClipstudioError(f"cannot read job file {path}: {str(err).splitlines()[0]}") from None
    return parse_job_file(data, path.parent, str(path))
