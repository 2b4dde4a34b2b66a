"""Common corruptions: the 15 ImageNet-C / CIFAR-10-C corruptions x 5 severities (docs/METHOD.md#evaluation-protocol).

Corrupted images come from ``imagecorruptions`` (the maintained ``imagecorruptions-imaug`` distribution), which
wants HxWx3 uint8 images of at least 32x32. Smaller images are edge-padded to 32 and cropped back (lossless
for the untouched pixels, unlike a resize round trip); grayscale images are replicated to three channels and
the first channel is taken back, so per-channel noise keeps the strength its severity defines (averaging the
three channels would weaken it by sqrt(3)). Every image is corrupted under its own seed (run seed, corruption,
severity, index of the image in the test set), so an image's corruption does not depend on the others: under
torchrun each process corrupts and evaluates only its share of the points, and the counts are summed. Corrupted
sets are cached on disk as uint8 ``.npy`` files.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ramptool.errors import RamptoolError
from ramptool.runtime import distributed
from ramptool.runtime.files import atomic_write

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
# imagecorruptions' held-out validation corruptions; CIFAR-10-C ships them too
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIDE = 32
# these two take their randomness from a seed argument instead of numpy's global generator
SEEDED_BY_ARGUMENT = ("impulse_noise", "glass_blur")


def default_cache_dir() -> Path:
    base = os.environ.get("RAMPTOOL_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "ramptool") / "corruptions"


def parse_corruptions(text: str | None) -> list[str]:
    """'fog,snow' -> ['fog', 'snow']; None or '' -> the 15 standard corruptions."""
    if not text or not text.strip():
        return list(CORRUPTIONS)
    names = [part.strip().lower().replace("-", "_") for part in text.split(",") if part.strip()]
    known = CORRUPTIONS + EXTRA_CORRUPTIONS
    for name in names:
        if name not in known:
            raise RamptoolError(f"unknown corruption {name!r}; use some of: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise RamptoolError(f"corruption listed twice in {text!r}")
    return names


def parse_severities(text: str | None) -> list[int]:
    if not text or not text.strip():
        return list(SEVERITIES)
    try:
        severities = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise RamptoolError(f"severities must be integers 1-5, got {text!r}") from None
    if not severities or any(s not in SEVERITIES for s in severities) or len(set(severities)) != len(severities):
        raise RamptoolError(f"severities must be distinct integers 1-5, got {text!r}")
    return severities


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """[0,1] NCHW floats -> NHWC uint8."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """NHWC (or NHW) uint8 -> [0,1] NCHW floats."""
    if images.ndim == 3:
        images = images[..., None]
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def _corruption_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    names = CORRUPTIONS + EXTRA_CORRUPTIONS
    return int(np.random.SeedSequence([seed, names.index(corruption), severity, index]).generate_state(1)[0])


def corrupt_images(images: np.ndarray, corruption: str, severity: int, seed: int = 0, first_index: int = 0
                   ) -> np.ndarray:
    """NHWC uint8 images (1 or 3 channels, any size) -> the same shape, corrupted. Image k is corrupted under a
    seed of (``seed``, corruption, severity, ``first_index`` + k): deterministic, and the same whether it is
    corrupted alone or with others."""
    # imports scikit-image, scipy and OpenCV (seconds): only the corruption evaluation needs it
    from imagecorruptions import corrupt

    if images.ndim != 4 or images.shape[3] not in (1, 3) or images.dtype != np.uint8:
        raise RamptoolError(f"corruptions need NHWC uint8 images with 1 or 3 channels, got "
                            f"{images.dtype} {images.shape}")
    _, height, width, channels = images.shape
    pad_h, pad_w = max(0, MIN_SIDE - height), max(0, MIN_SIDE - width)
    padding = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    result = np.empty_like(images)
    saved_state = np.random.get_state()
    try:
        for index, image in enumerate(images):
            np.random.seed(_corruption_seed(seed, corruption, severity, first_index + index))
            padded = np.pad(image, padding, mode="edge")
            if channels == 1:
                padded = np.repeat(padded, 3, axis=2)
            extra = {"seed": int(np.random.randint(2**31 - 1))} if corruption in SEEDED_BY_ARGUMENT else {}
            corrupted = np.asarray(corrupt(padded, severity=severity, corruption_name=corruption, **extra))
            corrupted = corrupted[padding[0][0]:padding[0][0] + height, padding[1][0]:padding[1][0] + width]
            result[index] = corrupted[..., :1] if channels == 1 else corrupted
    finally:
        np.random.set_state(saved_state)
    return result


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)


def corrupted_set(images: np.ndarray, corruption: str, severity: int, seed: int = 0, dataset: str | None = None,
                  cache_dir=None, first_index: int = 0) -> np.ndarray:
    """``corrupt_images``, read from the cache when these images at these indices were corrupted before.

    The file name also carries a hash of the clean images, so another sample or data folder never hits a
    stale entry."""
    if cache_dir is None:
        return corrupt_images(images, corruption, severity, seed, first_index)
    content = hashlib.sha256(images.tobytes()).hexdigest()[:8]
    path = (Path(cache_dir) / f"{dataset or 'images'}-{corruption}-s{severity}-i{first_index}-n{len(images)}-"
                              f"seed{seed}-{content}.npy")
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            cached = None
        if cached is not None and cached.shape == images.shape and cached.dtype == np.uint8:
            return cached
    corrupted = corrupt_images(images, corruption, severity, seed, first_index)
    _save_npy(path, corrupted)
    return corrupted


@torch.no_grad()
def count_correct(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> int:
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size].to(device))
        correct += int((logits.argmax(1).cpu() == y[start:start + batch_size]).sum())
    return correct


def accuracy_on(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Accuracy on (x, y); under torchrun each process classifies its share of the points."""
    if len(y) == 0:  # an accuracy of nothing would read as 0.0%
        raise RamptoolError("no images to evaluate: the set is empty")
    part = distributed.rank_slice(len(y))
    return _share_of_correct(count_correct(model, x[part], y[part], batch_size), len(y))


def _share_of_correct(correct: int, total: int) -> float:
    """The accuracy over every process's points, from this process's count of correct points."""
    return float(distributed.all_reduce_sum(torch.tensor(float(correct), dtype=torch.float64))) / total


def _summary(accuracy: dict[str, dict[str, float]], severities: list[int], n: int, clean: float | None,
             chance: float | None = None, **details) -> dict:
    """The report; with ``chance`` (what always answering the most frequent class scores on these points), the
    (corruption, severity) cells at or below it (within two standard errors): they remove the signal, so they
    measure nothing about robustness."""
    if chance is not None:
        margin = 2 * math.sqrt(chance * (1 - chance) / max(n, 1))
        details |= {"chance": chance, "at_chance": [f"{c} s{s}" for c, row in accuracy.items() for s in severities
                                                     if row[str(s)] <= chance + margin]}
    corruption_mean = {c: float(np.mean(list(row.values()))) for c, row in accuracy.items()}
    severity_mean = {str(s): float(np.mean([row[str(s)] for row in accuracy.values()])) for s in severities}
    return {"n": n, "clean": clean, "severities": list(severities), "corruptions": list(accuracy),
            "accuracy": accuracy, "corruption_mean": corruption_mean, "severity_mean": severity_mean,
            "mean": float(np.mean(list(corruption_mean.values()))), **details}


def _check_input_shape(model_shape, found: tuple[int, int, int], source: str) -> None:
    """``found`` is the (C, H, W) of the images in ``source``."""
    if model_shape is not None and tuple(model_shape) != found:
        raise RamptoolError(f"{source} holds images of shape {found} (C, H, W) but the model takes "
                            f"{tuple(model_shape)}")


def evaluate_corruptions(model, x: torch.Tensor, y: torch.Tensor, corruptions=None, severities=None,
                         seed: int = 0, dataset: str | None = None, cache_dir=None, batch_size: int = 500,
                         on_step=None) -> dict:
    """Accuracy of ``model`` on every (corruption, severity) of the [0,1] NCHW test points (x, y).

    ``on_step(corruption, severity)`` is called after each pair (progress display)."""
    corruptions = list(corruptions or CORRUPTIONS)
    severities = list(severities or SEVERITIES)
    for name in corruptions:
        if name not in CORRUPTIONS + EXTRA_CORRUPTIONS:
            raise RamptoolError(f"unknown corruption {name!r}; use some of: {', '.join(CORRUPTIONS)}")
    part = distributed.rank_slice(len(y))  # corrupting is the expensive part: each process corrupts its share
    images, labels = to_uint8_images(x[part]), y[part]
    started = time.perf_counter()
    accuracy: dict[str, dict[str, float]] = {}
    for corruption in corruptions:
        accuracy[corruption] = {}
        for severity in severities:
            corrupted = corrupted_set(images, corruption, severity, seed, dataset, cache_dir, part.start)
            correct = count_correct(model, to_tensor(corrupted), labels, batch_size)
            accuracy[corruption][str(severity)] = _share_of_correct(correct, len(y))
            if on_step is not None:
                on_step(corruption, severity)
    chance = float(torch.bincount(y.cpu()).max()) / len(y)
    return _summary(accuracy, severities, len(y), accuracy_on(model, x, y, batch_size), chance, seed=seed,
                    dataset=dataset, source="imagecorruptions",
                    seconds=round(time.perf_counter() - started, 3))


IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def _load_npy(path: Path, mmap_mode=None) -> np.ndarray:
    """A .npy file of plain numbers, or one line saying it is not one (truncated, damaged, pickled objects)."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise RamptoolError(f"{path} is not a readable .npy array ({first})") from None


def _is_tree(folder: Path, corruption: str) -> bool:
    return any((folder / corruption / str(severity)).is_dir() for severity in SEVERITIES)


def folder_corruptions(folder) -> list[str]:
    """The standard corruptions a folder holds: ``<corruption>.npy`` files (CIFAR-10-C style) or
    ``<corruption>/<severity>/`` trees (ImageNet-C style)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RamptoolError(f"--from-dir {folder} is not a folder")
    names = [name for name in CORRUPTIONS if (folder / f"{name}.npy").is_file() or _is_tree(folder, name)]
    if not names:
        raise RamptoolError(f"{folder} holds none of the corruptions, neither as {CORRUPTIONS[0]}.npy "
                            f"(CIFAR-10-C style) nor as {CORRUPTIONS[0]}/1/<class>/*.JPEG (ImageNet-C style)")
    return names


def evaluate_corruption_folder(model, folder, corruptions=None, severities=None, n: int | None = None,
                               input_shape=None, num_classes: int | None = None, batch_size: int = 500,
                               on_step=None) -> dict:
    """Accuracy on a folder of pre-corrupted test sets, in either published layout.

    CIFAR-10-C style: ``<corruption>.npy`` holds 5*N uint8 images (NHWC or NHW) stacked by severity,
    ``labels.npy`` the N labels (or the 5*N repeated ones); ``n`` keeps the first n of each severity.
    ImageNet-C style: ``<corruption>/<severity>/<class>/<image>`` (see ``evaluate_corruption_tree``).
    ``input_shape`` (C, H, W) and ``num_classes`` are the model's, checked against the files."""
    folder = Path(folder)
    corruptions = list(corruptions or folder_corruptions(folder))
    if corruptions and not (folder / f"{corruptions[0]}.npy").is_file() and _is_tree(folder, corruptions[0]):
        return evaluate_corruption_tree(model, folder, corruptions, severities, n, input_shape, num_classes,
                                        batch_size, on_step)
    labels_path = folder / "labels.npy"
    if not labels_path.is_file():
        raise RamptoolError(f"{folder} has no labels.npy (expected a CIFAR-10-C style folder)")
    missing = [name for name in corruptions if not (folder / f"{name}.npy").is_file()]
    if missing:
        raise RamptoolError(f"{folder} has no {missing[0]}.npy")
    severities = list(severities or SEVERITIES)
    labels = _load_npy(labels_path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) == 0:
        raise RamptoolError(f"{labels_path}: expected a non-empty list of integer labels, got {labels.dtype} "
                            f"{labels.shape}")
    labels = labels.astype(np.int64)
    if num_classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise RamptoolError(f"{labels_path} has labels up to {labels.max()} but the model predicts "
                            f"{num_classes} classes: a folder of another dataset?")
    started = time.perf_counter()
    accuracy: dict[str, dict[str, float]] = {}
    per_severity = None
    for corruption in corruptions:
        stacked = _load_npy(folder / f"{corruption}.npy", mmap_mode="r")
        if (stacked.dtype != np.uint8 or stacked.ndim not in (3, 4) or not len(stacked)
                or len(stacked) % len(SEVERITIES)):
            raise RamptoolError(f"{folder / (corruption + '.npy')}: expected 5*N uint8 images, got "
                                f"{stacked.dtype} {stacked.shape}")
        channels = stacked.shape[3] if stacked.ndim == 4 else 1
        _check_input_shape(input_shape, (channels, *stacked.shape[1:3]), str(folder / f"{corruption}.npy"))
        per_severity = len(stacked) // len(SEVERITIES)
        if len(labels) not in (per_severity, len(stacked)):
            raise RamptoolError(f"labels.npy has {len(labels)} labels for {per_severity} images per severity")
        keep = per_severity if n is None else min(n, per_severity)
        accuracy[corruption] = {}
        for severity in severities:
            start = (severity - 1) * per_severity
            block = np.array(stacked[start:start + keep])  # a copy: torch wants writable memory
            block_labels = labels[start:start + keep] if len(labels) == len(stacked) else labels[:keep]
            accuracy[corruption][str(severity)] = accuracy_on(model, to_tensor(block),
                                                              torch.from_numpy(block_labels), batch_size)
            if on_step is not None:
                on_step(corruption, severity)
    kept = per_severity if n is None else min(n, per_severity)
    return _summary(accuracy, severities, kept, None, source=str(folder),
                    seconds=round(time.perf_counter() - started, 3))


def _tree_samples(severity_dir: Path) -> tuple[list[str], list[str]]:
    """Class folder names (sorted, as ImageFolder and the ``imagenet`` dataset number them) and every image's
    path relative to ``severity_dir``."""
    classes = sorted(entry.name for entry in severity_dir.iterdir() if entry.is_dir())
    files = [f"{name}/{image.name}" for name in classes for image in sorted((severity_dir / name).iterdir())
             if image.suffix.lower() in IMAGE_SUFFIXES]
    return classes, files


def _read_images(root: Path, files: list[str], channels: int) -> torch.Tensor:
    # only the corruption evaluation handles images as PIL
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for name in files:
        try:
            with Image.open(root / name) as image:
                arrays.append(np.asarray(image.convert(mode)))
        except OSError as error:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise RamptoolError(f"{root / name} is not a readable image ({error})") from None
        if arrays[-1].shape != arrays[0].shape:
            raise RamptoolError(f"{root / name} is {arrays[-1].shape[1]}x{arrays[-1].shape[0]} but "
                                f"{root / files[0]} is {arrays[0].shape[1]}x{arrays[0].shape[0]}: the images of a "
                                f"corrupted set must share one size")
    return to_tensor(np.stack(arrays))


def evaluate_corruption_tree(model, folder, corruptions=None, severities=None, n: int | None = None,
                             input_shape=None, num_classes: int | None = None, batch_size: int = 500,
                             on_step=None, sample_seed: int = 0) -> dict:
    """Accuracy on an ImageNet-C style tree: ``<corruption>/<severity>/<class>/<image>.JPEG``, images already at
    the model's input size (ImageNet-C: 224x224, so no resize or crop is applied). Classes are numbered by
    their sorted folder names, as ImageFolder numbers the clean set. ``n`` evaluates a seeded random n images
    of each severity (the class folders come in order, so the first n would be a few classes only); the same
    files are used for every corruption and severity."""
    folder = Path(folder)
    corruptions = list(corruptions or folder_corruptions(folder))
    severities = list(severities or SEVERITIES)
    channels = input_shape[0] if input_shape is not None else 3
    reference = folder / corruptions[0] / str(severities[0])
    if not reference.is_dir():
        raise RamptoolError(f"{folder} has no {corruptions[0]}/{severities[0]}/ folder")
    classes, files = _tree_samples(reference)
    if not files:
        raise RamptoolError(f"{reference} holds no images (<class>/*.JPEG)")
    if num_classes is not None and len(classes) > num_classes:
        raise RamptoolError(f"{reference} has {len(classes)} class folders but the model predicts "
                            f"{num_classes} classes: a folder of another dataset?")
    if n is not None and n < len(files):
        keep = torch.randperm(len(files), generator=torch.Generator().manual_seed(sample_seed))[:n]
        files = [files[i] for i in sorted(keep.tolist())]
    labels = torch.tensor([classes.index(name.split("/", 1)[0]) for name in files])
    total = len(files)
    part = distributed.rank_slice(total)  # each process reads and classifies its share of the files
    files, labels = files[part], labels[part]
    started = time.perf_counter()
    accuracy: dict[str, dict[str, float]] = {}
    for corruption in corruptions:
        accuracy[corruption] = {}
        for severity in severities:
            root = folder / corruption / str(severity)
            if not root.is_dir():
                raise RamptoolError(f"{folder} has no {corruption}/{severity}/ folder")
            missing = next((name for name in files if not (root / name).is_file()), None)
            if missing is not None:
                raise RamptoolError(f"{root} lacks {missing}, which {reference} has: every corruption and "
                                    f"severity must hold the same files")
            correct = 0
            for start in range(0, len(files), batch_size):
                x = _read_images(root, files[start:start + batch_size], channels)
                if start == 0:
                    _check_input_shape(input_shape, tuple(x.shape[1:]), str(root))
                correct += count_correct(model, x, labels[start:start + batch_size], batch_size)
            accuracy[corruption][str(severity)] = _share_of_correct(correct, total)
            if on_step is not None:
                on_step(corruption, severity)
    return _summary(accuracy, severities, total, None, source=str(folder), sample_seed=sample_seed,
                    seconds=round(time.perf_counter() - started, 3))
