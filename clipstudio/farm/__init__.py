"""Render farm (issue 17): a job file of prompts x seeds x recipes x backends, run on Ray actors or a local
process pool, resumable through a JSONL manifest and outputs that carry their job's key.

- :mod:`.jobs`: job files, sweep expansion, job keys and output paths;
- :mod:`.backends`: what a job runs (``generate``, ``diffuse``), one registry entry each;
- :mod:`.manifest`: the append-only JSONL record of every attempt;
- :mod:`.executors`: worker pools (Ray actors, or local processes) that keep their models loaded;
- :mod:`.driver`: scheduling, retries, skipping finished jobs, the progress bar;
- :mod:`.best`: keep the best K per prompt by CLIP score and write a contact sheet.
"""
from .driver import BatchSummary, run_batch
from .jobs import Job, JobFile, load_job_file, parse_job_file

__all__ = ["BatchSummary", "Job", "JobFile", "load_job_file", "parse_job_file", "run_batch"]
