"""Which Fashion-MNIST points train, which validate, which test.

Every model of the calibration and of the investigation trains on training indices below ``TRAIN_POOL`` (the
shipped l∞-AT model did too); the validation points are drawn from the indices above it, so no model has seen
them. Test points are only for the final, reported evaluation (``make reproduce``), never for a choice.
"""

from __future__ import annotations

import torch

from ramptool.data.datasets import load_split

DATASET = "fashion-mnist"
TRAIN_POOL = 50_000  # training indices below this train models; the 10,000 above are the validation pool


def validation_points(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points drawn at random (seeded) from training indices TRAIN_POOL..59,999, as [0,1] tensors."""
    data = load_split(DATASET, "train")
    pool = torch.arange(TRAIN_POOL, len(data))
    chosen = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]]
    return data.tensors(chosen)


def test_points(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test points, as [0,1] tensors."""
    return load_split(DATASET, "test", subset=n).tensors()
