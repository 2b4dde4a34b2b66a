"""Images/s of the ImageFolder training input pipeline: one process vs DataLoader worker processes, same run.

    .venv/bin/python bench/data.py [--images 1024] [--size 320] [--image-size 224] [--workers 0,N] [--data-dir D]

Writes a JPEG tree (``train/<class>/*.jpg``, smooth random images of --size px, quality 90, like photos in
size and decode cost) to a temporary folder, or reads an existing tree with --data-dir, and times whole epochs
of ramptool's training batches (decode, RandomResizedCrop to --image-size, flip, uint8 batches; pinned memory
when CUDA is there) for each worker count, after a warm-up epoch that fills the page cache. Prints images/s
and the ratio to the first worker count. Every process decodes with one torch thread, as DataLoader workers do.
Absolute rates on a shared machine are noise; the ratio is the result.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ramptool.data.batches import batch_loader, default_workers
from ramptool.data.datasets import load_split


def write_jpeg_tree(root: Path, images: int, size: int, classes: int = 10) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(images):
        folder = root / "train" / f"class{index % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        smooth = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)  # photo-like, not noise
        smooth.save(folder / f"{index:05d}.jpg", quality=90)


def epoch_rate(data, batch_size: int, workers: int, pin_memory: bool) -> float:
    started = time.perf_counter()
    seen = 0
    for x, _ in batch_loader(data, batch_size, seed=0, epoch=0, workers=workers, pin_memory=pin_memory):
        seen += len(x)
    return seen / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024, help="JPEGs to generate")
    parser.add_argument("--size", type=int, default=320, help="side of the generated JPEGs")
    parser.add_argument("--image-size", type=int, default=224, help="training crop size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", default=None, help="comma-separated worker counts (default: 0 and the "
                                                        "default of --workers for this machine)")
    parser.add_argument("--data-dir", default=None, help="an existing ImageFolder root (train/<class>/...)")
    parser.add_argument("--repeats", type=int, default=2, help="epochs per worker count, the fastest kept")
    args = parser.parse_args()

    torch.set_num_threads(1)  # as in a worker: spinning OpenMP threads would slow the in-process decode
    pin_memory = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.data_dir) if args.data_dir else Path(scratch)
        if not args.data_dir:
            write_jpeg_tree(root, args.images, args.size)
        data = load_split("imagefolder", "train", root, image_size=args.image_size)
        counts = ([int(part) for part in args.workers.split(",")] if args.workers
                  else [0, max(1, default_workers(data, "cuda" if pin_memory else "cpu"))])
        epoch_rate(data, args.batch_size, 0, pin_memory)  # warm-up: page cache, imports
        rates = {workers: max(epoch_rate(data, args.batch_size, workers, pin_memory) for _ in range(args.repeats))
                 for workers in counts}
    source = root if args.data_dir else f"generated, {args.size} px"
    print(f"\nImageFolder training batches: {len(data)} JPEGs ({source}), crop {args.image_size}, batch "
          f"{args.batch_size}, pinned memory {pin_memory}, {len(os.sched_getaffinity(0))} CPUs")
    print(f"{'workers':>8} {'images/s':>10} {'x first':>8}")
    first = rates[counts[0]]
    for workers, rate in rates.items():
        print(f"{workers:>8} {rate:>10.0f} {rate / first:>8.2f}")


if __name__ == "__main__":
    main()
