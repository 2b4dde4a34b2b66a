"""The built-in datasets, registered through the same hook as a plugin's (``register_datasets``), and the
lookup every consumer uses (``get_dataset``, ``load_split``).

Small datasets (Fashion-MNIST, MNIST, CIFAR) are held in memory as uint8 tensors; ImageFolder datasets stream
from disk. CIFAR's python pickles are read by an unpickler that builds nothing but numpy arrays.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import pickle
from pathlib import Path

import numpy as np
import torch

from ramptool.data.spec import (
    IMAGENET_HYPERPARAMETERS,
    SMALL_GRAYSCALE_HYPERPARAMETERS,
    DatasetSpec,
    FolderSplit,
    TensorSplit,
    default_data_dir,
)
from ramptool.errors import RamptoolError
from ramptool.plugins.hookspecs import hookimpl
from ramptool.plugins.registry import expect, get

expect("dataset", DatasetSpec)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def _read_idx(path: Path) -> np.ndarray:
    """An MNIST-format idx file of unsigned bytes (gzipped or not), its size checked against its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise RamptoolError(f"{path} cannot be read: {error}") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 4:
        raise RamptoolError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    payload = data[4 + 4 * ndim:]
    if len(data) < 4 + 4 * ndim or math.prod(shape) != len(payload):
        raise RamptoolError(f"{path} is truncated or damaged: its header says {shape}, it holds {len(payload)} "
                            f"bytes of data")
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape)


def _find_idx(name: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _mnist(cls_name: str, how_to_get: str, shipped: Path | None = None):
    """MNIST-format datasets read from their idx files: torchvision's layout (ROOT/NAME/raw) or ``shipped`` (a
    system package's folder); torchvision, when it is installed, downloads them if they are nowhere."""

    def load(split: str, root: Path, download: bool) -> TensorSplit:
        prefix = "train" if split == "train" else "t10k"
        names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
        raw = root / cls_name / "raw"
        folders = [raw, *([shipped] if shipped is not None else [])]
        found = [_find_idx(name, folders) for name in names]
        if None in found and download:
            _download_with_torchvision(cls_name, root, how_to_get)
            found = [_find_idx(name, folders) for name in names]
        if None in found:
            raise RamptoolError(f"{cls_name} not found under {raw}; {how_to_get}")
        images, labels = (_read_idx(path) for path in found)
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            raise RamptoolError(f"{found[0]} and {found[1]} do not hold the same number of images and labels")
        return TensorSplit(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                           10)

    return load


def _download_with_torchvision(cls_name: str, root: Path, how_to_get: str) -> None:
    try:
        # optional: torchvision (pip install 'ramptool[vision]') downloads the datasets it knows
        import torchvision
    except (ImportError, RuntimeError):  # a torchvision built for another torch raises RuntimeError
        raise RamptoolError(f"{cls_name} not found under {root / cls_name / 'raw'} and torchvision, which would "
                            f"download it, is not installed; {how_to_get}") from None
    try:
        getattr(torchvision.datasets, cls_name)(str(root), train=True, download=True)
    except Exception as error:
        raise RamptoolError(f"{cls_name} not found under {root / cls_name / 'raw'} and the download failed "
                            f"({type(error).__name__}); {how_to_get}") from None


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
            _download_with_torchvision(tv_name, root, f"pass --data-dir DIR holding {py_dir}/ from "
                                                      f"https://www.cs.toronto.edu/~kriz/cifar.html")
            loaded = read(split, root)
        if loaded is None:
            raise RamptoolError(f"{tv_name} not found under {root} (looked for {py_dir}/ and {bin_dir}/); "
                                f"pass --data-dir DIR or allow the download")
        return loaded

    return load


def _image_folder():
    def load(split: str, root: Path, download: bool, image_size: int = 224) -> FolderSplit:
        try:
            # optional: torchvision (pip install 'ramptool[vision]') reads and transforms image folders
            import torchvision
            from torchvision import transforms
        except (ImportError, RuntimeError):  # a torchvision built for another torch raises RuntimeError
            raise RamptoolError("image folders are read with torchvision: pip install 'ramptool[vision]'") from None

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
            _mnist("FashionMNIST", "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                   "or allow torchvision's download", shipped=DEBIAN_FASHION_MNIST),
            (1, 28, 28), (0.2860,), (0.3530,), 10, "Fashion-MNIST (28x28 grayscale, 10 classes); the default",
            hyperparameters=SMALL_GRAYSCALE_HYPERPARAMETERS),
        "mnist": DatasetSpec(
            _mnist("MNIST", "pass --data-dir DIR holding MNIST/raw/*-ubyte or allow torchvision's download"),
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


def held_out_split(name: str, data_dir, trained: int | None, n: int, image_size: int | None = None):
    """``n`` points a run that trains on the first ``trained`` training points (None: all) never sees, and where
    they come from: the last ``n`` training points when the run leaves them out, else the last ``n`` test
    points (the first ones are what evaluations and the clean-accuracy check use)."""
    train = load_split(name, "train", data_dir, image_size=image_size)
    if trained is not None and len(train) - trained >= n:
        return train.subset(torch.arange(len(train) - n, len(train))), \
            f"training points {len(train) - n}-{len(train) - 1}, held out"
    test = load_split(name, "test", data_dir, image_size=image_size)
    n = min(n, len(test))
    return test.subset(torch.arange(len(test) - n, len(test))), f"test points {len(test) - n}-{len(test) - 1}"
