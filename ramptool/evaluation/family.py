"""Evaluation with a registered attack family: ``eval union --attack FAMILY`` and ``eval curve --attack FAMILY``.

Not AutoAttack, so every number it gives is an upper bound on robust accuracy. A point counts as broken only
when the family's attack hands back a point inside the ball and box (``Attack`` checks every result) that the
model misclassifies: nothing the attack reports about itself is taken on trust.
"""

from __future__ import annotations

import torch

from ramptool.attacks import attack_for
from ramptool.evaluation.flags import clean_flags, logits_of
from ramptool.runtime.device import eval_mode, model_device


def family_adversarial(model, x: torch.Tensor, y: torch.Tensor, family: str, norm: str, eps: float,
                       steps: int = 100, batch_size: int = 500, options: dict | None = None) -> torch.Tensor:
    """The ``{family}-{norm}`` attack's points for every point of (x, y), batch by batch on the model's device,
    returned where x is."""
    attack = attack_for(family, norm)
    device = model_device(model)
    out = x.clone()
    with eval_mode(model):
        for start in range(0, len(y), batch_size):
            part = slice(start, start + batch_size)
            result = attack(model, x[part].to(device), y[part].to(device), eps, steps=steps, **(options or {}))
            out[part] = result.x_adv.to(device=out.device, dtype=out.dtype)
    return out


def family_flags(model, x: torch.Tensor, y: torch.Tensor, family: str, norm: str, eps: float, steps: int = 100,
                 batch_size: int = 500, options: dict | None = None) -> torch.Tensor:
    """(N,) bool: classified correctly clean and still after the ``{family}-{norm}`` attack (an upper bound)."""
    with eval_mode(model):
        robust = clean_flags(model, x, y, batch_size)
        candidates = robust.nonzero().squeeze(1)
        x_adv = family_adversarial(model, x[candidates], y[candidates], family, norm, eps, steps, batch_size, options)
        robust[candidates] = logits_of(model, x_adv, batch_size).argmax(1) == y[candidates].cpu()
    return robust
