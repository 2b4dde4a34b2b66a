"""Seconds per epoch and images/s of every training method on the same data and model, in one run.

    .venv/bin/python bench/train.py [--n 2048] [--methods ramp,e-at,...] [--device cpu|cuda] [--scratch]

By default every method fine-tunes the shipped l∞-AT checkpoint (the paper's main setting, where E-AT's
sampling favours the weaker l1); --scratch starts from random weights of --arch instead. Prints one row per
method (with the number of train- and eval-mode forwards per batch) and the ratio RAMP / E-AT. Absolute times
on shared machines are noise; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ramptool.trainer import TrainConfig, Trainer

SHIPPED_LINF_AT = Path(__file__).resolve().parents[1] / "recipes" / "checkpoints" / "fmnist-linf-at.safetensors"

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
    "ramp+gp": {"method": "ramp", "combiner": "gp"},
}


def count_forwards(model):
    counts = {"train": 0, "eval": 0}

    def hook(module, inputs, output):
        counts["train" if module.training else "eval"] += 1

    model.register_forward_hook(hook)
    return counts


def run(name, overrides, args, root):
    cfg = TrainConfig(out=f"{root}/{name}", dataset=args.dataset, subset=args.n, batch_size=args.batch_size,
                      arch=args.arch, pair=["linf", "l1"], eps={"linf": 0.1, "l2": 1.5, "l1": 10.0},
                      attack_steps=args.steps, optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant",
                      epochs=1, progress=False, device=args.device, overwrite=True,
                      init=None if args.scratch else str(SHIPPED_LINF_AT), **overrides)
    trainer = Trainer(cfg)
    counts = count_forwards(trainer.model)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.run()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return seconds, {k: v / trainer.n_batches for k, v in counts.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2048, help="training points per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="training attack iterations")
    parser.add_argument("--arch", default="small-cnn", help="backbone with --scratch")
    parser.add_argument("--scratch", action="store_true", help="random init instead of fine-tuning l∞-AT")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", default=",".join(CONFIGS))
    parser.add_argument("--repeats", type=int, default=1, help="take the fastest of N epochs per method")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as root:
        run("warm-up", CONFIGS["clean"], args, root)
        for name in args.methods.split(","):
            times = [run(name, CONFIGS[name], args, root) for _ in range(args.repeats)]
            results[name] = min(times, key=lambda item: item[0])
    start = f"{args.arch} from scratch" if args.scratch else "fine-tuning the shipped l∞-AT small CNN"
    print(f"\n{start} on {args.n} {args.dataset} points, batch {args.batch_size}, attack steps {args.steps}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"{'method':<10} {'s/epoch':>9} {'img/s':>9} {'x clean':>8} {'fwd train/batch':>16} {'fwd eval/batch':>15}")
    clean_seconds = results.get("clean", (None,))[0]
    for name, (seconds, forwards) in results.items():
        relative = f"{seconds / clean_seconds:8.1f}" if clean_seconds else f"{'-':>8}"
        print(f"{name:<10} {seconds:9.2f} {args.n / seconds:9.0f} {relative} {forwards['train']:16.1f} "
              f"{forwards['eval']:15.1f}")
    if "ramp" in results and "e-at" in results:
        ratio = results["ramp"][0] / results["e-at"][0]
        print(f"\nRAMP / E-AT time per epoch: {ratio:.2f}x (target <= 1.6x; the paper's code: 2.0x)")


if __name__ == "__main__":
    main()
