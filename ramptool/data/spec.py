"""What a dataset is to ramptool: a ``DatasetSpec`` (shape, classes, normalisation, augmentation, default
hyperparameters, a loader) and the splits its loader returns. Images are float tensors in [0,1]; normalisation
lives in the model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ramptool.data.batches import batch_loader, default_workers, to_unit_float


def default_data_dir() -> Path:
    return Path(os.environ.get("RAMPTOOL_DATA", Path.home() / ".cache" / "ramptool" / "data"))


@dataclass
class TensorSplit:
    """A whole split in memory: uint8 images (N, C, H, W) and int64 labels in [0, num_classes)."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    in_memory = True  # batches cost next to nothing: no DataLoader workers on a CPU (data.batches.default_workers)

    def __len__(self):
        return len(self.labels)

    def subset(self, indices) -> TensorSplit:
        return TensorSplit(self.images[indices], self.labels[indices], self.num_classes)

    def batch(self, indices, sample_seeds=None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels of ``indices`` (augmentation is batch-wise, see ``augment_batch``)."""
        return self.images[indices], self.labels[indices]

    def tensors(self, indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.images if indices is None else self.images[indices]
        labels = self.labels if indices is None else self.labels[indices]
        return to_unit_float(images), labels


@dataclass
class FolderSplit:
    """A split read from disk image by image. ``dataset`` yields (image, label): a [0,1] float or uint8 (C, H, W)
    tensor, or, with ``transform``, whatever ``transform`` turns into one (ImageFolder: a PIL image into uint8).
    A ``random`` transform (training crops and flips) runs under a seed per sample, so it gives the same pixels
    in any worker process."""

    dataset: torch.utils.data.Dataset
    num_classes: int
    transform: Callable | None = None
    random: bool = False
    indices: list[int] | None = None

    def __len__(self):
        return len(self.indices) if self.indices is not None else len(self.dataset)

    def subset(self, indices) -> FolderSplit:
        return dataclasses.replace(self, indices=[self._base(int(i)) for i in indices])

    def _base(self, index: int) -> int:
        return self.indices[index] if self.indices is not None else index

    def load(self, index: int, seed: int | None = None) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[self._base(index)]
        if self.transform is None:
            return image, label
        if not self.random:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):  # torchvision's random transforms draw from the global generator
            torch.manual_seed(seed if seed is not None else index)
            return self.transform(image), label

    def batch(self, indices, sample_seeds=None) -> tuple[torch.Tensor, torch.Tensor]:
        seeds = sample_seeds if sample_seeds is not None else [None] * len(indices)
        items = [self.load(int(i), seed) for i, seed in zip(indices, seeds)]
        return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])

    def tensors(self, indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        """[0,1] images of ``indices`` (default: all), decoded by worker processes."""
        chosen = torch.arange(len(self)) if indices is None else torch.as_tensor(indices)
        parts = list(batch_loader(self.subset(chosen), 256, shuffle=False, workers=default_workers(self, "cpu")))
        return to_unit_float(torch.cat([x for x, _ in parts])), torch.cat([y for _, y in parts])


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: how to load each split, its shape, its normalisation and its train-time augmentation.

    ``load(split, root, download)`` returns the split ("train" or "test") as a ``TensorSplit`` (held in memory,
    uint8) or a ``FolderSplit`` (a torch Dataset of [0,1] float images), read from the data folder ``root``.
    ``input_shape`` is (C, H, W) of every image, ``mean``/``std`` (one value per channel) the normalisation the
    model applies inside, ``num_classes`` the label count (None: read from the data). ``augment`` is the
    train-time augmentation ("crop-flip" or "none"); ``description`` the line ``ramptool plugins`` shows.
    ``hyperparameters`` holds the TrainConfig values that suit the dataset, per mode ("train" from scratch,
    "finetune" from a checkpoint), e.g. ``{"finetune": {"optimizer": "adam", "lr": 5e-4}}``: they replace
    ``ramptool.config.MODE_DEFAULTS`` (the paper's CIFAR-10 settings) for the fields a run leaves unset.
    """

    load: Callable[[str, Path, bool], TensorSplit | FolderSplit]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int | None
    description: str
    augment: str = "none"  # "crop-flip" (CIFAR: crop 32 pad 4 + horizontal flip) or "none"
    resizable: bool = False  # load() takes image_size= (image folders): --image-size picks the resolution
    hyperparameters: dict = field(default_factory=dict)


# SGD at the paper's lr 0.05 leaves the BatchNorm-free small CNN at chance from scratch and wrecks a trained one's
# clean accuracy within an epoch (85 -> 38 measured); Adam trains it, and fine-tunes it at a smaller step
SMALL_GRAYSCALE_HYPERPARAMETERS = {
    "train": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "cosine"},
    "finetune": {"optimizer": "adam", "lr": 5e-4, "weight_decay": 0.0},
}


# the paper's ImageNet fine-tuning: lr 0.005, weight decay 1e-4 (docs/METHOD.md#training-settings-and-reference-numbers)
IMAGENET_HYPERPARAMETERS = {"finetune": {"lr": 0.005, "weight_decay": 1e-4}}
