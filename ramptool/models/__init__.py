"""Backbones and the wrapper that lets every model take [0,1] inputs and normalise inside."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from ramptool.errors import RamptoolError
from ramptool.hookspecs import hookimpl
from ramptool.models.preact_resnet import PreActResNet18
from ramptool.models.small_cnn import SmallCNN
from ramptool.models.wide_resnet import WideResNet

TIMM_PREFIX = "timm:"


class Normalized(nn.Module):
    """``backbone((x - mean) / std)`` for x in [0,1]: attacks and data never see normalised pixels."""

    def __init__(self, backbone: nn.Module, mean, std):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return self.backbone((x - self.mean) / self.std)


def small_cnn(num_classes, in_chans, image_size, *, width: int = 16):
    """Small CNN (conv16-32-64 + fc256, no BatchNorm) for 28x28/32x32: fast on a CPU; width scales the convs."""
    return SmallCNN(num_classes, in_chans, image_size, width=width)


def preact_resnet18(num_classes, in_chans, image_size, *, activation: Literal["relu", "softplus"] = "relu"):
    """PreAct ResNet-18 (ReLU), E-AT/RAMP parameter names."""
    return PreActResNet18(num_classes, in_chans, image_size, activation_name=activation)


def preact_resnet18_softplus(num_classes, in_chans, image_size):
    """PreAct ResNet-18 with softplus activations (RAMP/E-AT from-scratch setting)."""
    return PreActResNet18(num_classes, in_chans, image_size, activation_name="softplus")


def _wide_resnet(depth, width):
    def build(num_classes, in_chans, image_size):
        return WideResNet(depth, width, num_classes, in_chans, image_size)

    build.__doc__ = f"WideResNet-{depth}-{width} (RobustBench parameter names)"
    return build


def timm_model(num_classes, in_chans, image_size, timm_name=None, cifar_stem=False, **options):
    """timm:<name>: any timm architecture (random init; cifar_stem=True swaps the stem for a 3x3 conv)."""
    import timm

    try:
        model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                  **options)
    except RuntimeError as error:
        raise RamptoolError(f"timm cannot build {timm_name!r}: {error}") from None
    if cifar_stem:
        stem = getattr(model, "conv1", None)
        if not isinstance(stem, nn.Conv2d):
            raise RamptoolError(f"cifar_stem: timm model {timm_name!r} has no ResNet-style conv1 stem")
        model.conv1 = nn.Conv2d(in_chans, stem.out_channels, 3, stride=1, padding=1, bias=False)
        if hasattr(model, "maxpool"):
            model.maxpool = nn.Identity()
    return model


@hookimpl
def register_backbones():
    return {
        "small-cnn": small_cnn,
        "preact-resnet18": preact_resnet18,
        "preact-resnet18-softplus": preact_resnet18_softplus,
        "wrn-28-10": _wide_resnet(28, 10),
        "wrn-34-20": _wide_resnet(34, 20),
        "wrn-70-16": _wide_resnet(70, 16),
        "timm:<name>": timm_model,
    }


def backbone_name(arch: str) -> str:
    """The registered backbone behind an ``--arch`` value (every ``timm:<name>`` is one entry)."""
    return "timm:<name>" if arch.startswith(TIMM_PREFIX) else arch


def build_backbone(arch: str, num_classes: int, in_chans: int, image_size: int, **options) -> nn.Module:
    from ramptool.plugins import get

    if arch.startswith(TIMM_PREFIX):
        options = {**options, "timm_name": arch[len(TIMM_PREFIX):]}
    return get("backbone", backbone_name(arch))(num_classes, in_chans, image_size, **options)


def build_model(arch: str, num_classes: int, input_shape, mean, std, **options) -> Normalized:
    in_chans, image_size = input_shape[0], input_shape[-1]
    return Normalized(build_backbone(arch, num_classes, in_chans, image_size, **options), mean, std)
