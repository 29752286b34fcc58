"""``clipstudio batch JOBS.yaml --out DIR``: a job file of prompts x seeds x recipes x backends on Ray (a local
instance, or a cluster with ``--address``) or, without Ray, a local process pool. Resumable: rerunning
finishes only what is missing."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("batch", help="run a job file (prompts x seeds x recipes x backends) on Ray or locally",
                            description=__doc__)
    parser.add_argument("jobs", help="YAML job file (see clipstudio.farm.jobs; smallest: prompts: [...] and seeds: [...])")
    parser.add_argument("--out", required=True, help="output folder: PNGs, manifest.jsonl, best/ and contact.png")
    parser.add_argument("--address", default=None,
                        help="join a Ray cluster: auto (this node's), HOST:PORT, or ray://HOST:PORT (Ray client)")
    parser.add_argument("--gpus-per-job", type=float, default=0.0, help="GPUs each worker holds (0.5: two per GPU)")
    parser.add_argument("--workers", type=int, default=None,
                        help="workers (default: one per core here, or as many as the cluster's CPUs or GPUs hold)")
    parser.add_argument("--executor", choices=("auto", "ray", "local"), default="auto",
                        help="ray, local processes, or auto: Ray when installed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--retries", type=int, default=None, help="attempts after the first (default: the file's, or 2)")
    parser.add_argument("--keep", type=int, default=None, help="keep the best K per prompt (default: the file's rank.keep)")
    parser.add_argument("--rank-clip", default=None, help="CLIP model that scores and ranks the outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ClipstudioError
    from ..farm import load_job_file, run_batch
    from ..farm.best import keep_best
    from ..farm.executors import make_executor, ray_available

    job_file = load_job_file(args.jobs)
    if args.retries is not None:
        if args.retries < 0:
            raise ClipstudioError(f"--retries must be >= 0, got {args.retries}")
        job_file.retries = args.retries
    if args.rank_clip:
        job_file.rank_clip = args.rank_clip
    keep = job_file.keep if args.keep is None else args.keep
    if keep < 0:
        raise ClipstudioError(f"--keep must be >= 0, got {keep}")
    executor = make_executor(args.executor, args.workers, args.threads, args.address, args.gpus_per_job)
    if args.executor == "auto" and not ray_available():
        print("ray is not installed (pip install 'clipstudio[farm]'): running a local process pool", file=sys.stderr)
    summary = run_batch(job_file, args.out, executor, workers=args.workers, progress=not args.quiet)
    print(f"{args.out}: {summary.line()} [{executor.name}]")
    for key, error in list(summary.errors.items())[:5]:
        print(f"  failed {key}: {error}")
    if keep:
        ranked = keep_best(job_file, args.out, keep)
        print(f"kept the best {keep} of {len(ranked['ranking'])} prompts by {ranked['clip']} in "
              f"{args.out}/best/; contact sheet {args.out}/contact.png")
    return 1 if summary.failed else 0
