"""Datasets as registered components. Images come out as float tensors in [0,1]; normalisation lives in the model.

Small datasets (Fashion-MNIST, MNIST, CIFAR) are held in memory as uint8 tensors and augmented batch-wise with
torch ops (fast on 2 CPU cores, and exactly reproducible from a seed); ImageFolder datasets stream from disk.

Training batches come from a ``torch.utils.data.DataLoader`` whose items are whole batches (``EpochBatches``):
worker processes decode and augment the next batches while the model trains, and batches travel as uint8
(4x fewer bytes to pin and copy than floats) until ``to_unit_float`` on the device. The batch order depends only
on (seed, epoch) and every random augmentation on (seed, epoch, step, position in the global batch), so a run
restarts at any step, and N processes, each taking its slice of every global batch, see exactly what one
process sees, whatever the number of workers.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ramptool.distributed import rank_slice
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

def _image_folder():
    def load(split: str, root: Path, download: bool, image_size: int = 224) -> FolderSplit:
        import torchvision
        from torchvision import transforms

        folder = root / ("train" if split == "train" else "val")
        if not folder.is_dir():
            raise RamptoolError(f"no image folder at {folder}; expected {root}/train/<class>/*.jpg and "
                                f"{root}/val/<class>/*.jpg (pass --data-dir)")
        if split == "train":
            transform = transforms.Compose([transforms.RandomResizedCrop(image_size),
                                            transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
        else:  # ImageNet's evaluation crop: resize to 256/224 of the size, then the central square
            transform = transforms.Compose([transforms.Resize(int(image_size * 256 / 224)),
                                            transforms.CenterCrop(image_size), transforms.PILToTensor()])
        try:
            dataset = torchvision.datasets.ImageFolder(str(folder))
        except (FileNotFoundError, RuntimeError) as error:
            raise RamptoolError(f"cannot read image folder {folder}: {error}") from None
        return FolderSplit(dataset, len(dataset.classes), transform, random=split == "train")

    return load


@hookimpl
def register_datasets():
    return {
        "fashion-mnist": DatasetSpec(
            _torchvision_mnist("FashionMNIST", "install Debian's dataset-fashion-mnist "
                               "(apt-get install dataset-fashion-mnist) or allow torchvision's download"),
            (1, 28, 28), (0.2860,), (0.3530,), 10, "Fashion-MNIST (28x28 grayscale, 10 classes); the default",
            hyperparameters=SMALL_GRAYSCALE_HYPERPARAMETERS),
        "mnist": DatasetSpec(
            _torchvision_mnist("MNIST", "pass --data-dir DIR holding MNIST/raw/*-ubyte or allow the download"),
            (1, 28, 28), (0.1307,), (0.3081,), 10, "MNIST (28x28 grayscale, 10 classes)",
            hyperparameters=SMALL_GRAYSCALE_HYPERPARAMETERS),
        "cifar10": DatasetSpec(_cifar(10), (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, 10,
                               "CIFAR-10 (32x32 RGB, 10 classes), crop+flip augmentation", augment="crop-flip"),
        "cifar100": DatasetSpec(_cifar(100), (3, 32, 32), CIFAR100_MEAN, CIFAR100_STD, 100,
                                "CIFAR-100 (32x32 RGB, 100 classes), crop+flip augmentation", augment="crop-flip"),
        "imagenet": DatasetSpec(_image_folder(), (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, 1000,
                                "ImageNet as an ImageFolder (train/, val/); resize 256, center-crop 224 "
                                "(--image-size)", resizable=True, hyperparameters=IMAGENET_HYPERPARAMETERS),
        "imagefolder": DatasetSpec(_image_folder(), (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, None,
                                   "Any ImageFolder tree (train/<class>/, val/<class>/), ImageNet transforms "
                                   "(--image-size)", resizable=True),
    }


def get_dataset(name: str) -> DatasetSpec:
    from ramptool.plugins import get

    return get("dataset", name)


def dataset_spec(name: str, image_size: int | None = None) -> DatasetSpec:
    """The registered dataset at the image size of this run (image folders take any)."""
    spec = get_dataset(name)
    if image_size is None or image_size == spec.input_shape[-1]:
        return spec
    if not spec.resizable or image_size <= 0:
        raise RamptoolError(f"dataset {name} has {spec.input_shape[-1]}x{spec.input_shape[-1]} images; "
                            f"--image-size applies to image folders (imagenet, imagefolder) and must be positive")
    return dataclasses.replace(spec, input_shape=(spec.input_shape[0], image_size, image_size))


def load_split(name: str, split: str, data_dir=None, subset: int | None = None, download: bool = True,
               sample_seed: int | None = None, image_size: int | None = None):
    """Load ``split`` ('train' or 'test') of a registered dataset; ``subset`` keeps N points (the first N, or a
    seeded random N with ``sample_seed``); ``image_size`` resizes image folders."""
    if split not in ("train", "test"):
        raise RamptoolError(f"split must be 'train' or 'test', not {split!r}")
    spec = dataset_spec(name, image_size)
    root = Path(data_dir) if data_dir else default_data_dir()
    data = spec.load(split, root, download, **({"image_size": spec.input_shape[-1]} if spec.resizable else {}))
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
    if isinstance(data, TensorSplit) and torch.device(device).type == "cpu":
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
