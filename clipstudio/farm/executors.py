"""Worker pools for the farm. Each has numbered slots, each slot one long-lived worker (a Ray actor or a local
process) that runs one job at a time and keeps its models loaded between jobs. The driver submits a job to a
free slot and waits for events ``(slot, result)``; a result of None means the worker died holding the job: the
pool has already started a fresh worker in that slot, and the driver decides whether the job runs again.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
from multiprocessing.connection import wait as wait_ready
from typing import Any, Protocol

from ..errors import ClipstudioError, missing_extra
from ..resources import release_freed_memory
from .backends import execute

Event = tuple[int, dict[str, Any] | None]


class Executor(Protocol):
    """What the driver needs from a pool."""

    name: str

    def start(self, workers: int) -> int: ...  # returns the slots started
    def submit(self, slot: int, job: dict[str, Any]) -> None: ...
    def wait(self, timeout: float | None = None) -> list[Event]: ...
    def close(self) -> None: ...


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


# --------------------------------------------------------------------------- local processes

def _local_worker(conn: Any, threads: int) -> None:
    """A pool process: jobs in, results out, until the driver closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's; it closes the pool
    _set_threads(threads)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        conn.send(execute(job))
        release_freed_memory()  # a pool process lives for the whole farm: one job's memory must not stay


class LocalPool:
    """Processes on this machine (spawned, so no forked torch state), one job at a time each."""

    name = "local processes"

    def __init__(self, workers: int | None = None, threads: int | None = None):
        self.workers = workers or os.cpu_count() or 1
        self.threads = threads
        self._context = mp.get_context("spawn")
        self._procs: dict[int, Any] = {}
        self._conns: dict[int, Any] = {}
        self._busy: set[int] = set()

    def _spawn(self, slot: int) -> None:
        parent, child = self._context.Pipe()
        threads = self.threads or max(1, (os.cpu_count() or 1) // self.workers)
        proc = self._context.Process(target=_local_worker, args=(child, threads), daemon=True,
                                     name=f"clipstudio-farm-{slot}")
        proc.start()
        child.close()
        self._procs[slot], self._conns[slot] = proc, parent

    def start(self, workers: int) -> int:
        self.workers = max(1, min(self.workers, workers))
        for slot in range(self.workers):
            self._spawn(slot)
        return self.workers

    def submit(self, slot: int, job: dict[str, Any]) -> None:
        try:
            self._conns[slot].send(job)
        except (BrokenPipeError, OSError):
            pass  # the worker is dead; wait() sees its sentinel and reports the job lost
        self._busy.add(slot)

    def wait(self, timeout: float | None = None) -> list[Event]:
        by_handle = {self._conns[s]: s for s in self._busy}
        by_handle.update({self._procs[s].sentinel: s for s in self._procs})
        events: list[Event] = []
        for handle in wait_ready(list(by_handle), timeout):
            slot = by_handle[handle]
            if any(e[0] == slot for e in events):
                continue
            result = self._receive(slot)
            if result is not None or not self._procs[slot].is_alive():
                if result is None:
                    self._replace(slot)
                if slot in self._busy:
                    self._busy.discard(slot)
                    events.append((slot, result))
        return events

    def _receive(self, slot: int) -> dict[str, Any] | None:
        conn = self._conns[slot]
        try:
            return conn.recv() if slot in self._busy and conn.poll() else None
        except (EOFError, OSError):
            return None

    def _replace(self, slot: int) -> None:
        self._procs[slot].join(timeout=1)
        self._conns[slot].close()
        self._spawn(slot)

    def close(self) -> None:
        for slot, conn in self._conns.items():
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs.values():
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._procs.clear()
        self._conns.clear()
        self._busy.clear()


# --------------------------------------------------------------------------- Ray actors

class FarmWorker:
    """The Ray actor: its models load on its first job and stay for the rest."""

    def __init__(self, threads: int):
        import ray

        _set_threads(threads)
        self.device = "cuda" if ray.get_gpu_ids() else None

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        return execute(job, self.device)


def import_ray(what: str = "clipstudio batch on Ray"):
    """The ``ray`` module, or the one-line error naming the ``farm`` extra."""
    if not _has_module("ray"):
        raise missing_extra("ray", "farm", what)
    import ray

    return ray


class RayPool:
    """Ray actors: on a local Ray started here (no address), or on the cluster at ``address``."""

    name = "Ray"

    def __init__(self, workers: int | None = None, threads: int | None = None, address: str | None = None,
                 gpus_per_job: float = 0.0, object_store_mb: int = 256):
        self.ray = import_ray()
        self.workers, self.threads, self.address = workers, threads, address
        self.gpus_per_job = gpus_per_job
        self.object_store_mb = object_store_mb
        self._started_ray = False
        self._actor_class = None
        self._actors: dict[int, Any] = {}
        self._refs: dict[int, Any] = {}

    def _init(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return  # a cluster someone else started in this process (a test, a notebook): use it, leave it
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if self.address:
            options["address"] = self.address
            if self.address.startswith("ray://") and not _has_module("grpc"):
                raise ClipstudioError("ray:// addresses go through the Ray client: pip install 'ray[client]'")
        else:
            options["num_cpus"] = self.workers or os.cpu_count() or 1
            options["object_store_memory"] = self.object_store_mb * 1024 * 1024
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ClipstudioError(f"cannot start or join Ray at {self.address or 'this machine'}: "
                                  f"{str(err).strip().splitlines()[0] if str(err).strip() else err}") from None
        self._started_ray = True

    def _cluster_slots(self) -> int:
        resources = self.ray.cluster_resources()
        if self.gpus_per_job:
            return max(1, int(resources.get("GPU", 0) / self.gpus_per_job))
        return max(1, int(resources.get("CPU", 1)))

    def _spawn(self, slot: int) -> None:
        if self._actor_class is None:
            self._actor_class = self.ray.remote(FarmWorker)
        actor = self._actor_class.options(num_cpus=1, num_gpus=self.gpus_per_job, max_restarts=0)
        self._actors[slot] = actor.remote(self.threads or 1)

    def start(self, workers: int) -> int:
        self._init()
        slots = min(self.workers or self._cluster_slots(), workers)
        if self.gpus_per_job and not self.ray.cluster_resources().get("GPU"):
            raise ClipstudioError("--gpus-per-job needs GPUs, and this Ray cluster has none")
        for slot in range(max(1, slots)):
            self._spawn(slot)
        return len(self._actors)

    def submit(self, slot: int, job: dict[str, Any]) -> None:
        self._refs[slot] = self._actors[slot].run.remote(job)

    def wait(self, timeout: float | None = None) -> list[Event]:
        if not self._refs:
            return []
        ray = self.ray
        slot_of = {ref: slot for slot, ref in self._refs.items()}
        ready, _ = ray.wait(list(slot_of), num_returns=1, timeout=timeout)
        events: list[Event] = []
        for ref in ready:
            slot = slot_of[ref]
            del self._refs[slot]
            try:
                events.append((slot, ray.get(ref)))
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ObjectLostError):
                ray.kill(self._actors[slot], no_restart=True)
                self._spawn(slot)  # the lost job may run on any node, in this fresh actor or another
                events.append((slot, None))
        return events

    def close(self) -> None:
        for actor in self._actors.values():
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors.clear()
        self._refs.clear()
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def ray_available() -> bool:
    """True when the ``farm`` extra (Ray) is installed."""
    return _has_module("ray")


def make_executor(kind: str = "auto", workers: int | None = None, threads: int | None = None,
                  address: str | None = None, gpus_per_job: float = 0.0) -> Executor:
    """``ray`` (Ray actors), ``local`` (processes) or ``auto``: Ray when it is installed, else processes."""
    if kind not in ("auto", "ray", "local"):
        raise ClipstudioError(f"unknown executor '{kind}'; choose auto, ray or local")
    if gpus_per_job < 0:
        raise ClipstudioError(f"--gpus-per-job must be >= 0, got {gpus_per_job}")
    if workers is not None and workers < 1:
        raise ClipstudioError(f"--workers must be at least 1, got {workers}")
    if kind == "local" or (kind == "auto" and not address and not gpus_per_job and not ray_available()):
        if address or gpus_per_job:
            raise ClipstudioError("--address and --gpus-per-job need the Ray executor")
        return LocalPool(workers, threads)
    return RayPool(workers, threads, address, gpus_per_job)
