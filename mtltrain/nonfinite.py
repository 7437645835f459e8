"""Non-finite losses: the one-line error that stops a run, and a watch that finds the first
bad step on the device without a host read per step (for CUDA, where a read is a sync)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mtltrain.errors import TrainingError
from mtltrain.losses import LossTerm


def nonfinite_error(
    terms: Sequence[LossTerm],
    raw: torch.Tensor,
    parts: torch.Tensor,
    step: int,
    epoch: int,
    last_checkpoint: tuple[Path, int] | None,
) -> TrainingError:
    """The error for a step whose raw losses `raw` or weighted losses `parts` (one value per
    term) are not all finite: it names the first such term, the step and the last checkpoint."""
    bad = next(
        (i for i in range(len(terms)) if not (raw[i].isfinite() and parts[i].isfinite())), None
    )
    what = (
        f"non-finite loss in task {terms[bad].task} (term {terms[bad].name}: loss "
        f"{raw[bad].item():.4g}, weighted {parts[bad].item():.4g})"
        if bad is not None
        else f"the weighted losses {parts.tolist()} overflow in their sum"
    )
    where = "none yet" if last_checkpoint is None else "{} (step {})".format(*last_checkpoint)
    return TrainingError(
        f"{what} at step {step}, epoch {epoch}; last good checkpoint: {where}; lower the "
        "learning rate, or set trainer.nonfinite=skip to skip such steps"
    )


class NonfiniteWatch:
    """Keeps, on the device, the first step whose weighted-loss total was not finite, with
    that step's raw and weighted losses; `first_bad` reads it back (one host read)."""

    def __init__(self, n_terms: int, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.losses = torch.zeros(2, n_terms, device=device)

    def see(self, step: int, raw: torch.Tensor, parts: torch.Tensor, total: torch.Tensor) -> None:
        first = (self.step < 0) & ~torch.isfinite(total)
        self.step = torch.where(first, step, self.step)
        self.losses = torch.where(first, torch.stack([raw, parts]).float(), self.losses)

    def first_bad(self) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        """(step, raw losses, weighted losses) of the first bad step, or None."""
        step = int(self.step)
        if step < 0:
            return None
        raw, parts = self.losses.cpu()
        return step, raw, parts
