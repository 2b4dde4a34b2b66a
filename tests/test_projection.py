"""Threat-model arithmetic: the exact box-constrained l1 projection against an independent reference, the
linf/l2 projections' invariants, and the parsing of norm names and epsilons."""

import pytest
import torch

from ramptool.errors import RamptoolError
from ramptool.threat import lp_norm, parse_eps, parse_norm, parse_norms, project, project_l1


def reference_box_l1_projection(x: torch.Tensor, x_adv: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Projection of x_adv onto {||z - x||_1 <= eps} ∩ [0,1]^d by bisection on the soft threshold, one sample
    at a time in float64: it shares only the KKT form of the solution with project_l1's breakpoint sort."""
    rows = []
    for center, target, radius in zip(x.flatten(1).double(), x_adv.flatten(1).double(), eps.double(),
                                      strict=True):
        clipped = target.clamp(0.0, 1.0)
        if (clipped - center).abs().sum() <= radius:
            rows.append(clipped)  # the box alone already satisfies the l1 constraint
            continue
        low, high = torch.zeros((), dtype=torch.float64), (target - center).abs().max()
        for _ in range(200):
            threshold = (low + high) / 2
            shrunk = torch.sign(target - center) * ((target - center).abs() - threshold).clamp_min(0.0)
            if ((center + shrunk).clamp(0.0, 1.0) - center).abs().sum() > radius:
                low = threshold
            else:
                high = threshold
        shrunk = torch.sign(target - center) * ((target - center).abs() - high).clamp_min(0.0)
        rows.append((center + shrunk).clamp(0.0, 1.0))
    return torch.stack(rows).view(x.shape)


def points_near_the_box(n, d, generator, scale=0.5, dtype=torch.float64):
    """Centers with about a third of the coordinates exactly at 0 or 1, and perturbations of which many point
    out of the box at those coordinates (the case a clip-after-projection gets wrong)."""
    x = torch.rand(n, d, generator=generator, dtype=dtype)
    face = torch.rand(n, d, generator=generator)
    x = torch.where(face < 0.15, torch.zeros_like(x), torch.where(face > 0.85, torch.ones_like(x), x))
    u = scale * torch.randn(n, d, generator=generator, dtype=dtype)
    outward = torch.rand(n, d, generator=generator) < 0.7
    u = torch.where(outward & (x == 0), -u.abs(), torch.where(outward & (x == 1), u.abs(), u))
    return x, x + u


def box_room(x, x_adv):
    """l1 distance from x to x_adv clipped to the box: for eps at or past it only the box constraint binds."""
    return (x_adv.clamp(0, 1) - x).abs().flatten(1).sum(dim=1)


@pytest.mark.parametrize("eps_fraction", [1e-4, 0.01, 0.3, 0.9, 0.999, 1.0, 1.5])
def test_l1_projection_matches_bisection_reference(eps_fraction):
    generator = torch.Generator().manual_seed(1)
    x, x_adv = points_near_the_box(24, 300, generator)
    eps = eps_fraction * box_room(x, x_adv)
    projected = project_l1(x, x_adv, eps)
    assert torch.allclose(projected, reference_box_l1_projection(x, x_adv, eps), atol=1e-6, rtol=0)
    assert (lp_norm(projected - x, "l1") <= eps * (1 + 1e-9)).all()
    assert ((projected >= 0) & (projected <= 1)).all()


def test_l1_projection_with_a_different_eps_per_sample_and_image_shape():
    generator = torch.Generator().manual_seed(2)
    x, x_adv = points_near_the_box(16, 2 * 14 * 14, generator, scale=0.3)
    x, x_adv = x.view(16, 2, 14, 14), x_adv.view(16, 2, 14, 14)
    # from tiny to past the box room, in one batch
    eps = torch.logspace(-3, 0, 16, dtype=torch.float64) * 2 * box_room(x, x_adv)
    projected = project_l1(x, x_adv, eps)
    assert projected.shape == x.shape
    assert torch.allclose(projected, reference_box_l1_projection(x, x_adv, eps), atol=1e-6, rtol=0)


def test_l1_projection_with_tied_magnitudes():
    """Quantised perturbations give many equal breakpoints, where a sort-based solver has to pick the right
    segment among zero-length ones."""
    generator = torch.Generator().manual_seed(3)
    x, x_adv = points_near_the_box(32, 64, generator)
    x = (x * 4).round() / 4
    x_adv = x + ((x_adv - x) * 8).round() / 8
    for eps in (0.125, 0.5, 1.0, 3.0, 7.25):
        projected = project_l1(x, x_adv, eps)
        reference = reference_box_l1_projection(x, x_adv, torch.full((32,), eps, dtype=torch.float64))
        assert torch.allclose(projected, reference, atol=1e-6, rtol=0)


def test_l1_projection_in_float32_keeps_dtype_and_accuracy():
    generator = torch.Generator().manual_seed(4)
    x, x_adv = points_near_the_box(8, 784, generator, dtype=torch.float32)
    projected = project_l1(x, x_adv, 10.0)
    assert projected.dtype == torch.float32
    reference = reference_box_l1_projection(x, x_adv, torch.full((8,), 10.0))
    assert torch.allclose(projected.double(), reference, atol=1e-6, rtol=0)
    assert (lp_norm(projected - x, "l1") <= 10.0 * (1 + 1e-5)).all()


def test_l1_projection_is_the_nearest_feasible_point():
    """Variational inequality of a Euclidean projection p onto a convex set C: <x_adv - p, z - p> <= 0 for all
    z in C. Checked against random feasible z, independently of any threshold formula."""
    generator = torch.Generator().manual_seed(5)
    x, x_adv = points_near_the_box(6, 50, generator)
    eps = 2.0
    projected = project_l1(x, x_adv, eps)
    for _ in range(200):
        z = project_l1(x, x + torch.randn(6, 50, generator=generator, dtype=torch.float64), eps)
        # shrunk towards x so that z also lies inside C, not only on its faces
        z = x + (z - x) * torch.rand(6, 1, generator=generator, dtype=torch.float64)
        assert ((x_adv - projected) * (z - projected)).sum(dim=1).max() <= 1e-9


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_lands_in_ball_and_box_and_is_idempotent(norm):
    generator = torch.Generator().manual_seed(6)
    x, x_adv = points_near_the_box(32, 784, generator, scale=0.3, dtype=torch.float32)
    eps = {"linf": 0.1, "l2": 1.5, "l1": 10.0}[norm]
    projected = project(x, x_adv, norm, eps)
    assert (lp_norm(projected - x, norm) <= eps * (1 + 1e-5)).all()
    assert ((projected >= 0) & (projected <= 1)).all()
    assert torch.allclose(project(x, projected, norm, eps), projected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_points_already_inside_are_unchanged(norm):
    generator = torch.Generator().manual_seed(7)
    x, x_adv = points_near_the_box(32, 784, generator, scale=0.3, dtype=torch.float32)
    eps = {"linf": 0.1, "l2": 1.5, "l1": 10.0}[norm]
    direction = x_adv.clamp(0, 1) - x
    # scaled to half the radius, then kept in the box: feasible by construction
    inside = x + direction * (0.5 * eps / lp_norm(direction, norm)).view(-1, 1)
    inside = inside.clamp(0, 1)
    assert torch.equal(project(x, inside, norm, eps), inside)
    assert torch.equal(project(x, x, norm, eps), x)


def test_linf_projection_is_coordinatewise_clip():
    x = torch.tensor([[0.0, 0.5, 1.0, 0.95]])
    x_adv = torch.tensor([[-0.3, 0.9, 1.4, 0.8]])
    assert torch.allclose(project(x, x_adv, "linf", 0.1), torch.tensor([[0.0, 0.6, 1.0, 0.85]]))


def test_unknown_norm_is_rejected():
    with pytest.raises(RamptoolError):
        project(torch.zeros(1, 3), torch.zeros(1, 3), "l0", 1.0)
    with pytest.raises(RamptoolError):
        lp_norm(torch.zeros(1, 3), "l3")


@pytest.mark.parametrize(("text", "expected"), [
    ("linf", "linf"), ("Linf", "linf"), ("L_INF", "linf"), ("inf", "linf"), (" L2 ", "l2"), ("L1", "l1"),
])
def test_parse_norm_aliases(text, expected):
    assert parse_norm(text) == expected


@pytest.mark.parametrize("text", ["l3", "l0", "", "linf2", "l 2"])
def test_parse_norm_rejects_unknown_names(text):
    with pytest.raises(RamptoolError):
        parse_norm(text)


def test_parse_norm_accepts_a_plugin_norm_only_when_known():
    assert parse_norm("L0", known=["linf", "l0"]) == "l0"
    with pytest.raises(RamptoolError):
        parse_norm("l2", known=["linf", "l0"])


def test_parse_norms():
    assert parse_norms("Linf, L2,l1") == ["linf", "l2", "l1"]
    assert parse_norms("l2,") == ["l2"]
    for bad in ("", " , ", "linf,Linf", "linf,l5"):
        with pytest.raises(RamptoolError):
            parse_norms(bad)


def test_parse_eps_fractions_and_aliases():
    eps = parse_eps("Linf=8/255, L2=0.5,l1=12")
    assert eps == {"linf": pytest.approx(8 / 255), "l2": 0.5, "l1": 12.0}
    assert parse_eps({"L2": "1/2", "linf": 0.25}) == {"l2": 0.5, "linf": 0.25}


def test_parse_eps_fills_the_dataset_defaults():
    eps = parse_eps("l2=1", dataset="cifar10")
    assert eps == {"linf": pytest.approx(8 / 255), "l2": 1.0, "l1": 12.0}
    assert parse_eps(None, dataset="fashion-mnist") == {"linf": 0.2, "l2": 1.5, "l1": 10.0}
    assert parse_eps("") == {}


@pytest.mark.parametrize("text", [
    "linf=-0.1", "l2=0", "l1=-3/4", "linf=abc", "linf=1/0", "linf", "l3=0.5", "linf=0.1,bogus=2",
])
def test_parse_eps_rejects_bad_entries(text):
    with pytest.raises(RamptoolError):
        parse_eps(text)


def test_parse_eps_rejects_a_negative_value_in_a_mapping():
    with pytest.raises(RamptoolError):
        parse_eps({"linf": -0.1})
