"""Calibrate the Fashion-MNIST threat model on validation points (never test points).

The question: at which eps do the three norms trade off the way CIFAR-10's standard budgets do? There, an
l∞-AT model is weakest against l1, one epoch of fine-tuning on l1 examples alone costs a large part of its l∞
robustness (RAMP's Fig. 1), and no single-norm fine-tune dominates the union. For every l∞ eps of the grid this
script trains an l∞-AT small CNN on the first 50,000 training points (the fmnist-linf-at recipe's settings), or
takes one given with ``--start``, fine-tunes it for one epoch on l1 examples alone at every l1 eps of the grid
and on l2 alone (the fine-tuning recipes' settings: 20,000 points, Adam 5e-4), and measures clean, l∞, l2 and
l1 accuracy with ramptool's default (AutoAttack-grade) evaluation on validation points (``splits``).
``--pair-matrix`` also trains l2-AT and l1-AT models like the l∞-AT one and applies the key-pair rule
(docs/METHOD.md#the-key-tradeoff-pair) to the 3x3 matrix.

    .venv/bin/python -m reproduce.calibrate [--linf 0.1,0.15,0.2] [--l1 10,5,20] [--l2 1.5] [--val-n 500]
        [--start 0.2=runs/fmnist-linf-at] [--pair-matrix] [--out runs/calibrate]

Resumable: finished runs and evaluations in --out are kept. Writes --out/calibration.json (and
--out/linf<eps>/pair_matrix.png) and prints one line per model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ramptool.runtime.files import atomic_write
from ramptool.training.keypair import choose_pair
from ramptool.workflows.pair import save_heatmap
from reproduce.jobs import NORMS, JobLog, evaluate_run, train_run
from reproduce.splits import DATASET, TRAIN_POOL, validation_points

# the fmnist-linf-at recipe (pretraining) and the fine-tuning recipes, with the eps left to the sweep
PRETRAIN = dict(dataset=DATASET, arch="small-cnn", method="at", epochs=2, subset=TRAIN_POOL, optimizer="adam",
                lr=1e-3, weight_decay=0.0, schedule="cosine", attack="apgd", attack_steps=10, batch_size=128, seed=0)
FINETUNE = dict(dataset=DATASET, method="at", epochs=1, subset=20_000, optimizer="adam", lr=5e-4,
                weight_decay=0.0, schedule="piecewise-ft", attack="apgd", attack_steps=10, batch_size=128, seed=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--linf", default="0.1,0.2,0.15", help="l∞ eps grid")
    parser.add_argument("--l1", default="10,5,20", help="l1 eps grid; the first is the one models train at")
    parser.add_argument("--l2", type=float, default=1.5)
    parser.add_argument("--val-n", type=int, default=500, help="validation points")
    parser.add_argument("--start", action="append", default=[],
                        help="LINF=RUN: an l∞-AT run (the PRETRAIN settings) to use instead of training one")
    parser.add_argument("--pair-matrix", action="store_true", help="also train l2-AT and l1-AT and find the pair")
    parser.add_argument("--out", default="runs/calibrate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(args.out)
    log = JobLog(root / "jobs.jsonl")
    x, y = validation_points(args.val_n)
    linf_grid = [float(v) for v in args.linf.split(",")]
    l1_grid = [float(v) for v in args.l1.split(",")]
    starts = {float(k): Path(v) for k, v in (entry.split("=", 1) for entry in args.start)}
    summary_path = root / "calibration.json"
    summary = {"validation": {"pool": f"train[{TRAIN_POOL}:]", "n": len(y), "seed": 0}, "l2": args.l2,
               "rows": [], "pairs": []}

    def accuracy(run: Path, norm: str, eps: float) -> dict:
        folder = (run if run.is_relative_to(root) else root / "given" / run.name) / f"val{len(y)}-{norm}{eps:g}"
        result = evaluate_run(run, folder, x, y, {norm: eps}, log, norms=[norm])
        return result["report"]["accuracy"]

    for linf in linf_grid:
        eps = {"linf": linf, "l2": args.l2, "l1": l1_grid[0]}
        base = root / f"linf{linf:g}"
        start = starts.get(linf) or train_run(base / "linf-at", log, norms=["linf"], eps=eps, device=args.device,
                                              **PRETRAIN)
        models = {"linf-AT": start}
        for l1 in l1_grid:
            models[f"l1-FT (l1 {l1:g})"] = train_run(base / f"l1-ft-l1{l1:g}", log, norms=["l1"],
                                                     eps={**eps, "l1": l1}, init=str(start), device=args.device,
                                                     **FINETUNE)
        models["l2-FT"] = train_run(base / f"l2-ft-l2{args.l2:g}", log, norms=["l2"], eps=eps, init=str(start),
                                    device=args.device, **FINETUNE)
        for name, run in models.items():
            row = {"linf_eps": linf, "model": name, "run": str(run),
                   "clean": accuracy(run, "linf", linf)["clean"], "linf": accuracy(run, "linf", linf)["linf"],
                   "l2": accuracy(run, "l2", args.l2)["l2"],
                   "l1": {f"{l1:g}": accuracy(run, "l1", l1)["l1"] for l1 in l1_grid}}
            summary["rows"].append(row)
            atomic_write(summary_path, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
            print(f"l∞ {linf:g}  {name:18s} clean {100 * row['clean']:.1f}  l∞ {100 * row['linf']:.1f}  "
                  f"l2 {100 * row['l2']:.1f}  " + "  ".join(f"l1@{k} {100 * v:.1f}" for k, v in row["l1"].items()),
                  flush=True)
        if args.pair_matrix:
            summary["pairs"].append(pair_matrix(base, start, eps, accuracy, log, args.device))
            atomic_write(summary_path, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))


def pair_matrix(base: Path, start: Path, eps: dict, accuracy, log: JobLog, device: str) -> dict:
    """R[model][attack] on the validation points for one single-norm AT model per norm (the l∞-AT one is
    ``start``), and the key pair the rule picks from it, with and without fine-tuning from l∞."""
    runs = {"linf": start}
    for norm in ("l2", "l1"):
        runs[norm] = train_run(base / f"{norm}-at", log, norms=[norm], eps=eps, device=device, **PRETRAIN)
    matrix = {model: {norm: accuracy(run, norm, eps[norm])[norm] for norm in NORMS}
              | {"clean": accuracy(run, "linf", eps["linf"])["clean"]} for model, run in runs.items()}
    q, r, evidence = choose_pair(matrix)
    ft_q, ft_r, ft_evidence = choose_pair(matrix, fine_tune_from="linf")
    save_heatmap(matrix, list(NORMS), base / "pair_matrix.png")
    for model, row in matrix.items():
        print(f"{model}-AT  " + "  ".join(f"{norm} {100 * row[norm]:.1f}" for norm in NORMS), flush=True)
    print(f"pair ({q}, {r}): {evidence}\nfine-tuning from linf: ({ft_q}, {ft_r}): {ft_evidence}", flush=True)
    return {"eps": eps, "runs": {k: str(v) for k, v in runs.items()}, "matrix": matrix,
            "pair": [q, r], "evidence": evidence, "finetune_pair": [ft_q, ft_r], "finetune_evidence": ft_evidence}


if __name__ == "__main__":
    main()
