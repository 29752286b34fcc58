"""``clipstudio live PLAYLIST --out DIR [--serve HOST:PORT]``: the installation mode. A watchdog process
runs the loop in a worker process (restarted when it stalls or dies) and serves the web page."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import ClipstudioError
from ._options import add_dataclass_options, typed_settings

TOKEN_ENV = "CLIPSTUDIO_LIVE_TOKEN"
HELPS = {"frame_every": "write current.png every K steps", "numbered_every": "write a numbered frame every N steps",
         "keep_frames": "keep at most M numbered frames", "frames_budget_mb": "and at most this many MiB of them",
         "checkpoint_every": "checkpoint every N steps", "max_failures": "bad steps on one prompt before it is skipped",
         "lr_decay": "lr factor after each bad step", "poll_seconds": "how often the playlist file is checked",
         "settle_seconds": "a changed playlist is read once unchanged this long",
         "log_every": "a progress line every N steps", "history_keep": "loss history kept",
         "max_queue": "most prompts queued from the web page"}


def register(sub: argparse._SubParsersAction) -> None:
    from ..live.runner import LiveOptions

    parser = sub.add_parser("live", help="installation mode: play a playlist for days, with a web page")
    parser.add_argument("playlist", help="playlist YAML (read again whenever it changes)")
    parser.add_argument("--out", required=True, help="folder for frames, status, checkpoints and log")
    parser.add_argument("--serve", default=None, metavar="[HOST:]PORT",
                        help="serve the page, /status and POST /prompt (host default 127.0.0.1)")
    parser.add_argument("--token", default=None,
                        help=f"bearer token for POST /prompt (default: ${TOKEN_ENV}); needed beyond localhost")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for the worker (0: torch's default)")
    parser.add_argument("--stall-seconds", type=float, default=300.0, help="restart a worker with no step this long")
    parser.add_argument("--start-seconds", type=float, default=900.0, help="time a worker may take to load and search")
    parser.add_argument("--no-watchdog", action="store_true", help="run the loop in this process, unsupervised")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)  # tests and soak runs
    add_dataclass_options(parser, LiveOptions, helps=HELPS)
    parser.set_defaults(run=run)


def _worker_argv(args: argparse.Namespace, options) -> list[str]:
    """The same command as a worker, with every option spelled out."""
    argv = [sys.executable, "-m", "clipstudio.cli", "live", os.path.abspath(args.playlist),
            "--out", os.path.abspath(args.out), "--worker", "--threads", str(args.threads)]
    for name, value in vars(options).items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    if args.max_steps is not None:
        argv += ["--max-steps", str(args.max_steps)]
    return argv


def run(args: argparse.Namespace) -> int:
    from ..live.playlist import load_playlist
    from ..live.runner import LiveOptions, run_worker, setup_logging
    from ..live.store import STATE

    options = LiveOptions(**typed_settings(args, LiveOptions)).validate()
    if args.stall_seconds <= 0 or args.start_seconds <= 0:
        raise ClipstudioError("--stall-seconds and --start-seconds must be above 0")
    if args.worker:
        return run_worker(args.playlist, args.out, options, args.threads, args.max_steps)
    os.makedirs(args.out, exist_ok=True)
    has_checkpoint = os.path.isdir(os.path.join(args.out, STATE)) and any(
        name.startswith("checkpoint-") for name in os.listdir(os.path.join(args.out, STATE)))
    if not has_checkpoint:
        load_playlist(args.playlist)  # a bad playlist with nothing to resume: one line, exit 2, before any work
    server = _start_server(args, options) if args.serve else None
    try:
        if args.no_watchdog:
            return run_worker(args.playlist, args.out, options, args.threads, args.max_steps)
        from ..live.watchdog import Supervisor

        log = setup_logging(args.out, "watchdog.log")
        return Supervisor(_worker_argv(args, options), args.out, log, args.stall_seconds, args.start_seconds).run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


def _start_server(args: argparse.Namespace, options):
    from ..live.server import parse_address, start_server

    host, port = parse_address(args.serve)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    server = start_server(args.out, host, port, token, max_queue=options.max_queue)
    print(f"serving http://{server.url_host}:{server.server_address[1]}/", file=sys.stderr, flush=True)
    return server
