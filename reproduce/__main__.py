"""``python -m reproduce`` (``make reproduce``): run the reproduction and write its RESULTS page.

    torchrun --standalone --nproc_per_node 2 -m reproduce  # make reproduce -> runs/reproduce, docs/RESULTS.md
    python -m reproduce                  # the same in one process
    python -m reproduce --extended       # adds RAMP's other pairings and lambdas, and the from-scratch runs
    python -m reproduce --quick          # a smoke run of the pipeline -> runs/reproduce-quick/RESULTS.md
    python -m reproduce --paper --evidence docs/evidence/reproduce-paper  # the paper's budget, across machines

Resumable: run it again after an interruption and it continues where it stopped; finished training runs and
evaluations are reused, so regenerating the page after a code change to the report alone takes seconds.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from ramptool.runtime import distributed
from ramptool.runtime.device import resolve_device
from reproduce import investigate, results
from reproduce.jobs import JobLog, checkpoint_key
from reproduce.plan import EXTENDED, FULL, PAPER, QUICK, START
from reproduce.runner import run

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The short commit hash of the code, with '-dirty' when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few methods, tiny budgets")
    parser.add_argument("--extended", action="store_true",
                        help="also RAMP's other pairings and lambdas, and the from-scratch runs "
                             "(about 80 more minutes on 2 CPU cores)")
    parser.add_argument("--paper", action="store_true",
                        help="the paper's fine-tuning budget: 3 epochs over 50,000 points (1,173 steps), with "
                             "learning curves on validation points")
    parser.add_argument("--out", help="run folder (default runs/reproduce, or runs/reproduce-quick)")
    parser.add_argument("--results", help="the page to write (default docs/RESULTS.md, or OUT/RESULTS.md)")
    parser.add_argument("--start", default=str(START), help="the l∞-AT checkpoint to fine-tune")
    parser.add_argument("--evidence", help="a folder of saved results (no weights) to continue from, kept up to "
                                           "date after each model: a plan longer than one machine's sitting "
                                           "goes on elsewhere (make reproduce-paper: docs/evidence/reproduce-paper)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else PAPER if args.paper else EXTENDED if args.extended else FULL
    out = Path(args.out or ("runs/reproduce-quick" if args.quick else "runs/reproduce-paper" if args.paper
                            else "runs/reproduce"))
    page = Path(args.results or (out / "RESULTS.md" if args.quick or args.paper else ROOT / "docs" / "RESULTS.md"))
    started = time.perf_counter()
    where = distributed.setup(resolve_device(args.device))
    try:
        # relative to the checkout where it is inside it: a resumed run's saved --ckpt then matches in another checkout
        measured = run(budget, out, Path(checkpoint_key(Path(args.start))), args.device,
                       Path(args.evidence) if args.evidence else None)
        if where.is_main:
            launcher = (["torchrun", "--standalone", "--nproc_per_node", str(where.world_size)]
                        if distributed.launched() else ["python"])
            command = [*launcher, "-m", "reproduce", *(sys.argv[1:] if argv is None else argv)]
            provenance = {"command": shlex.join(command), "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
                          "root": str(out), "wall_minutes": (time.perf_counter() - started) / 60}
            written = results.write(measured, budget, provenance, JobLog(out / "jobs.jsonl").entries(), page,
                                    investigate.section() if not args.quick else None)
            print(f"wrote {written}")
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
