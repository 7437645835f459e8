"""The Euclidean projection onto the probability simplex, the step that keeps the weights of
the double-sampling strategies (SDMGrad, MoDo) on it.

Π_Δ(v) = argmin_{w ≥ 0, Σw = 1} ‖w − v‖ = max(v − θ, 0), θ the one threshold with Σ = 1:
with u = v sorted in decreasing order and ρ the largest j with u_j > (Σ_{i≤j} u_i − 1)/j,
θ = (Σ_{i≤ρ} u_i − 1)/ρ (Held, Wolfe & Crowder 1974; Duchi et al. 2008).
"""

from __future__ import annotations

import torch
from torch import Tensor


def project_to_simplex(v: Tensor) -> Tensor:
    """Π_Δ(v): the point of the probability simplex nearest to the vector `v` (see the module)."""
    u = v.sort(descending=True).values
    ranks = torch.arange(1, len(v) + 1, dtype=v.dtype, device=v.device)
    thresholds = (u.cumsum(0) - 1) / ranks
    rho = int((u > thresholds).nonzero()[-1])  # u_1 > u_1 − 1: never empty
    return (v - thresholds[rho]).clamp_min(0)
