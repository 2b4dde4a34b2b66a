"""An attack family: PGD on the Carlini-Wagner margin loss, in the linf, l2 and l1 balls (``margin-linf`` ...).

CE-based attacks stall where the softmax saturates; the margin loss max_{j != y} z_j - z_y does not, which makes
it a cheap second opinion next to APGD-CE.
"""

import torch

from ramptool.api import AttackResult, input_gradients_only, lp_norm, project, steepest_direction


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample, the best wrong logit minus the true one: positive exactly when the point is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return wrong - true


def random_point(x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """A random point of the ball (a Gaussian direction, a uniform radius), projected into the box."""
    noise = torch.randn_like(x)
    radius = eps * torch.rand(len(x), device=x.device, dtype=x.dtype)
    scale = (radius / lp_norm(noise, norm).clamp_min(1e-12)).view(-1, *[1] * (x.dim() - 1))
    return project(x, x + noise * scale, norm, eps)


def margin_pgd(model, x, y, *, norm: str, eps: float, steps: int, step_scale: float = 2.5,
               random_start: bool = True, l1_topk: float = 0.02) -> AttackResult:
    """PGD on the margin loss with a fixed step of ``step_scale * eps / steps``; keeps each sample's
    highest-margin point. ``l1_topk`` is the fraction of coordinates an l1 step moves."""
    x = x.detach()
    step = step_scale * eps / steps
    with input_gradients_only(model):  # gradients reach the input only; the model's mode is left as it is
        x_adv = random_point(x, norm, eps) if random_start else x.clone()
        best, best_loss = x_adv, torch.full((len(x),), float("-inf"), device=x.device)
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for i in range(steps + 1):
            x_adv.requires_grad_(True)
            loss = margin(model(x_adv), y)
            fooled |= loss.detach() > 0
            improved = loss.detach() > best_loss
            best = torch.where(improved.view(-1, *[1] * (x.dim() - 1)), x_adv.detach(), best)
            best_loss = torch.where(improved, loss.detach(), best_loss)
            if i == steps:
                break
            grad = torch.autograd.grad(loss.sum(), x_adv)[0]
            x_adv = x_adv.detach()
            x_adv = project(x, x_adv + step * steepest_direction(grad, x_adv, norm, l1_topk), norm, eps)
    return AttackResult(best, best_loss, fooled)
