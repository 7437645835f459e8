"""Run by tests/test_distributed.py under torchrun (and alone): one training step of each
strategy given on the command line on the first global batch of two_slope, the state after it
saved per rank."""

from __future__ import annotations

import os
import sys

import torch

from mtltrain.build import build_trainer
from mtltrain.config._compose import compose_checked
from mtltrain.errors import TrainingError


def one_step(strategy: str, batch_size: int) -> dict[str, torch.Tensor]:
    cfg = compose_checked(
        [f"weighting={strategy}", "model=sin_hetero", f"trainer.batch_size={batch_size}",
         "trainer.deterministic=true", "trainer.progress=false"]
    )  # fmt: skip
    trainer = build_trainer(cfg)
    batch = next(trainer.train_split.shuffled(trainer.generator).batches(batch_size))
    step = trainer.train_step(batch)
    return {
        **{f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()},
        **{f"weighting.{k}": v.clone() for k, v in trainer.strategy.state_dict().items()
           if isinstance(v, torch.Tensor)},
        **{f"grad.{n}": p.grad.clone() for n, p in trainer.model.named_parameters()
           if p.grad is not None},
        "losses": step.losses.detach().clone(),
        "parts": step.parts.clone(),
        "total": step.total.clone(),
    }  # fmt: skip


def drift_is_caught() -> bool:
    """Whether the ranks' check stops a model that rank 1 alone changed."""
    trainer = build_trainer(compose_checked(["model=sin_hetero", "trainer.progress=false"]))
    trainer.ranks.check_same([trainer.model], step=0)  # the same: passes
    if trainer.ranks.rank == 1:
        with torch.no_grad():
            next(trainer.model.parameters()).view(-1)[0] += 1e-6
    try:
        trainer.ranks.check_same([trainer.model], step=0)
    except TrainingError:
        return True
    return False


def main(out: str, *cases: str) -> None:
    """Each case is <strategy>:<global batch size>."""
    states = {}
    for case in cases:
        strategy, batch_size = case.split(":")
        states[case] = one_step(strategy, int(batch_size))
    if torch.distributed.is_initialized():
        states["drift"] = torch.tensor(drift_is_caught())
    torch.save(states, f"{out}.rank{os.environ.get('RANK', '0')}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
