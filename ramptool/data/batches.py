"""Training batches, reproducible at any step and with any number of processes.

Batches come from a ``torch.utils.data.DataLoader`` whose items are whole batches (``EpochBatches``): worker
processes decode and augment the next batches while the model trains, and batches travel as uint8 (4x fewer
bytes to pin and copy than floats) until ``to_unit_float`` on the device. The batch order depends only on
(seed, epoch) and every random augmentation on (seed, epoch, step, position in the global batch), so a run
restarts at any step, and N processes, each taking its slice of every global batch, see exactly what one
process sees, whatever the number of workers. Small datasets are augmented batch-wise with torch ops (fast on
2 CPU cores, and exactly reproducible from a seed).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ramptool.errors import RamptoolError
from ramptool.runtime.distributed import rank_slice


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator, part: slice | None = None,
                  batch_size: int | None = None) -> torch.Tensor:
    """Batch-wise augmentation with an explicit generator (reproducible, resumable). With ``part``, ``x`` is that
    slice of a batch of ``batch_size`` images and gets the slice's share of the draws made for the whole batch."""
    if kind == "none":
        return x
    if kind == "crop-flip":
        n, _, h, w = x.shape
        total = n if part is None else batch_size
        part = part or slice(0, n)
        dy = torch.randint(0, 9, (total,), generator=generator)[part]
        dx = torch.randint(0, 9, (total,), generator=generator)[part]
        flip = (torch.rand(total, generator=generator) < 0.5)[part]
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 8)
        cropped = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
        cropped = cropped.gather(3, cols)
        return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)
    raise RamptoolError(f"unknown augmentation {kind!r}")


def batch_seed(seed: int, epoch: int, index: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + index) % (2**63)


def sample_seed(seed: int, epoch: int, step: int, position: int) -> int:
    """The seed of one training image's random transform: its run seed, epoch, batch and place in the batch."""
    return int(np.random.SeedSequence([seed, epoch, step, position]).generate_state(1, np.uint64)[0] % 2**63)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """Batches as they travel (uint8, or the [0,1] floats a plugin's FolderSplit yields) -> float in [0,1], on
    whatever device they already are."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def num_batches(data, batch_size: int, drop_last: bool = False) -> int:
    return len(data) // batch_size if drop_last else (len(data) + batch_size - 1) // batch_size


class EpochBatches(torch.utils.data.Dataset):
    """One epoch as a map-style dataset whose item ``step`` is this process's slice of global batch ``step``
    (uint8 images, labels): the unit DataLoader workers build ahead of the training loop. What an item holds
    depends only on (seed, epoch, step) and the slice, never on which process or worker builds it."""

    def __init__(self, data, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                 augment: str = "none", drop_last: bool = False, rank: int = 0, world_size: int = 1):
        self.data, self.batch_size, self.seed, self.epoch, self.augment = data, batch_size, seed, epoch, augment
        self.rank, self.world_size = rank, world_size
        self.order = (torch.randperm(len(data), generator=torch.Generator().manual_seed(batch_seed(seed, epoch)))
                      if shuffle else torch.arange(len(data)))
        self.length = num_batches(data, batch_size, drop_last)

    def __len__(self):
        return self.length

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = self.order[step * self.batch_size:(step + 1) * self.batch_size]
        part = rank_slice(len(positions), self.rank, self.world_size)
        seeds = [sample_seed(self.seed, self.epoch, step, p) for p in range(part.start, part.stop)]
        x, y = self.data.batch(positions[part], seeds)
        if self.augment != "none":
            generator = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, step + 1))
            x = augment_batch(x, self.augment, generator, part, len(positions))
        return x, y


def default_workers(data, device, local_world_size: int = 1) -> int:
    """DataLoader workers per process when --workers is not given: the CPUs of this process's share of the
    node, one kept for the training loop, at most 8. In-memory data trained on a CPU gets none: there the
    batches cost next to nothing and workers would only take cores from the training."""
    if getattr(data, "in_memory", False) and torch.device(device).type == "cpu":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus // max(local_world_size, 1) - 1))


def batch_loader(data, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0, augment: str = "none",
                 start: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1, workers: int = 0,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over batches ``start``, ``start + 1``, ... of an epoch (``EpochBatches``), built by
    ``workers`` processes, optionally in pinned memory for non-blocking copies to a GPU."""
    if workers < 0:
        raise RamptoolError(f"--workers must be >= 0, got {workers}")
    batches = EpochBatches(data, batch_size, shuffle, seed, epoch, augment, drop_last, rank, world_size)
    return torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, len(batches)),
                                       num_workers=workers, pin_memory=pin_memory)


def iterate_batches(data, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                    augment: str = "none", start: int = 0, drop_last: bool = False):
    """Yield (x in [0,1], y) batches in one process. The order depends only on (seed, epoch) and each batch's
    augmentation on (seed, epoch, batch index), so iteration can restart at batch ``start`` and reproduce the
    rest exactly."""
    for x, y in batch_loader(data, batch_size, shuffle, seed, epoch, augment, start, drop_last):
        yield to_unit_float(x), y
