"""The one adapter over AutoAttack (PyPI ``pyautoattack``, or upstream ``autoattack`` if that is installed).

``fast`` is what RAMP and E-AT report: APGD-CE + APGD-T with AutoAttack's standard per-norm settings
(linf/l2: 1 restart, 9 target classes; l1: 5 restarts, 5 target classes, the 3x/2x/1x eps schedule). It is
built the way E-AT's evaluation builds it: the standard version, then the attack list cut to the two APGDs, so
the settings come from the library itself and cannot drift from it. ``standard`` is full AutoAttack.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch

from ramptool.errors import RamptoolError
from ramptool.evaluation.flags import clean_flags, logits_of
from ramptool.runtime.device import model_device

AUTOATTACK_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
VERSIONS = ("fast", "standard")
FAST_ATTACKS = ["apgd-ce", "apgd-t"]


def _build_adversary(model, norm: str, eps: float, seed: int, device):
    """(adversary, run(x, y, batch_size) -> (adversarial points, their predicted labels)) with AutoAttack's
    standard settings."""
    try:
        # imported on first use: its module runs a torch.load-patching side effect ramptool undoes
        import pyautoattack
    except ImportError:
        pyautoattack = None
    if pyautoattack is not None:
        adversary = pyautoattack.AutoAttack(model, norm=AUTOATTACK_NORMS[norm], eps=eps, version="standard",
                                            seed=seed, device=device)

        def run(x, y, batch_size):
            return adversary.run_standard_evaluation(x, y, batch_size=batch_size)

        return adversary, run
    try:
        # optional: upstream's autoattack, used when installed instead of pyautoattack
        import autoattack
    except ImportError:
        raise RamptoolError("AutoAttack is not installed: pip install pyautoattack") from None
    adversary = autoattack.AutoAttack(model, norm=AUTOATTACK_NORMS[norm], eps=eps, version="standard",
                                      seed=seed, device=device, verbose=False)

    def run(x, y, batch_size):
        return adversary.run_standard_evaluation(x, y, bs=batch_size, return_labels=True)

    return adversary, run


def installed_version() -> str | None:
    """The installed AutoAttack distribution and version, for report provenance."""
    # installed distributions' versions, read only when recorded
    from importlib.metadata import PackageNotFoundError, version

    for name in ("pyautoattack", "autoattack"):
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return None


@contextlib.contextmanager
def _quiet():
    """AutoAttack prints, logs and warns per batch; ramptool reports the numbers itself."""
    logger = logging.getLogger("auto-attack")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _adversarial(model, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, attacks, seed: int,
                 batch_size: int, device, on_progress) -> torch.Tensor:
    """Adversarial points (x itself where none was found) from AutoAttack's ``attacks``, or its version's list
    when ``attacks`` is None.

    AutoAttack's own loop (each attack on the points still robust, in batches of ``batch_size``, every batch from
    the same seed) is driven one attack and one batch at a time: the same batches give the same result, and
    ``on_progress(attack, points, total)`` can report after each. AutoAttack runs in eval mode, quiet, on a
    forked RNG (it reseeds the global RNG for every batch: the caller's random stream stays untouched), with its
    targeted attacks capped at the model's classes."""
    if norm not in AUTOATTACK_NORMS:
        raise RamptoolError(f"AutoAttack has no {norm!r} threat model; use one of: {', '.join(AUTOATTACK_NORMS)}")
    x_adv = x.clone()
    if len(y) == 0:
        return x_adv
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    try:
        with _quiet(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            adversary, run = _build_adversary(model, norm, float(eps), seed, str(device))
            attacks = list(attacks or adversary.attacks_to_run)
            adversary.verbose = False
            num_classes = logits_of(model, x[:1]).shape[1]
            adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes,
                                                           num_classes - 1)
            adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, num_classes - 1)
            robust = clean_flags(model, x, y, batch_size)
            for attack in attacks:
                adversary.attacks_to_run = [attack]
                index = robust.nonzero().squeeze(1)
                if on_progress is not None:  # the points already fooled count as done for this attack
                    on_progress(attack, len(y) - len(index), len(y) * len(attacks))
                for start in range(0, len(index), batch_size):
                    batch = index[start:start + batch_size]
                    found, labels = run(x[batch], y[batch], batch_size)
                    broken = (labels.cpu() != y[batch].cpu())
                    robust[batch[broken]] = False
                    x_adv[batch[broken]] = found[broken].to(x_adv.device)
                    if on_progress is not None:
                        on_progress(attack, len(batch), len(y) * len(attacks))
    finally:
        model.train(was_training)
    return x_adv


def autoattack_adversarial(model, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, version: str = "fast",
                           batch_size: int = 500, seed: int = 0, device=None, on_progress=None) -> torch.Tensor:
    """AutoAttack's adversarial points for (x, y) (x itself where it found none), on x's device."""
    if version not in VERSIONS:
        raise RamptoolError(f"unknown AutoAttack version {version!r}; use one of: {', '.join(VERSIONS)}")
    return _adversarial(model, x, y, norm, eps, FAST_ATTACKS if version == "fast" else None, seed, batch_size,
                        device, on_progress)


def fab_t_or_square(model, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, attack: str, seed: int = 0,
                    batch_size: int = 500, device=None, on_progress=None) -> torch.Tensor:
    """Standard AutoAttack's third or fourth attack alone, with its settings (FAB-T: 9 target classes, or every
    other class when there are fewer, 1 restart; Square: 5000 queries)."""
    return _adversarial(model, x, y, norm, eps, [attack], seed, batch_size, device, on_progress)
