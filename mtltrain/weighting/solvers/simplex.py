"""The Euclidean projection onto the probability simplex, the step that keeps the weights of
the double-sampling strategies (SDMGrad, MoDo) on it.

Π_Δ(v) = argmin_{w ≥ 0, Σw = 1} ‖w − v‖ = max(v − θ, 0), θ the one threshold with Σ = 1:
with u = v sorted in decreasing order and ρ the largest j with u_j > (Σ_{i≤j} u_i − 1)/j,
θ = (Σ_{i≤ρ} u_i − 1)/ρ (Held, Wolfe & Crowder 1974; Duchi et al. 2008). v is first shifted
so that its largest entry is 0 (the projection is the same): then j = 1 always qualifies, where
with |u_1| beyond the float's resolution of 1 (u_1 − 1 = u_1) no j might.
"""

from __future__ import annotations

import torch
from torch import Tensor


def project_to_simplex(v: Tensor) -> Tensor:
    """Π_Δ(v): the point of the probability simplex nearest to the vector `v` (see the module);
    NaN where `v` holds a NaN or +∞."""
    shifted = v - v.max()  # Π_Δ(v − c) = Π_Δ(v), and u_1 = 0 > −1 whatever the scale of v
    u = shifted.sort(descending=True).values
    ranks = torch.arange(1, len(v) + 1, dtype=v.dtype, device=v.device)
    thresholds = (u.cumsum(0) - 1) / ranks
    held = (u > thresholds).nonzero()
    if len(held) == 0:  # only where v holds a NaN or +∞
        return torch.full_like(v, torch.nan)
    return (shifted - thresholds[int(held[-1])]).clamp_min(0)
