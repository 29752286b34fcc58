"""The watchdog: runs the live loop in a child process and restarts it when it exits with an error or
makes no step for ``stall_seconds`` (its heartbeat file stops changing). SIGTERM and SIGINT are passed on,
so the worker finishes its step and checkpoints; under systemd it also pings the service watchdog."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .store import HEARTBEAT, STATE

MAX_BACKOFF = 60.0
HEALTHY_SECONDS = 300.0  # a worker that ran this long resets the restart back-off


def notify(message: str) -> None:
    """Tell systemd (``Type=notify``, ``WatchdogSec=``) how the service is; nothing outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        pass


class Supervisor:
    """Keeps one worker (``worker_argv``) running in ``folder``."""

    def __init__(self, worker_argv: list[str], folder: str | os.PathLike, log: logging.Logger,
                 stall_seconds: float = 300.0, start_seconds: float = 900.0, stop_seconds: float = 120.0,
                 poll_seconds: float = 0.5):
        self.argv, self.heartbeat = list(worker_argv), Path(folder) / STATE / HEARTBEAT
        self.log, self.stall, self.start_grace = log, stall_seconds, start_seconds
        self.stop_seconds, self.poll = stop_seconds, poll_seconds
        self.stopping = False
        self.restarts = 0

    def _request_stop(self, signum, frame) -> None:
        self.stopping = True

    def run(self) -> int:
        """Supervise until stopped (exit 0) or the worker finishes its playlist (its exit code)."""
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _supervise(self) -> int:
        notify("READY=1")
        backoff = 1.0
        while not self.stopping:
            started = time.time()
            child = subprocess.Popen(self.argv)
            self.log.info("watchdog: worker %d started", child.pid)
            code = self._watch(child, started)
            if self.stopping or code == 0:
                return 0
            backoff = 1.0 if time.time() - started > HEALTHY_SECONDS else backoff
            self.log.warning("watchdog: worker %d %s; restarting in %.0f s", child.pid,
                             "stalled" if code is None else f"exited with code {code}", backoff)
            self.restarts += 1
            self._sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
        return 0

    def _watch(self, child: subprocess.Popen, started: float) -> int | None:
        """The worker's exit code, or None when it stalled and was killed."""
        while True:
            code = child.poll()
            if code is not None:
                return code
            if self.stopping:
                self.log.info("watchdog: stopping worker %d", child.pid)
                return self._end(child, self.stop_seconds)
            if self._stalled(started):
                self.log.warning("watchdog: worker %d made no step for %.0f s", child.pid, self.stall)
                self._end(child, min(10.0, self.stall))
                return None
            notify("WATCHDOG=1")
            time.sleep(self.poll)

    def _stalled(self, started: float) -> bool:
        try:
            beat = self.heartbeat.stat().st_mtime
        except OSError:
            beat = 0.0
        if beat < started:  # no sign of life from this worker yet: models load, a search runs
            return time.time() - started > self.start_grace
        return time.time() - beat > self.stall

    @staticmethod
    def _end(child: subprocess.Popen, grace: float) -> int:
        """SIGTERM (the worker checkpoints), then SIGKILL after ``grace`` seconds (SIGCONT for a stopped one)."""
        for sig in (signal.SIGTERM, signal.SIGCONT):
            try:
                child.send_signal(sig)
            except OSError:
                pass
        try:
            return child.wait(grace)
        except subprocess.TimeoutExpired:
            child.kill()
            return child.wait()

    def _sleep(self, seconds: float) -> None:
        end = time.time() + seconds
        while not self.stopping and time.time() < end:
            notify("WATCHDOG=1")
            time.sleep(min(self.poll, end - time.time()) if end > time.time() else 0)
