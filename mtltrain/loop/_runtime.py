"""The process around a run: device choice, seeding, and the speed settings of the trainer."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import inspect
import os
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mtltrain.errors import ConfigError
from mtltrain.processes import launched

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def parallel_launcher() -> DictConfig | None:
    """The settings of the Hydra launcher that runs this job beside others (joblib,
    submitit), or None: a single run, or a sweep one job after another."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    basic = str(hydra.launcher.get("_target_", "")).endswith("BasicLauncher")
    return None if hydra.mode != RunMode.MULTIRUN or basic else hydra.launcher


def own_gpu() -> str:
    """This process's GPU: LOCAL_RANK's under torchrun; in a job of a parallel sweep, GPU
    i mod their count for job number i; else the current one."""
    count = torch.cuda.device_count()
    if launched():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if count > 1 and parallel_launcher() is not None:
        return f"cuda:{HydraConfig.get().job.num % count}"
    return "cuda"


def select_device(name: str) -> torch.device:
    """`auto` takes a GPU when there is one (`own_gpu`), else the CPU; `cuda` takes
    `own_gpu`; cuda:N the GPU numbered N (`name`: one of schema.DEVICES, or cuda:N)."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but no CUDA GPU is visible: use auto or cpu")
    if name.startswith("cuda:") and launched():
        raise ConfigError(
            f"trainer.device={name} is not allowed under torchrun, where every process would "
            "take that one GPU: use trainer.device=cuda (each process takes LOCAL_RANK's)"
        )
    if name in ("auto", "cuda"):
        name = own_gpu() if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(
            f"trainer.device={name} is not allowed: this machine has "
            f"{torch.cuda.device_count()} GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def keep_host_memory(keep: bool = True) -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the system.

    A training step frees and re-allocates the same large activation buffers every step; by
    default glibc serves them with fresh mmaps or trims them off the heap, and every step then
    pays the page faults of touching new memory (on the §5B MNIST model on CPU that is about a
    third of the step). `keep=False` sets glibc's documented defaults again (128 KiB each).
    Returns False where the C library is not glibc.
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    sizes = (1 << 25, 1 << 30, 1 << 26) if keep else (1 << 17, 1 << 17, 1 << 17)
    params = (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD, _M_TOP_PAD)
    return all(mallopt(p, v) == 1 for p, v in zip(params, sizes, strict=True))


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's mallopt, looked up once (`find_library` starts a process); None elsewhere."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return None


def settle_threads(threads: int | None = None) -> None:
    """Set the intra-op thread count explicitly (default: to its current value).

    Until it is set, oneMKL and the ATen OpenMP pool can disagree on the team size, and a
    parallel kernel run right after a matrix product (the fused Adam step after a backward
    pass) then waits milliseconds for threads: measured here, 47 ms instead of 17 µs a step.
    """
    torch.set_num_threads(threads or torch.get_num_threads())


# A step below this many forward FLOPs runs on one thread: its kernels are too small for a
# parallel region to pay (the §5A run, 0.07 MFLOP a step, took 2.7× as long on two threads as
# on one while other processes kept both cores busy: scripts/bench.py, "busy"), while the §5B
# MNIST model (1.2 GFLOP a batch) gains from every core.
SMALL_STEP_FLOPS = 1e8


# torch's own choice when the process started (its cores, or OMP_NUM_THREADS): what "auto"
# gives a large step
STARTING_THREADS = torch.get_num_threads()


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_ticks(stat: str, cpus: set[int]) -> tuple[int, int]:
    """(not idle, all) clock ticks since boot of the CPUs numbered `cpus`, read from the text
    of /proc/stat (not idle: all but idle and iowait)."""
    busy = total = 0
    for line in stat.splitlines():
        name, *fields = line.split()
        if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


class CpuSample(NamedTuple):
    """One reading of the CPUs' clock ticks since boot (`cpu_ticks`), the wall clock and this
    process's CPU time."""

    busy_ticks: int
    all_ticks: int
    wall_s: float
    own_s: float


def sample_cpus(cpus: set[int]) -> CpuSample:
    busy, total = cpu_ticks(Path("/proc/stat").read_text(), cpus)
    return CpuSample(busy, total, time.perf_counter(), time.process_time())


def other_work(before: CpuSample, after: CpuSample, cores: int) -> float:
    """Cores kept busy by other processes between two samples of `cores` CPUs: cores × (not
    idle ticks ÷ all ticks) − this process's CPU seconds ÷ wall seconds, at least 0."""
    ticks = after.all_ticks - before.all_ticks
    if ticks <= 0:
        return 0.0
    busy = cores * (after.busy_ticks - before.busy_ticks) / ticks
    own = (after.own_s - before.own_s) / (after.wall_s - before.wall_s)
    return max(0.0, busy - own)


def busy_cores(window_s: float = 0.05) -> float:
    """Cores of this process's CPUs that other work keeps busy, over the next `window_s` (50 ms:
    5 ticks a CPU); 0 where /proc/stat cannot be read. This process's own time is left out: its
    threads may still be spinning after a parallel region."""
    if not hasattr(os, "sched_getaffinity"):  # nor /proc/stat (macOS)
        return 0.0
    cpus = os.sched_getaffinity(0)
    try:
        before = sample_cpus(cpus)
        time.sleep(window_s)
        after = sample_cpus(cpus)
    except OSError:
        return 0.0
    return other_work(before, after, len(cpus))


def spare_threads(wanted: int, cores: int, busy: float) -> int:
    """The threads a run takes of the `wanted` when other work keeps `busy` of its `cores` busy:
    min(wanted, cores − round(busy)), at least 1 (a thread that waits for a busy core holds up
    every parallel region: docs/performance.md, *Threads*, measures a stacked sweep)."""
    return max(1, min(wanted, cores - round(busy)))


def auto_threads(wanted: int, why: str, steady: bool = False) -> tuple[int, str]:
    """`wanted` threads, fewer when other work keeps the cores busy (`spare_threads` of the load
    `busy_cores` reads), and why. `steady` runs take `wanted` whatever the load: a deterministic
    run, to give the same numbers on a busy machine as on an idle one; so do torchrun's ranks,
    which must take the same threads (each applies its own update, and they are compared)."""
    if wanted == 1:
        return 1, why
    if steady or launched():
        reason = "trainer.deterministic" if steady else "torchrun"
        return wanted, f"{why}, other work not measured ({reason})"
    load, cores = busy_cores(), usable_cores()
    threads = spare_threads(wanted, cores, load)
    return threads, f"{why}, {load:.1f} of {cores} cores busy with other work"


def choose_threads(
    setting: int | str,
    forward_flops: Callable[[], float],
    steady: bool = False,
) -> tuple[int, str]:
    """The intra-op threads of a CPU run and why: `setting` itself, or for "auto" one thread
    when a step's forward pass (`forward_flops()`) is small, else the threads torch chose when
    the process started (which OMP_NUM_THREADS sets), at most the launcher's cpus_per_task, and
    fewer when other work keeps the cores busy (`auto_threads`)."""
    if setting != "auto":
        return int(setting), "trainer.threads"
    flops = forward_flops()
    why = f"auto: {flops / 1e6:.3g} MFLOP per forward pass"
    if flops < SMALL_STEP_FLOPS:
        return 1, why
    launcher = parallel_launcher()
    cap = launcher.get("cpus_per_task") if launcher is not None else None
    if cap and cap < STARTING_THREADS:  # jobs beside this one share the cores
        return auto_threads(int(cap), f"{why}, hydra.launcher.cpus_per_task={cap}", steady)
    return auto_threads(STARTING_THREADS, why, steady)


def optimizer_factory(factory: Callable[..., torch.optim.Optimizer], fused: bool) -> Callable:
    """`factory` with `fused=True` (else `foreach=True`) when `fused` and its optimizer takes it."""
    if not fused:
        return factory
    target = getattr(factory, "func", factory)
    accepted = inspect.signature(target).parameters
    for flag in ("fused", "foreach"):
        if flag in accepted:
            return lambda **kwargs: factory(**{flag: True}, **kwargs)
    return factory


def autocast(device: torch.device, precision: str) -> Any:
    """The autocast context of `precision` (one of schema.PRECISIONS): bf16 mixed precision,
    or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def machine(device: torch.device) -> dict[str, Any]:
    """What a measurement ran on: CPU model, usable cores, GPU name, torch and Python."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = usable_cores()
    return {
        "cpu": cpu,
        "cores": cores,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device),
        "torch": torch.__version__.split("+")[0],
        "python": platform.python_version(),
    }


def rng_states() -> dict[str, Any]:
    """Every global random generator's state, in checkpointable types."""
    key, pos, has_gauss, gauss = np.random.get_state()[1:]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Every global random generator back to `states` (from `rng_states`)."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state(("MT19937", key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
