"""Throughput and forward/backward passes of every registered attack, next to pyautoattack's APGD.

    .venv/bin/python bench/attacks.py [--n 256] [--steps 10] [--device cpu|cuda|all] [--threads 1]
                                      [--random-model]

Attacks a small Fashion-MNIST CNN (trained clean for one epoch on 6000 points, ~15 s; --random-model skips
that) at ramptool's Fashion-MNIST eps. Every point is labelled with the model's own prediction, so all start
correctly classified and pyautoattack (which only attacks those) attacks the same points as ramptool. Passes
are counted in images through the model, per attacked image. Absolute times on shared machines are noise;
read the ratios. Ends with where APGD-l1's time goes (its sparse top-k step and its box-l1 projection).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import tempfile
import time

import torch
import torch.nn as nn
from pyautoattack.autopgd_base import APGDAttack

from ramptool.checkpoints.loading import load_model
from ramptool.data.datasets import load_split
from ramptool.evaluation.passes import PassCounter
from ramptool.models.small_cnn import SmallCNN
from ramptool.plugins.registry import get, registry
from ramptool.threat import DEFAULT_EPS
from ramptool.training.config import TrainConfig
from ramptool.training.trainer import train

EPS = DEFAULT_EPS["fashion-mnist"]
# the module, not the function of the same name that ramptool.attacks re-exports in its place
apgd_module = importlib.import_module("ramptool.attacks.apgd")
AUTOATTACK_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trained_model() -> nn.Module:
    with tempfile.TemporaryDirectory() as out:
        train(TrainConfig(out=out, dataset="fashion-mnist", method="clean", optimizer="adam", lr=1e-3,
                          schedule="constant", subset=6000, epochs=1, progress=False, overwrite=True, device="cpu"))
        return load_model(out)


def measure(counter, x, y, attack_fn):
    """Seconds, forward and backward images per input image, and robust accuracy of one timed run (after a
    small warm-up run that pays for lazy initialisation)."""
    attack_fn(x[:8], y[:8])
    counter.reset()
    synchronize(x.device)
    started = time.perf_counter()
    x_adv, fooled = attack_fn(x, y)
    synchronize(x.device)
    seconds = time.perf_counter() - started
    forwards, backwards = counter.forward_images / len(x), counter.backward_images / len(x)
    with torch.no_grad():
        robust = ((counter.model(x_adv).argmax(1) == y) & ~fooled).float().mean().item()
    return seconds, forwards, backwards, robust


def ramptool_attack(counter, name, steps):
    attack = get("attack", name)
    eps = dict(EPS) if attack.norm is None else EPS[attack.norm]

    def run(x, y):
        result = attack(counter, x, y, eps, steps=steps)
        return result.x_adv, result.fooled

    return run


def pyautoattack_apgd(counter, norm, steps):
    def run(x, y):
        attack = APGDAttack(counter, norm=AUTOATTACK_NORM[norm], eps=EPS[norm], n_iter=steps, n_restarts=1,
                            loss="ce", seed=0, device=x.device)
        return attack.perturb(x, y), torch.zeros_like(y, dtype=torch.bool)

    return run


@contextlib.contextmanager
def timed(module, name, totals, device):
    """Replaces ``module.name`` by a wrapper that adds its (synchronised) run time to ``totals[name]``."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        synchronize(device)
        started = time.perf_counter()
        result = original(*args, **kwargs)
        synchronize(device)
        totals[name] += time.perf_counter() - started
        return result

    totals[name] = 0.0
    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def apgd_l1_breakdown(model, x, y, steps):
    totals = {}
    with timed(apgd_module, "project_l1", totals, x.device), \
            timed(apgd_module, "_sparse_sign_step", totals, x.device):
        synchronize(x.device)
        started = time.perf_counter()
        apgd_module.apgd(model, x, y, "l1", EPS["l1"], steps=steps)
        synchronize(x.device)
        total = time.perf_counter() - started
    return total, totals


def bench_device(base_model, x, y, device, steps):
    model = base_model.to(device).eval()
    counter = PassCounter(model)
    x, y = x.to(device), y.to(device)
    print(f"\n{device}: {len(x)} points, {steps} steps, eps {EPS}, torch threads {torch.get_num_threads()}")
    header = (f"{'attack':<10} {'s':>7} {'img/s':>8} {'fwd/img':>8} {'bwd/img':>8} {'robust':>7} | "
              f"{'AA s':>7} {'AA img/s':>9} {'fwd/img':>8} {'bwd/img':>8} {'robust':>7} | {'AA s / ours s':>13}")
    print(header)
    print("-" * len(header))
    for name in registry().names("attack"):
        seconds, forwards, backwards, robust = measure(counter, x, y, ramptool_attack(counter, name, steps))
        row = (f"{name:<10} {seconds:7.2f} {len(x) / seconds:8.0f} {forwards:8.1f} {backwards:8.1f} "
               f"{robust:7.3f} | ")
        norm = get("attack", name).norm
        if name.startswith("apgd-") and norm in AUTOATTACK_NORM:
            aa_seconds, aa_forwards, aa_backwards, aa_robust = measure(
                counter, x, y, pyautoattack_apgd(counter, norm, steps))
            row += (f"{aa_seconds:7.2f} {len(x) / aa_seconds:9.0f} {aa_forwards:8.1f} {aa_backwards:8.1f} "
                    f"{aa_robust:7.3f} | {aa_seconds / seconds:13.2f}")
        else:
            row += f"{'-':>7} {'-':>9} {'-':>8} {'-':>8} {'-':>7} | {'-':>13}"
        print(row)

    total, parts = apgd_l1_breakdown(model, x, y, steps)
    shares = ", ".join(f"{name} {seconds:.3f} s ({seconds / total:.0%})" for name, seconds in parts.items())
    print(f"\napgd-l1 {total:.3f} s, of which {shares}; the rest: forward and backward passes, bookkeeping")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="test points to attack")
    parser.add_argument("--steps", type=int, default=10, help="attack iterations")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="all: the CPU, and CUDA when there is one")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default). On a CPU shared with other jobs, more "
                             "threads than free cores spin against each other and run many times slower")
    parser.add_argument("--random-model", action="store_true", help="a random CNN instead of a trained one")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = SmallCNN(num_classes=10, in_chans=1, image_size=28) if args.random_model else trained_model()
    model.eval()
    x, _ = load_split("fashion-mnist", "test", subset=args.n).tensors()
    with torch.no_grad():
        y = model(x).argmax(1)

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            if args.device == "cuda":
                raise SystemExit("no CUDA device")
            continue
        bench_device(model, x, y, torch.device(device), args.steps)


if __name__ == "__main__":
    main()
