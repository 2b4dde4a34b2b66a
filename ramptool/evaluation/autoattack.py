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
from ramptool.evaluation.flags import clean_flags

AUTOATTACK_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
VERSIONS = ("fast", "standard")
FAST_ATTACKS = ["apgd-ce", "apgd-t"]


def _model_device(model) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _build_adversary(model, norm: str, eps: float, seed: int, device):
    """(adversary, run(x, y, batch_size) -> per-point predictions after the attack)."""
    try:
        import pyautoattack
    except ImportError:
        pyautoattack = None
    if pyautoattack is not None:
        adversary = pyautoattack.AutoAttack(model, norm=AUTOATTACK_NORMS[norm], eps=eps, version="standard",
                                            seed=seed, device=device)

        def run(x, y, batch_size):
            return adversary.run_standard_evaluation(x, y, batch_size=batch_size)[1]

        return adversary, run
    try:
        import autoattack
    except ImportError:
        raise RamptoolError("AutoAttack is not installed: pip install pyautoattack") from None
    adversary = autoattack.AutoAttack(model, norm=AUTOATTACK_NORMS[norm], eps=eps, version="standard",
                                      seed=seed, device=device, verbose=False)

    def run(x, y, batch_size):
        return adversary.run_standard_evaluation(x, y, bs=batch_size, return_labels=True)[1]

    return adversary, run


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


def autoattack_flags(model, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, version: str = "fast",
                     batch_size: int = 500, seed: int = 0, device=None, on_progress=None) -> torch.Tensor:
    """Per-point flags on CPU: True where the point is classified correctly clean and after AutoAttack.

    AutoAttack's own loop (each attack on the points still robust, in batches of ``batch_size``, every batch
    from the same seed) is driven one attack and one batch at a time: the same batches give the same result,
    and ``on_progress(attack, points, total)`` can report after each."""
    if norm not in AUTOATTACK_NORMS:
        raise RamptoolError(f"AutoAttack has no {norm!r} threat model; use one of: {', '.join(AUTOATTACK_NORMS)}")
    if version not in VERSIONS:
        raise RamptoolError(f"unknown AutoAttack version {version!r}; use one of: {', '.join(VERSIONS)}")
    if len(y) == 0:
        return torch.zeros(0, dtype=torch.bool)
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    try:
        # AutoAttack reseeds the global RNG for every batch: keep the caller's random stream untouched
        with _quiet(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            adversary, run = _build_adversary(model, norm, float(eps), seed, str(device))
            attacks = list(FAST_ATTACKS) if version == "fast" else list(adversary.attacks_to_run)
            adversary.verbose = False
            with torch.no_grad():
                num_classes = model(x[:1].to(device)).shape[1]
            # targeted attacks need that many other classes; AutoAttack's 9 assume at least 10 classes
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
                    robust[batch] = run(x[batch], y[batch], batch_size).cpu() == y[batch].cpu()
                    if on_progress is not None:
                        on_progress(attack, len(batch), len(y) * len(attacks))
    finally:
        model.train(was_training)
    return robust
