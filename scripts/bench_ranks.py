"""The step time of a strategy on one or several processes, and the bytes each step sends.

    python scripts/bench_ranks.py OUT.json STEPS OVERRIDE...              # one process
    torchrun --nproc_per_node=2 scripts/bench_ranks.py OUT.json STEPS ... # data-parallel

Run by `scripts/bench.py` (section "distributed") and `scripts/device_check.py` (part
ranks). The trainer is built as a run builds it and stepped on the global batches of its data
set: first one step, whose global losses and total go into OUT.json and the model's
parameters after it into OUT.pt (to compare ways of running), then the median of 5 blocks of
STEPS steps after a warm-up block. Each collective's payload is counted by wrapping
torch.distributed's functions.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mtltrain.build import build_job
from mtltrain.config._compose import compose_checked
from mtltrain.data.base import Split
from mtltrain.loop._job_step import PerJobStep

sent = {"bytes": 0, "calls": 0}


def counted(collective: Callable[..., Any]) -> Callable[..., Any]:
    """`collective`, counting the bytes of the tensor each call sends."""

    def wrapper(tensor_or_list: Any, *args: Any, **kwargs: Any) -> Any:
        tensor = args[0] if isinstance(tensor_or_list, list) else tensor_or_list
        sent["bytes"] += tensor.numel() * tensor.element_size()
        sent["calls"] += 1
        return collective(tensor_or_list, *args, **kwargs)

    return wrapper


dist.all_reduce = counted(dist.all_reduce)
dist.all_gather = counted(dist.all_gather)


def main(out: str, steps: str, *overrides: str) -> None:
    job = build_job(compose_checked([*overrides, "trainer.progress=false"]))
    train_step = PerJobStep(job).train_step
    size, split = job.batch_size, job.train_split
    batches = iter(())

    def next_batch() -> Split:
        nonlocal batches
        batch = next(batches, None)
        if batch is None:
            batches = split.shuffled(job.generator).batches(size)
            batch = next(batches)
        return batch

    def sync() -> None:
        if job.device.type == "cuda":
            torch.cuda.synchronize(job.device)

    def block(n: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(n):
            train_step(next_batch())
        sync()
        return time.perf_counter() - start

    first = train_step(next_batch())
    after_first = {name: p.detach().cpu().clone() for name, p in job.model.named_parameters()}
    n = int(steps)
    block(n)
    sent.update(bytes=0, calls=0)
    times = [block(n) for _ in range(5)]
    if os.environ.get("RANK", "0") == "0":
        result = {
            "ms_per_step": 1000 * statistics.median(times) / n,
            "bytes_per_step": sent["bytes"] / (5 * n),
            "collectives_per_step": sent["calls"] / (5 * n),
            "processes": job.ranks.size,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "threads": torch.get_num_threads(),
            "first_step": {"losses": first.losses.tolist(), "total": first.total.item()},
        }
        with open(out, "w") as f:
            json.dump(result, f)
        torch.save(after_first, Path(out).with_suffix(".pt"))
    if dist.is_initialized():  # leave together: a rank that left first aborted the other (gloo)
        dist.barrier()
    job.ranks.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
