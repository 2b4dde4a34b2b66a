"""Union evaluation: three separate AutoAttack runs against ramptool's evaluation, per norm and as the union
cascade, on the same points in one run.

    .venv/bin/python bench/eval.py [--n 200] [--ckpt CKPT] [--version fast|standard] [--steps 100]
                                   [--threads 1] [--device cpu] [--seed 0] [--skip-autoattack]

baseline   pyautoattack, one fast (or standard) AutoAttack per norm on every correctly classified point: what
           RAMP and E-AT report, and what `eval union --attack autoattack` runs
full       ramptool's default: the same attacks (APGD-CE + APGD-T, AutoAttack's settings per norm) on its own
           APGD, norm by norm; exact per-norm numbers
cascade    `eval union --union-only`: every run only on the points still robust in every norm, each round's
           norms together, a point leaving all of them once one breaks it

Prints each one's accuracies, seconds (wall and CPU: with one thread on a machine shared with other jobs, CPU time
is the steadier measure) and the images it sent forward and backward through the model, whether
the cascade's union flags equal the full evaluation's point by point, and the ratios. By default it evaluates
the shipped l∞-AT Fashion-MNIST model (recipes/checkpoints/fmnist-linf-at.safetensors), where most of the
work is on robust points. Times on a shared machine are noise; read the ratios of this one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ramptool.checkpoints.loading import load_checkpoint
from ramptool.data.datasets import load_split
from ramptool.evaluation.flags import union_flags
from ramptool.evaluation.union import FLAGS_FILE, evaluate_union
from ramptool.threat import DEFAULT_EPS

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "recipes" / "checkpoints" / "fmnist-linf-at.safetensors"
NORMS = ["linf", "l2", "l1"]


def read_flags(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(folder / FLAGS_FILE), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys() if "/" not in name}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="test points (the first N)")
    parser.add_argument("--ckpt", default=str(SHIPPED), help="checkpoint or run folder to evaluate")
    parser.add_argument("--version", choices=["fast", "standard"], default="fast")
    parser.add_argument("--steps", type=int, default=100, help="ramptool's APGD iterations (AutoAttack: 100)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default). On a CPU shared with other jobs, more threads "
                             "than free cores spin against each other and run many times slower")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-autoattack", action="store_true", help="only ramptool's full and cascade runs")
    parser.add_argument("--out", default="runs/bench-eval", help="where the flags of each evaluation go")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    model, metadata = load_checkpoint(args.ckpt, device=args.device)
    x, y = load_split(metadata["dataset"], "test", subset=args.n).tensors()
    eps = DEFAULT_EPS[metadata["dataset"]]
    print(f"{args.ckpt}: {len(y)} {metadata['dataset']} points, eps {eps}, {args.version}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")

    settings = dict(version=args.version, seed=args.seed, batch_size=args.batch_size)
    plans = {"baseline": dict(attack="autoattack"), "full": dict(steps=args.steps),
             "cascade": dict(steps=args.steps, union_only=True)}
    if args.skip_autoattack:
        del plans["baseline"]
    reports, wall, cpu = {}, {}, {}
    for name, options in plans.items():
        folder = Path(args.out) / name
        (folder / FLAGS_FILE).unlink(missing_ok=True)
        started, cpu_started = time.perf_counter(), time.process_time()
        reports[name] = evaluate_union(model, x, y, NORMS, eps, out_dir=folder, **settings, **options)
        wall[name], cpu[name] = time.perf_counter() - started, time.process_time() - cpu_started
        print(f"  {name} done in {wall[name]:.1f} s ({cpu[name]:.1f} s of CPU)", flush=True)

    print(f"\n{'':9}{'clean':>7}" + "".join(f"{n:>7}" for n in NORMS) + f"{'union':>7}{'seconds':>9}{'CPU s':>8}"
          f"{'forward':>10}{'backward':>10}  seconds per norm")
    for name, report in reports.items():
        accuracy, passes = report["accuracy"], report["passes"]
        cells = "".join(f"{('≤' if n in report['upper_bounds'] else '') + format(100 * accuracy[n], '.1f'):>7}"
                        for n in NORMS)
        forward = sum(passes[n]["forward"] for n in NORMS)
        backward = sum(passes[n]["backward"] for n in NORMS)
        per_norm = "/".join(f"{report['seconds'][n]:.0f}" for n in NORMS)
        print(f"{name:9}{100 * accuracy['clean']:>7.1f}{cells}{100 * accuracy['union']:>7.1f}{wall[name]:>9.1f}"
              f"{cpu[name]:>8.1f}{forward:>10}{backward:>10}  {per_norm}")

    flags = {name: read_flags(Path(args.out) / name) for name in ("full", "cascade")}
    same = torch.equal(union_flags(flags["full"], NORMS), union_flags(flags["cascade"], NORMS))
    print(f"\ncascade union flags {'identical to' if same else 'DIFFERENT from'} the full evaluation's, point by "
          f"point ({100 * reports['cascade']['accuracy']['union']:.1f}%)")

    def ratio(slow: str, fast: str, kind: str | None = None) -> str:
        if kind is None:
            return f"{wall[slow] / wall[fast]:.2f}x time ({cpu[slow] / cpu[fast]:.2f}x CPU time)"
        total = {name: sum(reports[name]["passes"][n][kind] for n in NORMS) for name in (slow, fast)}
        return f"{total[slow] / total[fast]:.2f}x {kind} passes"

    print(f"full / cascade: {ratio('full', 'cascade')}, {ratio('full', 'cascade', 'forward')}, "
          f"{ratio('full', 'cascade', 'backward')}")
    if "baseline" in reports:
        gap = 100 * (reports["cascade"]["accuracy"]["union"] - reports["baseline"]["accuracy"]["union"])
        print(f"three AutoAttack runs / cascade: {ratio('baseline', 'cascade')}, "
              f"{ratio('baseline', 'cascade', 'forward')}, {ratio('baseline', 'cascade', 'backward')}; "
              f"union {gap:+.1f} points against AutoAttack's")
        print(f"three AutoAttack runs / full: {ratio('baseline', 'full')}, {ratio('baseline', 'full', 'forward')}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
