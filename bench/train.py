"""Seconds per epoch and images/s of every training method on the same data and model, in one run.

    .venv/bin/python bench/train.py [--points 2048] [--methods ramp,e-at,...] [--device cpu|cuda] [--scratch]
    torchrun --nproc_per_node N bench/train.py --device cuda ...     # data-parallel on N GPUs (global --batch-size)

By default every method fine-tunes the shipped l∞-AT checkpoint (the paper's main setting, where E-AT's
sampling favours the weaker l1); --scratch starts from random weights of --arch instead. Prints one row per
method (with the images sent through the model in train and in eval mode per training image) and the ratio
RAMP / E-AT, for RAMP's attacks run one after the other (the CPU default) and batched into one model call per
step (the CUDA default). Methods run round-robin, fastest of --repeats kept. Absolute times on shared machines
are noise; the ratios are what to read. Under torchrun every process trains its slice of each global batch and
rank 0 prints; img/s is then the throughput of all processes together.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from ramptool.plugins.hookspecs import hookimpl
from ramptool.plugins.registry import build_plugin_manager, reset_registry
from ramptool.runtime import distributed
from ramptool.threat import parse_eps
from ramptool.training.config import TrainConfig
from ramptool.training.methods import RAMP
from ramptool.training.recipes import RECIPES_DIR
from ramptool.training.resolve import resolve_config
from ramptool.training.trainer import Trainer

SHIPPED_LINF_AT = RECIPES_DIR / "checkpoints" / "fmnist-linf-at.safetensors"

CONFIGS = {
    "clean": {"method": "clean"},
    "linf-at": {"method": "at", "norms": ["linf"]},
    "l1-at": {"method": "at", "norms": ["l1"]},
    "sat": {"method": "sat"},
    "e-at": {"method": "e-at"},
    "max": {"method": "max"},
    "avg": {"method": "avg"},
    "msd": {"method": "msd"},
    "ramp": {"method": "ramp"},
    "ramp-batched": {"method": "ramp", "batch_attacks": "on"},
    "ramp-paper": {"method": "ramp-paper"},
    "ramp+gp": {"method": "ramp", "combiner": "gp"},
}


class PaperStyleRAMP(RAMP):
    """The baseline: RAMP's loss computed the way the reference code (uiuc-focal-lab/RAMP) does it. Two
    independent attack calls, a third train-mode forward on x*, accuracies read back per batch. Its APGD's
    per-sample Python loop is not reproduced, so on a GPU the real reference code is slower still."""

    def loss(self, model, x, y):
        q, r = self.norms
        result_q, result_r = (self.attack(model, x, y, norm) for norm in (q, r))
        logits_q, logits_r = self.forward(model, result_q.x_adv), self.forward(model, result_r.x_adv)
        stats = {f"acc_{q}": (logits_q.argmax(1) == y).float().mean().item(),
                 f"acc_{r}": (logits_r.argmax(1) == y).float().mean().item()}
        take_q = (result_q.loss >= result_r.loss).view(-1, *([1] * (x.dim() - 1)))
        loss_max = F.cross_entropy(self.forward(model, torch.where(take_q, result_q.x_adv, result_r.x_adv)), y)
        kept = (logits_q.argmax(1) == y).detach()
        loss_pair = self.pairing_loss(logits_q[kept], logits_r[kept])
        return loss_max + self.ctx.lam * loss_pair, {**stats, "loss_pair": loss_pair.detach()}


@hookimpl
def register_methods():
    return {"ramp-paper": PaperStyleRAMP}


def count_forwards(model):
    """Images sent through the model, in train and in eval mode (batched attacks send more per call)."""
    counts = {"train": 0, "eval": 0}

    def hook(module, inputs, output):
        counts["train" if module.training else "eval"] += inputs[0].shape[0]

    model.register_forward_hook(hook)
    return counts


def run(name, overrides, args, root):
    cfg = TrainConfig(out=f"{root}/{name}", dataset=args.dataset, data_dir=args.data_dir, workers=args.workers,
                      subset=args.n, batch_size=args.batch_size,
                      arch=args.arch, pair=["linf", "l1"], eps=parse_eps(None, args.dataset),
                      attack_steps=args.steps, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant",
                      epochs=1, progress=False, device=args.device, overwrite=True,
                      init=None if args.scratch else str(SHIPPED_LINF_AT), **overrides)
    trainer = Trainer(resolve_config(cfg))
    counts = count_forwards(trainer.model)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.run()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return seconds, {k: v / (args.n / trainer.dist.world_size) for k, v in counts.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", "--n", dest="n", type=int, default=2048,
                        help="training points per epoch (--points under torchrun, whose own options take --n)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="training attack iterations")
    parser.add_argument("--arch", default="small-cnn", help="backbone with --scratch")
    parser.add_argument("--scratch", action="store_true", help="random init instead of fine-tuning l∞-AT")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None, help="dataset root (default: ramptool's data folder)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: ramptool's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", default=",".join(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3, help="take the fastest of N epochs per method")
    args = parser.parse_args()

    if args.dataset != "fashion-mnist" and not args.scratch:
        parser.error("the shipped checkpoint is a Fashion-MNIST model: pass --scratch with another --dataset")
    names = args.methods.split(",")
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    manager = build_plugin_manager()
    manager.register(sys.modules[__name__], name="bench-train")  # the baseline arrives as a plugin would
    reset_registry(manager)
    times = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as root:
        run("warm-up", CONFIGS["clean"], args, root)
        # round-robin, so a slow spell of a shared machine hits every method rather than one
        for _ in range(args.repeats):
            for name in names:
                times[name].append(run(name, CONFIGS[name], args, root))
    if not distributed.is_main():
        return
    results = {name: min(runs, key=lambda item: item[0]) for name, runs in times.items()}
    start = f"{args.arch} from scratch" if args.scratch else "fine-tuning the shipped l∞-AT small CNN"
    card = f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() and args.device != "cpu" else ""
    print(f"\n{start} on {args.n} {args.dataset} points, batch {args.batch_size}, attack steps {args.steps}, "
          f"device {args.device}{card} x {distributed.world_size()} process(es), torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'method':<13} {'s/epoch':>9} {'img/s':>9} {'x clean':>8} {'fwd train/img':>14} {'fwd eval/img':>13}")
    clean_seconds = results.get("clean", (None,))[0]
    for name, (seconds, forwards) in results.items():
        relative = f"{seconds / clean_seconds:8.1f}" if clean_seconds else f"{'-':>8}"
        print(f"{name:<13} {seconds:9.2f} {args.n / seconds:9.0f} {relative} {forwards['train']:14.1f} "
              f"{forwards['eval']:13.1f}")
    if "e-at" in results:
        for name in (n for n in results if n.startswith("ramp")):
            ratio = results[name][0] / results["e-at"][0]
            print(f"{name} / e-at time per epoch: {ratio:.2f}x (target <= 1.6x)")
    if "ramp" in results and "ramp-paper" in results:
        print(f"ramp / ramp-paper time per epoch: {results['ramp'][0] / results['ramp-paper'][0]:.2f}x")


if __name__ == "__main__":
    try:
        main()
    finally:
        distributed.shutdown()  # the trainer joined torchrun's process group; leave it cleanly
