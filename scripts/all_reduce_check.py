"""The collective a data-parallel run relies on, checked under torchrun: each process adds its
rank + 1 into a 1 MiB tensor with `torch.distributed.all_reduce` (NCCL on CUDA, gloo on the
CPU), every element must come out as 1 + 2 + … + processes, and rank 0 writes OUT.json with
the backend, the processes, whether the sum was right and the median µs of 20 all_reduces.

    torchrun --standalone --nproc_per_node=1 scripts/all_reduce_check.py OUT.json cuda

Run by scripts/device_check.py (part ranks): a run of one process joins no process group
(mtltrain.processes.launched), so on a one-GPU machine this is what shows that NCCL works there.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

ELEMENTS = 2**18  # float32: 1 MiB


def main(out: str, device: str) -> None:
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend)
    rank, size = dist.get_rank(), dist.get_world_size()
    where = torch.device(f"cuda:{os.environ['LOCAL_RANK']}" if device == "cuda" else "cpu")
    if where.type == "cuda":
        torch.cuda.set_device(where)
    summed = torch.full((ELEMENTS,), float(rank + 1), device=where)
    dist.all_reduce(summed)
    right = bool((summed == size * (size + 1) / 2).all())
    times = []
    for _ in range(20):
        if where.type == "cuda":
            torch.cuda.synchronize(where)
        start = time.perf_counter()
        dist.all_reduce(summed)
        if where.type == "cuda":
            torch.cuda.synchronize(where)
        times.append(time.perf_counter() - start)
    if rank == 0:
        result = {
            "backend": backend,
            "processes": size,
            "sum_right": right,
            "us_per_all_reduce": 1e6 * statistics.median(times),
        }
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
