"""One §5A training step of a single run, with the optimizer stepped by `torch.optim` (as
before `mtltrain.loop._direct_step.direct_step`) and by `direct_step` (torch's fused Adam kernel
called directly on the optimizer's state), on one thread.

    python scripts/bench_step.py [--rounds 7] [--steps 1000]

Medians of interleaved rounds, in the same process; prints µs per step and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mtltrain.build import build_job
from mtltrain.config._compose import compose_checked
from mtltrain.loop._direct_step import direct_step
from mtltrain.loop._job_step import PerJobStep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--weighting", default="uncertainty")
    args = parser.parse_args()
    cfg = compose_checked([f"weighting={args.weighting}", "trainer.device=cpu"])
    job = build_job(cfg)
    runner = PerJobStep(job)
    torch.set_num_threads(1)
    batch = job.train_split.take(slice(0, job.batch_size))
    ways = {"torch.optim step": job.optimizer.step, "direct": direct_step(job.optimizer)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.rounds):
        for name, step in ways.items():
            runner.optimizer_step = step
            for _ in range(50):
                runner.train_step(batch)
            start = time.perf_counter()
            for _ in range(args.steps):
                runner.train_step(batch)
            times[name].append((time.perf_counter() - start) / args.steps * 1e6)
    medians = {k: statistics.median(v) for k, v in times.items()}
    for name, value in medians.items():
        print(f"{name}: {value:.0f} µs a step")
    print(f"ratio: {medians['direct'] / medians['torch.optim step']:.2f}")


if __name__ == "__main__":
    main()
