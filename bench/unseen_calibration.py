"""The sweep behind the Fashion-MNIST budgets of the unseen adversaries (not a speed benchmark).

For every adversary and every budget of its grid, the accuracy of the shipped l∞-AT small CNN under that
adversary with the evaluation settings (100 steps, Sparse-RS 1000 queries) on a validation split: the LAST
``--n`` Fashion-MNIST training points, never a test point. The shipped l∞-AT model trains on the first 50,000
training points and the fine-tuning recipes on the first 20,000, so no model of the README table trained on them
(the model's clean accuracy there is printed next to its test accuracy). The budget kept
for each adversary is the grid value whose accuracy is closest to ``--target`` (0.5: neither trivial nor
hopeless for the model being fine-tuned). Run:

    .venv/bin/python bench/unseen_calibration.py --n 300     # ~15 min on one busy CPU core
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import ramptool
from ramptool.data.datasets import load_split
from ramptool.evaluation.unseen import ADVERSARIES, DEFAULT_QUERIES, DEFAULT_STEPS, evaluate_unseen

CHECKPOINT = "recipes/checkpoints/fmnist-linf-at.safetensors"
GRIDS = {
    "l0": [5, 9, 18, 36],
    "fog": [32.0, 64.0, 128.0, 256.0, 512.0],
    "snow": [0.03125, 0.0625, 0.125, 0.25, 0.5],
    "gabor": [7.5, 15.0, 30.0, 60.0],
    "elastic": [0.125, 0.25, 0.5, 1.0, 2.0],
    "jpeg-linf": [0.125, 0.5, 1.0, 2.0, 4.0],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="validation points (the last N training points)")
    parser.add_argument("--target", type=float, default=0.5, help="accuracy the chosen budget comes closest to")
    parser.add_argument("--adversaries", default=",".join(ADVERSARIES), help="which adversaries to sweep")
    parser.add_argument("--grid", action="append", default=[], help="budgets to try instead of the built-in grid, "
                        "e.g. --grid fog=40,48 (repeat per adversary)")
    parser.add_argument("--out", default=None, help="write the sweep as JSON here")
    args = parser.parse_args()
    grids = dict(GRIDS)
    for entry in args.grid:
        name, values = entry.split("=", 1)
        grids[name] = [float(value) for value in values.split(",")]
    torch.set_num_threads(1)
    model = ramptool.load_model(CHECKPOINT)
    train = load_split("fashion-mnist", "train")
    x, y = train.tensors(torch.arange(len(train) - args.n, len(train)))
    test_x, test_y = load_split("fashion-mnist", "test", subset=args.n).tensors()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
        clean_test = (model(test_x).argmax(1) == test_y).float().mean().item()
    print(f"validation: the last {args.n} training points; clean accuracy {100 * clean:.1f} "
          f"(first {args.n} test points: {100 * clean_test:.1f})")
    sweep, chosen = {}, {}
    for name in args.adversaries.split(","):
        sweep[name] = {}
        for budget in grids[name]:
            started = time.perf_counter()
            report = evaluate_unseen(model, x, y, [name], {name: budget}, steps=DEFAULT_STEPS,
                                     queries=DEFAULT_QUERIES, seed=0)
            sweep[name][budget] = report["accuracy"][name]
            print(f"{name:10s} {budget:>9g}  {100 * sweep[name][budget]:5.1f}  "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        chosen[name] = min(sweep[name], key=lambda b: abs(sweep[name][b] - args.target))
        print(f"{name}: budget {chosen[name]:g} ({100 * sweep[name][chosen[name]]:.1f})", flush=True)
    print("chosen:", ", ".join(f"{name}={budget:g}" for name, budget in chosen.items()))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"n": args.n, "clean": clean, "clean_test": clean_test, "sweep": sweep, "chosen": chosen},
                      handle, indent=2)


if __name__ == "__main__":
    main()
