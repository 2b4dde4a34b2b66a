"""The default of ``--threads``: a RAMP training step of the shipped small CNN (APGD-10 l∞ and l1 at batch 128,
two train-mode forwards, one backward) with one thread per process (ramptool's default on a CPU) against torch's
default (one thread per core), on an idle machine and on a loaded one (a busy loop on every core).

    .venv/bin/python bench/threads.py [--steps 3] [--batch-size 128]

Each setting runs in a fresh process, in turn (1 thread, torch's default, 1 thread, ...), so a change in the
machine's load hits both alike. Absolute times on a shared machine are noise: read the ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

STEP = """
import sys, time, torch
threads = int(sys.argv[1])
if threads:
    torch.set_num_threads(threads)
from ramptool.checkpoints.loading import load_model
from ramptool.data.datasets import load_split
from ramptool.threat import DEFAULT_EPS
from ramptool.training.methods import RAMP, MethodContext
from ramptool.training.recipes import RECIPES_DIR

model = load_model(RECIPES_DIR / "checkpoints" / "fmnist-linf-at.safetensors")
x, y = load_split("fashion-mnist", "train", subset=int(sys.argv[3])).tensors()
method = RAMP(MethodContext(norms=["linf", "l2", "l1"], eps=dict(DEFAULT_EPS["fashion-mnist"]), pair=("linf", "l1"),
                            attack="apgd", attack_steps=10, attack_options={}, lam=0.5, pairing="kl",
                            pairing_options={}))
optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
times = []
for _ in range(int(sys.argv[2]) + 1):  # the first step warms up
    started = time.perf_counter()
    model.train()
    loss, _ = method.loss(model, x, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    times.append(time.perf_counter() - started)
print(torch.get_num_threads(), min(times[1:]))
"""


def spin(stop) -> None:
    while not stop.is_set():
        pass


def step_seconds(threads: int, steps: int, batch: int) -> tuple[int, float]:
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", STEP, str(threads), str(steps), str(batch)], capture_output=True,
                          text=True, check=True, env=env)
    used, seconds = done.stdout.split()
    return int(used), float(seconds)


def measure(label: str, steps: int, batch: int, rounds: int) -> None:
    results = {"1 thread": [], "torch's default": []}
    used = {}
    for _ in range(rounds):
        for name, threads in (("1 thread", 1), ("torch's default", 0)):
            used[name], seconds = step_seconds(threads, steps, batch)
            results[name].append(seconds)
    one, default = (statistics.median(results[name]) for name in results)
    default_threads = used["torch's default"]
    print(f"{label}: 1 thread {one * 1000:.0f} ms/step, torch's default ({default_threads} threads) "
          f"{default * 1000:.0f} ms/step: torch's default takes {default / one:.2f}x the time of 1 thread")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores, 1-minute load average {os.getloadavg()[0]:.1f} before the idle run")
    measure("idle", args.steps, args.batch_size, args.rounds)
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=spin, args=(stop,)) for _ in range(os.cpu_count() or 1)]
    for spinner in spinners:
        spinner.start()
    time.sleep(1)
    try:
        measure(f"loaded (a busy loop on each of the {len(spinners)} cores)", args.steps, args.batch_size,
                args.rounds)
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join()


if __name__ == "__main__":
    main()
