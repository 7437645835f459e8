"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

term_k = a_k·exp(−s_k)·L_k + b·s_k with s_k = log σ_k² learned. The forms:

- `likelihood` (default): a_k = c_k (1/2 for regression, 1 for classification), b = 1/2; the
  negative log-likelihood of docs/theory.md §1.
- `unit`: a_k = 1, b = 1 for every task, as one source snippet writes it (twice the regression
  NLL; same optimum exp(s) = L for regression, classification treated like regression).
- `half`: a_k = 1/2, b = 1/2 for every task, as the other source snippet (and the §5B MNIST run)
  writes it, ignoring the classification factor.

At a fixed L_k the optimum is exp(s_k) = (a_k/b)·L_k; for a regression MSE term in the
likelihood form that is σ_k² = MSE. The total may go negative once some σ_k < 1: expected.
Terms whose loss learns its own per-sample σ(x) keep weight 1 (see `Weighting`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtltrain.errors import ConfigError
from mtltrain.losses import LossTerm
from mtltrain.weighting.base import Range, Weighting, numbers_of

# c_k per task kind; binary and multi-label tasks are classifications (a Bernoulli likelihood
# with a temperature), c = 1, and so is semantic segmentation; depth (L1) and normals (1 − cos)
# are no Gaussian MSE, whose c = ½ the paper derives: c = 1, as LibMTL's and Nash-MTL's UW
# weigh every task (exp(−s)·L + s up to the factor of s)
KIND_FACTOR = {
    "regression": 0.5, "classification": 1.0, "segmentation": 1.0, "binary": 1.0, "multilabel": 1.0,
    "semantic": 1.0, "depth": 1.0, "normals": 1.0,
}  # fmt: skip
FORMS = ("likelihood", "unit", "half")
# |s| beyond this: the weight exp(−s) leaves float32's normal range (0 or inf), nothing trains
LOG_VAR_LIMIT = 87


def initial_log_var(n: int, init: float | Sequence[float]) -> Tensor:
    """s_k at the start: a constant, or U(low, high) for a [low, high] pair."""
    if isinstance(init, (int, float)):
        return torch.full((n,), float(init))
    low, high = map(float, init)
    return low + (high - low) * torch.rand(n)


class UncertaintyWeighting(Weighting):
    """Σ_k a_k·exp(−s_k)·L_k + b·s_k, s_k = log σ_k² (Kendall et al. 2018).

    With `form=likelihood` (the default) a_k = c_k, b = ½: c_k = ½ for a regression term, 1 for
    classification and segmentation (and binary and multi-label tasks, taken as classifications;
    c_k is read from the task's kind), as the paper derives them (the Gaussian likelihood gives c
    = ½, the softmax-temperature classification likelihood c = 1). The two forms the source
    snippets use are kept so that their runs can be reproduced: `unit`, exp(−s)·L + s for every
    task (twice the regression NLL; same optimum for regression, but classification is treated
    like regression), and `half`, ½·exp(−s)·L + ½·s for every task (the §5B MNIST run; it
    ignores the classification factor). At a fixed loss the optimum is exp(s_k) = 2·c_k·L_k, so
    a regression task's σ_k² goes to its MSE, i.e. σ_k to its residual RMSE. `init_log_var` is a
    number or `[low, high]` for U(low, high) (§5B uses `[0.2,1.0]`). The total loss goes
    negative once some σ_k < 1: expected and harmless, only its gradients matter.

    Paper: Kendall, Gal & Cipolla, CVPR 2018.
    Scale: weight c_k·exp(−s_k).
    Logs: `sigma`, `log_var`.
    """

    elementwise = True

    RANGES: ClassVar[Mapping[str, Range]] = {"form": (FORMS.__contains__, f"choose one of {FORMS}")}

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        super().check_settings(settings)
        init = settings.get("init_log_var")
        if isinstance(init, (list, tuple)) and (len(init) != 2 or not init[0] <= init[1]):
            raise ConfigError(
                f"weighting.init_log_var={list(init)}: give a number or a [low, high] range"
            )
        if any(abs(s) > LOG_VAR_LIMIT for s in numbers_of(init)):
            raise ConfigError(
                f"weighting.init_log_var={init} is not allowed: it must be in "
                f"[-{LOG_VAR_LIMIT}, {LOG_VAR_LIMIT}], where the weight exp(−s) is a float32 "
                "between 0 and infinity (beyond, every weight is 0 or inf and nothing trains)"
            )

    def __init__(
        self,
        terms: Sequence[LossTerm],
        form: str = "likelihood",
        init_log_var: float | Sequence[float] = 0.0,
    ) -> None:
        super().__init__(terms)
        self.check_settings({"form": form, "init_log_var": init_log_var})
        factors = {
            "likelihood": [KIND_FACTOR[t.kind] for t in terms],
            "unit": [1.0] * len(terms),
            "half": [0.5] * len(terms),
        }[form]
        self.register_buffer("factor", torch.tensor(factors))
        self.scaled = any(f != 1.0 for f in factors)  # a factor 1 is not multiplied (exact)
        self.regulariser = 1.0 if form == "unit" else 0.5
        init = initial_log_var(len(terms), init_log_var)
        self.log_var = nn.Parameter(torch.where(self.learns, init, 0.0))

    def contributions(self, losses: Tensor) -> Tensor:
        log_var = self.log_var
        weight = torch.exp(-log_var)
        if self.scaled:
            weight = self.factor * weight
        s = log_var if self.regulariser == 1.0 else self.regulariser * log_var
        return self.where_learned(weight * losses + s, losses)

    def weights(self) -> Tensor:
        return self.where_learned(self.factor * torch.exp(-self.log_var), 1.0).detach()

    def sigma(self) -> Tensor:
        """σ_k = exp(s_k / 2)."""
        return torch.exp(0.5 * self.log_var).detach()

    def report(self) -> dict[str, Tensor]:
        return {"weight": self.weights(), "sigma": self.sigma(), "log_var": self.log_var.detach()}
