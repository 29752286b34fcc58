"""After a batch: keep the best K outputs per prompt by CLIP score, copy them to ``DIR/best/`` and write a
contact sheet (``DIR/contact.png``: a row per prompt, best first) and ``DIR/best/ranking.json``."""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..images import atomic_write, save_png
from .backends import score_image
from .driver import is_finished
from .jobs import JobFile, slug
from .manifest import MANIFEST_NAME, latest_by_key, read_manifest

CELL = 128  # contact-sheet cell side (shapes-world outputs are 64 px: shown twice as large)
LABEL = 14


def job_scores(job_file: JobFile, out_dir: Path, clip: str, device: str = "cpu") -> dict[str, float]:
    """Each finished job's score with ``clip``: from the manifest, or scored here if the workers did not."""
    latest = latest_by_key(read_manifest(out_dir / MANIFEST_NAME))
    scores = {}
    for job in job_file.jobs:
        if not is_finished(job, out_dir):
            continue
        recorded = latest.get(job.key, {}).get("scores", {}) or {}
        if clip in recorded:
            scores[job.key] = float(recorded[clip])
        else:
            with Image.open(job.output(out_dir)) as image:
                scores[job.key] = score_image(image.convert("RGB"), job.prompt, clip, device)
    return scores


def keep_best(job_file: JobFile, out_dir: str | Path, keep: int, clip: str | None = None) -> dict[str, Any]:
    """The best ``keep`` finished outputs of each prompt, copied to ``best/``, with a contact sheet."""
    out_dir = Path(out_dir)
    clip = clip or job_file.score_clip
    scores = job_scores(job_file, out_dir, clip)
    by_prompt: dict[str, list[tuple[float, Any]]] = defaultdict(list)
    for job in job_file.jobs:
        if job.key in scores:
            by_prompt[job.prompt].append((scores[job.key], job))
    best_dir = out_dir / "best"
    if best_dir.is_dir():
        shutil.rmtree(best_dir)  # a rerun with another K or new outputs: the old choice goes
    best_dir.mkdir()
    ranking: dict[str, list[dict[str, Any]]] = {}
    for prompt, scored in by_prompt.items():
        scored.sort(key=lambda pair: -pair[0])
        ranking[prompt] = []
        for rank, (score, job) in enumerate(scored[:keep], start=1):
            target = best_dir / f"{slug(prompt)}-{rank}.png"
            data = job.output(out_dir).read_bytes()
            atomic_write(target, lambda handle, data=data: handle.write(data))
            ranking[prompt].append({"rank": rank, "score": score, "key": job.key, "seed": job.seed,
                                    "backend": job.backend, "recipe": job.recipe,
                                    "output": str(job.output(out_dir).relative_to(out_dir)),
                                    "copy": str(target.relative_to(out_dir))})
    summary = {"clip": clip, "keep": keep, "ranking": ranking}
    atomic_write(best_dir / "ranking.json", lambda handle: handle.write(json.dumps(summary, indent=1).encode()))
    if ranking:
        contact_sheet(out_dir, ranking, keep)
    return summary


def contact_sheet(out_dir: Path, ranking: dict[str, list[dict[str, Any]]], keep: int) -> Path:
    """A grid: one row per prompt (its text above), its kept outputs best first, each with its score."""
    row = CELL + 2 * LABEL
    sheet = Image.new("RGB", (max(keep, 1) * CELL, max(len(ranking), 1) * row), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (prompt, kept) in enumerate(ranking.items()):
        top = r * row
        draw.text((2, top + 1), prompt[:80], fill="black")
        for c, entry in enumerate(kept):
            with Image.open(out_dir / entry["output"]) as image:
                cell = image.convert("RGB").resize((CELL, CELL), Image.NEAREST)
            sheet.paste(cell, (c * CELL, top + LABEL))
            draw.text((c * CELL + 2, top + LABEL + CELL + 1), f"{entry['score']:.3f} s{entry['seed']}", fill="black")
    return save_png(sheet, out_dir / "contact.png", {"ranking": ranking})
