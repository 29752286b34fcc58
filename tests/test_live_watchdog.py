"""The watchdog on a stand-in worker (a few lines of Python, no models): a stalled worker is killed and
started again, a crashed one restarted, a finished one ends the watch, and a stop is passed on."""
import logging
import sys
import threading
import time

from clipstudio.live.watchdog import Supervisor

# Beats like the live loop (state/heartbeat), in the way each start's BEHAVIOUR line says:
# "stall" beats twice then hangs (ignoring SIGTERM), "crash" exits 3, "finish" beats then exits 0,
# "forever" beats until SIGTERM, then exits 0.
WORKER = """
import os, signal, sys, time
folder = sys.argv[1]
os.makedirs(folder + "/state", exist_ok=True)
starts = open(folder + "/starts", "a+"); starts.write("x"); starts.flush(); starts.seek(0)
behaviour = sys.argv[2].split(",")[len(starts.read()) - 1]
stop = []
signal.signal(signal.SIGTERM, (lambda *a: None) if behaviour == "stall" else (lambda *a: stop.append(1)))
if behaviour == "crash":
    sys.exit(3)
for beat in range(10**6):
    if stop or (behaviour == "finish" and beat == 3):
        sys.exit(0)
    if behaviour != "stall" or beat < 2:
        open(folder + "/state/heartbeat", "w").write(str(beat))
    time.sleep(0.1)
"""


def supervise(tmp_path, behaviours, stop_after=None):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    argv = [sys.executable, str(script), str(tmp_path), ",".join(behaviours)]
    supervisor = Supervisor(argv, tmp_path, logging.getLogger("clipstudio.live.test"), stall_seconds=1.0,
                            start_seconds=20.0, stop_seconds=10.0, poll_seconds=0.05)
    if stop_after:
        threading.Timer(stop_after, lambda: setattr(supervisor, "stopping", True)).start()
    began = time.time()
    code = supervisor.run()
    return code, supervisor, len((tmp_path / "starts").read_text()), time.time() - began


def test_a_stalled_worker_is_restarted(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="clipstudio.live.test"):
        code, supervisor, starts, _ = supervise(tmp_path, ["stall", "finish"])
    assert code == 0 and starts == 2 and supervisor.restarts == 1
    assert any("made no step for 1 s" in r.getMessage() for r in caplog.records)


def test_a_crashed_worker_is_restarted(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="clipstudio.live.test"):
        code, supervisor, starts, _ = supervise(tmp_path, ["crash", "finish"])
    assert code == 0 and starts == 2
    assert any("exited with code 3; restarting" in r.getMessage() for r in caplog.records)


def test_a_stop_is_passed_on_and_exits_0(tmp_path):
    code, supervisor, starts, seconds = supervise(tmp_path, ["forever"], stop_after=1.5)
    assert code == 0 and starts == 1 and supervisor.restarts == 0 and seconds < 8
