"""The training-attack check: does the run's own training attack still find the adversarial examples that exist?

A multi-norm run can learn to resist its training attack without becoming robust (gradient masking, or
catastrophic overfitting to that attack): its per-batch ``acc_<norm>`` then looks healthy while an
AutoAttack-grade attack finds many times more adversarial examples. After an epoch the trainer measures, on
points the run does not train on, each trained norm's accuracy under both attacks; a gap above the threshold is
warned about and recorded in the checkpoint's metadata (``flagged_gaps``).
"""

from __future__ import annotations

import torch

from ramptool.evaluation.union import evaluate_union
from ramptool.runtime import distributed
from ramptool.runtime.device import eval_mode

# An AutoAttack-grade point costs what training on ~40 points with a 10-step attack does (measured on the small CNN,
# l1): one check point per CHECK_SHARE trained points keeps the default check near a tenth of an epoch.
CHECK_SHARE = 250
CHECK_MAX_POINTS = 256
CHECK_MIN_POINTS = 100  # fewer points than this say nothing a 10-point gap could rest on


def check_size(requested: int | None, trained_points: int) -> int:
    """How many held-out points the check uses: ``requested`` (None: one per CHECK_SHARE trained points, at most
    CHECK_MAX_POINTS, and no check when that leaves fewer than CHECK_MIN_POINTS)."""
    if requested is not None:
        return requested
    n = min(CHECK_MAX_POINTS, trained_points // CHECK_SHARE)
    return n if n >= CHECK_MIN_POINTS else 0


def measure(method, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, norms: list[str],
            eps: dict[str, float]) -> dict[str, float]:
    """Per norm: accuracy under the run's training attack (``method.attack``), under ramptool's AutoAttack-grade
    attack (APGD-CE + APGD-T, as ``eval union``), and their gap, as flat metrics.jsonl fields. The points are
    shared out over the processes and every process gets the numbers; with a deterministic training attack
    (APGD's training default starts at x) they are one process's."""
    device = next(model.parameters()).device

    def fooled_by_training_attack(x_part: torch.Tensor, y_part: torch.Tensor) -> dict[str, torch.Tensor]:
        x_part, y_part = x_part.to(device), y_part.to(device)
        flags = {}
        for norm in norms:
            torch.manual_seed(0)  # a training attack with a random start draws the same at every check
            x_adv = method.attack(model, x_part, y_part, norm).x_adv
            with torch.no_grad(), eval_mode(model):
                flags[norm] = (model(x_adv).argmax(1) == y_part).cpu()
        return flags

    # the check must not move the training's random stream: a resumed run replays the same batches
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        trained = distributed.map_points(fooled_by_training_attack, x, y)
        with eval_mode(model):
            strong = evaluate_union(model, x, y, norms, eps)["accuracy"]
    record = {}
    for norm in norms:
        train_accuracy = trained[norm].float().mean().item()
        record[f"check_train_attack_{norm}"] = round(train_accuracy, 5)
        record[f"check_strong_{norm}"] = round(strong[norm], 5)
        record[f"check_gap_{norm}"] = round(train_accuracy - strong[norm], 5)
    return record


def _gaps_above(record: dict, threshold: float) -> list[str]:
    """The norms whose gap in ``record`` exceeds ``threshold``."""
    return [key.removeprefix("check_gap_") for key, gap in record.items()
            if key.startswith("check_gap_") and gap > threshold]


def flagged(history: list[dict], threshold: float) -> list[dict]:
    """Every epoch and norm whose gap exceeded ``threshold``, for the checkpoint's metadata."""
    return [{"epoch": record["epoch"], "norm": norm, "gap": record[f"check_gap_{norm}"],
             "training_attack": record[f"check_train_attack_{norm}"], "strong": record[f"check_strong_{norm}"]}
            for record in history for norm in _gaps_above(record, threshold)]


def warnings(record: dict, epoch: int, threshold: float, attack: str, steps: int, points: str) -> list[str]:
    """One line per norm whose gap in ``record`` exceeds ``threshold``, with what to try."""
    return [f"epoch {epoch}: {norm} accuracy is {100 * record[f'check_train_attack_{norm}']:.1f}% under the "
            f"training attack ({attack}, {steps} steps; an upper bound) but "
            f"{100 * record[f'check_strong_{norm}']:.1f}% under an AutoAttack-grade attack on {points}: the training "
            f"attack misses adversarial examples that exist, so this run's training accuracies overstate its "
            f"robustness; try more --attack-steps, or restarts or a random start through --attack-option"
            for norm in _gaps_above(record, threshold)]
