"""Datasets read from their original on-disk formats, batching determinism, augmentation, and refusals."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from ramptool.data.batches import augment_batch, iterate_batches, num_batches
from ramptool.data.datasets import DEBIAN_FASHION_MNIST, load_split
from ramptool.data.spec import TensorSplit
from ramptool.errors import RamptoolError

CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
POINTS_PER_CIFAR_FILE = 4


def random_images(rng: np.random.Generator, n: int, shape) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def original_cifar_pickle(batch: dict) -> bytes:
    """A pickle as in the CIFAR archives: protocol 2, arrays rebuilt through ``numpy.core.multiarray``."""
    return pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_cifar10_python(root, rng):
    """cifar-10-batches-py/: five training batches, a test batch, batches.meta; returns the expected data."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    expected = {}
    for split, files in (("train", CIFAR10_TRAIN_FILES), ("test", ["test_batch"])):
        images, labels = [], []
        for name in files:
            data = random_images(rng, POINTS_PER_CIFAR_FILE, (3072,))
            batch_labels = rng.integers(0, 10, size=POINTS_PER_CIFAR_FILE).tolist()
            (folder / name).write_bytes(original_cifar_pickle({
                b"batch_label": f"{name} of the fixture".encode(), b"labels": batch_labels, b"data": data,
                b"filenames": [f"image_{i}.png".encode() for i in range(POINTS_PER_CIFAR_FILE)]}))
            images.append(data)
            labels += batch_labels
        expected[split] = (np.concatenate(images).reshape(-1, 3, 32, 32), np.array(labels))
    (folder / "batches.meta").write_bytes(original_cifar_pickle({
        b"num_cases_per_batch": POINTS_PER_CIFAR_FILE, b"num_vis": 3072,
        b"label_names": [f"class_{i}".encode() for i in range(10)]}))
    return expected


def write_cifar10_binary(root, rng):
    """cifar-10-batches-bin/: records of one label byte followed by 3072 pixel bytes (R, G, B planes)."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    expected = {}
    train_files = [f"{name}.bin" for name in CIFAR10_TRAIN_FILES]
    for split, files in (("train", train_files), ("test", ["test_batch.bin"])):
        images, labels = [], []
        for name in files:
            data = random_images(rng, POINTS_PER_CIFAR_FILE, (3072,))
            batch_labels = rng.integers(0, 10, size=POINTS_PER_CIFAR_FILE, dtype=np.uint8)
            (folder / name).write_bytes(np.concatenate([batch_labels[:, None], data], axis=1).tobytes())
            images.append(data)
            labels.append(batch_labels)
        expected[split] = (np.concatenate(images).reshape(-1, 3, 32, 32), np.concatenate(labels))
    (folder / "batches.meta.txt").write_text("".join(f"class_{i}\n" for i in range(10)))
    return expected


def cifar100_labels(rng, n):
    """(fine, coarse) labels that differ, so reading the coarse label instead of the fine one is caught."""
    fine = rng.integers(0, 100, size=n)
    return fine, fine // 5


def write_cifar100_python(root, rng):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    expected = {}
    for split, name in (("train", "train"), ("test", "test")):
        data = random_images(rng, 6, (3072,))
        fine, coarse = cifar100_labels(rng, 6)
        (folder / name).write_bytes(original_cifar_pickle({
            b"filenames": [f"image_{i}.png".encode() for i in range(6)], b"batch_label": b"fixture",
            b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist(), b"data": data}))
        expected[split] = (data.reshape(-1, 3, 32, 32), fine)
    (folder / "meta").write_bytes(original_cifar_pickle({
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]}))
    return expected


def write_cifar100_binary(root, rng):
    """cifar-100-binary/: records of (coarse label byte, fine label byte, 3072 pixel bytes)."""
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    expected = {}
    for split, name in (("train", "train.bin"), ("test", "test.bin")):
        data = random_images(rng, 6, (3072,))
        fine, coarse = cifar100_labels(rng, 6)
        label_bytes = np.stack([coarse, fine], axis=1).astype(np.uint8)
        records = np.concatenate([label_bytes, data], axis=1)
        (folder / name).write_bytes(records.tobytes())
        expected[split] = (data.reshape(-1, 3, 32, 32), fine)
    return expected


def write_mnist_idx(root, rng):
    """MNIST/raw/*-ubyte: big-endian idx files, magic 2051 for images and 2049 for labels."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    expected = {}
    for split, prefix, n in (("train", "train", 7), ("test", "t10k", 5)):
        images = random_images(rng, n, (28, 28))
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        images_header, labels_header = struct.pack(">IIII", 2051, n, 28, 28), struct.pack(">II", 2049, n)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(images_header + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(labels_header + labels.tobytes())
        expected[split] = (images[:, None], labels)
    return expected


def assert_split_matches(split, expected_images, expected_labels, num_classes):
    assert split.num_classes == num_classes
    assert split.images.dtype == torch.uint8
    assert torch.equal(split.images, torch.from_numpy(np.ascontiguousarray(expected_images)))
    assert torch.equal(split.labels, torch.from_numpy(np.asarray(expected_labels, dtype=np.int64)))
    x, y = split.tensors()
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(np.ascontiguousarray(expected_images)).float() / 255)


# ---------------------------------------------------------------- Fashion-MNIST (Debian's package, for real)

@pytest.fixture(scope="module")
def fashion_mnist():
    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    return {split: load_split("fashion-mnist", split, download=False) for split in ("train", "test")}


def test_fashion_mnist_has_its_published_sizes_and_balanced_labels(fashion_mnist):
    for split, size in (("train", 60000), ("test", 10000)):
        data = fashion_mnist[split]
        assert len(data) == size
        assert data.images.shape == (size, 1, 28, 28) and data.images.dtype == torch.uint8
        assert torch.equal(torch.bincount(data.labels), torch.full((10,), size // 10))
    x, y = fashion_mnist["test"].tensors(torch.arange(500))
    assert x.shape == (500, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    assert y.min() >= 0 and y.max() <= 9


def test_fashion_mnist_pixels_match_debians_idx_file(fashion_mnist):
    with gzip.open(DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        header = handle.read(16)
        first_images = np.frombuffer(handle.read(3 * 28 * 28), dtype=np.uint8).reshape(3, 1, 28, 28)
    assert struct.unpack(">IIII", header) == (2051, 10000, 28, 28)
    assert torch.equal(fashion_mnist["test"].images[:3], torch.from_numpy(first_images.copy()))


def test_subset_keeps_the_first_points_or_a_seeded_sample(fashion_mnist):
    full = fashion_mnist["test"]
    first = load_split("fashion-mnist", "test", subset=50, download=False)
    assert len(first) == 50
    assert torch.equal(first.images, full.images[:50]) and torch.equal(first.labels, full.labels[:50])

    sampled = load_split("fashion-mnist", "test", subset=50, sample_seed=3, download=False)
    again = load_split("fashion-mnist", "test", subset=50, sample_seed=3, download=False)
    other = load_split("fashion-mnist", "test", subset=50, sample_seed=4, download=False)
    assert torch.equal(sampled.images, again.images)
    assert not torch.equal(sampled.images, first.images) and not torch.equal(sampled.images, other.images)


def test_a_non_positive_subset_or_an_unknown_split_is_refused():
    with pytest.raises(RamptoolError, match="--subset must be positive"):
        load_split("fashion-mnist", "test", subset=0, download=False)
    with pytest.raises(RamptoolError, match="split must be 'train' or 'test'"):
        load_split("fashion-mnist", "validation", download=False)


# ---------------------------------------------------------------- generated fixtures in the original formats

@pytest.mark.parametrize("name, writer, num_classes", [
    ("cifar10", write_cifar10_python, 10),
    ("cifar10", write_cifar10_binary, 10),
    ("cifar100", write_cifar100_python, 100),
    ("cifar100", write_cifar100_binary, 100),
    ("mnist", write_mnist_idx, 10),
], ids=["cifar10-python", "cifar10-binary", "cifar100-python", "cifar100-binary", "mnist-idx"])
def test_original_format_round_trips_pixels_and_labels(tmp_path, name, writer, num_classes):
    expected = writer(tmp_path, np.random.default_rng(0))
    for split in ("train", "test"):
        loaded = load_split(name, split, data_dir=tmp_path, download=False)
        assert_split_matches(loaded, *expected[split], num_classes)


def test_cifar_subset_spans_the_training_batch_files(tmp_path):
    expected_images, expected_labels = write_cifar10_python(tmp_path, np.random.default_rng(1))["train"]
    n = POINTS_PER_CIFAR_FILE + 2
    subset = load_split("cifar10", "train", data_dir=tmp_path, subset=n, download=False)
    assert_split_matches(subset, expected_images[:n], expected_labels[:n], 10)


def write_image_folder(root, rng, size):
    """ROOT/{train,val}/<class>/*.png; returns the val images in ImageFolder order (classes, then files)."""
    val_images = []
    for split in ("train", "val"):
        for class_name in ("cat", "dog", "frog"):
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for index in range(2):
                pixels = random_images(rng, 1, (size, size, 3))[0]
                Image.fromarray(pixels).save(folder / f"{index}.png")
                if split == "val":
                    val_images.append(pixels)
    return val_images


def test_image_folder_reads_png_classes_with_imagenet_transforms(tmp_path):
    # 256 px is the resize target, so the val transform reduces to an exact 224 centre crop
    val_pixels = write_image_folder(tmp_path, np.random.default_rng(2), size=256)

    val = load_split("imagefolder", "test", data_dir=tmp_path, download=False)
    x, y = val.tensors()
    expected = torch.from_numpy(np.stack(val_pixels)).permute(0, 3, 1, 2)[:, :, 16:240, 16:240].float() / 255
    assert val.num_classes == 3
    assert torch.equal(y, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(x, expected)

    train = load_split("imagefolder", "train", data_dir=tmp_path, subset=4, download=False)
    x, y = train.tensors()
    assert x.shape == (4, 3, 224, 224) and 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(y, torch.tensor([0, 0, 1, 1]))


# ---------------------------------------------------------------- missing and malicious data

@pytest.mark.parametrize("name, where", [
    ("cifar10", ["cifar-10-batches-py/", "cifar-10-batches-bin/"]),
    ("cifar100", ["cifar-100-python/", "cifar-100-binary/"]),
    ("mnist", ["MNIST/raw"]),
    ("imagefolder", ["train/<class>"]),
])
def test_missing_data_says_where_it_looked(tmp_path, name, where):
    with pytest.raises(RamptoolError) as error:
        load_split(name, "train", data_dir=tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path) in message
    for fragment in where:
        assert fragment in message
    assert list(tmp_path.iterdir()) == []


class WritesMarkerWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_cifar_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps(
        {b"data": WritesMarkerWhenUnpickled(marker), b"labels": [0]}, protocol=2))

    refusal = r"test_batch is not a readable CIFAR batch: refusing to load .*system"
    with pytest.raises(RamptoolError, match=refusal):
        load_split("cifar10", "test", data_dir=tmp_path, download=False)
    assert not marker.exists()


def test_a_truncated_cifar_pickle_is_a_clear_error(tmp_path):
    write_cifar10_python(tmp_path, np.random.default_rng(3))
    test_batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    test_batch.write_bytes(test_batch.read_bytes()[:100])

    with pytest.raises(RamptoolError, match="test_batch is not a readable CIFAR batch"):
        load_split("cifar10", "test", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------- batching and augmentation

@pytest.fixture
def numbered_split():
    """37 random 3x8x8 images whose labels are their indices, so every batch says which points it holds."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 3, 8, 8), dtype=torch.uint8, generator=generator)
    return TensorSplit(images, torch.arange(37), num_classes=37)


def test_batches_cover_every_point_once_in_a_seeded_order(numbered_split):
    batches = list(iterate_batches(numbered_split, batch_size=8, seed=5, epoch=1))
    assert [len(y) for _, y in batches] == [8, 8, 8, 8, 5]
    order = torch.cat([y for _, y in batches])
    assert torch.equal(order.sort().values, torch.arange(37))
    assert not torch.equal(order, torch.arange(37))
    for x, y in batches:
        assert torch.equal(x, numbered_split.images[y].float() / 255)

    unshuffled = torch.cat([y for _, y in iterate_batches(numbered_split, batch_size=8, shuffle=False)])
    assert torch.equal(unshuffled, torch.arange(37))
    assert len(list(iterate_batches(numbered_split, batch_size=8, drop_last=True))) == 4
    assert num_batches(numbered_split, 8) == 5 and num_batches(numbered_split, 8, drop_last=True) == 4


def test_same_seed_and_epoch_give_the_same_augmented_batches(numbered_split):
    def run(**kwargs):
        return list(iterate_batches(numbered_split, batch_size=8, augment="crop-flip", **kwargs))

    first, second = run(seed=5, epoch=2), run(seed=5, epoch=2)
    for (x_first, y_first), (x_second, y_second) in zip(first, second, strict=True):
        assert torch.equal(x_first, x_second) and torch.equal(y_first, y_second)
    other_epoch = run(seed=5, epoch=3)
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in other_epoch]))


def test_restarting_at_a_batch_reproduces_the_rest_of_the_epoch(numbered_split):
    full = list(iterate_batches(numbered_split, batch_size=8, seed=7, epoch=4, augment="crop-flip"))
    tail = list(iterate_batches(numbered_split, batch_size=8, seed=7, epoch=4, augment="crop-flip", start=3))
    assert len(tail) == len(full) - 3
    for (x_full, y_full), (x_tail, y_tail) in zip(full[3:], tail, strict=True):
        assert torch.equal(x_full, x_tail) and torch.equal(y_full, y_tail)


def test_crop_flip_is_a_padded_crop_or_its_mirror(numbered_split):
    x = numbered_split.images.float() / 255
    augmented = augment_batch(x, "crop-flip", torch.Generator().manual_seed(0))
    assert augmented.shape == x.shape and 0.0 <= augmented.min() and augmented.max() <= 1.0

    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    chosen = []
    for image, result in zip(padded, augmented, strict=True):
        crops = {(dy, dx): image[:, dy:dy + 8, dx:dx + 8] for dy in range(9) for dx in range(9)}
        matches = [(dy, dx, flip) for (dy, dx), crop in crops.items() for flip in (False, True)
                   if torch.equal(crop.flip(2) if flip else crop, result)]
        assert len(matches) == 1, "each augmented image must be one crop (or mirrored crop) of the input"
        chosen.append(matches[0])
    assert {flip for _, _, flip in chosen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in chosen}) > 5

    assert torch.equal(augment_batch(x, "crop-flip", torch.Generator().manual_seed(0)), augmented)
    assert augment_batch(x, "none", torch.Generator()) is x
    with pytest.raises(RamptoolError, match="unknown augmentation 'rotate'"):
        augment_batch(x, "rotate", torch.Generator())
