"""What every attack shares: its result type, its registry entry, and the guard that keeps it off the weights."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ramptool.errors import RamptoolError
from ramptool.threat import check_inside, lp_norm, project


@dataclass
class AttackResult:
    """What an attack returns, per sample of the batch it was given."""

    x_adv: torch.Tensor  # the kept adversarial point: same shape, dtype and device as x, inside ball and box
    loss: torch.Tensor  # (N,) the attack loss at x_adv (RAMP and MAX pick the higher-loss norm per sample)
    fooled: torch.Tensor  # (N,) bool: some visited point was misclassified


@dataclass(frozen=True)
class Attack:
    """A registered attack: ``attack(model, x, y, eps, steps=10, **options) -> AttackResult``.

    ``run(model, x, y, *, norm, eps, steps, **options)`` is the attack itself, a plain function over tensors:
    ``model`` maps [0,1] inputs to logits and is in eval mode (leave its mode and parameter gradients alone:
    ``input_gradients_only`` does both), ``x`` is a batch in [0,1], ``y`` its labels, ``eps`` the radius.
    It returns an ``AttackResult`` whose points lie in B_norm(x, eps) ∩ [0,1]^d; ramptool checks that
    after every call for the norms it knows (linf, l2, l1) and stops with an error naming the attack if not.
    Its parameters after ``steps`` are its options (``--attack-option name=value``): declare them keyword-only
    with defaults.

    ``norm`` is the threat model it stays inside (``None`` for multi-norm attacks, whose eps is a dict of
    norms). ``description`` is the line ``ramptool plugins`` shows. ``defaults`` presets options of ``run``.
    ``joint``, when set, runs several norms of the same family on one batch and shares model calls between them:
    ``joint(model, x, y, [(norm, eps), ...], steps, batched=..., **options) -> [AttackResult, ...]``.
    A family is a set of attacks named ``{family}-{norm}``: ``--attack family`` trains against them and
    ``eval union --attack family`` evaluates with them.
    """

    run: Callable[..., AttackResult]
    norm: str | None
    description: str
    defaults: dict = field(default_factory=dict)
    joint: Callable[..., list[AttackResult]] | None = None

    @property
    def label(self) -> str:
        """The attack function's name and module, for error messages."""
        return f"{getattr(self.run, '__qualname__', self.run)} ({getattr(self.run, '__module__', '?')}) in {self.norm}"

    def __call__(self, model, x, y, eps, steps=10, **options) -> AttackResult:
        kwargs = {**self.defaults, **options}
        if self.norm is not None:
            kwargs["norm"] = self.norm
        result = self.run(model, x, y, eps=eps, steps=steps, **kwargs)
        if self.norm is not None:
            check_inside(x, result.x_adv, self.norm, eps, self.label)
        return result


@contextlib.contextmanager
def input_gradients_only(model: torch.nn.Module):
    """Freeze the parameters while attacking: autograd then builds no graph towards the weights (the bulk of
    an attack's cost) and parameter ``.grad`` fields cannot be touched. Train/eval mode is left as it is."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def loss_and_input_grad(model, x_adv, y, criterion, need_grad=True):
    """One forward (and backward to the input): logits, per-sample loss, d(sum loss)/dx."""
    x_adv = x_adv.detach().requires_grad_(need_grad)
    logits = model(x_adv)
    loss = criterion(logits, y)
    grad = torch.autograd.grad(loss.sum(), x_adv)[0].detach() if need_grad else None
    return logits.detach(), loss.detach(), grad


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def random_start(x: torch.Tensor, norm: str, eps, generator=None) -> torch.Tensor:
    """A random point of B_p(x, eps) ∩ [0,1]^d."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if norm == "linf":
        start = x + eps * (2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1)
    else:
        radius = eps * torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
        start = x + noise * per_sample(radius / (lp_norm(noise, norm) + 1e-12), x)
    return project(x, start, norm, eps)


# ---------------------------------------------------------------------------------------- per-point random draws
# Evaluation attacks draw their random starts per point, from (seed, stream, point index) alone, so a point's
# attack does not depend on which other points share its batch: a point attacked in a shard, in a cascade that
# skips broken points, or in a batch of another size starts from the same place. A counter-based integer hash
# (exact on every device) replaces a generator's sequential stream.

_MASK32 = 0xFFFFFFFF


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit mixer (xorshift-multiply). Values stay below 2^32 and the odd constants below 2^31,
    so every product fits in int64 without overflow."""
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & _MASK32
    h = h ^ (h >> 15)
    h = (h * 0x5BD1E995) & _MASK32
    return h ^ (h >> 16)


def point_keys(index: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """One 32-bit key per point from (seed, stream, index)."""
    key = _mix32(torch.tensor(seed & _MASK32, dtype=torch.int64))
    key = _mix32(key ^ (stream & _MASK32))
    return _mix32(key ^ (index.to(torch.int64) & _MASK32))


def point_noise(like: torch.Tensor, index: torch.Tensor, seed: int, stream: int,
                distribution: str = "normal") -> torch.Tensor:
    """Noise shaped like ``like``; row i depends only on (seed, stream, index[i]). ``distribution`` is
    'normal' (Box-Muller) or 'uniform' (in [-1, 1])."""
    n, d = like.shape[0], like[0].numel()
    draws = 2 * d if distribution == "normal" else d
    keys = point_keys(index.to(like.device), seed, stream)[:, None]
    counters = _mix32(torch.arange(draws, device=like.device, dtype=torch.int64))
    bits = _mix32(_mix32(keys ^ counters) ^ keys)
    uniform = (bits.double() + 0.5) / 2.0**32  # in (0, 1), never 0: the logarithm below stays finite
    if distribution == "normal":
        noise = (-2.0 * uniform[:, :d].log()).sqrt() * torch.cos(2.0 * torch.pi * uniform[:, d:])
    elif distribution == "uniform":
        noise = 2.0 * uniform - 1.0
    else:
        raise RamptoolError(f"unknown noise distribution {distribution!r}")
    return noise.view(n, *like.shape[1:]).to(like.dtype)


def autoattack_start(x: torch.Tensor, norm: str, eps, noise: torch.Tensor) -> torch.Tensor:
    """AutoAttack's random start (``autopgd_base.attack_single_run``) from the given noise: l∞ and l2 go to the
    sphere, x + eps * t / ||t|| (t uniform in [-1,1]^d for l∞, Gaussian for l2); l1 projects x + t (t Gaussian,
    whose l1 norm is far beyond any eps) onto B_1(x, eps) ∩ [0,1]^d, which lands on the boundary of the ball with
    most coordinates thresholded to zero: a sparse start. Clipped to the box."""
    if norm == "l1":
        return project(x, x + noise, "l1", eps)
    if norm not in ("linf", "l2"):
        raise RamptoolError(f"no AutoAttack start for norm {norm!r}")
    return (x + eps * noise / per_sample(lp_norm(noise, norm) + 1e-12, x)).clamp(0.0, 1.0)
