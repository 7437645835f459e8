"""DSelect-k (Hazimeh et al., NeurIPS 2021): shared experts mixed per task by a differentiable
gate that selects at most k of them, through k smoothed binary encodings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from mtltrain.constraints import Width, above
from mtltrain.errors import ConfigError
from mtltrain.models.experts import SharedExperts, flat
from mtltrain.models.multitask import HeadFactory
from mtltrain.tasks import TaskSpec


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """S(t) = 0 for t ≤ −γ/2, 1 for t ≥ γ/2, else −2t³/γ³ + 3t/(2γ) + ½."""
    cubic = -2 * t**3 / gamma**3 + 3 * t / (2 * gamma) + 0.5
    return torch.where(t <= -gamma / 2, 0.0, torch.where(t >= gamma / 2, 1.0, cubic))


def binary_codes(experts: int) -> Tensor:
    """[experts, m] booleans, m = ⌈log2 experts⌉: row i is i in binary, most significant first."""
    bits = math.ceil(math.log2(experts))
    return torch.tensor([[(i >> (bits - 1 - b)) & 1 for b in range(bits)]
                         for i in range(experts)], dtype=torch.bool)  # fmt: skip


def selector(z: Tensor, codes: Tensor, gamma: float) -> Tensor:
    """r(z)_i = Π_j (S(z_j) where bit j of i is 1, else 1 − S(z_j)): z [..., m] → [..., n];
    Σ_i r_i = 1 over the 2^m codes, one-hot once every |z_j| ≥ γ/2."""
    s = smooth_step(z, gamma).unsqueeze(-2)  # [..., 1, m]
    return torch.where(codes, s, 1 - s).prod(dim=-1)


class DSelectKGate(nn.Module):
    """q(x) = Σ_{i≤k} softmax(α(x))_i·r(z^(i)(x)), with z^(i) and α linear in the flattened
    input x (per-example gating): one weight per expert, Σ = 1, at most k non-zero once the
    selectors have converged. Initialised as the authors' code: z's layer uniform in
    ±γ/100 (every expert near-equal at the start), α's uniform in ±0.05.
    """

    def __init__(self, in_features: int, experts: int, k: int, gamma: float) -> None:
        super().__init__()
        self.k, self.gamma = k, gamma
        self.register_buffer("codes", binary_codes(experts), persistent=False)
        self.z = nn.Linear(in_features, k * self.codes.shape[1])
        self.alpha = nn.Linear(in_features, k)
        for p in self.z.parameters():
            nn.init.uniform_(p, -gamma / 100, gamma / 100)
        for p in self.alpha.parameters():
            nn.init.uniform_(p, -0.05, 0.05)

    def forward(self, x: Tensor) -> Tensor:
        h = flat(x, self.alpha.in_features)
        z = self.z(h).unflatten(-1, (self.k, self.codes.shape[1]))  # any batch size (torch.export)
        selected = selector(z, self.codes, self.gamma)  # [batch, k, experts]
        return (torch.softmax(self.alpha(h), dim=-1).unsqueeze(-1) * selected).sum(dim=1)


class DSelectK(SharedExperts):
    """y_k = head_k(Σ_i q_k(x)_i·E_i(x)) with each task's DSelect-k gate q_k (`DSelectKGate`).

    The `experts` E_1..E_n (n a power of 2, so that every binary code names an expert: the
    paper's penalty for codes that name none is an auxiliary loss, refused instead) are
    copies of the backbone (`encoder`): the backbone as built, the others re-initialised
    independently. Each task's gate reads the input flattened (`input_shape`: one input's
    shape, needed where the backbone does not start with a Linear that tells it); `k` is the
    number of selectors, `gamma` the smooth-step's width γ. The paper's entropy regulariser
    on the selectors is not added (the model protocol has no auxiliary loss): the selectors
    become sparse only as far as the task losses drive them into |z| ≥ γ/2.

    Shared: the experts. Task-specific: the task's gate and head. Features: the tuple of the n
    experts' outputs, which the gates mix and the heads read.
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        encoder: nn.Module,
        head: HeadFactory,
        heads: Mapping[str, HeadFactory] | None = None,
        experts: Width = 4,
        k: Width = 2,
        gamma: Annotated[float, above(0)] = 1.0,
        input_shape: Sequence[Width] | None = None,
    ) -> None:
        self.check_settings({"experts": experts})
        super().__init__(
            tasks, encoder, head, heads, experts,
            lambda width: DSelectKGate(width, experts, k, gamma), input_shape,
        )  # fmt: skip

    @staticmethod
    def check_settings(settings: Mapping[str, Any]) -> None:
        n = settings["experts"]
        if n < 2 or n & (n - 1):
            raise ConfigError(
                f"architecture.experts={n} is not allowed: DSelect-k's binary codes name 2^m "
                "experts, so their number is a power of 2 (2, 4, 8, ...)"
            )
