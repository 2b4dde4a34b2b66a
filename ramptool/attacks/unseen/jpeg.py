"""JPEG-l∞ (Kang et al. 2019): an l∞-bounded perturbation of an image's quantised JPEG coefficients.

The image (0-255) goes through JPEG's encoder without rounding: YCbCr (JFIF), 4:2:0 chroma subsampling, 8x8
DCT, division by the standard quality-50 tables. Each quantised coefficient is shifted by ``theta / 2`` with
``|theta| <= eps`` (eps in quantisation steps: advex-uar's ``noisy_round`` adds ``eps * (0.5 + 0.5 u - 0.5)``
for ``u = theta / eps`` in [-1,1]), then decoded and clipped to [0,1]. So the only loss besides the
perturbation is the chroma subsampling, as in advex-uar, which rounds nothing either.

Generalised beyond advex-uar's RGB images of a side divisible by 16: images are edge-padded at the centre to
a multiple of 16 (8 without chroma) and cropped back (advex-uar pads the same way but crops the wrong corner
and sizes its parameters before padding); an image with other than 3 channels is coded like a grayscale JPEG,
each channel its own luminance plane with the luminance table and no subsampling. advex-uar's first forward
evaluates its random start scaled by eps once more (it divides by eps only from the second step on); ramptool
evaluates the start itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ramptool.attacks.unseen.latent import Adversary, random_uniform

LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_CORNER = ((17, 18, 24, 47), (18, 21, 26, 66), (24, 26, 56, 99), (47, 66, 99, 99))
RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
YCBCR_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))
BLOCK = 8


def quantisation_tables(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    luma = torch.tensor(LUMA_TABLE, device=like.device, dtype=like.dtype)
    chroma = torch.full((BLOCK, BLOCK), 99.0, device=like.device, dtype=like.dtype)
    chroma[:4, :4] = torch.tensor(CHROMA_CORNER, device=like.device, dtype=like.dtype)
    return luma, chroma


def dct_matrix(like: torch.Tensor) -> torch.Tensor:
    """The orthonormal 8-point DCT-II: ``D @ block @ D.T`` is the JPEG DCT of a block, ``D.T @ c @ D`` its inverse."""
    frequency = torch.arange(BLOCK, device=like.device, dtype=like.dtype)[:, None]
    position = torch.arange(BLOCK, device=like.device, dtype=like.dtype)[None, :]
    matrix = 0.5 * torch.cos((2 * position + 1) * frequency * math.pi / 16)
    matrix[0] = matrix[0] / math.sqrt(2)
    return matrix


def to_blocks(plane: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B, H/8, W/8, 8, 8)."""
    batch, height, width = plane.shape
    return plane.view(batch, height // BLOCK, BLOCK, width // BLOCK, BLOCK).transpose(2, 3)


def from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    batch, rows, columns = blocks.shape[:3]
    return blocks.transpose(2, 3).reshape(batch, rows * BLOCK, columns * BLOCK)


def colour_transform(image: torch.Tensor, matrix) -> torch.Tensor:
    weights = torch.tensor(matrix, device=image.device, dtype=image.dtype)
    return torch.einsum("ij,bjhw->bihw", weights, image)


def planes_of(channels: int, height: int, width: int) -> tuple[int, list[tuple[int, int]]]:
    """(padding multiple, [(rows of blocks, columns of blocks) per coded plane]) for an image of this shape."""
    multiple = 16 if channels == 3 else BLOCK
    rows, columns = math.ceil(height / multiple) * multiple // BLOCK, math.ceil(width / multiple) * multiple // BLOCK
    if channels == 3:
        return multiple, [(rows, columns), (rows // 2, columns // 2), (rows // 2, columns // 2)]
    return multiple, [(rows, columns)] * channels


def parameter_count(channels: int, height: int, width: int) -> int:
    return sum(rows * columns * BLOCK * BLOCK for rows, columns in planes_of(channels, height, width)[1])


def jpeg_perturb(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Encode ``x`` ([0,1], B x C x H x W), add ``theta / 2`` to every quantised coefficient, decode, clip."""
    batch, channels, height, width = x.shape
    multiple, shapes = planes_of(channels, height, width)
    pad_h, pad_w = -height % multiple, -width % multiple
    top, left = pad_h // 2, pad_w // 2
    image = F.pad(x * 255.0, (left, pad_w - left, top, pad_h - top), mode="replicate")
    luma_table, chroma_table = quantisation_tables(theta)
    if channels == 3:
        ycbcr = colour_transform(image, RGB_TO_YCBCR) + image.new_tensor([0.0, 128.0, 128.0]).view(1, 3, 1, 1)
        chroma = F.avg_pool2d(ycbcr[:, 1:], 2)
        planes = [(ycbcr[:, 0], luma_table), (chroma[:, 0], chroma_table), (chroma[:, 1], chroma_table)]
    else:
        planes = [(image[:, c], luma_table) for c in range(channels)]
    dct = dct_matrix(theta)
    decoded, start = [], 0
    for (plane, table), (rows, columns) in zip(planes, shapes):
        count = rows * columns * BLOCK * BLOCK
        shift = theta[:, start:start + count].view(batch, rows, columns, BLOCK, BLOCK)
        start += count
        coefficients = dct @ to_blocks(plane - 128.0) @ dct.T
        decoded.append(from_blocks(dct.T @ (coefficients + 0.5 * shift * table) @ dct) + 128.0)
    if channels == 3:
        chroma = torch.stack(decoded[1:], 1).repeat_interleave(2, 2).repeat_interleave(2, 3)
        ycbcr = torch.cat([decoded[0][:, None], chroma], 1)
        shifted = ycbcr - image.new_tensor([0.0, 128.0, 128.0]).view(1, 3, 1, 1)
        image = colour_transform(shifted, YCBCR_TO_RGB)
    else:
        image = torch.stack(decoded, 1)
    return (image[:, :, top:top + height, left:left + width] / 255.0).clamp(0.0, 1.0)


class JPEGLinf(Adversary):
    """JPEG-l∞ (Kang et al. 2019): adversarial shifts of the quantised JPEG coefficients; eps in quantisation steps."""

    name = "jpeg-linf"
    description = "JPEG-l∞ (UAR, Kang 2019): adversarial shifts of the quantised JPEG coefficients"
    unit = "bound on theta in quantisation steps (each coefficient moves by theta / 2)"

    def sample(self, x, eps, generator):
        count = parameter_count(*x.shape[1:])
        return random_uniform((x.shape[0], count), -float(eps), float(eps), x, generator), {}

    def render(self, x, theta, context, eps):
        return jpeg_perturb(x, theta)

    def project(self, theta, context, eps):
        return theta.clamp(-float(eps), float(eps))

    def contains(self, theta, context, eps):
        return (theta.abs() <= float(eps) * (1 + 1e-6)).flatten(1).all(1)
