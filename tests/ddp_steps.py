"""Run by tests/test_distributed.py under torchrun (and alone): one training step of each
strategy given on the command line on the first global batch of two_slope, the state after it
saved per rank."""

from __future__ import annotations

import os
import sys

import torch

from mtltrain.build import build_job
from mtltrain.config._compose import compose_checked
from mtltrain.errors import TrainingError
from mtltrain.loop._job_step import PerJobStep


def one_step(strategy: str, batch_size: int) -> dict[str, torch.Tensor]:
    cfg = compose_checked(
        [f"weighting={strategy}", "model=sin_hetero", f"trainer.batch_size={batch_size}",
         "trainer.deterministic=true", "trainer.progress=false"]
    )  # fmt: skip
    job = build_job(cfg)
    batch = next(job.train_split.shuffled(job.generator).batches(batch_size))
    step = PerJobStep(job).train_step(batch)
    return {
        **{f"model.{k}": v.clone() for k, v in job.model.state_dict().items()},
        **{f"weighting.{k}": v.clone() for k, v in job.strategy.state_dict().items()
           if isinstance(v, torch.Tensor)},
        **{f"grad.{n}": p.grad.clone() for n, p in job.model.named_parameters()
           if p.grad is not None},
        "losses": step.losses.detach().clone(),
        "parts": step.parts.clone(),
        "total": step.total.clone(),
    }  # fmt: skip


def drift_is_caught() -> bool:
    """Whether the ranks' check stops a model that rank 1 alone changed."""
    job = build_job(compose_checked(["model=sin_hetero", "trainer.progress=false"]))
    job.ranks.check_same([job.model], step=0)  # the same: passes
    if job.ranks.rank == 1:
        with torch.no_grad():
            next(job.model.parameters()).view(-1)[0] += 1e-6
    try:
        job.ranks.check_same([job.model], step=0)
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
