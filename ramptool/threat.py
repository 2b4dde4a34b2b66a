"""Threat models: norm names, epsilons, lp norms and exact projections onto B_p(x, eps) ∩ [0,1]^d.

Every place that reads a norm or an eps from the user goes through ``parse_norm`` / ``parse_eps`` /
``parse_norms``, so spelling rules live here only.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import torch

from ramptool.errors import RamptoolError

NORMS = ("linf", "l2", "l1")

_ALIASES = {"linf": "linf", "l_inf": "linf", "inf": "linf", "l2": "l2", "l1": "l1"}

# Fashion-MNIST and MNIST eps are ramptool's own calibration (docs/METHOD.md#decisions)
DEFAULT_EPS = {
    "cifar10": {"linf": 8 / 255, "l2": 0.5, "l1": 12.0},
    "cifar100": {"linf": 8 / 255, "l2": 0.5, "l1": 12.0},
    "imagenet": {"linf": 4 / 255, "l2": 2.0, "l1": 255.0},
    "imagefolder": {"linf": 4 / 255, "l2": 2.0, "l1": 255.0},
    "fashion-mnist": {"linf": 0.2, "l2": 1.5, "l1": 10.0},
    "mnist": {"linf": 0.3, "l2": 2.0, "l1": 10.0},
}


ANY_NORM = ("*",)  # ``known`` that accepts any well-formed name: the registry's norms are checked later


def parse_norm(text: str, known: tuple[str, ...] | list[str] | None = None) -> str:
    """'Linf', 'linf', 'L2', 'l1' -> canonical lowercase name. Plugin norms pass through if ``known`` lists them."""
    key = text.strip().lower()
    name = _ALIASES.get(key, key)
    allowed = tuple(known) if known is not None else NORMS
    if allowed == ANY_NORM:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
            raise RamptoolError(f"not a norm name: {text!r}")
        return name
    if name not in allowed:
        raise RamptoolError(f"unknown norm {text!r}; use one of: {', '.join(allowed)}")
    return name


def parse_norms(text: str, known=None) -> list[str]:
    names = [parse_norm(part, known) for part in text.split(",") if part.strip()]
    if not names:
        raise RamptoolError("no norm given")
    if len(set(names)) != len(names):
        raise RamptoolError(f"norm listed twice in {text!r}")
    return names


def parse_number(text: str) -> float:
    """'8/255', '0.5', '12' -> float."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError, OverflowError):  # 1e400 overflows a float
        raise RamptoolError(f"not a finite number: {text!r} (use e.g. 0.5 or 8/255)") from None
    return value


def parse_eps(text: str | dict | None, dataset: str | None = None, known=None) -> dict[str, float]:
    """'linf=8/255,l2=0.5' -> {'linf': 0.0314, 'l2': 0.5}, filled from the dataset's defaults."""
    eps = dict(DEFAULT_EPS.get(dataset or "", {}))
    if isinstance(text, dict):
        items = [(k, str(v)) for k, v in text.items()]
    else:
        items = []
        for part in (text or "").split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise RamptoolError(f"eps entry {part!r} must look like norm=value, e.g. linf=8/255")
            key, value = part.split("=", 1)
            items.append((key, value))
    for key, value in items:
        norm = parse_norm(key, known)
        number = parse_number(value)
        if not number > 0:
            raise RamptoolError(f"eps for {norm} must be positive, got {value.strip()}")
        eps[norm] = number
    return eps


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a batch of perturbations."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    raise RamptoolError(f"no lp norm for {norm!r}")


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def project_linf(x: torch.Tensor, x_adv: torch.Tensor, eps) -> torch.Tensor:
    return torch.clamp(torch.minimum(torch.maximum(x_adv, x - eps), x + eps), 0.0, 1.0)


def project_l2(x: torch.Tensor, x_adv: torch.Tensor, eps) -> torch.Tensor:
    """Radial l2 projection then box clip, as APGD does (clipping can only shrink the l2 norm)."""
    delta = x_adv - x
    norms = lp_norm(delta, "l2")
    scale = torch.clamp(eps / (norms + 1e-12), max=1.0)
    return torch.clamp(x + delta * _per_sample(scale, delta), 0.0, 1.0)


def project_l1(x: torch.Tensor, x_adv: torch.Tensor, eps) -> torch.Tensor:
    """Exact Euclidean projection of ``x_adv`` onto {z : ||z - x||_1 <= eps, 0 <= z <= 1}.

    Coordinate-wise the solution is delta_i = sign(u_i) * clip(|u_i| - lam, 0, b_i), with u = x_adv - x and
    b_i the room to the box face that u_i points at. phi(lam) = sum_i clip(|u_i| - lam, 0, b_i) is piecewise
    linear and non-increasing; its 2d breakpoints are |u_i| - b_i (coordinate leaves its cap) and |u_i|
    (coordinate reaches zero). Sorting them gives phi at every breakpoint by a cumulative sum, and the root
    phi(lam) = eps is found by linear interpolation inside its segment: no iteration, no per-sample loop.
    """
    shape, dtype = x.shape, x.dtype
    x64 = x.flatten(1).double()
    u = x_adv.flatten(1).double() - x64
    room = torch.where(u > 0, 1.0 - x64, x64).clamp_min(0.0)
    magnitude = u.abs()
    # a number is filled in on the device: as_tensor would copy it from the host, which waits for the GPU
    if isinstance(eps, (int, float)):
        eps_t = torch.full((u.shape[0],), float(eps), dtype=torch.float64, device=x.device)
    else:
        eps_t = torch.as_tensor(eps, dtype=torch.float64, device=x.device).expand(u.shape[0])

    capped = torch.minimum(magnitude, room)
    inside = capped.sum(dim=1) <= eps_t

    breakpoints = torch.cat([magnitude - room, magnitude], dim=1)
    slope_change = torch.cat([torch.ones_like(u), -torch.ones_like(u)], dim=1)
    breakpoints, order = breakpoints.sort(dim=1)
    active = slope_change.gather(1, order).cumsum(dim=1)  # coordinates strictly between cap and zero
    gaps = breakpoints.diff(dim=1)
    phi = room.sum(dim=1, keepdim=True) - torch.cat(
        [torch.zeros_like(gaps[:, :1]), (active[:, :-1] * gaps).cumsum(dim=1)], dim=1
    )
    # last breakpoint with phi >= eps; phi is non-increasing so this is a count
    segment = ((phi >= eps_t[:, None]).sum(dim=1) - 1).clamp(min=0, max=phi.shape[1] - 1)
    phi_k = phi.gather(1, segment[:, None]).squeeze(1)
    lam_k = breakpoints.gather(1, segment[:, None]).squeeze(1)
    slope = active.gather(1, segment[:, None]).squeeze(1).clamp_min(1)
    lam = (lam_k + (phi_k - eps_t) / slope).clamp_min(0.0)
    lam = torch.where(inside, torch.zeros_like(lam), lam)

    delta = u.sign() * torch.minimum((magnitude - lam[:, None]).clamp_min(0.0), room)
    return torch.clamp(x + delta.view(shape).to(dtype), 0.0, 1.0)


PROJECTIONS = {"linf": project_linf, "l2": project_l2, "l1": project_l1}


def project(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps) -> torch.Tensor:
    """The point of B_norm(x, eps) ∩ [0,1]^d for ``x_adv`` (per sample; exact for l1, radial then clipped for l2,
    as APGD does)."""
    try:
        return PROJECTIONS[norm](x, x_adv, eps)
    except KeyError:
        raise RamptoolError(f"no projection for norm {norm!r}") from None


def check_inside(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps, attack: str) -> None:
    """Refuse adversarial points outside B_norm(x, eps) ∩ [0,1]^d beyond the rounding of their dtype: an attack
    that leaves its threat model would train or evaluate against another one. A norm without a projection here
    (a plugin's own threat model) is the attack's business."""
    if norm not in PROJECTIONS:
        return
    unit = torch.finfo(x_adv.dtype).eps if x_adv.is_floating_point() else 0.0
    dims = x[0].numel()
    slack = {"linf": 2.0, "l2": 2.0 * dims ** 0.5, "l1": 2.0 * dims}[norm] * unit
    dtype = torch.promote_types(x.dtype, x_adv.dtype)
    distance = lp_norm(x_adv.detach().to(dtype) - x.detach().to(dtype), norm)
    outside_ball = distance > float(eps) * (1 + 1e-6) + slack
    flat = x_adv.detach().flatten(1)
    outside_box = (flat.amin(dim=1) < -unit) | (flat.amax(dim=1) > 1 + unit)
    outside = outside_ball | outside_box
    if bool(outside.any()):
        raise RamptoolError(f"attack {attack} returned {int(outside.sum())} of {len(outside)} points outside "
                            f"B_{norm}(x, {float(eps):g}) ∩ [0,1]^d (largest {norm} distance "
                            f"{float(distance.max()):.6g}, pixels in [{float(flat.min()):.4g}, "
                            f"{float(flat.max()):.4g}]): it does not keep to its threat model")


def eps_scale_warnings(eps: dict[str, float], input_size: int) -> list[str]:
    """Budgets that look like a mistake of scale: an l∞ eps of 1 or more lets the attack reach any image in
    [0,1]^d (``--eps linf=8`` meant 8/255), and an l2 or l1 eps above the box's diameter (sqrt(d), d) the same."""
    diameters = {"linf": 1.0, "l2": math.sqrt(input_size), "l1": float(input_size)}
    messages = []
    for norm, value in eps.items():
        if norm in diameters and value >= diameters[norm]:
            hint = f" (inputs are in [0,1]: did you mean {value:g}/255?)" if norm == "linf" else ""
            messages.append(f"{norm} eps {value:g} reaches the diameter of the [0,1] box ({diameters[norm]:g} for "
                            f"{input_size} input values): every image is inside the ball{hint}")
    return messages
