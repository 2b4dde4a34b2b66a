"""Elastic deformation (Kang et al. 2019): a per-pixel flow field ``theta`` (in pixels, ``|theta| <= eps``),
smoothed by a Gaussian and applied with bilinear resampling (zeros outside the image).

eps is in advex-uar's unit, pixels of displacement before smoothing; the smoothing kernel sums to 1, so no pixel
moves more than eps. advex-uar's kernels are 5 pixels with std 3/224*32 for CIFAR-10 and 25 with std 3 for
ImageNet; ramptool scales them with the image (std 3/224 * side, size the odd number nearest 25/224 * side, at
least 5), which gives exactly those two. One correction: advex-uar samples a grid laid out for
``align_corners=True`` with PyTorch's current default ``align_corners=False``, so even a zero flow shrinks and
blurs the image by half a pixel; ramptool samples with ``align_corners=True`` (a zero flow is the identity) and
converts pixels to grid units with 2/(side-1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ramptool.attacks.unseen.latent import Adversary, random_uniform
from ramptool.attacks.unseen.snow import gaussian_kernel

REFERENCE_SIDE = 224  # advex-uar's ImageNet kernel: 25 pixels, std 3


def smoothing_kernel(height: int, width: int) -> torch.Tensor:
    side = max(height, width)
    size = max(5, 2 * round((25 * side / REFERENCE_SIDE - 1) / 2) + 1)
    return gaussian_kernel(size, 3.0 * side / REFERENCE_SIDE).float()


def smooth_flow(flow: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Each flow channel convolved with ``kernel`` after reflect padding (advex-uar's ``ElasticDeformation``)."""
    pad = (kernel.shape[-1] - 1) // 2
    weight = kernel.to(flow.dtype).expand(2, 1, *kernel.shape)
    return F.conv2d(F.pad(flow, (pad,) * 4, mode="reflect"), weight, groups=2)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` at the identity grid plus ``flow`` ((B, 2, H, W), channel 0 along the width, in grid units)."""
    height, width = x.shape[-2:]
    rows = torch.linspace(-1, 1, height, device=x.device, dtype=x.dtype)
    columns = torch.linspace(-1, 1, width, device=x.device, dtype=x.dtype)
    base = torch.stack(torch.meshgrid(columns, rows, indexing="xy"), dim=-1)
    return F.grid_sample(x, base + flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros",
                         align_corners=True)


class Elastic(Adversary):
    """Elastic deformation (Kang et al. 2019): adversarial smoothed flow field; eps in pixels of displacement."""

    name = "elastic"
    description = "Elastic (UAR, Kang 2019): adversarial smoothed flow field, bilinear warp"
    unit = "displacement in pixels (l-inf of the flow before smoothing)"

    def sample(self, x, eps, generator):
        theta = random_uniform((x.shape[0], 2, *x.shape[-2:]), -float(eps), float(eps), x, generator)
        return theta, {"kernel": smoothing_kernel(*x.shape[-2:]).to(x.device)}

    def render(self, x, theta, context, eps):
        height, width = x.shape[-2:]
        to_grid = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], device=x.device,
                               dtype=theta.dtype).view(1, 2, 1, 1)
        return warp(x, smooth_flow(theta * to_grid, context["kernel"]))

    def project(self, theta, context, eps):
        return theta.clamp(-float(eps), float(eps))

    def contains(self, theta, context, eps):
        return (theta.abs() <= float(eps) * (1 + 1e-6)).flatten(1).all(1)
