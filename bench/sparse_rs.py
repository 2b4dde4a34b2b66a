"""ramptool's Sparse-RS (l0) against fra31/sparse-rs's ``RSAttack`` (norm L0, margin loss, p_init 0.3), side
by side on the same model and points: robust accuracy, the largest number of changed pixels, and seconds.

fra31/sparse-rs is not a dependency; point ``--reference`` at a checkout of it (rs_attacks.py and utils.py):

    git clone https://github.com/fra31/sparse-rs /tmp/sparse-rs
    .venv/bin/python bench/sparse_rs.py --reference /tmp/sparse-rs --k 9 --queries 1000 --n 300

Both are random searches with their own random streams, so their accuracies agree up to the sampling noise of
the search, not to the point. The points are the last ``--n`` Fashion-MNIST training points (the calibration
split), the model the shipped l∞-AT small CNN.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import ramptool
from ramptool.attacks.unseen import changed_pixels, sparse_rs
from ramptool.data.datasets import load_split

CHECKPOINT = "recipes/checkpoints/fmnist-linf-at.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="folder holding fra31/sparse-rs's rs_attacks.py")
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, args.reference)
    from rs_attacks import RSAttack

    model = ramptool.load_model(CHECKPOINT)
    train = load_split("fashion-mnist", "train")
    x, y = train.tensors(torch.arange(len(train) - args.n, len(train)))
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    x, y = x[clean], y[clean]

    rows = []
    started = time.perf_counter()
    result = sparse_rs(model, x, y, eps=args.k, steps=args.queries, generator=torch.Generator().manual_seed(0))
    rows.append(("ramptool", result.x_adv, time.perf_counter() - started))
    reference = RSAttack(model, norm="L0", eps=args.k, n_queries=args.queries, p_init=0.3, seed=0,
                         loss="margin", device=x.device, verbose=False)
    started = time.perf_counter()
    with torch.no_grad():
        _, x_reference = reference.perturb(x, y)
    rows.append(("fra31/sparse-rs", x_reference, time.perf_counter() - started))

    print(f"{args.n} points, {len(y)} clean-correct, k={args.k}, {args.queries} queries")
    for name, x_adv, seconds in rows:
        with torch.no_grad():
            robust = (model(x_adv).argmax(1) == y).float().sum().item()
        print(f"{name:16s} robust accuracy {100 * robust / args.n:5.1f}  max changed pixels "
              f"{int(changed_pixels(x, x_adv).max())}  {seconds:6.1f} s")
    print(f"time ratio reference / ramptool: {rows[1][2] / rows[0][2]:.2f}")


if __name__ == "__main__":
    main()
