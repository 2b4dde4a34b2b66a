"""GPU speed at CIFAR-10 scale: seconds per 50,000-image epoch of E-AT, MAX and RAMP on PreAct ResNet-18 or
WideResNet-28-10, beside the paper's A100 table, with a reference-style RAMP step and union-evaluation throughput.

    .venv/bin/python bench/scale.py --arch preact-resnet18 [--device cuda] [--steps 20] [--rounds 3]
    .venv/bin/python bench/scale.py --arch wrn-28-10
    .venv/bin/python bench/scale.py --smoke            # seconds on a CPU: a tiny CNN, batch 8, one step

Inputs are CIFAR-shaped random tensors (3x32x32, 10 classes, labels at random): the cost of a step does not depend
on the pixels, since ramptool's training attacks never stop early; correctness lives in the tests. Every method
trains its own copy of the same randomly initialised model in the fine-tuning setting (APGD-10 in linf and l1,
MAX over linf, l2 and l1, batch 128, SGD), and runs --steps timed steps per round after --warmup untimed ones;
methods run round-robin for --rounds rounds and the fastest round is kept, then scaled to a 50,000-image epoch.
The data loader is not part of the timing. On CUDA training runs in bf16 autocast with channels_last (--amp,
--channels-last), as `ramptool train --amp bf16 --channels-last` does.

Per method: s/epoch, steps timed, img/s, peak GPU memory above the resident weights and optimizer states,
forwards and backwards per training image (counted by hooks, attack and training passes apart), and model FLOPs
utilisation: the FLOPs of one forward, one input-only backward (the attacks') and one full backward (training),
counted once with torch.utils.flop_counter, times the passes counted, against the card's bf16 peak.

``ramp-reference`` is RAMP's step the way the reference code (uiuc-focal-lab/RAMP, RAMP.py with E-AT's
apgd_train) computes it: two attack calls, three train-mode forwards, accuracies read back per batch, and an
APGD whose bookkeeping goes through ``nonzero()`` index lists and a per-sample Python loop over the batch every
iteration. Its maths is ramptool's (the same steps and projections; the reference's own l1 projection adds a
binary search with more host syncs), so the measured ratio understates the reference code's cost.

The union evaluation (AutoAttack-grade, fast version: APGD-CE + APGD-T per norm) runs ramptool's engine, its
--union-only cascade and pyautoattack on the same points in the same run. A randomly initialised model is
broken within a few iterations, so by default this measures the early-exit path; pass --eval-ckpt for a robust
CIFAR-10 model. Evaluation is float32 (TF32 as PyTorch's defaults set it, printed in the header).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from train import PaperStyleRAMP  # bench/train.py's reference-style RAMP loss (bench/ leads sys.path here)

from ramptool.attacks.base import AttackResult, per_sample
from ramptool.evaluation.union import evaluate_union, load_for_evaluation
from ramptool.models import build_model
from ramptool.plugins.registry import get
from ramptool.runtime import distributed
from ramptool.runtime.device import eval_mode, resolve_device, set_threads
from ramptool.threat import DEFAULT_EPS, project
from ramptool.training.methods import MethodContext

EPOCH_IMAGES = 50_000
SHAPE, CLASSES = (3, 32, 32), 10
EPS = DEFAULT_EPS["cifar10"]
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)

# Table 7 of the paper (one A100, CIFAR-10, s/epoch)
PAPER_SECONDS = {"preact-resnet18": {"e-at": 78, "max": 219, "ramp": 157},
                 "wrn-28-10": {"e-at": 334, "max": 1048, "ramp": 660}}

# dense bf16 tensor-core peaks, TFLOP/s, by a substring of torch.cuda.get_device_name(); the first match counts
BF16_PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                    ("GH200", 989.4), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("A10", 125.0)]


def bf16_peak(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "CPU", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak * 1e12 for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------- the reference's cost

def reference_style_apgd(model, x, y, norm, eps, steps, l1_topk=0.05):
    """APGD-CE from x, bookkept the way E-AT's ``apgd_train`` (which RAMP.py calls) does it: per iteration a
    Python loop over the batch reads every point's true-class probability into a new tensor (a host copy per
    point on a GPU), and the best point, best loss and step sizes are updated through ``nonzero()`` index lists.
    Returns (highest-loss point, its loss)."""
    n_features = x[0].numel()
    rows = torch.arange(x.shape[0], device=x.device)
    step = torch.full((x.shape[0], *[1] * (x.dim() - 1)), (2.0 if norm != "l1" else 1.0) * eps, device=x.device)
    topk = torch.full((x.shape[0],), l1_topk, device=x.device)
    sparsity_old = torch.full_like(topk, float(n_features))
    window = max(int(0.22 * steps), 1) if norm != "l1" else max(int(0.04 * steps), 1)

    def evaluate(point, need_grad=True):
        point = point.detach().requires_grad_()
        logits = model(point)
        loss = F.cross_entropy(logits, y, reduction="none")
        grad = torch.autograd.grad(loss.sum(), point)[0].detach() if need_grad else None
        return logits.detach(), loss.detach(), grad

    x_adv = x.clone()
    logits, loss, grad = evaluate(x_adv)
    x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()
    loss_steps = torch.zeros(steps, x.shape[0], device=x.device)
    reduced_last, loss_best_last = torch.ones_like(loss), loss.clone()
    x_old, since_check = x_adv.clone(), 0
    for i in range(steps):
        momentum = x_adv - x_old
        x_old = x_adv.clone()
        if norm == "l1":
            magnitudes = grad.abs().flatten(1).sort(dim=1)[0]
            cut = ((1.0 - topk) * n_features).clamp(0, n_features - 1).long()
            sparse = grad * (grad.abs() >= per_sample(magnitudes[rows, cut], grad)).float()
            count = sparse.sign().abs().flatten(1).sum(dim=1)
            x_adv = project(x, x_adv + step * sparse.sign() / per_sample(count + 1e-10, x), "l1", eps)
        else:
            direction = grad.sign() if norm == "linf" else grad / per_sample(grad.flatten(1).norm(dim=1) + 1e-12, x)
            z = project(x, x_adv + step * direction, norm, eps)
            a = 0.75 if i > 0 else 1.0
            x_adv = project(x, x_adv + (z - x_adv) * a + momentum * (1 - a), norm, eps)
        logits, loss, new_grad = evaluate(x_adv, need_grad=i < steps - 1)
        grad = new_grad if new_grad is not None else grad
        probabilities = F.softmax(logits, dim=1)
        torch.tensor([probabilities[k][y[k]] for k in range(len(y))])  # the reference's per-sample loop
        improved = (loss > loss_best).nonzero().squeeze()
        x_best[improved], grad_best[improved], loss_best[improved] = x_adv[improved], grad[improved], loss[improved]
        loss_steps[i] = loss
        since_check += 1
        if since_check < window:
            continue
        since_check = 0
        if norm == "l1":
            sparsity = (x_best - x).flatten(1).ne(0).sum(dim=1).float()
            restart = sparsity / sparsity_old < 0.95
            topk, sparsity_old = sparsity / n_features / 1.5, sparsity
            step[restart] = eps
            step[~restart] /= 1.5
            step.clamp_(eps / 10.0, eps)
        else:
            history = torch.cat([torch.zeros_like(loss_steps[:1]), loss_steps])  # the record starts at zero
            increases = (history[i - window + 2:i + 2] > history[i - window + 1:i + 1]).float().sum(dim=0)
            restart = (increases <= 0.75 * window) | ((1 - reduced_last).bool() & (loss_best_last >= loss_best))
            reduced_last, loss_best_last = restart.float(), loss_best.clone()
            if restart.sum() > 0:
                index = restart.nonzero().squeeze()
                step[index] /= 2.0
            window = max(window - max(int(0.03 * steps), 1), max(int(0.06 * steps), 1))
        x_adv[restart], grad[restart] = x_best[restart], grad_best[restart]
    return x_best, loss_best


class ReferenceStyleRAMP(PaperStyleRAMP):
    """bench/train.py's reference-style RAMP loss (two attack calls, three train-mode forwards, accuracies read
    back) on the reference-style APGD above."""

    def attack(self, model, x, y, norm):
        with eval_mode(model), self._autocast():
            x_adv, loss = reference_style_apgd(distributed.unwrap(model), x, y, norm, self.ctx.eps[norm],
                                               self.ctx.attack_steps)
        return AttackResult(x_adv.to(x.dtype), loss.float(), torch.zeros_like(y, dtype=torch.bool))


METHODS = {"e-at": "e-at", "max": "max", "ramp": "ramp", "ramp-reference": ReferenceStyleRAMP}


# ----------------------------------------------------------------------------------------------- counting

class PassHooks:
    """Images sent forward and backward through the model, attack passes (eval mode) and training passes (train
    mode) apart. A backward is counted when the gradient reaches the model's output."""

    def __init__(self, model):
        self.counts = dict.fromkeys(("attack forward", "attack backward", "train forward", "train backward"), 0)
        model.register_forward_hook(self._forward)

    def _forward(self, module, inputs, output):
        kind = "train" if module.training else "attack"
        self.counts[f"{kind} forward"] += output.shape[0]
        if output.requires_grad:
            output.register_hook(lambda grad: self._backward(kind, grad))

    def _backward(self, kind, grad):
        self.counts[f"{kind} backward"] += grad.shape[0]

    def reset(self):
        self.counts = dict.fromkeys(self.counts, 0)


def flops_per_image(model, x, y) -> dict[str, float]:
    """FLOPs of one image's forward, input-only backward (an attack step, weights frozen) and full backward
    (a training step), counted once on the batch ``x``."""
    counted = {}
    with eval_mode(model):
        point = x.detach().requires_grad_()
        for p in model.parameters():
            p.requires_grad_(False)
        with FlopCounterMode(display=False) as forward:
            loss = F.cross_entropy(model(point), y)
        with FlopCounterMode(display=False) as backward:
            torch.autograd.grad(loss, point)
        for p in model.parameters():
            p.requires_grad_(True)
        counted["forward"], counted["attack backward"] = forward.get_total_flops(), backward.get_total_flops()
    with FlopCounterMode(display=False) as full:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    counted["train backward"] = full.get_total_flops() - counted["forward"]
    return {kind: flops / x.shape[0] for kind, flops in counted.items()}


# ----------------------------------------------------------------------------------------------- training

class MethodRun:
    """One method training its own copy of the model with its own optimizer, through the trainer's plain
    combiner step, on fixed random batches."""

    def __init__(self, name, model, args, device):
        self.name, self.model = name, copy.deepcopy(model)
        if args.compile != "off":  # compiled on its first calls, in each mode and batch size: the warm-up's time
            self.model = torch.compile(self.model, mode=None if args.compile == "default" else args.compile)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else None
        ctx = MethodContext(norms=["linf", "l2", "l1"], eps=dict(EPS), pair=("linf", "l1"), attack_steps=10,
                            lam=0.5, autocast=autocast, batch_attacks=args.batch_attacks == "on")
        method = METHODS[name]
        self.method = (get("method", method) if isinstance(method, str) else method)(ctx)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.combiner = get("combiner", "none")(self.model, None)
        self.hooks = PassHooks(self.model)
        self.rounds, self.peak = [], 0

    def step(self, x, y):
        self.model.train()
        loss, stats = self.combiner.train_step(self.model, self.optimizer,
                                               lambda: self.method.loss(self.model, x, y), x, y)
        # the trainer reads the loss and stats back after every step; so does the benchmark
        return [float(value) for value in (loss, *stats.values())]

    def timed_round(self, batches, device):
        if device.type == "cuda":
            resident = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        started = time.perf_counter()
        for x, y in batches:
            self.step(x, y)
        synchronize(device)
        self.rounds.append(time.perf_counter() - started)
        if device.type == "cuda":
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(device) - resident)


def profile_step(run, batch, device, rows=15):
    """Where one step's time goes: torch.profiler's operators, by their own device (or CPU) time."""
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                          if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as profiler:
        run.step(*batch)
        synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of one {run.name} step, by {key}:")
    print(profiler.key_averages().table(sort_by=key, row_limit=rows))


def random_batches(count, batch_size, device, memory_format, seed):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        x = torch.rand(batch_size, *SHAPE, generator=generator).to(device)
        y = torch.randint(CLASSES, (batch_size,), generator=generator).to(device)
        batches.append((x.contiguous(memory_format=memory_format), y))
    return batches


def memory_format_of(args):
    return torch.channels_last if args.channels_last else torch.contiguous_format


def bench_training(args, device):
    torch.manual_seed(args.seed)
    model = build_model(args.arch, CLASSES, SHAPE, CIFAR10_MEAN, CIFAR10_STD).to(device)
    model.to(memory_format=memory_format_of(args))
    batches = random_batches(args.steps, args.batch_size, device, memory_format_of(args), args.seed)
    flops = flops_per_image(model, *batches[0])
    runs = [MethodRun(name, model, args, device) for name in args.methods]
    for run in runs:
        started = time.perf_counter()
        for x, y in batches[:args.warmup]:
            run.step(x, y)
        synchronize(device)
        run.warmup_seconds = time.perf_counter() - started
        run.hooks.reset()
    # round-robin, so a slow spell of the machine hits every method rather than one
    for _ in range(args.rounds):
        for run in runs:
            run.timed_round(batches, device)
    return runs, flops


def report_training(args, device, runs, flops):
    card, peak = bf16_peak(device)
    images = args.steps * args.batch_size
    print(f"\n{args.arch}, CIFAR-shaped random tensors {'x'.join(map(str, SHAPE))}, {CLASSES} classes, batch "
          f"{args.batch_size}, APGD-10, fine-tuning setting; {args.steps} steps per round, fastest of "
          f"{args.rounds} rounds, scaled to {EPOCH_IMAGES:,} images; {card}; amp {args.amp}, channels_last "
          f"{args.channels_last}, batch attacks {args.batch_attacks}, torch.compile {args.compile}")
    print(f"model GFLOPs per image: forward {flops['forward'] / 1e9:.3f}, attack backward (input only) "
          f"{flops['attack backward'] / 1e9:.3f}, training backward {flops['train backward'] / 1e9:.3f}; "
          f"bf16 peak {'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}")
    header = (f"{'method':<15} {'s/epoch':>8} {'timed':>6} {'img/s':>7} {'peak GiB':>8} {'fwd/img':>8} "
              f"{'bwd/img':>8} {'(attack+train)':>15} {'PFLOP/epoch':>11} {'MFU':>6} {'warm-up s':>9} "
              f"{'paper A100 s':>12}")
    print(header)
    print("-" * len(header))
    seconds = {}
    for run in runs:
        best = min(run.rounds)
        seconds[run.name] = best * EPOCH_IMAGES / images
        per_image = {kind: count / (images * args.rounds) for kind, count in run.hooks.counts.items()}
        forwards = per_image["attack forward"] + per_image["train forward"]
        backwards = per_image["attack backward"] + per_image["train backward"]
        work = (forwards * flops["forward"] + per_image["attack backward"] * flops["attack backward"]
                + per_image["train backward"] * flops["train backward"])
        mfu = "unknown" if peak is None else f"{work * images / best / peak:.1%}"
        memory = f"{run.peak / 2**30:8.2f}" if device.type == "cuda" else f"{'-':>8}"
        split = f"{per_image['attack forward']:.0f}+{per_image['train forward']:.0f}/" \
                f"{per_image['attack backward']:.0f}+{per_image['train backward']:.0f}"
        paper = PAPER_SECONDS.get(args.arch, {}).get(run.name)
        print(f"{run.name:<15} {seconds[run.name]:8.1f} {args.steps * args.rounds:6d} {images / best:7.0f} "
              f"{memory} {forwards:8.1f} {backwards:8.1f} {split:>15} {work * EPOCH_IMAGES / 1e15:11.2f} "
              f"{mfu:>6} {run.warmup_seconds:9.1f} {paper if paper else '-':>12}")
    if device.type == "cuda":
        print("peak GiB: the most GPU memory a step held above the weights and optimizer states resident")
    paper = PAPER_SECONDS.get(args.arch, {})
    for name, target in (("ramp", "target <= 1.6x"), ("max", "")):
        if name in seconds and "e-at" in seconds:
            theirs = f", paper {paper[name] / paper['e-at']:.2f}x" if paper else ""
            print(f"{name} / e-at s/epoch: {seconds[name] / seconds['e-at']:.2f}x{theirs}"
                  f"{f' ({target})' if target else ''}")
    if "ramp" in seconds and "ramp-reference" in seconds:
        print(f"ramp throughput / ramp-reference throughput: {seconds['ramp-reference'] / seconds['ramp']:.2f}x "
              f"(target >= 1.5x)")
    return seconds


# ----------------------------------------------------------------------------------------------- evaluation

def bench_evaluation(args, device):
    """Points/s of the AutoAttack-grade union evaluation: ramptool's engine, its --union-only cascade and
    pyautoattack, on the same points. Labels are the model's own predictions, so every point starts correct
    and all three attack every point."""
    if args.eval_ckpt:
        model, _, _ = load_for_evaluation(args.eval_ckpt, dataset="cifar10", device=str(device))
    else:
        torch.manual_seed(args.seed)
        model = build_model(args.arch, CLASSES, SHAPE, CIFAR10_MEAN, CIFAR10_STD).to(device)
    model.eval()
    x = torch.rand(args.eval_points, *SHAPE, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    what = args.eval_ckpt or f"a randomly initialised {args.arch} (breaks early: pass --eval-ckpt)"
    print(f"\nunion evaluation (AutoAttack-grade, fast: APGD-CE + APGD-T per norm, float32) of {what} on "
          f"{len(y)} CIFAR-shaped random points, batch {args.eval_batch_size}, eps {EPS}")
    plans = {"ramptool": {"steps": args.eval_steps}, "ramptool --union-only": {"steps": args.eval_steps,
                                                                               "union_only": True}}
    if not args.skip_autoattack:
        plans["pyautoattack"] = {"attack": "autoattack"}
    rates = {}
    print(f"{'engine':<22} {'s':>8} {'points/s':>9} {'union %':>8} {'forward/pt':>10} {'backward/pt':>11}")
    for name, options in plans.items():
        synchronize(device)
        started = time.perf_counter()
        report = evaluate_union(model, x, y, ["linf", "l2", "l1"], EPS, version="fast",
                                batch_size=args.eval_batch_size, seed=args.seed, **options)
        synchronize(device)
        seconds = time.perf_counter() - started
        rates[name] = len(y) / seconds
        passes = report["passes"]
        forward = sum(p["forward"] for p in passes.values()) / len(y)
        backward = sum(p["backward"] for p in passes.values()) / len(y)
        print(f"{name:<22} {seconds:8.2f} {rates[name]:9.1f} {100 * report['accuracy']['union']:8.1f} "
              f"{forward:10.1f} {backward:11.1f}")
    if "pyautoattack" in rates:
        for name in ("ramptool", "ramptool --union-only"):
            print(f"{name} / pyautoattack points/s: {rates[name] / rates['pyautoattack']:.2f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="preact-resnet18", help="preact-resnet18 or wrn-28-10 (any backbone)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method first (cuDNN autotuning)")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds; the fastest is kept")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--amp", choices=["auto", "bf16", "none"], default="auto", help="auto: bf16 on CUDA")
    parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto", help="auto: on CUDA")
    parser.add_argument("--batch-attacks", choices=["auto", "on", "off"], default="auto", help="auto: on CUDA")
    parser.add_argument("--compile", choices=["off", "default", "reduce-overhead", "max-autotune"], default="off",
                        help="torch.compile every method's model in this mode (reduce-overhead: with CUDA graphs); "
                             "compiling is in the warm-up column, mostly the first method's (the others reuse "
                             "its kernels)")
    parser.add_argument("--profile", default="", help="methods (comma-separated) to profile one more step of")
    parser.add_argument("--eval-points", type=int, default=500, help="points of the union evaluation (0: none)")
    parser.add_argument("--eval-batch-size", type=int, default=500)
    parser.add_argument("--eval-steps", type=int, default=100, help="ramptool's APGD iterations (AutoAttack: 100)")
    parser.add_argument("--eval-ckpt", default=None, help="a CIFAR-10 checkpoint to evaluate instead")
    parser.add_argument("--skip-autoattack", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds on a CPU: small-cnn, batch 8, one step, 8 evaluation points, "
                                                     "no pyautoattack")
    args = parser.parse_args(argv)
    if args.smoke:
        args.arch, args.device, args.batch_size, args.steps, args.warmup, args.rounds = "small-cnn", "cpu", 8, 1, 1, 1
        args.eval_points, args.eval_batch_size, args.eval_steps = min(args.eval_points, 8), 8, 3
        args.skip_autoattack = True  # its 100 iterations per norm, whatever the model, take longer than the rest
    args.methods, args.profile = args.methods.split(","), [name for name in args.profile.split(",") if name]
    unknown = [name for name in args.methods + args.profile if name not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    device = resolve_device(args.device)
    set_threads(None, device)
    on_cuda = device.type == "cuda"
    args.amp = ("bf16" if on_cuda else "none") if args.amp == "auto" else args.amp
    args.channels_last = on_cuda if args.channels_last == "auto" else args.channels_last == "on"
    args.batch_attacks = ("on" if on_cuda else "off") if args.batch_attacks == "auto" else args.batch_attacks
    versions = f"torch {torch.__version__}" + (f", CUDA {torch.version.cuda}, TF32 matmul "
                                               f"{torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN "
                                               f"{torch.backends.cudnn.allow_tf32}" if on_cuda else
                                               f", {torch.get_num_threads()} CPU threads")
    print(f"bench/scale.py {' '.join(argv if argv is not None else sys.argv[1:])}: {versions}")
    runs, flops = bench_training(args, device)
    report_training(args, device, runs, flops)
    for run in (run for run in runs if run.name in args.profile):
        profile_step(run, random_batches(1, args.batch_size, device, memory_format_of(args), args.seed)[0], device)
    if args.eval_points > 0:
        bench_evaluation(args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
