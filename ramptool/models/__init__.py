"""Backbones and the wrapper that lets every model take [0,1] inputs (and normalise inside, where it should)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn

from ramptool.errors import RamptoolError
from ramptool.models.preact_resnet import PreActResNet18
from ramptool.models.robustbench import PREFIX as ROBUSTBENCH_PREFIX
from ramptool.models.robustbench import build_network
from ramptool.models.small_cnn import SmallCNN
from ramptool.models.wide_resnet import WideResNet
from ramptool.plugins.hookspecs import hookimpl
from ramptool.plugins.registry import bind_options, get

TIMM_PREFIX = "timm:"
# backbones named by a prefix and a free part: the registry holds one builder per prefix
PREFIXED_BACKBONES = {TIMM_PREFIX: "timm:<name>", ROBUSTBENCH_PREFIX: "robustbench:<dataset>/<threat_model>/<name>"}


class Normalized(nn.Module):
    """``backbone((x - mean) / std)`` for x in [0,1], or ``backbone(x)`` when the backbone takes [0,1] pixels
    itself (mean and std None): attacks and data never see normalised pixels."""

    def __init__(self, backbone: nn.Module, mean=None, std=None):
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.backbone = backbone
        # a None buffer is left out of the state_dict: a checkpoint without normalisation has no mean/std keys
        self.register_buffer("mean", None if mean is None else _channel_tensor(mean))
        self.register_buffer("std", None if std is None else _channel_tensor(std))

    def forward(self, x):
        if self.mean is None:
            return self.backbone(x)
        return self.backbone((x - self.mean) / self.std)


def _channel_tensor(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def _numbers(text: str, what: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(value) for value in values):
        raise RamptoolError(f"--normalize {what} must be comma-separated finite numbers, got {text!r}")
    return values


def resolve_normalize(normalize: str | None, default: str, spec) -> tuple[str, list[float] | None,
                                                                        list[float] | None]:
    """``(normalize, mean, std)`` for ``--normalize none|dataset|MEAN/STD`` (``default`` when not given) on a
    dataset ``spec``; mean and std are None for none."""
    normalize = (normalize or default).strip()
    if normalize == "none":
        return "none", None, None
    if normalize == "dataset":
        return "dataset", list(spec.mean), list(spec.std)
    if normalize.count("/") != 1:
        raise RamptoolError(f"--normalize takes none, dataset or MEAN/STD (e.g. 0.4914,0.4822,0.4465/"
                            f"0.2471,0.2435,0.2616), got {normalize!r}")
    mean_text, std_text = normalize.split("/")
    mean, std = _numbers(mean_text, "MEAN"), _numbers(std_text, "STD")
    channels = spec.input_shape[0]
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise RamptoolError(f"--normalize {normalize!r}: give 1 or {channels} values for MEAN and for STD "
                            f"(the dataset has {channels} channels)")
    if not all(s > 0 for s in std):
        raise RamptoolError(f"--normalize {normalize!r}: STD values must be positive")
    return normalize, mean, std


def _positive_width(width: int) -> int:
    if not isinstance(width, int) or width < 1:
        raise RamptoolError(f"small-cnn's width must be a whole number of at least 1, got {width!r}")
    return width


def small_cnn(num_classes, in_chans, image_size, *, width: int = 16):
    """Small CNN (conv16-32-64 + fc256, no BatchNorm) for 28x28/32x32: fast on a CPU; width scales the convs."""
    return SmallCNN(num_classes, in_chans, image_size, width=_positive_width(width))


def small_cnn_bn(num_classes, in_chans, image_size, *, width: int = 16):
    """Small CNN with BatchNorm after each convolution (BatchNorm and --sync-bn on a CPU)."""
    return SmallCNN(num_classes, in_chans, image_size, width=_positive_width(width), batchnorm=True)


def preact_resnet18(num_classes, in_chans, image_size, *, activation: Literal["relu", "softplus"] = "relu"):
    """PreAct ResNet-18 (ReLU), E-AT/RAMP parameter names."""
    return PreActResNet18(num_classes, in_chans, image_size, activation_name=activation)


def preact_resnet18_softplus(num_classes, in_chans, image_size):
    """PreAct ResNet-18 with softplus activations (RAMP/E-AT from-scratch setting)."""
    return PreActResNet18(num_classes, in_chans, image_size, activation_name="softplus")


def _wide_resnet(depth, width):
    def build(num_classes, in_chans, image_size, *, sub_block1: bool = False):
        return WideResNet(depth, width, num_classes, in_chans, image_size, sub_block1=sub_block1)

    build.__doc__ = f"WideResNet-{depth}-{width} (RobustBench parameter names; sub_block1=true for its TRADES layout)"
    return build


def timm_model(num_classes, in_chans, image_size, timm_name, cifar_stem=False, **options):
    """timm:<name>: any timm architecture (random init; fixed-size models get img_size; cifar_stem=True swaps the
    stem for a 3x3 conv)."""
    try:
        # optional (pip install 'ramptool[vision]'), and about a second to import: only timm: backbones need it
        import timm
        from timm.models import get_pretrained_cfg_value
    except (ImportError, RuntimeError):  # a torchvision built for another torch raises RuntimeError
        raise RamptoolError("timm: backbones need timm: pip install 'ramptool[vision]'") from None

    try:
        if get_pretrained_cfg_value(timm_name, "fixed_input_size"):
            options.setdefault("img_size", image_size)  # what timm does with its own default size
        model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                  **options)
    except (RuntimeError, TypeError, AssertionError, ValueError) as error:
        given = f" with options {options}" if options else ""
        raise RamptoolError(f"timm cannot build {timm_name!r}{given}: {error}") from None
    if cifar_stem:
        stem = getattr(model, "conv1", None)
        if not isinstance(stem, nn.Conv2d):
            raise RamptoolError(f"cifar_stem: timm model {timm_name!r} has no ResNet-style conv1 stem")
        model.conv1 = nn.Conv2d(in_chans, stem.out_channels, 3, stride=1, padding=1, bias=False)
        if hasattr(model, "maxpool"):
            model.maxpool = nn.Identity()
    return model


def robustbench_model(num_classes, in_chans, image_size, zoo_name, **options):
    """robustbench:<dataset>/<threat_model>/<name>: a RobustBench zoo architecture, RobustBench's input convention."""

    return build_network(ROBUSTBENCH_PREFIX + zoo_name, num_classes, (in_chans, image_size, image_size), options)


@hookimpl
def register_backbones():
    return {
        "small-cnn": small_cnn,
        "small-cnn-bn": small_cnn_bn,
        "preact-resnet18": preact_resnet18,
        "preact-resnet18-softplus": preact_resnet18_softplus,
        "wrn-28-10": _wide_resnet(28, 10),
        "wrn-34-20": _wide_resnet(34, 20),
        "wrn-70-16": _wide_resnet(70, 16),
        PREFIXED_BACKBONES[TIMM_PREFIX]: timm_model,
        PREFIXED_BACKBONES[ROBUSTBENCH_PREFIX]: robustbench_model,
    }


def backbone_name(arch: str) -> str:
    """The registered backbone behind an ``--arch`` value (all of ``timm:<name>`` is one entry, and so on)."""
    return next((registered for prefix, registered in PREFIXED_BACKBONES.items() if arch.startswith(prefix)), arch)


def bind_arch_options(arch: str, given: dict | None) -> dict:
    """``given`` options (``--arch-option``, a recipe, a checkpoint) of the backbone ``arch``, checked against its
    builder and typed."""

    return bind_options("backbone", backbone_name(arch), given)


def build_backbone(arch: str, num_classes: int, in_chans: int, image_size: int, **options) -> nn.Module:
    options = bind_arch_options(arch, options)
    builder = get("backbone", backbone_name(arch))
    for prefix in PREFIXED_BACKBONES:
        if arch.startswith(prefix):
            return builder(num_classes, in_chans, image_size, arch[len(prefix):], **options)
    try:
        return builder(num_classes, in_chans, image_size, **options)
    except TypeError as error:
        if not options:
            raise
        raise RamptoolError(f"backbone {arch!r} does not take the options {options}: {error}") from None


def build_model(arch: str, num_classes: int, input_shape, mean=None, std=None, **options) -> Normalized:
    """The backbone behind the [0,1]-input wrapper; mean/std None when the backbone takes [0,1] pixels itself."""
    in_chans, image_size = input_shape[0], input_shape[-1]
    return Normalized(build_backbone(arch, num_classes, in_chans, image_size, **options), mean, std)


def check_forward(model: nn.Module, input_shape, arch: str, options: dict) -> None:
    """One forward of a zero image, so that options that build a network which cannot run (``width=0``) are one
    line before training, not a traceback from its first batch."""
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            logits = model(torch.zeros(1, *input_shape, device=device))
    except (RuntimeError, ValueError, TypeError, ZeroDivisionError, IndexError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise RamptoolError(f"backbone {arch!r} with options {options} builds a network that cannot run on "
                            f"{tuple(input_shape)} inputs: {first}") from None
    finally:
        model.train(was_training)
    if logits.ndim != 2 or logits.shape[0] != 1:
        raise RamptoolError(f"backbone {arch!r} gives outputs of shape {tuple(logits.shape)} for one image, not "
                            f"(1, classes)")
