"""The live loop: plays a playlist forever on one :class:`~clipstudio.studio.Studio`, blending prompts at
each change, writing frames and a status file, checkpointing, and recovering from bad steps."""
from __future__ import annotations

import dataclasses
import logging
import logging.handlers
import math
import os
import signal
import sys
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..config import GenerateConfig
from ..errors import ClipstudioError
from ..guide.prompts import Prompt
from ..resources import release_freed_memory
from ..studio import Studio
from .playlist import Item, Playlist, PlaylistWatcher, blend, load_playlist
from .prompt_queue import PromptQueue
from .store import (HEARTBEAT, STATE, STATUS, CheckpointStore, FrameStore, remove_temporaries, rss_megabytes, touch,
                    utc_now, write_json)

FORMAT = "clipstudio-live/1"
LOGGER = "clipstudio.live"
TRANSITION_STAGES = 20  # a transition changes the prompt weights at most this often (each change encodes text)


@dataclass
class LiveOptions:
    """How often a live run writes what, how much it keeps, and how it recovers."""

    frame_every: int = 10  # current.png every K steps
    numbered_every: int = 50  # a numbered frame every N steps
    keep_frames: int = 500  # at most this many numbered frames ...
    frames_budget_mb: float = 200.0  # ... taking at most this much disk
    checkpoint_every: int = 100
    max_failures: int = 3  # bad steps on one prompt before it is skipped
    lr_decay: float = 0.5  # the lr is multiplied by this after each bad step
    poll_seconds: float = 1.0  # how often the playlist file is looked at
    settle_seconds: float = 0.5  # a changed playlist is read once it has not changed for this long
    log_every: int = 500  # one progress line every N steps
    history_keep: int = 1000  # loss history kept in memory and checkpoints
    max_queue: int = 10

    def validate(self) -> LiveOptions:
        for name in ("frame_every", "numbered_every", "keep_frames", "checkpoint_every", "max_failures",
                     "log_every", "history_keep", "max_queue"):
            if getattr(self, name) < 1:
                raise ClipstudioError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.lr_decay <= 1:
            raise ClipstudioError(f"lr-decay must be in (0, 1], got {self.lr_decay}")
        if not self.frames_budget_mb > 0:
            raise ClipstudioError(f"frames-budget-mb must be above 0, got {self.frames_budget_mb}")
        return self


@dataclass
class Position:
    """Where the run is: the item playing, its place in the playlist, the prompts it blends from."""

    item: Item
    index: int  # the playlist item last taken (a queued item plays after it)
    passes: int = 0  # completed passes through the playlist
    item_step: int = 0
    previous: list[Prompt] = field(default_factory=list)
    queued: bool = False
    lr_scale: float = 1.0
    searched: bool = False  # the item's search (once it reached its prompt) is done or not due

    def to_dict(self) -> dict[str, Any]:
        return {"item": self.item.to_dict(), "index": self.index, "passes": self.passes, "item_step": self.item_step,
                "previous": [[p.text, p.weight, p.stop, p.is_image] for p in self.previous],
                "queued": self.queued, "lr_scale": self.lr_scale, "searched": self.searched}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Position:
        previous = [Prompt(str(t), float(w), float(s), bool(i)) for t, w, s, i in data["previous"]]
        return cls(Item.from_dict(data["item"]), int(data["index"]), int(data["passes"]), int(data["item_step"]),
                   previous, bool(data["queued"]), float(data["lr_scale"]),
                   bool(data.get("searched", int(data["item_step"]) > 0)))  # older states: searched if begun


def same_model(a: GenerateConfig, b: GenerateConfig) -> bool:
    """Whether two settings build the same generator and guides, so one run's state can carry over."""
    skip = {"prompt", "lr"}
    return ({k: v for k, v in a.to_full_dict().items() if k not in skip}
            == {k: v for k, v in b.to_full_dict().items() if k not in skip})


def one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


class LiveRunner:
    """Plays ``playlist_path`` into ``folder``: call :meth:`start`, then :meth:`step` (or :meth:`run`)."""

    def __init__(self, playlist_path: str | os.PathLike, folder: str | os.PathLike,
                 options: LiveOptions | None = None, log: logging.Logger | None = None):
        self.options = (options or LiveOptions()).validate()
        self.playlist_path, self.folder = Path(playlist_path), Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = log or logging.getLogger(LOGGER)
        self.frames = FrameStore(self.folder, self.options.keep_frames, int(self.options.frames_budget_mb * 2**20))
        self.checkpoints = CheckpointStore(self.folder, self.log)
        self.queue = PromptQueue(self.folder, self.options.max_queue)
        self.studio: Studio | None = None
        self.position: Position | None = None
        self.total = 0  # steps over all restarts
        self.run_seconds = 0.0  # time spent stepping over all restarts
        self.applied: list[Prompt] | None = None
        self.failures: dict[str, int] = {}
        self.last_error: dict[str, Any] | None = None
        self.stop_requested = self.finished = False
        self.started = time.time()
        self.step_times: deque[float] = deque(maxlen=50)
        self.last_beat = 0.0
        warnings.filterwarnings("ignore", message=r"step \d+: .*step skipped")  # the runner logs these itself

    @property
    def playlist(self) -> Playlist | None:
        return self.watcher.playlist

    # -- starting and restoring -------------------------------------------------------------------------
    def start(self) -> None:
        """Resume from the newest good checkpoint, or start the playlist's first item."""
        removed = remove_temporaries(self.folder)
        if removed:
            self.log.info("removed %d temporary file(s) left by an interrupted write", removed)
        try:
            playlist, bad = load_playlist(self.playlist_path), None
        except ClipstudioError as err:
            playlist, bad = None, err
        o = self.options
        self.watcher = PlaylistWatcher(self.playlist_path, playlist, self.log, o.poll_seconds, o.settle_seconds)
        self._beat(force=True)
        resumed = self.checkpoints.load(self._restore)
        if resumed:
            self.log.info("resumed from %s at step %d", resumed.name, self.total)
            if playlist is not None:
                self._follow(playlist)
            else:
                self.log.warning("%s; playing on from the checkpoint", bad)
            if self.position.item_step >= self.position.item.steps:  # stopped as an item ended
                self._advance()
        else:
            if playlist is None:
                raise bad
            self.position = Position(playlist.items[0], 0)
            self.studio = self._build(self.position.item)
            self._checkpoint()  # something to fall back to from the first step on
        self._write_status("running")

    def _build(self, item: Item, lr_scale: float = 1.0) -> Studio:
        self._beat(force=True)
        self.applied = None
        studio = Studio(item.config(lr_scale))
        studio.searched = True  # the runner searches once per item (see _search_due), not the studio at step 0
        return studio

    def _restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's run state (used by :meth:`CheckpointStore.load`); raises if it is not one."""
        if state.get("format") != FORMAT:
            raise ClipstudioError(f"not a live checkpoint (format {state.get('format')!r})")
        position = Position.from_dict(state["position"])
        config = GenerateConfig.from_dict(state["studio"]["settings"])
        studio = self.studio
        if studio is not None and same_model(studio.config, config):
            studio.config = config
        else:
            self._beat(force=True)
            studio = Studio(config)
        studio.load_state_dict(state["studio"])
        studio.searched = True  # the position says whether the item's search is still due
        self.studio, self.position, self.applied = studio, position, None
        self.total, self.run_seconds = int(state["step"]), float(state.get("run_seconds", 0.0))

    def _follow(self, playlist: Playlist) -> None:
        """Carry on in a changed playlist: the same item keeps its progress, another one is blended to."""
        position = self.position
        if position.queued:
            return
        index = position.index if position.index < len(playlist.items) else 0
        item = playlist.items[index]
        if item.prompt == position.item.prompt and item.settings == position.item.settings:
            position.item, position.index = item, index
        else:
            self._switch(item, index)

    # -- playing ---------------------------------------------------------------------------------------
    def _switch(self, item: Item, index: int, queued: bool = False) -> None:
        """Start ``item``, blending from the prompts now guiding the image (a new model starts afresh)."""
        previous = list(self.applied or [])
        if not same_model(self.studio.config, item.config()):
            self.studio, previous = self._build(item), []
            release_freed_memory()  # the previous item's models and activations
        else:
            self.studio.config = dataclasses.replace(self.studio.config, lr=item.config().lr)
        passes = self.position.passes if self.position else 0
        self.position = Position(item, index, passes, 0, previous, queued)
        where = "queued" if queued else f"{index + 1}/{len(self.playlist.items) if self.playlist else '?'}"
        self.log.info("step %d: playing %s '%s' for %d steps", self.total, where, item.prompt, item.steps)

    def _advance(self) -> None:
        """The next item: a queued prompt first, else the playlist's next; the last pass ends the run."""
        playlist, position = self.playlist, self.position
        if playlist is None:  # started from a checkpoint with a bad playlist: play the item again
            position.item_step, position.searched = 0, False
            return
        entry = self.queue.pop()
        if entry is not None:
            try:
                return self._switch(playlist.queued_item(entry["prompt"], entry.get("steps")), position.index, True)
            except ClipstudioError as err:
                self.log.warning("queued prompt skipped: %s", err)
        following = position.index + 1
        if following >= len(playlist.items):
            following = 0
            position.passes += 1
            if playlist.loop is not None and position.passes >= playlist.loop:
                self.finished = True
                self.log.info("step %d: played the playlist %d time(s); finished", self.total, position.passes)
                return
        self._switch(playlist.items[following], following)

    def _guiding_prompts(self) -> list[Prompt]:
        position = self.position
        target = position.item.prompts()
        if not position.previous or position.item_step >= position.item.transition:
            return target
        stages = min(position.item.transition, TRANSITION_STAGES)
        t = math.ceil((position.item_step + 1) / position.item.transition * stages) / stages
        return blend(position.previous, target, t)

    def step(self) -> None:
        """One guided step, then whatever falls due: next item, frames, checkpoint, status, heartbeat."""
        changed = self.watcher.poll()
        if changed is not None:
            self._follow(changed)
        prompts = self._guiding_prompts()
        if prompts != self.applied:
            self.studio.set_prompts(prompts)
            self.applied = prompts
        began = time.monotonic()
        try:
            self._search_if_due()
            info = self.studio.step()
            reason = info.reason if info.skipped else ""
        except Exception as err:  # a step error must not end an installation: recover and carry on
            reason = one_line(err)
        if reason:
            return self._recover(reason)
        self.run_seconds += time.monotonic() - began
        self.step_times.append(time.monotonic())
        self.total += 1
        self.position.item_step += 1
        history = self.studio.history
        if len(history) > 2 * self.options.history_keep:  # a run of weeks must not grow
            del history[:-self.options.history_keep]
        if self.position.item_step >= self.position.item.steps:
            self.failures.pop(self.position.item.prompt, None)
            self._advance()
        self._after_step()

    def _search_if_due(self) -> None:
        """Search the generator's discrete choices (colours, shapes, places) once per item, on the step its
        transition ends (or its first, with none): gradient steps alone rarely move such choices to a new
        prompt. The search's first start is the current image, so it only jumps to something better. Done
        before the step, so a checkpoint lies either before it (a resumed run searches the same way, with the
        same RNG) or after it (``searched`` is saved: never twice)."""
        position = self.position
        if position.searched or (position.previous and position.item_step < position.item.transition):
            return
        position.searched = True
        config = self.studio.config
        if not (position.item.search and config.search):
            return
        self._beat(force=True)
        began = time.monotonic()
        loss = self.studio.search(config.search, config.search_restarts)
        release_freed_memory()  # the search's large batches are done with; a run of weeks must not grow
        if math.isfinite(loss):  # inf: the generator has no choices
            self.log.info("step %d: searched the choices for '%s' (loss %.4g, %.1f s)", self.total,
                          position.item.prompt, loss, time.monotonic() - began)
        self._beat(force=True)

    def _after_step(self) -> None:
        o, total = self.options, self.total
        try:
            if total % o.frame_every == 0 or total % o.numbered_every == 0:
                self._write_frames(total % o.frame_every == 0, total % o.numbered_every == 0)
            if total % o.checkpoint_every == 0 or self.finished:
                self._checkpoint()
        except ClipstudioError as err:  # a NaN image: recover like a bad step
            return self._recover(str(err))
        if total % o.frame_every == 0 or self.finished:
            self._write_status("finished" if self.finished else "running")
        if total % o.log_every == 0:
            self.log.info("step %d: %.2f steps/s, rss %.0f MiB, %d frames (%.1f MiB)", total, self.rate(),
                          rss_megabytes(), len(self.frames.kept), self.frames.bytes / 2**20)
        self._beat()

    def _write_frames(self, current: bool, numbered: bool) -> None:
        image = self.studio.image()  # raises on NaN, before anything is written
        meta = {"version": __version__, "step": self.total,
                "settings": {**self.studio.config.to_full_dict(), "prompt": self.position.item.prompt}}
        try:
            if current:
                self.frames.write_current(image, meta)
            if numbered:
                self.frames.write_numbered(image, self.total, meta)
        except (OSError, ClipstudioError) as err:  # a full disk: keep running, say so
            self._error(f"cannot write a frame: {err}")

    def _checkpoint(self) -> None:
        if not all(torch.isfinite(p).all() for p in self.studio.generator.parameters()):
            raise ClipstudioError("the generator's parameters are not finite")
        state = {"format": FORMAT, "studio": self.studio.state_dict(), "position": self.position.to_dict(),
                 "step": self.total, "run_seconds": self.run_seconds, "saved": utc_now()}
        try:
            self.checkpoints.save(state, self.total)
        except Exception as err:  # a full disk (torch.save raises RuntimeError there): the last one stays
            self._error(f"cannot write a checkpoint: {one_line(err)}")

    def _recover(self, reason: str) -> None:
        """A bad step: back to the last checkpoint with a smaller lr; too many on one prompt skip it."""
        failing = self.position
        count = self.failures[failing.item.prompt] = self.failures.get(failing.item.prompt, 0) + 1
        self._error(f"step {self.total}: {reason}", log=False)
        restored = self.checkpoints.load(self._restore)
        if restored is None:  # nothing to go back to: start the item afresh
            self.studio = self._build(failing.item)
            self.position = dataclasses.replace(failing, item_step=0, searched=False)
        if count >= self.options.max_failures:
            self.log.warning("step %d: %s; %d failures on '%s': skipping to the next prompt",
                             self.total, reason, count, failing.item.prompt)
            self.position = dataclasses.replace(failing, lr_scale=1.0)
            self.failures.pop(failing.item.prompt, None)
            self._advance()
            return self._write_status("running")
        scale = failing.lr_scale * self.options.lr_decay
        self.position.lr_scale = scale
        self.studio.config = dataclasses.replace(self.studio.config, lr=self.position.item.config(scale).lr)
        self.log.warning("%s; back to the checkpoint of step %d, lr x%.3g (failure %d of %d on this prompt)",
                         self.last_error["message"], self.total, scale, count, self.options.max_failures)
        self._write_status("running")

    def _error(self, message: str, log: bool = True) -> None:
        self.last_error = {"time": utc_now(), "step": self.total, "message": message}
        if log:
            self.log.warning(message)

    # -- reporting -------------------------------------------------------------------------------------
    def rate(self) -> float:
        """Steps per second over the last steps."""
        times = self.step_times
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0

    def status(self, state: str) -> dict[str, Any]:
        position, playlist = self.position, self.playlist
        return {"state": state, "prompt": position.item.prompt, "guiding": [[p.text, round(p.weight, 4)]
                for p in (self.applied or [])], "step": self.total, "item": position.index + 1,
                "items": len(playlist.items) if playlist else None, "queued_item": position.queued,
                "item_step": position.item_step, "item_steps": position.item.steps, "passes": position.passes,
                "steps_per_second": round(self.rate(), 3), "uptime_seconds": round(time.time() - self.started, 1),
                "run_seconds": round(self.run_seconds, 1), "last_error": self.last_error,
                "lr": self.studio.config.lr, "queue": len(self.queue), "rss_mb": round(rss_megabytes(), 1),
                "frames": len(self.frames.kept), "frames_mb": round(self.frames.bytes / 2**20, 2),
                "pid": os.getpid(), "updated": utc_now()}

    def _write_status(self, state: str) -> None:
        try:
            write_json(self.folder / STATUS, self.status(state))
        except (OSError, ClipstudioError) as err:
            self.last_error = {"time": utc_now(), "step": self.total, "message": f"cannot write the status: {err}"}

    def _beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_beat >= 1.0:
            touch(self.folder / STATE / HEARTBEAT, f"{os.getpid()} {self.total}\n")
            self.last_beat = now

    # -- the loop --------------------------------------------------------------------------------------
    def run(self, max_steps: int | None = None) -> str:
        """Step until stopped (:attr:`stop_requested`), finished, or ``max_steps`` more steps; then
        checkpoint. Returns ``"finished"`` or ``"stopped"``."""
        done = 0
        while not (self.stop_requested or self.finished or (max_steps is not None and done >= max_steps)):
            self.step()
            done += 1
        return self.close()

    def close(self) -> str:
        state = "finished" if self.finished else "stopped"
        try:
            self._checkpoint()
        except ClipstudioError as err:  # never checkpoint a broken state: the last good one stays
            self.log.warning("not checkpointed at exit: %s", err)
        self._write_status(state)
        self.log.info("step %d: %s; checkpointed", self.total, state)
        return state


def setup_logging(folder: str | os.PathLike, filename: str = "live.log") -> logging.Logger:
    """The live logger: one line per event to stderr and to a rotating log file in the run's folder (at
    most 4 MiB, so the disk never fills)."""
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.INFO)
    for handler in [h for h in log.handlers if getattr(h, "_clipstudio_live", False)]:
        log.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    handlers = [logging.StreamHandler(sys.stderr),
                logging.handlers.RotatingFileHandler(Path(folder) / filename, maxBytes=2**20, backupCount=3)]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._clipstudio_live = True
        log.addHandler(handler)
    log.propagate = False
    return log


def run_worker(playlist: str | os.PathLike, folder: str | os.PathLike, options: LiveOptions | None = None,
               threads: int = 0, max_steps: int | None = None) -> int:
    """The worker process: SIGTERM or SIGINT finish the step, checkpoint and return 0."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    log = setup_logging(folder)
    if threads:
        torch.set_num_threads(threads)
    runner = LiveRunner(playlist, folder, options, log)

    def request_stop(signum, frame):
        runner.stop_requested = True
        log.info("%s: stopping after this step", signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    runner.start()
    runner.run(max_steps)
    return 0
