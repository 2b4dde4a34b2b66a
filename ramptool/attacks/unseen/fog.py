"""Fog (Kang et al. 2019): a diamond-square plasma fractal whose random offsets are the adversary's parameters.

``x_adv = (x + s * fog) / (max_c(x) + s)`` with ``s = eps / 255`` and ``fog`` the fractal normalised to [0,1]
(``max_c(x)``: each image's per-channel maximum). eps is in advex-uar's unit, grey levels of 0-255; the
parameters (3 offsets per square of each level) live in [0,1]. Followed exactly, including advex-uar's
``wibble_decay=2`` and its roll by 2 in the diamond step, with two generalisations: the fractal is drawn on the
power-of-two square just above the image's longer side and cropped at the centre (advex-uar's fixed 16-pixel
crop leaves nothing of a 28x28 image; it is the same crop at 32 and 224), and it is normalised per image, not
over the whole batch (advex-uar's batch-wide min/max makes one image's fog depend on the others).
"""

from __future__ import annotations

import math

import torch

from ramptool.attacks.unseen.latent import Adversary, random_uniform

WIBBLE = 100.0
WIBBLE_DECAY = 2.0


def map_size(height: int, width: int) -> int:
    return 2 ** (int(math.log2(max(height, width))) + 1)


def variables_per_level(size: int) -> list[int]:
    """Side of each level's square grid; each level has three such grids of offsets."""
    return [2**level for level in range(int(math.log2(size)))]


def fog_field(theta: torch.Tensor, size: int, decay: float = WIBBLE_DECAY) -> torch.Tensor:
    """(B, size, size) fractal in [0,1] from the (B, n) offsets ``theta`` (advex-uar's ``fog_creator``)."""
    batch = theta.shape[0]
    grids = []
    start = 0
    for side in variables_per_level(size):
        for _ in range(3):
            grids.append(theta[:, start:start + side * side].view(batch, side, side))
            start += side * side
    field = theta.new_zeros(batch, size, size)
    step, wibble, used = size, WIBBLE, 0

    def wibbled_mean(total):
        nonlocal used
        used += 1
        return total / 4.0 + grids[used - 1] * 2 * wibble - wibble

    while step >= 2:
        half = step // 2
        corners = field[:, 0:size:step, 0:size:step]
        squares = corners + torch.roll(corners, -1, 1)
        squares = squares + torch.roll(squares, -1, 2)
        field[:, half:size:step, half:size:step] = wibbled_mean(squares)
        centres = field[:, half:size:step, half:size:step]
        corners = field[:, 0:size:step, 0:size:step]
        # advex-uar rolls the centres by 2 (ImageNet-C's plasma fractal by 1); its fog is the one measured
        left = (centres + torch.roll(centres, 2, 1)) + (corners + torch.roll(corners, -1, 2))
        field[:, 0:size:step, half:size:step] = wibbled_mean(left)
        top = (centres + torch.roll(centres, 2, 2)) + (corners + torch.roll(corners, -1, 1))
        field[:, half:size:step, 0:size:step] = wibbled_mean(top)
        step //= 2
        wibble /= decay
    flat = field.flatten(1)
    low, high = flat.amin(1), flat.amax(1)
    flat = flat - low[:, None]
    return (flat / (high - low)[:, None]).view(batch, size, size)


class Fog(Adversary):
    """Fog (Kang et al. 2019): adversarial diamond-square fractal blended in; eps in grey levels of 0-255."""

    name = "fog"
    description = "Fog (UAR, Kang 2019): adversarial diamond-square fractal blended into the image"
    unit = "fog strength in grey levels of 0-255"

    def sample(self, x, eps, generator):
        size = map_size(*x.shape[-2:])
        count = 3 * sum(side * side for side in variables_per_level(size))
        return random_uniform((x.shape[0], count), 0.0, 1.0, x, generator), {"size": size}

    def render(self, x, theta, context, eps):
        size, (height, width) = context["size"], x.shape[-2:]
        top, left = (size - height) // 2, (size - width) // 2
        fog = fog_field(theta, size)[:, None, top:top + height, left:left + width]
        strength = float(eps) / 255.0
        x_max = x.flatten(2).amax(2)[:, :, None, None]
        return ((x + strength * fog) / (x_max + strength)).clamp(0.0, 1.0)

    def project(self, theta, context, eps):
        return theta.clamp(0.0, 1.0)

    def contains(self, theta, context, eps):
        return ((theta >= 0) & (theta <= 1)).flatten(1).all(1)
