"""Summaries over seeds and paired comparisons of two methods on the same test points.

A comparison of methods A and B pairs their models seed by seed (same seed: same batch order) and point by point
(the same test points): per seed, the difference of their union accuracies and the discordant points (right for
one, wrong for the other, McNemar's b and c); over seeds, the mean difference with its standard deviation, and a
paired bootstrap over test points (the same resampled points for every seed and both methods) for an interval
that carries the test-point noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar test: the probability, under 'both methods are as good', of a split of the b + c
    discordant points at least as uneven as (b, c)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedComparison:
    per_seed: list[float]  # union accuracy of A minus B, per seed
    mean: float
    std: float  # over seeds
    low: float  # paired bootstrap interval over test points (95%)
    high: float
    discordant: list[tuple[int, int]]  # per seed: (points only A keeps, points only B keeps)
    p_values: list[float]  # per seed, exact McNemar


def paired_comparison(flags_a: list[torch.Tensor], flags_b: list[torch.Tensor], resamples: int = 2000,
                      seed: int = 0) -> PairedComparison:
    """A vs B from their per-point union flags, one tensor per seed (the same seeds and points, in order)."""
    a = torch.stack([f.float() for f in flags_a])  # seeds x points
    b = torch.stack([f.float() for f in flags_b])
    differences = a - b
    per_seed = differences.mean(1).tolist()
    mean, std = mean_std(per_seed)
    n = a.shape[1]
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(n, (resamples, n), generator=generator)
    boot = differences.mean(0)[draws].mean(1)  # mean over seeds, then over the resampled points
    low, high = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=boot.dtype)).tolist()
    discordant = [(int(((fa > 0) & (fb == 0)).sum()), int(((fa == 0) & (fb > 0)).sum())) for fa, fb in zip(a, b)]
    return PairedComparison(per_seed, mean, std, low, high, discordant, [mcnemar_p(*d) for d in discordant])
