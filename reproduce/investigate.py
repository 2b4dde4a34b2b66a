"""Why RAMP wins or loses against the baselines here: RAMP varied one knob at a time, on validation points.

Every variant fine-tunes the shipped l∞-AT model like ``make reproduce`` does (one epoch on the first 10,000
training points, seed 0) with one change: lambda (0, i.e. MAX over the pair without pairing; 1.5; 3), three
epochs (the paper's fine-tuning length) for RAMP and for the baselines, the pair direction (q = l1), the points
the pairing loss averages over (every point instead of those right under the q attack), and gradient projection.
A last group tests whether the training attack is too weak in l1: l1-only AT, E-AT and RAMP with 30 and 100
APGD steps instead of 10, and every model's l∞ and l1 accuracy under its own training attack next to the evaluation's.
Models are compared on 500 validation points (``splits``: training indices no model trained on) with ramptool's
default (AutoAttack-grade) evaluation: union accuracy, and each variant's paired difference from the strongest
baseline with a bootstrap interval over the points. Nothing here touches the test points, so the findings can
inform a recipe without tuning on the test set.

    torchrun --standalone --nproc_per_node 2 -m reproduce.investigate [--out runs/investigate] [--val-n 500]
        [--variants l1,e-at,max,ramp,ramp-lam0,...]     # or python -m reproduce.investigate, one process

Resumable. Writes docs/evidence/ramp-investigation.json; ``python -m reproduce`` puts its table in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ramptool.runtime import distributed
from ramptool.runtime.device import resolve_device
from ramptool.threat import DEFAULT_EPS
from reproduce.jobs import NORMS, JobLog, evaluate_run, read_flags, say, train_run, training_attack_run, write_json
from reproduce.plan import DATASET, FINETUNE_BASE, FINETUNE_METHODS, FULL, PAIR, RAMP_DEFAULT, START
from reproduce.splits import validation_points
from reproduce.stats import paired_comparison

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = ROOT / "docs" / "evidence" / "ramp-investigation.json"
SUBSET = FULL.finetune_subset
BASELINES = ("l1", "e-at", "max")  # the candidates for the strongest baseline
RAMP = FINETUNE_METHODS[RAMP_DEFAULT][1]

# key -> (label, TrainConfig fields on top of FINETUNE_BASE)
VARIANTS = {
    **{key: (FINETUNE_METHODS[key][0], FINETUNE_METHODS[key][1]) for key in BASELINES},
    **{f"{key}-3ep": (f"{FINETUNE_METHODS[key][0]}, 3 epochs", {**FINETUNE_METHODS[key][1], "epochs": 3})
       for key in BASELINES},
    "ramp": ("RAMP (KL, λ 0.5)", RAMP),
    "ramp-lam0": ("RAMP, λ 0 (MAX over the pair)", {**RAMP, "lam": 0.0}),
    "ramp-lam1.5": ("RAMP, λ 1.5", {**RAMP, "lam": 1.5}),
    "ramp-lam3": ("RAMP, λ 3", {**RAMP, "lam": 3.0}),
    "ramp-3ep": ("RAMP, 3 epochs", {**RAMP, "epochs": 3}),
    "ramp-q-l1": ("RAMP, pair (l1, l∞): q = l1", {**RAMP, "pair": list(reversed(PAIR))}),
    "ramp-pair-all": ("RAMP, pairing over every point", {**RAMP, "method_options": {"pair_on": "all"}}),
    "ramp-gp": ("RAMP + GP (β 0.5)", {**RAMP, "combiner": "gp", "combiner_options": {"beta": 0.5}}),
    **{f"{key}-steps{steps}": (f"{label}, {steps}-step training attack", {**fields, "attack_steps": steps})
       for steps in (30, 100)
       for key, (label, fields) in (("l1", FINETUNE_METHODS["l1"]), ("e-at", FINETUNE_METHODS["e-at"]),
                                    ("ramp", ("RAMP", RAMP)))},
}


def run(out: Path, val_n: int, device: str, variants: list[str] | None = None,
        evidence: Path | None = None) -> dict:
    """Every chosen variant trained, evaluated and compared; ``evidence`` is rewritten after each one, so an
    interrupted investigation keeps the table of what finished."""
    log = JobLog(out / "jobs.jsonl")
    x, y = validation_points(val_n)
    eps = DEFAULT_EPS[DATASET]
    rows = {}
    chosen = {key: VARIANTS[key] for key in (variants or VARIANTS)}
    for number, (key, (label, fields)) in enumerate(chosen.items(), start=1):
        say(f"[{number}/{len(chosen)}] {label}", flush=True)
        folder = train_run(out / key, log, device=device,
                           **{**FINETUNE_BASE, "init": str(START), "subset": SUBSET, "seed": 0, **fields})
        report = evaluate_run(folder, folder / f"val{val_n}", x, y, eps, log)["report"]
        flags = read_flags(folder / f"val{val_n}", NORMS)
        steps = fields.get("attack_steps", FINETUNE_BASE["attack_steps"])
        weak = training_attack_run(folder, folder / f"val{val_n}", x, y, eps, PAIR, steps, resolve_device(device))
        rows[key] = {"label": label, "accuracy": report["accuracy"], "union_flags": flags["union"].int().tolist(),
                     "engine": report["attack"], "training_attack": {"steps": steps, "accuracy": weak}}
        found = _compared(rows, val_n, eps, device)
        if evidence is not None:
            write_json(evidence, found)
    return found


def _compared(rows: dict, val_n: int, eps: dict, device: str) -> dict:
    """The evidence document: ``rows`` with each one's paired difference from the strongest baseline among them
    (the first variant when no baseline has run yet)."""
    baselines = [key for key in BASELINES if key in rows] or list(rows)[:1]
    strongest = max(baselines, key=lambda k: rows[k]["accuracy"]["union"])
    for row in rows.values():
        comparison = paired_comparison([torch.tensor(row["union_flags"])],
                                       [torch.tensor(rows[strongest]["union_flags"])])
        row["versus_strongest"] = {"mean": comparison.mean, "low": comparison.low, "high": comparison.high,
                                   "only_variant": comparison.discordant[0][0],
                                   "only_baseline": comparison.discordant[0][1]}
    where = torch.cuda.get_device_name() if resolve_device(device).type == "cuda" else "CPU"
    return {"validation": {"n": val_n, "seed": 0}, "eps": eps, "engine": rows[strongest]["engine"], "device": where,
            "strongest_baseline": strongest, "variants": rows,
            "not_run": [VARIANTS[key][0] for key in VARIANTS if key not in rows]}


def section(paths: list[Path] | None = None) -> list[str]:
    """RESULTS.md's investigation section from the evidence files (default: ``EVIDENCE`` and every other
    ramp-investigation*.json next to it, one table each), or what it would hold before one exists."""
    if paths is None:  # the main (CPU) investigation first, then e.g. ramp-investigation-cuda.json
        paths = [EVIDENCE, *sorted(set(EVIDENCE.parent.glob("ramp-investigation*.json")) - {EVIDENCE})]
    lines = ["## Investigation on validation points", ""]
    found_any = [path for path in paths if path.exists()]
    if not found_any:
        return lines + [
            "Not run for this page. `python -m reproduce.investigate` fine-tunes RAMP with one knob changed at a "
            "time (lambda 0, 1.5 and 3; three epochs, also for the baselines; q = l1; pairing over every point; "
            "GP; a 30-step training attack) and compares each with the strongest baseline on 500 validation "
            "points; hours on 2 CPU cores, minutes on a GPU. Its table appears here once "
            f"`{EVIDENCE.relative_to(ROOT)}` exists.", ""]
    documents = [json.loads(path.read_text()) for path in found_any]
    shown = {row["label"] for found in documents for row in found["variants"].values()}
    for number, (found, path) in enumerate(zip(documents, found_any)):
        lines += _table(found, path, first=number == 0, shown_elsewhere=shown)
    return lines


def _table(found: dict, path: Path, first: bool, shown_elsewhere: set[str]) -> list[str]:
    strongest = found["variants"][found["strongest_baseline"]]["label"]
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    if not first:
        intro = (f"The same on {found.get('device', 'CPU')} (`{shown}`, {found['validation']['n']} validation "
                 f"points, seed 0), with the strongest baseline of this table, {strongest}, as the reference.")
    else:
        intro = (f"RAMP varied one knob at a time against the strongest baseline on {found['validation']['n']} "
                 f"validation points (training indices 50,000-59,999, which no model trained on; "
                 f"`python -m reproduce.investigate`, {found['engine']} evaluation, seed 0, on "
                 f"{found.get('device', 'CPU')}; `{shown}`). The strongest baseline here is {strongest}. "
                 f"Δ = variant − {strongest} in union points, with a paired bootstrap 95% interval over the points. "
                 "'train-attack' columns: accuracy under the model's own training attack (APGD-CE with the training "
                 "defaults and the run's steps, one start from x); the gap to the l∞ and l1 columns is how much the "
                 "training attack misses.")
    lines = [intro, "",
             "| variant | clean | l∞ | l2 | l1 | union | Δ union | 95% interval | train-attack l∞ | train-attack l1 |",
             "|---|" + "---:|" * 9]
    for row in found["variants"].values():
        acc, vs = row["accuracy"], row["versus_strongest"]
        weak = row.get("training_attack", {}).get("accuracy", {})
        lines.append(f"| {row['label']} | " + " | ".join(f"{100 * acc[c]:.1f}" for c in ("clean", *NORMS, "union"))
                     + f" | {100 * vs['mean']:+.1f} | [{100 * vs['low']:+.1f}, {100 * vs['high']:+.1f}] | "
                     + " | ".join(f"{100 * weak[n]:.1f}" if n in weak else "-" for n in PAIR) + " |")
    above = [row["label"] for row in found["variants"].values() if row["versus_strongest"]["low"] > 0]
    lines += ["", f"Variants whose union is above {strongest}'s by a 95% interval above 0: "
                  f"{', '.join(above) or 'none'}."]
    lines += _at_equal_attack_strength(found["variants"])
    not_run = [label for label in found.get("not_run", []) if label not in shown_elsewhere]
    if not_run:
        lines += ["", f"Not run yet (`--variants`): {', '.join(not_run)}."]
    lines.append("")
    return lines


def _at_equal_attack_strength(rows: dict) -> list[str]:
    """RAMP against l1-only AT and E-AT trained with the same number of training-attack steps, where the
    evidence has more than one strength (the -stepsN variants): does the ranking depend on the attack?"""
    by_steps: dict[int, dict] = {}
    for key, row in rows.items():
        base, _, steps = key.partition("-steps")
        by_steps.setdefault(int(steps or FINETUNE_BASE["attack_steps"]), {})[base] = row
    lines = []
    for steps, level in sorted(by_steps.items()):
        if "ramp" not in level or not {"l1", "e-at"} & set(level):
            continue
        parts = []
        for key in ("l1", "e-at"):
            if key in level:
                c = paired_comparison([torch.tensor(level["ramp"]["union_flags"])],
                                      [torch.tensor(level[key]["union_flags"])])
                parts.append(f"RAMP − {FINETUNE_METHODS[key][0]} {100 * c.mean:+.1f} "
                             f"[{100 * c.low:+.1f}, {100 * c.high:+.1f}]")
        lines.append(f"- {steps}-step training attack: " + "; ".join(parts) + ".")
    if len(lines) < 2:
        return []
    return ["", "At equal training-attack strength (union points, paired bootstrap 95% interval):", "", *lines]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/investigate")
    parser.add_argument("--val-n", type=int, default=500)
    parser.add_argument("--evidence", default=str(EVIDENCE))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, in this order of priority (default all: {','.join(VARIANTS)})")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [key for key in args.variants.split(",") if key not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    distributed.setup(resolve_device(args.device))
    try:
        run(Path(args.out), args.val_n, args.device, args.variants.split(","), Path(args.evidence))
        say("\n".join(section([Path(args.evidence)])))
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
