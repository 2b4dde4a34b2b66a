"""A pairing loss for RAMP: the Jensen-Shannon divergence between the q and r predictions (``js``)."""

import math

import torch
import torch.nn.functional as F


def jensen_shannon(logits_q: torch.Tensor, logits_r: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Jensen-Shannon divergence between p_q and p_r (symmetric, at most log 2), mean over kept points.

    ``temperature`` softens both distributions (softmax of logits / temperature) before comparing them.
    """
    if logits_q.shape[0] == 0:
        return logits_q.sum() * 0.0  # an empty kept subset contributes nothing but keeps the graph
    log_p_q = F.log_softmax(logits_q / temperature, dim=1)
    log_p_r = F.log_softmax(logits_r / temperature, dim=1)
    # log of the mixture m = (p_q + p_r) / 2, computed in log space so tiny probabilities do not underflow
    log_m = torch.logsumexp(torch.stack([log_p_q, log_p_r]), dim=0) - math.log(2.0)
    kl_q_m = (log_p_q.exp() * (log_p_q - log_m)).sum(dim=1)
    kl_r_m = (log_p_r.exp() * (log_p_r - log_m)).sum(dim=1)
    return (0.5 * (kl_q_m + kl_r_m)).mean()
