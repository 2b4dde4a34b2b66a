"""Per-sample robustness flags and the accuracies derived from them.

A flag is True when the point is classified correctly clean and under the attack; union accuracy is the mean
of the pointwise AND over every norm (and clean), docs/METHOD.md#threat-model-and-union-accuracy.
"""

from __future__ import annotations

import torch


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


@torch.no_grad()
def clean_flags(model, x, y, batch_size=500) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]
                      for i in range(0, len(y), batch_size)])


def apgd_flags(model, x, y, norms, eps, steps=100, batch_size=500, only=None) -> dict[str, torch.Tensor]:
    """Flags under ramptool's own APGD-CE (evaluation settings: l1 sparsity 0.2, keep misclassified iterates).

    Fast and dependency-free; used for per-epoch monitoring, ``eval curve`` and the pair finder. Reported
    numbers should come from ``eval union`` (AutoAttack)."""
    from ramptool.attacks import attack_for

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        flags = {"clean": clean_flags(model, x, y, batch_size)}
        for norm in norms:
            robust = flags["clean"].clone()
            candidates = robust.nonzero().squeeze(1) if only is None else (robust & only).nonzero().squeeze(1)
            attack = attack_for("apgd", norm)
            for start in range(0, len(candidates), batch_size):
                index = candidates[start:start + batch_size]
                xb, yb = x[index].to(device), y[index].to(device)
                result = attack(model, xb, yb, eps[norm], steps=steps, keep="misclassified", l1_sparsity=0.2)
                with torch.no_grad():
                    still = model(result.x_adv).argmax(1) == yb
                robust[index] = (still & ~result.fooled).cpu()
            flags[norm] = robust
    finally:
        model.train(was_training)
    return flags
