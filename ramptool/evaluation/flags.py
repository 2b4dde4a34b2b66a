"""Per-sample robustness flags, the accuracies derived from them, and the check every counted success passes.

A flag is True when the point is classified correctly clean and under the attack; union accuracy is the mean
of the pointwise AND over every norm (and clean), docs/METHOD.md#threat-model-and-union-accuracy.
"""

from __future__ import annotations

import torch

from ramptool.errors import RamptoolError
from ramptool.runtime.device import model_device
from ramptool.threat import lp_norm


def union_flags(flags: dict[str, torch.Tensor], norms=None) -> torch.Tensor:
    names = list(norms) if norms is not None else [k for k in flags if k != "clean"]
    result = flags["clean"].clone()
    for name in names:
        result &= flags[name]
    return result


def accuracies(flags: dict[str, torch.Tensor], norms=None) -> dict[str, float]:
    names = list(norms) if norms is not None else [k for k in flags if k != "clean"]
    out = {"clean": flags["clean"].float().mean().item()}
    for name in names:
        out[name] = (flags[name] & flags["clean"]).float().mean().item()
    out["union"] = union_flags(flags, names).float().mean().item()
    return out


# how far past eps (relative, and absolute) a counted adversarial point may be: float rounding of the
# projections, nothing more
BALL_TOLERANCE = 1e-5


@torch.no_grad()
def logits_of(model, x, batch_size=500) -> torch.Tensor:
    """The model's logits on x, batch by batch on its device, back on the CPU."""
    device = model_device(model)
    return torch.cat([model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def clean_flags(model, x, y, batch_size=500) -> torch.Tensor:
    """Per point: classified correctly without any attack."""
    return logits_of(model, x, batch_size).argmax(1) == y.cpu()


@torch.no_grad()
def verified_successes(model, x, y, x_adv, norm, eps, batch_size=500) -> torch.Tensor:
    """Per point: ``x_adv`` is a valid adversarial example (in the ball, in the box, misclassified)."""

    moved = (x_adv != x).flatten(1).any(dim=1)
    in_box = ((x_adv >= 0) & (x_adv <= 1)).flatten(1).all(dim=1)
    try:
        in_ball = lp_norm(x_adv - x, norm) <= eps * (1 + BALL_TOLERANCE) + BALL_TOLERANCE
    except RamptoolError:  # a plugin's norm: its attack is trusted to stay inside its own ball
        in_ball = torch.ones_like(moved)
    candidates = (moved & in_box & in_ball).nonzero().squeeze(1)
    wrong = torch.zeros_like(moved)
    if len(candidates):
        predictions = logits_of(model, x_adv[candidates], batch_size).argmax(1)
        wrong[candidates] = predictions != y[candidates]
    return wrong
