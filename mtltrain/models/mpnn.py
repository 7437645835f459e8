"""Gilmer et al.'s (2017) message-passing network as Nash-MTL's QM9 experiments use it, on
molecules padded to a fixed number of atoms (`mtltrain.data.qm9`'s [atoms, columns] layout).

h⁰ = ReLU(W₀·x); `steps` times: m_i = ReLU(W_root·h_i + mean_{j≠i} Θ(e_ij)ᵀh_j + b) (NNConv
with mean aggregation over a complete graph of the real atoms, Θ(e) = reshape(L(g(e))) a d×d
matrix from an edge network g = ReLU(A·e + a), L linear), h = GRU(m, h); then Set2Set
(`set2set_steps`) and ReLU(W₁·[q, r]) → the `dim` features every task head reads. Edge features
e_ij: 1 where bonded (covalent radii), and the distance in Å.

Σ_j Θ(e_ij)ᵀh_j is computed without a d×d matrix per edge: Θ's entries are linear in g, so
Σ_j Θ(e_ij)ᵀh_j = Σ_j Σ_m g(e_ij)[m]·P_j[m, ·] + b_Lᵀ·Σ_j h_j, P_j[m, k] = Σ_c h_j[c]·L[c, k, m]
(one matrix product per atom, one batched product over the pairs).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtltrain.constraints import Count, Width
from mtltrain.data.qm9 import ATOM_FEATURES, MASK, RADIUS, XYZ, bonded

EDGE_FEATURES = 2  # bonded, distance


def edge_features(x: Tensor) -> tuple[Tensor, Tensor]:
    """[B, atoms, atoms, 2] (bonded, distance) of every pair, and [B, atoms, atoms] 1 for the
    pairs of two distinct real atoms (the edges)."""
    xyz, mask = x[..., XYZ], x[..., MASK]
    bonds = bonded(xyz, x[..., RADIUS], mask)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    edges = mask.unsqueeze(-1) * mask.unsqueeze(-2) * (1 - eye)
    return torch.stack([bonds, torch.cdist(xyz, xyz) * edges], dim=-1), edges


class EdgeConv(nn.Module):
    """NNConv with mean aggregation on dense padded graphs: h_i' = W_root·h_i +
    mean_{j: edge} Θ(e_ij)ᵀh_j + b, Θ(e) the d×d matrix the edge network makes of e."""

    def __init__(self, dim: int, edge_hidden: int) -> None:
        super().__init__()
        self.dim, self.edge_hidden = dim, edge_hidden
        self.edge_net = nn.Sequential(nn.Linear(EDGE_FEATURES, edge_hidden), nn.ReLU())
        self.theta = nn.Linear(edge_hidden, dim * dim)  # Θ(e) = reshape(theta(g(e)), d, d)
        self.root = nn.Linear(dim, dim)

    def forward(self, h: Tensor, g: Tensor, edges: Tensor) -> Tensor:
        """h [B, n, d], g [B, n, n, H] the edge network's hidden values, zero off the edges,
        edges [B, n, n] → [B, n, d]."""
        (batch, n, d), hidden = h.shape, self.edge_hidden
        weight = self.theta.weight.view(d, d, hidden).permute(0, 2, 1).reshape(d, hidden * d)
        p = (h @ weight).view(batch, n * hidden, d)  # P_j[m, k] = Σ_c h_j[c]·L[c, k, m]
        summed = torch.bmm(g.flatten(2), p)  # Σ_j Σ_m g(e_ij)[m]·P_j[m, k]
        summed = summed + (edges @ h) @ self.theta.bias.view(d, d)
        degree = edges.sum(-1, keepdim=True).clamp_min(1)
        return self.root(h) + summed / degree


def gru_step(cell: nn.GRUCell, x: Tensor, h: Tensor) -> Tensor:
    """`cell(x, h)` written out (r, z, n gates), so that torch.func.vmap runs it (stacked
    sweeps): r = σ(W_ir·x + W_hr·h), z = σ(W_iz·x + W_hz·h), n = tanh(W_in·x + r·(W_hn·h)),
    h' = (1 − z)·n + z·h, each W with its bias."""
    gi = nn.functional.linear(x, cell.weight_ih, cell.bias_ih).chunk(3, -1)
    gh = nn.functional.linear(h, cell.weight_hh, cell.bias_hh).chunk(3, -1)
    r, z = torch.sigmoid(gi[0] + gh[0]), torch.sigmoid(gi[1] + gh[1])
    n = torch.tanh(gi[2] + r * gh[2])
    return (1 - z) * n + z * h


def lstm_step(cell: nn.LSTMCell, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """`cell(x, state)` written out (i, f, g, o gates), so that torch.func.vmap runs it:
    c' = σ(f)·c + σ(i)·tanh(g), h' = σ(o)·tanh(c')."""
    h, c = state
    gates = nn.functional.linear(x, cell.weight_ih, cell.bias_ih)
    i, f, g, o = (gates + nn.functional.linear(h, cell.weight_hh, cell.bias_hh)).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class Set2Set(nn.Module):
    """Vinyals et al.'s Set2Set readout over the real atoms: `steps` times q = LSTM(q*), a =
    softmax_i(h_i·q), r = Σ_i a_i·h_i, q* = [q, r] → q* of 2·d values."""

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.lstm = nn.LSTMCell(2 * dim, dim)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        batch, dim = h.shape[0], h.shape[-1]
        q_star = h.new_zeros(batch, 2 * dim)
        state = (h.new_zeros(batch, dim), h.new_zeros(batch, dim))
        for _ in range(self.steps):
            state = lstm_step(self.lstm, q_star, state)
            q = state[0]
            score = (h @ q.unsqueeze(-1)).squeeze(-1).masked_fill(mask == 0, float("-inf"))
            r = (score.softmax(-1).unsqueeze(-1) * h).sum(1)
            q_star = torch.cat([q, r], dim=-1)
        return q_star


class MPNNEncoder(nn.Module):
    """Molecules [B, atoms, columns] → [B, dim] features (see the module)."""

    def __init__(
        self, dim: Width = 64, edge_hidden: Width = 128, steps: Count = 3, set2set_steps: Count = 3
    ) -> None:
        super().__init__()
        self.steps = steps
        self.lin0 = nn.Linear(ATOM_FEATURES, dim)
        self.conv = EdgeConv(dim, edge_hidden)
        self.gru = nn.GRUCell(dim, dim)
        self.set2set = Set2Set(dim, set2set_steps)
        self.lin1 = nn.Linear(2 * dim, dim)  # registered last: the last shared layer

    def forward(self, x: Tensor) -> Tensor:
        e, edges = edge_features(x)
        g = self.conv.edge_net(e) * edges.unsqueeze(-1)  # the same for every step
        h = torch.relu(self.lin0(x[..., :ATOM_FEATURES]))
        for _ in range(self.steps):
            m = torch.relu(self.conv(h, g, edges))
            h = gru_step(self.gru, m, h)
        return torch.relu(self.lin1(self.set2set(h, x[..., MASK])))
