"""Union evaluation, full vs the union-only cascade, on the same points in one run.

    .venv/bin/python bench/eval.py [--n 100] [--attack autoattack|apgd] [--version fast|standard]
                                   [--ckpt RUN] [--threads 1] [--seed 0]

Full: every norm attacks every correctly classified point. Cascade (``--union-only``): each norm attacks only
the points still robust under the norms before it. Prints both union accuracies, the points each norm attacked,
the seconds per norm and the speedup. Without --ckpt it trains (once, then reuses) a small Fashion-MNIST CNN,
clean for one epoch on 6000 points (~30 s). Times on a shared machine are noise; read the ratio.

With ramptool's APGD (deterministic per point) the two unions must be identical. AutoAttack draws its random
starts per batch, so a point attacked in a smaller batch gets another start; borderline points can then flip
and the two unions may differ by a point or two: the bench reports any difference and the points behind it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ramptool.checkpoint import MODEL_FILE, load_checkpoint
from ramptool.data import load_split
from ramptool.evaluation.union import evaluate_union
from ramptool.threat import DEFAULT_EPS
from ramptool.trainer import TrainConfig, train

NORMS = ["linf", "l2", "l1"]


def model_folder(ckpt: str | None, out: Path) -> Path:
    if ckpt is not None:
        return Path(ckpt)
    folder = out / "clean-model"
    if not (folder / MODEL_FILE).is_file():
        started = time.perf_counter()
        train(TrainConfig(out=str(folder), dataset="fashion-mnist", subset=6000, method="clean", optimizer="adam",
                          lr=1e-3, schedule="constant", epochs=1, progress=False, overwrite=True, device="cpu"))
        print(f"trained {folder} in {time.perf_counter() - started:.0f} s")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="Fashion-MNIST test points (the first N)")
    parser.add_argument("--attack", choices=["autoattack", "apgd"], default="autoattack")
    parser.add_argument("--version", choices=["fast", "standard"], default="fast")
    parser.add_argument("--steps", type=int, default=100, help="--attack apgd: iterations")
    parser.add_argument("--ckpt", help="checkpoint or run folder to evaluate instead of the bench model")
    parser.add_argument("--out", default="runs/bench-eval", help="where the bench model is kept")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default). On a CPU shared with other jobs, more threads "
                             "than free cores spin against each other and run many times slower")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    folder = model_folder(args.ckpt, Path(args.out))
    model, metadata = load_checkpoint(folder)
    x, y = load_split(metadata["dataset"], "test", subset=args.n).tensors()
    eps = DEFAULT_EPS[metadata["dataset"]]
    settings = dict(version=args.version, attack=args.attack, steps=args.steps, seed=args.seed, batch_size=500)
    print(f"{folder}: {len(y)} points, {args.attack}"
          f"{' ' + args.version if args.attack == 'autoattack' else f' {args.steps} steps'}, eps {eps}, "
          f"torch threads {torch.get_num_threads()}")

    reports = {}
    for name, union_only in (("full", False), ("cascade", True)):
        reports[name] = evaluate_union(model, x, y, NORMS, eps, union_only=union_only, **settings)
    full, cascade = reports["full"], reports["cascade"]

    print(f"\n{'':8}{'clean':>8}" + "".join(f"{n:>8}" for n in NORMS) + f"{'union':>8}   attacked (points)"
          f"{'':8}seconds")
    for name, report in reports.items():
        accuracy = report["accuracy"]
        cells = "".join(f"{('≤' if n in report['upper_bounds'] else '') + format(100 * accuracy[n], '.1f'):>8}"
                        for n in NORMS)
        attacked = "/".join(str(report["attacked"][n]) for n in NORMS)
        seconds = "/".join(f"{report['seconds'][n]:.1f}" for n in NORMS)
        print(f"{name:8}{100 * accuracy['clean']:>8.1f}{cells}{100 * accuracy['union']:>8.1f}   {attacked:>17}"
              f"{'':8}{seconds} (total {sum(report['seconds'].values()):.1f})")

    full_seconds, cascade_seconds = sum(full["seconds"].values()), sum(cascade["seconds"].values())
    same = full["accuracy"]["union"] == cascade["accuracy"]["union"]
    print(f"\nunion: full {100 * full['accuracy']['union']:.2f}%, cascade {100 * cascade['accuracy']['union']:.2f}% "
          f"-> {'identical' if same else 'DIFFERENT'}")
    print(f"time: full {full_seconds:.1f} s, cascade {cascade_seconds:.1f} s, "
          f"speedup {full_seconds / cascade_seconds:.2f}x "
          f"({sum(full['attacked'].values())} vs {sum(cascade['attacked'].values())} points attacked)")
    if not same:
        difference = round(abs(full["accuracy"]["union"] - cascade["accuracy"]["union"]) * len(y))
        print(f"{difference} point(s) differ: AutoAttack's random starts depend on the batch a point is in")
    return 0 if same or args.attack == "autoattack" else 1


if __name__ == "__main__":
    raise SystemExit(main())
