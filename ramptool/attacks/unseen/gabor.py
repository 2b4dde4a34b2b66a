"""Gabor noise (Kang et al. 2019, after Co et al.'s procedural noise): a field ``theta`` in [-1,1] convolved with
a random Gabor kernel per image, contrast-equalised and scaled to [0,1], added to every channel.

``x_adv = clip(x + (eps / 255) * noise, 0, 1)``; eps in advex-uar's unit, grey levels of 0-255; so
``0 <= x_adv - x <= eps / 255``, the same in every channel. Followed exactly, including advex-uar's start: a
sparse random field (density 1/14, values in [-1,1]) whose drawn coordinates are then frozen at 0 while every
other coordinate is optimised (its mask is ``init == 0``). The kernel is 23 pixels at every image size, as in
advex-uar for CIFAR-10 and ImageNet. advex-uar's equalisation takes ``sqrt(|irfft2(rfft2((n - mean)^2))|)``, a
round trip that is the identity for even sizes: ramptool takes ``|n - mean|`` directly, which also holds for odd
sizes. The sparse start draws each coordinate independently (scipy's ``sparse.random`` draws an exact count over
the whole batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ramptool.attacks.unseen.latent import Adversary, random_uniform

KERNEL_SIZE = 23
DENSITY = 1.0 / 14
MAX_SIDES = 10
EQUALISE_FLOOR = 1e-3


def gabor_kernel(size: int, sigma: torch.Tensor, frequency: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """(B, size, size) Gabor kernels on [-0.5, 0.5]^2 (advex-uar's ``get_gabor``), one per row of the inputs."""
    axis = torch.linspace(-0.5, 0.5, size, device=sigma.device, dtype=sigma.dtype)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    angle, sigma, frequency = angle[:, None, None], sigma[:, None, None], frequency[:, None, None]
    rotated_x = x * torch.cos(angle) + y * torch.sin(angle)
    rotated_y = -x * torch.sin(angle) + y * torch.cos(angle)
    envelope = torch.exp(-0.5 * (rotated_x**2 / (sigma + 1e-3) ** 2 + rotated_y**2 / (sigma + 1e-3) ** 2))
    return envelope * torch.cos(2 * math.pi * frequency * rotated_x)


def gabor_kernels(sides: torch.Tensor, sigma, frequency, angle, size: int = KERNEL_SIZE) -> torch.Tensor:
    """(B, 1, size, size): each image's kernel is the sum of ``sides`` Gabor kernels turned by pi/sides
    (advex-uar's ``get_gabor_with_sides``)."""
    total = 0
    for side in range(MAX_SIDES):
        turned = gabor_kernel(size, sigma, frequency, angle + math.pi * side / sides.to(angle.dtype))
        total = total + turned * (side < sides).to(angle.dtype)[:, None, None]
    return total[:, None]


def equalise(noise: torch.Tensor) -> torch.Tensor:
    """advex-uar's ``normalize_var``: flatten the contrast towards sign(noise - mean), then min-max to [0,1].
    The gains, the mean and the min/max are constants for the gradient, as in advex-uar."""
    batch = noise.shape[0]
    mean = noise.flatten(1).mean(1).view(batch, 1, 1, 1).detach()
    spread = (noise - mean).abs().detach()
    spread = spread / (spread.flatten(1).amax(1).view(batch, 1, 1, 1) + 1e-12)
    gain = (EQUALISE_FLOOR + 1) / (EQUALISE_FLOOR + spread)
    flat = (mean + (noise - mean) * gain).flatten(1)
    low, high = flat.amin(1).detach(), flat.amax(1).detach()
    return ((flat - low[:, None]) / (high - low + 1e-12)[:, None]).view_as(noise)


def gabor_noise(theta: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) noise in [0,1]: each image's field convolved with its own kernel, then equalised."""
    batch, _, height, width = theta.shape
    noise = F.conv2d(theta.view(1, batch, height, width), kernels, groups=batch, padding=kernels.shape[-1] // 2)
    return equalise(noise.view(batch, 1, height, width))


class Gabor(Adversary):
    """Gabor noise (Kang et al. 2019): adversarial field through a random Gabor kernel; eps in grey levels 0-255."""

    name = "gabor"
    description = "Gabor noise (UAR, Kang 2019): adversarial field through a random Gabor kernel"
    unit = "noise amplitude in grey levels of 0-255"

    def sample(self, x, eps, generator):
        batch, _, height, width = x.shape
        drawn = random_uniform((batch, 1, height, width), 0.0, 1.0, x, generator) < DENSITY
        theta = torch.where(drawn, random_uniform((batch, 1, height, width), -1.0, 1.0, x, generator), 0.0)
        draws = random_uniform((4, batch), 0.0, 1.0, x, generator)
        sides = 1 + (draws[0] * MAX_SIDES).long().clamp(max=MAX_SIDES - 1)
        quarter = KERNEL_SIZE / 4.0 - 3
        kernels = gabor_kernels(sides, 0.3 * draws[1] + 0.1, quarter * draws[2] + 3, math.pi * draws[3])
        return theta, {"kernels": kernels, "free": ~drawn}

    def render(self, x, theta, context, eps):
        noise = gabor_noise(theta, context["kernels"].to(theta.dtype))
        return (x + float(eps) / 255.0 * noise).clamp(0.0, 1.0)

    def project(self, theta, context, eps):
        return theta.clamp(-1.0, 1.0) * context["free"]

    def contains(self, theta, context, eps):
        return (theta.abs() <= 1).flatten(1).all(1)
