"""Evaluation with a registered attack family: ``eval union --attack FAMILY`` and ``eval curve --attack FAMILY``.

Not AutoAttack, so every number it gives is an upper bound on robust accuracy. A point counts as broken only
when the family's attack hands back a point inside the ball and box (``Attack`` checks every result) that the
model misclassifies: nothing the attack reports about itself is taken on trust.
"""

from __future__ import annotations

import torch

from ramptool.attacks import attack_for, bind_family_options
from ramptool.errors import RamptoolError
from ramptool.evaluation.flags import clean_flags
from ramptool.methods import eval_mode

BUILT_IN_EVALUATIONS = ("autoattack", "apgd")


def family_options(family: str, norms: list[str], options: dict | None) -> dict:
    """``options`` checked against (and typed for) the family's attack in every norm evaluated."""
    if family in BUILT_IN_EVALUATIONS:
        if options:
            raise RamptoolError(f"--attack-option applies to a registered attack family, not to --attack {family}")
        return {}
    return bind_family_options(family, norms, options)


def family_flags(model, x: torch.Tensor, y: torch.Tensor, family: str, norm: str, eps: float, steps: int = 100,
                 batch_size: int = 500, options: dict | None = None) -> torch.Tensor:
    """(N,) bool: classified correctly clean and still after the ``{family}-{norm}`` attack (an upper bound)."""
    attack = attack_for(family, norm)
    device = next(model.parameters()).device
    with eval_mode(model):
        robust = clean_flags(model, x, y, batch_size)
        candidates = robust.nonzero().squeeze(1)
        for start in range(0, len(candidates), batch_size):
            index = candidates[start:start + batch_size]
            xb, yb = x[index].to(device), y[index].to(device)
            result = attack(model, xb, yb, eps, steps=steps, **(options or {}))
            with torch.no_grad():
                robust[index] = (model(result.x_adv.to(xb.dtype)).argmax(1) == yb).cpu()
    return robust
