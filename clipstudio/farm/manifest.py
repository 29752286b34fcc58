"""The batch manifest: one JSON line per attempt's outcome (``retry``, ``done``, ``failed``, ``skipped``),
appended with a single write and fsynced, so a killed driver leaves at most one torn last line, which readers
skip. A job's status is its last line."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.jsonl"


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Every whole record of a manifest, in order (a torn or corrupt line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "key" in record:
            records.append(record)
    return records


def latest_by_key(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each job's last record: its status now."""
    return {record["key"]: record for record in records}


class Manifest:
    """An append-only JSONL file; :meth:`append` writes one whole line per call."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
            os.write(self._fd, b"\n")  # a torn line from a killed driver stays alone on its line

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` (with a UTC time) as one line and fsync it."""
        line = json.dumps({**record, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, sort_keys=True)
        os.write(self._fd, (line + "\n").encode())
        os.fsync(self._fd)

    def records(self) -> list[dict[str, Any]]:
        return read_manifest(self.path)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
