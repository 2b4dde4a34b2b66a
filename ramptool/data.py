"""Datasets as registered components. Images come out as float tensors in [0,1]; normalisation lives in the model.

Small datasets (Fashion-MNIST, MNIST, CIFAR) are held in memory as uint8 tensors and augmented batch-wise with
torch ops (fast on 2 CPU cores, and exactly reproducible from a seed); ImageFolder datasets stream from disk.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ramptool.errors import RamptoolError
from ramptool.hookspecs import hookimpl

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def default_data_dir() -> Path:
    return Path(os.environ.get("RAMPTOOL_DATA", Path.home() / ".cache" / "ramptool" / "data"))


@dataclass
class TensorSplit:
    """A whole split in memory: uint8 images (N, C, H, W) and int64 labels in [0, num_classes)."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __len__(self):
        return len(self.labels)

    def subset(self, indices) -> TensorSplit:
        return TensorSplit(self.images[indices], self.labels[indices], self.num_classes)

    def tensors(self, indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.images if indices is None else self.images[indices]
        labels = self.labels if indices is None else self.labels[indices]
        return images.float().div_(255.0), labels


@dataclass
class FolderSplit:
    """An ImageFolder split read from disk through torchvision transforms."""

    dataset: torch.utils.data.Dataset
    num_classes: int
    indices: list[int] | None = None

    def __len__(self):
        return len(self.indices) if self.indices is not None else len(self.dataset)

    def subset(self, indices) -> FolderSplit:
        base = self.indices if self.indices is not None else range(len(self.dataset))
        return FolderSplit(self.dataset, self.num_classes, [base[int(i)] for i in indices])

    def tensors(self, indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = range(len(self)) if indices is None else [int(i) for i in indices]
        base = self.indices if self.indices is not None else range(len(self.dataset))
        items = [self.dataset[base[i]] for i in chosen]
        return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: how to load each split, its shape, its normalisation and its train-time augmentation.

    ``load(split, root, download)`` returns the split ("train" or "test") as a ``TensorSplit`` (held in memory,
    uint8) or a ``FolderSplit`` (a torch Dataset of [0,1] float images), read from the data folder ``root``.
    ``input_shape`` is (C, H, W) of every image, ``mean``/``std`` (one value per channel) the normalisation the
    model applies inside, ``num_classes`` the label count (None: read from the data). ``augment`` is the
    train-time augmentation ("crop-flip" or "none"); ``description`` the line ``ramptool plugins`` shows.
    """

    load: Callable[[str, Path, bool], TensorSplit | FolderSplit]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int | None
    description: str
    augment: str = "none"  # "crop-flip" (CIFAR: crop 32 pad 4 + horizontal flip) or "none"
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- MNIST-style (idx files through torchvision)

def _prepare_debian_fashion_mnist(root: Path) -> None:
    """Decompress Debian's dataset-fashion-mnist into the layout torchvision reads (ROOT/FashionMNIST/raw)."""
    raw = root / "FashionMNIST" / "raw"
    if not DEBIAN_FASHION_MNIST.is_dir():
        return
    for archive in DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"):
        target = raw / archive.name[:-3]
        if target.exists():
            continue
        raw.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        with gzip.open(archive, "rb") as source, open(partial, "wb") as sink:
            shutil.copyfileobj(source, sink)
        partial.replace(target)


def _torchvision_mnist(cls_name: str, how_to_get: str):
    def load(split: str, root: Path, download: bool) -> TensorSplit:
        import torchvision

        if cls_name == "FashionMNIST":
            _prepare_debian_fashion_mnist(root)
        cls = getattr(torchvision.datasets, cls_name)
        try:
            dataset = cls(str(root), train=split == "train", download=False)
        except RuntimeError:
            if not download:
                raise RamptoolError(f"{cls_name} not found under {root / cls_name / 'raw'}; {how_to_get}") from None
            try:
                dataset = cls(str(root), train=split == "train", download=True)
            except Exception as error:
                raise RamptoolError(f"{cls_name} not found under {root / cls_name / 'raw'} and the download "
                                    f"failed ({type(error).__name__}); {how_to_get}") from None
        images = dataset.data.unsqueeze(1).contiguous()
        return TensorSplit(images, dataset.targets.long(), 10)

    return load


# ---------------------------------------------------------------- CIFAR (binary or python format, no pickle code)

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR's python format is a pickle: allow only what plain numpy arrays need, so no code can run."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _read_cifar_python(path: Path, label_key: bytes):
    try:
        with open(path, "rb") as handle:
            batch = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError) as error:
        raise RamptoolError(f"{path} is not a readable CIFAR batch: {error}") from None
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(batch[label_key], dtype=np.int64)


def _read_cifar_binary(path: Path, label_bytes: int):
    record = np.fromfile(path, dtype=np.uint8).reshape(-1, label_bytes + 3072)
    # CIFAR-100's binary record is (coarse label, fine label, pixels): the fine label is the last label byte
    return record[:, label_bytes:].reshape(-1, 3, 32, 32), record[:, label_bytes - 1].astype(np.int64)


def _cifar(num_classes: int):
    tv_name = "CIFAR10" if num_classes == 10 else "CIFAR100"
    if num_classes == 10:
        py_dir, bin_dir = "cifar-10-batches-py", "cifar-10-batches-bin"
        py_files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        bin_files = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
        label_key, label_bytes = b"labels", 1
    else:
        py_dir, bin_dir = "cifar-100-python", "cifar-100-binary"
        py_files, bin_files = {"train": ["train"], "test": ["test"]}, {"train": ["train.bin"], "test": ["test.bin"]}
        label_key, label_bytes = b"fine_labels", 2

    def read(split: str, root: Path):
        if all((root / bin_dir / f).exists() for f in bin_files[split]):
            parts = [_read_cifar_binary(root / bin_dir / f, label_bytes) for f in bin_files[split]]
        elif all((root / py_dir / f).exists() for f in py_files[split]):
            parts = [_read_cifar_python(root / py_dir / f, label_key) for f in py_files[split]]
        else:
            return None
        images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return TensorSplit(torch.from_numpy(images.copy()), torch.from_numpy(labels), num_classes)

    def load(split: str, root: Path, download: bool) -> TensorSplit:
        loaded = read(split, root)
        if loaded is None and download:
            import torchvision

            try:
                getattr(torchvision.datasets, tv_name)(str(root), train=split == "train", download=True)
            except Exception as error:
                raise RamptoolError(f"{tv_name} not found under {root} ({py_dir}/ or {bin_dir}/) and the "
                                    f"download failed ({type(error).__name__}); pass --data-dir DIR holding "
                                    f"{py_dir}/ from https://www.cs.toronto.edu/~kriz/cifar.html") from None
            loaded = read(split, root)
        if loaded is None:
            raise RamptoolError(f"{tv_name} not found under {root} (looked for {py_dir}/ and {bin_dir}/); "
                                f"pass --data-dir DIR or allow the download")
        return loaded

    return load


# ---------------------------------------------------------------- ImageFolder / ImageNet

def _image_folder(image_size: int = 224):
    def load(split: str, root: Path, download: bool) -> FolderSplit:
        import torchvision
        from torchvision import transforms

        folder = root / ("train" if split == "train" else "val")
        if not folder.is_dir():
            raise RamptoolError(f"no image folder at {folder}; expected {root}/train/<class>/*.jpg and "
                                f"{root}/val/<class>/*.jpg (pass --data-dir)")
        if split == "train":
            transform = transforms.Compose([transforms.RandomResizedCrop(image_size),
                                            transforms.RandomHorizontalFlip(), transforms.ToTensor()])
        else:
            transform = transforms.Compose([transforms.Resize(int(image_size * 256 / 224)),
                                            transforms.CenterCrop(image_size), transforms.ToTensor()])
        try:
            dataset = torchvision.datasets.ImageFolder(str(folder), transform=transform)
        except (FileNotFoundError, RuntimeError) as error:
            raise RamptoolError(f"cannot read image folder {folder}: {error}") from None
        return FolderSplit(dataset, len(dataset.classes))

    return load


@hookimpl
def register_datasets():
    return {
        "fashion-mnist": DatasetSpec(
            _torchvision_mnist("FashionMNIST", "install Debian's dataset-fashion-mnist "
                               "(apt-get install dataset-fashion-mnist) or allow torchvision's download"),
            (1, 28, 28), (0.2860,), (0.3530,), 10, "Fashion-MNIST (28x28 grayscale, 10 classes); the default"),
        "mnist": DatasetSpec(
            _torchvision_mnist("MNIST", "pass --data-dir DIR holding MNIST/raw/*-ubyte or allow the download"),
            (1, 28, 28), (0.1307,), (0.3081,), 10, "MNIST (28x28 grayscale, 10 classes)"),
        "cifar10": DatasetSpec(_cifar(10), (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, 10,
                               "CIFAR-10 (32x32 RGB, 10 classes), crop+flip augmentation", augment="crop-flip"),
        "cifar100": DatasetSpec(_cifar(100), (3, 32, 32), CIFAR100_MEAN, CIFAR100_STD, 100,
                                "CIFAR-100 (32x32 RGB, 100 classes), crop+flip augmentation", augment="crop-flip"),
        "imagenet": DatasetSpec(_image_folder(), (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, 1000,
                                "ImageNet as an ImageFolder (train/, val/); resize 256, center-crop 224"),
        "imagefolder": DatasetSpec(_image_folder(), (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, None,
                                   "Any ImageFolder tree (train/<class>/, val/<class>/), ImageNet transforms"),
    }


def get_dataset(name: str) -> DatasetSpec:
    from ramptool.plugins import get

    return get("dataset", name)


def load_split(name: str, split: str, data_dir=None, subset: int | None = None, download: bool = True,
               sample_seed: int | None = None):
    """Load ``split`` ('train' or 'test') of a registered dataset; ``subset`` keeps N points (the first N, or a
    seeded random N with ``sample_seed``)."""
    if split not in ("train", "test"):
        raise RamptoolError(f"split must be 'train' or 'test', not {split!r}")
    spec = get_dataset(name)
    root = Path(data_dir) if data_dir else default_data_dir()
    data = spec.load(split, root, download)
    if subset is not None:
        if subset <= 0:
            raise RamptoolError(f"--subset must be positive, got {subset}")
        n = min(subset, len(data))
        if sample_seed is None:
            indices = torch.arange(n)
        else:
            indices = torch.randperm(len(data), generator=torch.Generator().manual_seed(sample_seed))[:n]
        data = data.subset(indices)
    return data


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Batch-wise augmentation with an explicit generator (reproducible, resumable)."""
    if kind == "none":
        return x
    if kind == "crop-flip":
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
        dy = torch.randint(0, 9, (n,), generator=generator)
        dx = torch.randint(0, 9, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 8)
        cropped = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
        cropped = cropped.gather(3, cols)
        flip = torch.rand(n, generator=generator) < 0.5
        return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)
    raise RamptoolError(f"unknown augmentation {kind!r}")


def batch_seed(seed: int, epoch: int, index: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + index) % (2**63)


def iterate_batches(data, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0,
                    augment: str = "none", start: int = 0, drop_last: bool = False):
    """Yield (x in [0,1], y) batches. The order depends only on (seed, epoch) and each batch's augmentation on
    (seed, epoch, batch index), so iteration can restart at batch ``start`` and reproduce the rest exactly."""
    n = len(data)
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(batch_seed(seed, epoch)))
             if shuffle else torch.arange(n))
    n_batches = n // batch_size if drop_last else (n + batch_size - 1) // batch_size
    for index in range(start, n_batches):
        x, y = data.tensors(order[index * batch_size:(index + 1) * batch_size])
        if augment != "none":
            x = augment_batch(x, augment, torch.Generator().manual_seed(batch_seed(seed, epoch, index + 1)))
        yield x, y


def num_batches(data, batch_size: int, drop_last: bool = False) -> int:
    return len(data) // batch_size if drop_last else (len(data) + batch_size - 1) // batch_size
