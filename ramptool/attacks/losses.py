"""Per-sample losses that attacks maximise (CE, DLR and their targeted forms, as in AutoAttack)."""

import torch.nn.functional as F

from ramptool.errors import RamptoolError


def cross_entropy(logits, y, y_target=None):
    return F.cross_entropy(logits, y, reduction="none")


def cross_entropy_targeted(logits, y, y_target):
    return -F.cross_entropy(logits, y_target, reduction="none")


def dlr(logits, y, y_target=None):
    """Difference of logits ratio: scale-invariant margin loss (Croce & Hein 2020)."""
    sorted_logits, order = logits.sort(dim=1)
    top_is_true = (order[:, -1] == y).to(logits.dtype)
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    best_other = sorted_logits[:, -2] * top_is_true + sorted_logits[:, -1] * (1 - top_is_true)
    return -(true_logit - best_other) / (sorted_logits[:, -1] - sorted_logits[:, -3] + 1e-12)


def dlr_targeted(logits, y, y_target):
    sorted_logits, _ = logits.sort(dim=1)
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    target_logit = logits.gather(1, y_target[:, None]).squeeze(1)
    scale = sorted_logits[:, -1] - 0.5 * (sorted_logits[:, -3] + sorted_logits[:, -4]) + 1e-12
    return -(true_logit - target_logit) / scale


ATTACK_LOSSES = {"ce": cross_entropy, "ce-targeted": cross_entropy_targeted, "dlr": dlr,
                 "dlr-targeted": dlr_targeted}


def attack_criterion(name: str, y_target=None):
    try:
        loss = ATTACK_LOSSES[name]
    except KeyError:
        raise RamptoolError(f"unknown attack loss {name!r}; use one of {', '.join(ATTACK_LOSSES)}") from None
    if name.endswith("targeted") and y_target is None:
        raise RamptoolError(f"attack loss {name!r} needs target labels")
    return lambda logits, y: loss(logits, y, y_target)
