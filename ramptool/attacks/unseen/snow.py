"""Snow (Kang et al. 2019): snowflakes on a regular grid whose intensities are the adversary's parameters.

Seven flake grids (every 4th pixel, offset per grid) hold intensities ``theta`` in [0,1]; each grid is convolved
with its own random streak kernel (an anti-aliased line, mirrored through the centre, slightly blurred) and the
sum of ``theta ** 4`` through them is the snow layer. The image is first whitened a little, as snow does
(``0.75 x + 0.25 max(x, 1.5 luminance + 0.5)``), then ``x_adv = clip(that + eps * snow, 0, 1)``. The budget: in
every 8x8 block of each intensity grid the mean intensity stays at most ``FLAKE_BUDGET`` (0.2, advex-uar's
default). eps scales the snow layer (unitless, [0,1] images).

Followed exactly but for three points. The budget is enforced after every step and on the random start
(advex-uar skips it after the last step and at the start, so its result can leave the budget). Images whose
side is not a multiple of 32 get partial blocks at the edge, averaged over the flakes they hold (advex-uar
needs 32: its block count of a 28x28 image is zero). The luminance of a 1-channel image is the image itself,
and of an image with other than 1 or 3 channels its channel mean.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ramptool.attacks.unseen.latent import Adversary, random_uniform

FLAKE_BUDGET = 0.2
BLOCK = 8
KERNEL_SIZE = 13
GRIDS = 7
DISCOLOR = 0.25
LUMINANCE = (0.2126, 0.7152, 0.0722)


def _trapezoid(y, y0, w):
    return np.clip(np.minimum(y + 1 + w / 2 - y0, -y + 1 + w / 2 + y0), 0, 1)


def weighted_line(r0, c0, r1, c1, w, rmin=0, rmax=np.inf):
    """Rows, columns and weights of an anti-aliased line of width ``w`` (advex-uar's, from StackOverflow); rows
    outside [rmin, rmax) are dropped (columns, when the line is steep: the same quirk as the original)."""
    if abs(c1 - c0) < abs(r1 - r0):
        columns, rows, values = weighted_line(c0, r0, c1, r1, w, rmin=rmin, rmax=rmax)
        return rows, columns, values
    if c0 > c1:
        return weighted_line(r1, c1, r0, c0, w, rmin=rmin, rmax=rmax)
    slope = (r1 - r0) / (c1 - c0)
    w *= np.sqrt(1 + np.abs(slope)) / 2
    x = np.arange(c0, c1 + 1, dtype=float)
    y = x * slope + (c1 * r0 - c0 * r1) / (c1 - c0)
    thickness = np.ceil(w / 2)
    yy = np.floor(y).reshape(-1, 1) + np.arange(-thickness - 1, thickness + 2).reshape(1, -1)
    xx = np.repeat(x, yy.shape[1])
    values = _trapezoid(yy, y.reshape(-1, 1), w).flatten()
    yy = yy.flatten()
    keep = (yy >= rmin) & (yy < rmax) & (values > 0)
    return yy[keep].astype(int), xx[keep].astype(int), values[keep]


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """(size, size) Gaussian summing to 1."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    line = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = torch.outer(line, line)
    return kernel / kernel.sum()


def streak_kernel(end_row: int, end_column: int, width: int, blur: float, flip: bool) -> torch.Tensor:
    """One snowflake kernel (KERNEL_SIZE x KERNEL_SIZE): advex-uar's ``make_kernels`` for given random draws."""
    mid = KERNEL_SIZE // 2
    kernel = np.zeros((KERNEL_SIZE, KERNEL_SIZE))
    rows, columns, values = weighted_line(mid, mid, end_row, end_column, width, mid, KERNEL_SIZE)
    kernel[rows, columns] = values
    kernel[:mid + 1, :mid + 1] = kernel[::-1, ::-1][:mid + 1, :mid + 1]
    if flip:
        kernel = kernel[:, ::-1]
    streak = torch.from_numpy(kernel.copy()).float()[None, None]
    smoothing = gaussian_kernel(math.ceil(5 * blur), blur).float()[None, None]
    return F.conv2d(streak, smoothing, padding=1)[0, 0]


def random_kernels(generator, device) -> torch.Tensor:
    """(1, GRIDS, K, K): one streak kernel per flake grid, all mirrored the same way (one flip per call)."""
    draws = torch.rand(1 + 4 * GRIDS, generator=generator,
                       device=generator.device if generator is not None else device).tolist()
    flip, draws = draws[0] < 0.5, draws[1:]
    lowest = KERNEL_SIZE // 2 + 2  # line ends in [mid+2, K), like np.random.randint(mid + 2, K)
    kernels = []
    for row, column, width, blur in zip(*[iter(draws)] * 4):
        end_row = lowest + int(row * (KERNEL_SIZE - lowest))
        end_column = lowest + int(column * (KERNEL_SIZE - lowest))
        line_width = 1 if width < 0.6 else 3 if width < 0.9 else 5  # p = 0.6, 0.3, 0.1
        kernels.append(streak_kernel(end_row, end_column, line_width, 0.41 + 0.19 * blur, flip))
    return torch.stack(kernels)[None].to(device)


def snow_layer(theta: torch.Tensor, kernels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 1, H, W) snow from the (B, GRIDS, ceil(H/4), ceil(W/4)) intensities (advex-uar's ``snow_creator``)."""
    batch, _, rows, columns = theta.shape
    flakes = theta ** 4
    grid = theta.new_zeros(batch, GRIDS, 4 * rows, 4 * columns)
    for i in range(4):
        grid[:, i, ::4, i::4] = flakes[:, i]
    for i in range(3):
        grid[:, i + 4, i + 1::4, ::4] = flakes[:, 4 + i]
    grid = grid[:, :, :height, :width]
    return F.conv2d(grid, kernels.to(theta.dtype), padding=KERNEL_SIZE // 2)


def block_means(theta: torch.Tensor) -> torch.Tensor:
    """Mean intensity of every BLOCK x BLOCK block of each grid (edge blocks over the flakes they hold)."""
    return F.avg_pool2d(theta, BLOCK, ceil_mode=True)


def whiten(x: torch.Tensor) -> torch.Tensor:
    channels = x.shape[1]
    if channels == 3:
        weights = torch.tensor(LUMINANCE, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        luminance = (x * weights).sum(1, keepdim=True)
    else:
        luminance = x.mean(1, keepdim=True)
    return (1 - DISCOLOR) * x + DISCOLOR * torch.maximum(x, luminance * 1.5 + 0.5)


class Snow(Adversary):
    """Snow (Kang et al. 2019): adversarial snowflake intensities on a grid; eps scales the snow layer."""

    name = "snow"
    description = "Snow (UAR, Kang 2019): adversarial snowflake intensities on a grid"
    unit = "scale of the snow layer on [0,1] images (flake mean <= 0.2 per 8x8 block)"

    def sample(self, x, eps, generator):
        height, width = x.shape[-2:]
        shape = (x.shape[0], GRIDS, math.ceil(height / 4), math.ceil(width / 4))
        # advex-uar's start: exponentially distributed intensities, exp(-U / budget)
        theta = torch.exp(-random_uniform(shape, 0.0, 1.0, x, generator) / FLAKE_BUDGET)
        context = {"kernels": random_kernels(generator, x.device)}
        return self.project(theta, context, eps), context

    def render(self, x, theta, context, eps):
        snow = snow_layer(theta, context["kernels"], *x.shape[-2:])
        return (whiten(x) + float(eps) * snow).clamp(0.0, 1.0)

    def project(self, theta, context, eps):
        theta = theta.clamp(1e-9, 1.0)
        scale = FLAKE_BUDGET / block_means(theta).clamp_min(FLAKE_BUDGET)
        scale = scale.repeat_interleave(BLOCK, 2).repeat_interleave(BLOCK, 3)
        return theta * scale[:, :, :theta.shape[2], :theta.shape[3]]

    def contains(self, theta, context, eps):
        inside = ((theta > 0) & (theta <= 1)).flatten(1).all(1)
        return inside & (block_means(theta) <= FLAKE_BUDGET * (1 + 1e-5)).flatten(1).all(1)
