"""A metric of one's own: a torchmetrics Metric, accumulated on the device over an evaluation."""

import torch
from torchmetrics import Metric


class WithinTenPercent(Metric):
    """Share of predictions within 10% of the true value: |ŷ − y| ≤ 0.1·|y|."""

    higher_is_better = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("inside", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.inside += ((preds - target).abs() <= 0.1 * target.abs()).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.inside / self.total
