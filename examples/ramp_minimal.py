"""RAMP fine-tuning in one file: the shipped l∞-AT Fashion-MNIST model, fine-tuned with RAMP's objective over the
pair (q, r) = (l∞, l1), then evaluated AutoAttack-grade in l∞, l2, l1 and their union.

    OMP_NUM_THREADS=1 python examples/ramp_minimal.py [--subset 10000] [--epochs 1] [--eval-n 100] [--out FILE]

The objective of docs/METHOD.md#ramps-objective, written out; `ramptool finetune --config fmnist-ramp-finetune`
runs the same loss through ramptool's trainer (resumable, multi-process, any method).
Only ramptool's public API is used: the model, the data, APGD, the pairing-loss registry and the evaluation.
"""

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import ramptool
from ramptool.api import eval_mode, get
from ramptool.attacks import apgd_joint
from ramptool.checkpoints import load_checkpoint, save_checkpoint
from ramptool.data import iterate_batches, load_split
from ramptool.evaluation.union import evaluate_union
from ramptool.threat import DEFAULT_EPS

START = Path(ramptool.__file__).parent / "recipes" / "checkpoints" / "fmnist-linf-at.safetensors"
DATASET = "fashion-mnist"
EPS = DEFAULT_EPS[DATASET]  # linf 0.2, l2 1.5, l1 10: the eps the start model and the recipes use
Q, R = "linf", "l1"  # RAMP's key tradeoff pair: the l∞-robust predictions on x_q teach the l1 ones on x_r
# ramptool/recipes/fmnist-ramp-finetune.toml's settings (its subset is 20000: pass --subset 20000 for the recipe)
LAMBDA, LR, BATCH_SIZE = 0.5, 5e-4, 128

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--subset", type=int, default=10000, help="training points (the first N of the train split)")
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--steps", type=int, default=10, help="APGD steps of the training attacks")
parser.add_argument("--eval-n", type=int, default=100, help="test points of the final evaluation")
parser.add_argument("--eval-steps", type=int, default=100, help="APGD steps of the evaluation (AutoAttack's 100)")
parser.add_argument("--print-every", type=int, default=10, help="training steps between progress lines")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", type=Path, help="save the fine-tuned model here (a ramptool checkpoint)")
args = parser.parse_args()

torch.manual_seed(args.seed)
device = "cuda" if torch.cuda.is_available() else "cpu"
model, start_metadata = load_checkpoint(START, device=device)
train_data = load_split(DATASET, "train", subset=args.subset)
x_test, y_test = load_split(DATASET, "test", subset=args.eval_n).tensors()
pairing_loss = get("pairing-loss", "kl")  # KL(p_q || p_r) averaged over the kept points; 0 when none is kept
optimizer = torch.optim.Adam(model.parameters(), lr=LR)
steps_per_epoch = (len(train_data) + BATCH_SIZE - 1) // BATCH_SIZE


def piecewise_lr(t):
    """The paper's fine-tuning schedule at t epochs into training: lr, /10 after a third, /100 after two thirds."""
    return LR * (1.0 if t <= args.epochs / 3 else 0.1 if t <= 2 * args.epochs / 3 else 0.01)


def ramp_loss(x, y):
    # APGD must neither use nor update BatchNorm's batch statistics of adversarial iterates: attack in eval mode
    # (the small CNN has no BatchNorm, but a backbone swapped in may).
    # One joint call gives exactly what two apgd() calls would, and shares their first forward/backward at x.
    with eval_mode(model):
        result_q, result_r = apgd_joint(model, x, y, [(Q, EPS[Q]), (R, EPS[R])], steps=args.steps)
    # two train-mode forwards, so that each adversarial batch gets its own BatchNorm statistics; f(x*) is then
    # gathered from them rather than computed by a third forward
    logits_q, logits_r = model(result_q.x_adv), model(result_r.x_adv)
    take_q = (result_q.loss >= result_r.loss)[:, None]  # x*: per sample the higher-loss point, ties to q
    loss_max = F.cross_entropy(torch.where(take_q, logits_q, logits_r), y)
    # the pairing only pulls r-predictions toward q-predictions that are right; the mask is not differentiated
    kept = (logits_q.argmax(1) == y).detach()
    loss_pair = pairing_loss(logits_q[kept], logits_r[kept])
    stats = {f"acc_{Q}": kept.float().mean(), f"acc_{R}": (logits_r.argmax(1) == y).float().mean(),
             "loss_pair": loss_pair.detach()}
    return loss_max + LAMBDA * loss_pair, stats


print(f"RAMP fine-tuning {START.name} on {len(train_data)} points, {args.epochs} epoch(s) of {steps_per_epoch} "
      f"steps, pair ({Q}, {R}), lambda {LAMBDA}, eps {EPS}, {device}")
started = time.perf_counter()
for epoch in range(args.epochs):
    for step, (x, y) in enumerate(iterate_batches(train_data, BATCH_SIZE, shuffle=True, seed=args.seed,
                                                  epoch=epoch)):
        lr = piecewise_lr(epoch + (step + 1) / steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        loss, stats = ramp_loss(x.to(device), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % args.print_every == 0 or step + 1 == steps_per_epoch:
            shown = "  ".join(f"{name} {float(value):.3f}" for name, value in stats.items())
            print(f"epoch {epoch + 1} step {step + 1:4d}/{steps_per_epoch}  loss {loss.item():.3f}  {shown}  "
                  f"lr {lr:.2g}  {time.perf_counter() - started:.0f}s", flush=True)

# AutoAttack-grade ("fast": APGD-CE + APGD-T per norm at AutoAttack's settings), every success checked before it
# counts; the union counts a point robust only if no norm's attack breaks it
norms = ["linf", "l2", "l1"]
report = evaluate_union(model, x_test, y_test, norms, EPS, steps=args.eval_steps)
accuracy = report["accuracy"]
print(f"accuracy on {len(y_test)} test points: " + "  ".join(f"{k} {accuracy[k]:.3f}"
                                                             for k in ["clean", *norms, "union"]))

if args.out is not None:
    # the start checkpoint describes the network (arch, normalisation, input shape); what changed is the training
    training = {"method": "ramp", "init": str(START), "init_trained_norms": start_metadata.get("trained_norms"),
                "trained_norms": [Q, R], "threat_model": {"norms": norms, "pair": [Q, R], "eps": EPS},
                "lambda": LAMBDA, "pairing": "kl", "epochs": args.epochs, "finished": True,
                "metrics": {"eval": accuracy}, "example": Path(__file__).name}
    dropped = ("config", "epoch", "step", "beta")  # the start run's own settings and progress
    save_checkpoint(args.out, model, {k: v for k, v in start_metadata.items() if k not in dropped} | training)
    print(f"saved {args.out}")
