"""`make demo` on an idle machine and on a loaded one (a busy loop on every core), in turn, with the defaults a
user gets (one torch thread per process on a CPU): the loaded run should take at most about twice the idle one
(a busy loop takes half of each core; torch's default of one thread per core made it 10-20x before).

    .venv/bin/python bench/demo_load.py [--n-eval 100]

Each demo runs from scratch in a temporary folder (its fine-tunes are not reused).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time


def spin(stop) -> None:
    while not stop.is_set():
        pass


def demo_seconds(n_eval: int) -> float:
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}  # the user's defaults
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ramptool.workflows.demo", "--n-eval", str(n_eval)], cwd=folder,
                       env=env, check=True, capture_output=True)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-eval", type=int, default=100)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores, 1-minute load average {os.getloadavg()[0]:.1f} before the idle run",
          flush=True)
    idle = demo_seconds(args.n_eval)
    print(f"idle: {idle / 60:.1f} min", flush=True)
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=spin, args=(stop,)) for _ in range(os.cpu_count() or 1)]
    for spinner in spinners:
        spinner.start()
    try:
        loaded = demo_seconds(args.n_eval)
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join()
    print(f"loaded (a busy loop on each of the {len(spinners)} cores): {loaded / 60:.1f} min, "
          f"{loaded / idle:.2f}x the idle run")


if __name__ == "__main__":
    main()
