"""Benchmark mtltrain's training step against the usual PyTorch way, in one process.

    python scripts/bench.py --publish       # docs/results/bench.{json,md}, and into the pages
    python scripts/bench.py --mnist-root DIR --out bench.json --markdown bench.md
    python scripts/bench.py --device cuda --only mnist,two_slope --out gpu.json  # two sections

Every comparison interleaves blocks of steps of the contenders (A, B, A, B, ...) in one process
and reports the median over blocks, so a machine that is busy for a while slows both. The
baseline is written the way these experiments usually are: torchvision's MNIST with
ToTensor/Normalize through a DataLoader (batch 256, shuffled, one worker process per core), the
toy data as a TensorDataset through a DataLoader into two nn.Sequential networks, the same
architecture and batch size, the same
Kendall uncertainty weighting written inline, torch.optim.Adam with its defaults, and the
running loss read with .item() every step. It runs with the C library's allocator defaults,
set again before each of its blocks; the project's blocks run with its own settings
(conf/trainer/default.yaml: fused optimizer, channels-last images, host memory kept).

Sections: MNIST samples/s (§5B model, batch 256) and two-slope steps/s (§5A, batch 16, two
1→512→1 networks), each contender at 1 and at 2 threads against the usual way at as many, and
for MNIST the share each reaches of the model's convolutions alone (`ConvCeiling`); the
per-step time of every weighting strategy in conf/weighting/ (or those --strategies names)
against `fixed` on the MNIST model and on a 3-task regression model with 10⁶ shared parameters
(a 1→1000→1000 tanh encoder, batch 16); the backward engine of a gradient-based strategy (MGDA)
against the two other ways to get its Jacobian (one vmapped pass for all tasks; torchjd's
mtl_backward, where torchjd is installed: `pip install torchjd`); the step time with each speed
setting of conf/trainer/default.yaml undone; the share of an epoch spent on evaluation and
logging; the wall time of a whole `mtltrain` run of each default configuration, start-up
included, and of the two-slope run against the same run as a plain script
(scripts/usual/two_slope.py); one §5B epoch as a whole process against scripts/usual/mnist.py,
at 1 and 2 threads; the start-up, a 1-epoch two-slope run as a whole process beside the usual
script's and `import torch` alone; and on a machine whose every core another process keeps
busy, the two-slope run (--busy-epochs) and a stacked sweep of 4 jobs against the usual script.
The rows of whole processes alone (about half an hour on 2 quiet cores):

    python scripts/bench.py --only runs,mnist_process,startup,busy --out runs.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import update_readme
from repro_common import MNIST_ROOT, mnist_overrides, threads_label
from torch import nn

from mtltrain.build import build_job
from mtltrain.config._compose import build, compose_checked, config_dir
from mtltrain.data import mnist_mtl
from mtltrain.data.base import Split
from mtltrain.loop._job import Job
from mtltrain.loop._job_step import PerJobStep
from mtltrain.loop._runtime import (
    keep_host_memory,
    machine,
    select_device,
    settle_threads,
    usable_cores,
)
from mtltrain.losses import compute_losses
from mtltrain.outputs._event_writer import TensorBoardLog
from mtltrain.outputs._figures import FiguresCallback
from mtltrain.outputs._logger import LoggersCallback
from mtltrain.step import Step

PUBLISHED = update_readme.REPO / "docs/results/bench"  # --publish: bench.json and .md
STRATEGIES = sorted(p.stem for p in (config_dir() / "weighting").glob("*.yaml"))


@dataclass(frozen=True)
class BlockSteps:
    """Steps per timed block, per model."""

    mnist: int = 20
    two_slope: int = 400
    wide: int = 40

    def scaled(self, factor: float) -> BlockSteps:
        """Each count × `factor`, at least 1 (`--block-scale`)."""
        return BlockSteps(*(max(1, round(n * factor)) for n in astuple(self)))


# three regression tasks on a shared 1→1000→1000 encoder: 1,003,000 shared parameters
WIDE_MODEL = [
    "dataset=two_slope",
    "model=sin_hetero",
    "model.encoder.hidden=[1000]",
    "model.encoder.out_features=1000",
    "model.head.in_features=1000",
    "+dataset.tasks.y3={slope:0.5,intercept:-1.0,noise_std:1.0}",
    "+dataset.losses.y3=[mse]",
]
KINDS = {None: "loss", "parameters": "gradient", "representation": "representation"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(blocks: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Run each block once per round, in turn; the median of each block's rate."""
    rates: dict[str, list[float]] = {name: [] for name in blocks}
    for block in blocks.values():  # warm-up round
        block()
    for _ in range(rounds):
        for name, block in blocks.items():
            rates[name].append(block())
    return {name: statistics.median(r) for name, r in rates.items()}


def forever(make: Callable[[], Iterator]) -> Iterator:
    return itertools.chain.from_iterable(make() for _ in itertools.count())


# ---- the project --------------------------------------------------------------------------


class ProjectRun:
    """A job built from the project's configs (as a run builds it), stepped in blocks by its
    per-job step."""

    def __init__(self, overrides: list[str], device: torch.device, log_dir: Path) -> None:
        self.cfg = compose_checked([*overrides, f"trainer.device={device.type}"])
        self.device = device
        self.tb = TensorBoardLog(log_dir)
        self.job = build_job(self.cfg, log_dir, [self.tb])
        self.data, self.model = self.job.data, self.job.model
        size, split, gen = self.job.batch_size, self.job.train_split, self.job.generator
        self.batches = forever(lambda: split.shuffled(gen).batches(size))
        self.runner = PerJobStep(self.job)
        self.extra = len(self.job.strategy.extra_batches)  # SDMGrad's, MoDo's, Auto-Lambda's

    def step(self, batch: Split) -> Step:
        """A training step on `batch`, with the extra batches its strategy takes (the next
        ones of the same stream, as the loop draws them from a shuffle of their own)."""
        return self.runner.train_step(batch, [next(self.batches) for _ in range(self.extra)])

    def block(self, steps: int) -> float:
        """Seconds for `steps` training steps."""
        keep_host_memory(self.cfg.trainer.keep_host_memory)
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step(next(self.batches))
        sync(self.device)
        return time.perf_counter() - start


# ---- the usual way ------------------------------------------------------------------------


class UsualRun:
    """The same model and weighting written the usual way, fed by a DataLoader."""

    def __init__(self, model: nn.Module, loader, device: torch.device, targets, factors) -> None:
        self.model, self.loader, self.device = model.to(device), loader, device
        self.targets, self.factors = targets, factors
        self.log_var = nn.Parameter(torch.zeros(len(factors), device=device))
        self.optimizer = torch.optim.Adam([*model.parameters(), self.log_var], lr=1e-4)
        self.batches = forever(lambda: iter(loader))
        self.running_loss = 0.0

    def block(self, steps: int) -> float:
        keep_host_memory(False)
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            inputs, labels = next(self.batches)
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            outputs, _ = self.model(inputs)
            losses = self.targets(outputs, inputs, labels)
            total = sum(
                c * torch.exp(-self.log_var[k]) * loss + 0.5 * self.log_var[k]
                for k, (loss, c) in enumerate(zip(losses, self.factors, strict=True))
            )
            self.optimizer.zero_grad()
            total.backward()
            self.optimizer.step()
            self.running_loss += total.item()
        sync(self.device)
        return time.perf_counter() - start


def mnist_losses(outputs, images, digits):
    cls3 = torch.where(digits == 2, 0, torch.where(digits == 6, 1, 2))
    return (
        F.cross_entropy(outputs["cls3"], cls3),
        F.cross_entropy(outputs["cls10"], digits),
        F.mse_loss(outputs["recon"], images),
    )


def usual_mnist(root: str, model: nn.Module, device: torch.device) -> UsualRun:
    from torchvision import datasets, transforms

    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    train = datasets.MNIST(root, train=True, transform=to_tensor)
    # as such scripts are written: worker processes decode the batches (one per core here)
    workers = usable_cores()
    loader = torch.utils.data.DataLoader(
        train, batch_size=256, shuffle=True, num_workers=workers, persistent_workers=True
    )
    return UsualRun(model, loader, device, mnist_losses, (1.0, 1.0, 0.5))


class TwoSequentials(nn.Module):
    """§5A's two networks as such a script writes them: one nn.Sequential per task."""

    def __init__(self) -> None:
        super().__init__()
        self.nets = nn.ModuleList(
            [nn.Sequential(nn.Linear(1, 512), nn.ReLU(), nn.Linear(512, 1)) for _ in range(2)]
        )

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {"y1": self.nets[0](x), "y2": self.nets[1](x)}, x


def usual_two_slope(data, model: nn.Module, device: torch.device) -> UsualRun:
    split = data.train
    dataset = torch.utils.data.TensorDataset(
        split.inputs.cpu(), torch.cat([split.targets["y1"], split.targets["y2"]], 1).cpu()
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True)

    def losses(outputs, inputs, y):
        return F.mse_loss(outputs["y1"], y[:, :1]), F.mse_loss(outputs["y2"], y[:, 1:])

    return UsualRun(model, loader, device, losses, (0.5, 0.5))


# ---- sections -----------------------------------------------------------------------------


THREADS = (1, 2)  # the loop-level comparisons run at each
CEILING = "convolutions alone (ceiling)"


def at_threads(rate: Callable[[], float], threads: int) -> Callable[[], float]:
    def measured() -> float:
        settle_threads(threads)
        return rate()

    return measured


def by_threads(runs: dict[str, Callable[[], float]], rounds: int) -> dict:
    """Each contender's rate at 1 and 2 threads, interleaved; ratios to the usual way's at the
    same thread count."""
    blocks = {
        f"{name}, {threads_label(n)}": at_threads(rate, n)
        for n in THREADS
        for name, rate in runs.items()
    }
    rates = interleave(blocks, rounds)
    settle_threads()
    out: dict[str, float] = {}
    for n in THREADS:
        suffix = f", {threads_label(n)}"
        base = rates[f"usual way{suffix}"]
        out.update({k: v / base for k, v in rates.items() if k.endswith(suffix)})
    return {"rates": rates, "ratios": out}


class ConvCeiling:
    """The model's convolutions alone: each Conv2d and ConvTranspose2d of a training step,
    forward and backward on inputs of the shapes and memory format the step gives it, with an
    input gradient where the step takes one (not for the image). A step of the whole model
    cannot be faster than these on this machine."""

    def __init__(self, run: ProjectRun) -> None:
        self.convs: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        kinds = (nn.Conv2d, nn.ConvTranspose2d)
        seen: list[tuple[nn.Module, torch.Tensor]] = []

        def record(conv: nn.Module, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
            seen.append((conv, inputs[0]))

        hooks = [
            m.register_forward_hook(record) for m in run.model.modules() if isinstance(m, kinds)
        ]
        run.step(next(run.batches))
        for hook in hooks:
            hook.remove()
        for module, x in seen:
            conv = copy.deepcopy(module)
            own = x.detach().clone(memory_format=torch.preserve_format)
            own.requires_grad_(x.requires_grad)  # the image has none, as in training
            self.convs.append((conv, own, torch.randn_like(conv(own))))
        self.device, self.keep_memory = run.device, run.cfg.trainer.keep_host_memory

    def block(self, steps: int) -> float:
        keep_host_memory(self.keep_memory)  # as the project's own blocks run
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            for conv, x, grad in self.convs:
                conv.zero_grad(set_to_none=True)
                x.grad = None
                conv(x).backward(grad)
        sync(self.device)
        return time.perf_counter() - start


def bench_mnist(
    root: str, device: torch.device, rounds: int, tmp: Path, blocks: BlockSteps
) -> dict:
    steps = blocks.mnist
    runs = {"mtltrain": ProjectRun(mnist_overrides(root), device, tmp / "mnist")}
    if device.type == "cuda" or torch.backends.mkldnn.is_available():
        runs["mtltrain, precision=bf16"] = ProjectRun(
            [*mnist_overrides(root), "trainer.precision=bf16"], device, tmp / "mnist_bf16"
        )
    project = runs["mtltrain"]
    usual = usual_mnist(root, build(project.cfg.model, tasks=project.data.tasks), device)
    rates: dict[str, Callable[[], float]] = {
        name: (lambda r=r: 256 * steps / r.block(steps)) for name, r in runs.items()
    }
    rates["usual way"] = lambda: 256 * steps / usual.block(steps)
    ceiling = ConvCeiling(project)
    rates[CEILING] = lambda: 256 * steps / ceiling.block(steps)
    return {"unit": "samples/s", **by_threads(rates, rounds)}


def bench_two_slope(device: torch.device, rounds: int, tmp: Path, blocks: BlockSteps) -> dict:
    steps = blocks.two_slope
    project = ProjectRun([], device, tmp / "two_slope")
    torch.manual_seed(0)
    usual = usual_two_slope(project.data, TwoSequentials(), device)
    rates = {
        "mtltrain": lambda: steps / project.block(steps),
        "usual way": lambda: steps / usual.block(steps),
    }
    return {"unit": "steps/s", **by_threads(rates, rounds)}


def step_times(runs: dict[str, ProjectRun], steps: int, rounds: int, baseline: str) -> dict:
    """Median step time of each run, and its ratio to `baseline`'s."""
    times = interleave({n: (lambda r=r: r.block(steps) / steps) for n, r in runs.items()}, rounds)
    return {
        "ms_per_step": {n: 1e3 * t for n, t in times.items()},
        f"vs_{baseline}": ratios(times, baseline),
    }


def bench_strategies(
    model: list[str], steps: int, names: list[str], device: torch.device, rounds: int, tmp: Path
) -> dict:
    """Step time of each strategy in `names` against `fixed`, on the model `model` builds."""
    runs = {
        s: ProjectRun([*model, f"weighting={s}"], device, tmp / s)
        for s in sorted({"fixed", *names}, key=lambda s: (s != "fixed", s))
    }
    fixed = runs["fixed"].model
    return {
        "unit": "ms/step",
        "shared_parameters": sum(p.numel() for p in fixed.shared_parameters()),
        "kind": {n: KINDS[r.job.strategy.level] for n, r in runs.items()},
        **step_times(runs, steps, rounds, "fixed"),
    }


def vmapped_jacobian(run: ProjectRun) -> Callable[[Split], None]:
    """MGDA's step with its Jacobian from one vmapped backward pass for all tasks."""
    job = run.job
    shared = job.model.shared_parameters()
    others = [p for p in job.model.parameters() if all(p is not q for q in shared)]

    def step(batch: Split) -> None:
        outputs, _ = job.model(batch.inputs)
        losses = compute_losses(job.terms, outputs, batch.targets)
        for p in run.runner.params:
            p.grad = None
        eye = torch.eye(len(losses), device=losses.device)
        grads = torch.autograd.grad(losses, [*shared, *others], eye, is_grads_batched=True)
        jacobian = torch.cat([g.flatten(1) for g in grads[: len(shared)]], dim=1)
        direction, _ = job.strategy.aggregate(jacobian, losses.detach())
        for p, piece in zip(shared, direction.split([p.numel() for p in shared]), strict=True):
            p.grad = torch.empty_like(p).copy_(piece.view_as(p))  # the layout of p
        for p, g in zip(others, grads[len(shared) :], strict=True):
            p.grad = torch.empty_like(p).copy_(g.sum(0))
        job.optimizer.step()

    return step


def torchjd_jacobian(run: ProjectRun) -> Callable[[Split], None]:
    """MGDA's step through torchjd: mtl_backward, then jac_to_grad with the same exact MGDA
    weights (so only the way to the Jacobian differs)."""
    from torchjd.aggregation import Aggregator
    from torchjd.autojac import jac_to_grad, mtl_backward

    job = run.job

    class SameWeights(Aggregator):
        def forward(self, matrix: torch.Tensor) -> torch.Tensor:
            return job.strategy.aggregate(matrix, torch.ones(len(matrix)))[0]

    aggregator = SameWeights()

    def step(batch: Split) -> None:
        outputs, features = job.model(batch.inputs)
        losses = [t.fn(outputs[t.task], batch.targets[t.task]) for t in job.terms]
        for p in run.runner.params:
            p.grad = None
        mtl_backward(losses, features=features)
        jac_to_grad(job.model.shared_parameters(), aggregator)
        job.optimizer.step()

    return step


def bench_engine(
    root: str, device: torch.device, rounds: int, tmp: Path, blocks: BlockSteps
) -> dict:
    """MGDA on the MNIST model: the engine's one pass per task against the other two ways."""
    overrides = [*mnist_overrides(root), "weighting=mgda"]
    runs = {"fixed": ProjectRun(mnist_overrides(root), device, tmp / "engine_fixed")}
    runs["mgda: one pass per task (mtltrain)"] = ProjectRun(overrides, device, tmp / "engine")
    contenders = {"mgda: one vmapped pass": vmapped_jacobian}
    try:
        import torchjd  # noqa: F401
    except ImportError:
        print("torchjd is not installed: its row is left out", file=sys.stderr)
    else:
        contenders["mgda: torchjd mtl_backward"] = torchjd_jacobian
    for name, contender in contenders.items():
        run = ProjectRun(overrides, device, tmp / f"engine_{len(runs)}")
        run.step = contender(run)
        runs[name] = run
    return {"unit": "ms/step", **step_times(runs, blocks.mnist, rounds, "fixed")}


LEVERS = {  # data set → {contender: overrides}: the defaults against each speed setting undone
    "mnist": {
        "keep_host_memory=false": ["trainer.keep_host_memory=false"],
        "channels_last=false": ["trainer.channels_last=false"],
        "fused_optimizer=false": ["trainer.fused_optimizer=false"],
    },
    "two_slope": {
        "fused_optimizer=false": ["trainer.fused_optimizer=false"],
        "model=two_slope_modules": ["model=two_slope_modules"],
        "compile=default": ["trainer.compile=default"],
    },
}


def bench_levers(
    root: str, device: torch.device, rounds: int, tmp: Path, blocks: BlockSteps
) -> dict:
    """Step time of the defaults and of each speed setting undone, per data set."""
    out = {}
    for data, levers in LEVERS.items():
        base, steps = (
            (mnist_overrides(root), blocks.mnist) if data == "mnist" else ([], blocks.two_slope)
        )
        runs = {"defaults": ProjectRun(base, device, tmp / f"{data}_defaults")}
        for name, overrides in levers.items():
            runs[name] = ProjectRun([*base, *overrides], device, tmp / f"{data}_{name}")
        out[data] = step_times(runs, steps, rounds, "defaults")
    return out


def eval_and_logging_share(overrides: list[str], device: torch.device, log_dir: Path) -> dict:
    """Seconds of one training epoch, of logging at its `log_every`, and of evaluation per
    epoch: test metrics and train-metric logs every `eval_every` epochs, figures every
    `figure_every` evaluations where trainer.figures asks for them (the defaults: none)."""
    run = ProjectRun(overrides, device, log_dir)
    job = run.job
    (tb,) = (cb for cb in job.callbacks if isinstance(cb, LoggersCallback))
    figures = next((cb for cb in job.callbacks if isinstance(cb, FiguresCallback)), None)

    def train_epoch() -> None:
        run.runner.start_epoch()
        for b in range(job.batches_per_epoch):
            run.runner.step(b)

    train_epoch()  # warm-up
    sync(device)
    start = time.perf_counter()
    train_epoch()
    sync(device)
    epoch = time.perf_counter() - start
    step = run.step(next(run.batches))
    start = time.perf_counter()
    for _ in range(20):
        tb.log_step(job, step)
    per_log = (time.perf_counter() - start) / 20
    logging = per_log * job.batches_per_epoch / job.cfg.log_every
    plain = timed_evaluation(job)
    evaluation = plain
    if figures is not None and job.cfg.figure_every:  # one in figure_every draws (figures=true)
        evaluation += timed(lambda: figures.draw(job, None)) / job.cfg.figure_every
    evaluation /= job.cfg.eval_every
    return {
        "epoch_s": epoch,
        "logging_s_per_epoch": logging,
        "evaluation_s_per_epoch": evaluation,
        "share": (logging + evaluation) / (epoch - logging),
    }


def timed(work: Callable[[], object], repeats: int = 5) -> float:
    """Median seconds of `work` after a warm-up (the first figure of a kind pays for
    matplotlib's start)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def timed_evaluation(job: Job) -> float:
    """Median seconds of an evaluation and what the callbacks do with it, figures aside."""

    def evaluation() -> None:
        metrics = job.evaluate()
        with contextlib.redirect_stderr(io.StringIO()):
            for cb in job.callbacks:
                if not isinstance(cb, FiguresCallback):
                    cb.on_evaluation(job, metrics)
        sync(job.device)

    return timed(evaluation)


MTLTRAIN = str(Path(sys.executable).with_name("mtltrain"))
USUAL_TWO_SLOPE = Path(__file__).resolve().parent / "usual" / "two_slope.py"


def timed_process(command: list[str]) -> float:
    """Wall seconds of a whole process."""
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def whole_runs(root: str, device: torch.device, tmp: Path) -> dict:
    """Each default configuration as a user starts it, start-up included; the two-slope run of
    the source (experiment=two_slope_source) beside the same run as a plain script
    (scripts/usual/two_slope.py), the two taken in turn, 3 times."""
    out = {}
    for name, overrides in {
        "two_slope": [],
        "sin_hetero": ["dataset=sin_hetero"],
        "mnist_mtl": mnist_overrides(root),
    }.items():
        run_dir = tmp / f"run_{name}"
        command = [MTLTRAIN, *overrides, f"trainer.device={device.type}"]
        wall = timed_process([*command, f"hydra.run.dir={run_dir}"])
        results = json.loads((run_dir / "results.json").read_text())
        out[name] = {"wall_s": wall, "train_s": results["train_time_s"], "steps": results["steps"]}
    ours, usual = [], []
    for i in range(3):
        source = [MTLTRAIN, "experiment=two_slope_source"]  # the script's loss
        ours.append(timed_process([*source, f"hydra.run.dir={tmp / f'two_slope_{i}'}"]))
        usual.append(timed_process([sys.executable, str(USUAL_TWO_SLOPE)]))
    out["two_slope, mtltrain vs usual script"] = {
        "mtltrain_s": statistics.median(ours),
        "usual_s": statistics.median(usual),
    }
    return out


USUAL_MNIST = Path(__file__).resolve().parent / "usual" / "mnist.py"


def mnist_processes(root: str, tmp: Path, epochs: int = 1) -> dict:
    """§5B as whole processes on the CPU, start-up and test pass included: `mtltrain
    dataset=mnist_mtl` against scripts/usual/mnist.py for `epochs`, at 1 and 2 threads, the two
    taken in turn, 3 times; medians."""
    rows = {}
    for n in THREADS:
        ours, usual = [], []
        for i in range(3):
            settings = [f"trainer.epochs={epochs}", f"trainer.threads={n}", "trainer.device=cpu"]
            folder = tmp / f"mnist_process_{n}_{i}"
            run = [MTLTRAIN, *mnist_overrides(root), *settings, f"hydra.run.dir={folder}"]
            ours.append(timed_process(run))
            script = [sys.executable, str(USUAL_MNIST), "--root", root, "--epochs", str(epochs)]
            usual.append(timed_process([*script, "--threads", str(n)]))
        rows[threads_label(n)] = {
            "mtltrain_s": statistics.median(ours),
            "usual_s": statistics.median(usual),
        }
    return {"epochs": epochs, "rows": rows}


def startup(tmp: Path, rounds: int = 5) -> dict:
    """Start-up: a 1-epoch two-slope run as a whole process (start-up, one epoch, its folder
    written) beside the usual script for 1 epoch and `python -c "import torch"`, taken in turn
    `rounds` times; medians."""
    commands = {
        "mtltrain trainer.epochs=1": lambda i: [
            MTLTRAIN, "trainer.epochs=1", f"hydra.run.dir={tmp / f'startup_{i}'}"
        ],
        "scripts/usual/two_slope.py --epochs 1": lambda i: [
            sys.executable, str(USUAL_TWO_SLOPE), "--epochs", "1"
        ],
        'python -c "import torch"': lambda i: [sys.executable, "-c", "import torch"],
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(rounds):
        for name, command in commands.items():
            times[name].append(timed_process(command(i)))
    return {"rounds": rounds, "wall_s": {n: statistics.median(t) for n, t in times.items()}}


@contextlib.contextmanager
def cores_kept_busy() -> Iterator[int]:
    """One `while True: pass` process per usable core while inside; yields their number."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(usable_cores())
    ]
    try:
        yield len(hogs)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def busy_machine(tmp: Path, epochs: int = 1500, sweep_jobs: int = 4, rounds: int = 3) -> dict:
    """While every core is kept busy by another process: the two-slope run of `epochs` with
    trainer.threads=auto (one thread for this small step), with every core, and the plain
    script; and a stacked sweep of `sweep_jobs` seeds (hydra/launcher=vectorized, 100 epochs
    each) with threads=auto and with every core, against the plain script run once per job;
    each the median of `rounds`, taken in turn."""
    cores = usable_cores()
    usual = [sys.executable, str(USUAL_TWO_SLOPE)]
    seeds = f"seed=range({sweep_jobs})"
    sweep = [MTLTRAIN, "-m", "hydra/launcher=vectorized", seeds, "trainer.epochs=100"]
    contenders: dict[str, Callable[[Path], list[list[str]]]] = {
        "mtltrain, threads=auto": lambda d: [
            [MTLTRAIN, f"trainer.epochs={epochs}", f"hydra.run.dir={d}"]
        ],
        f"mtltrain, threads={cores}": lambda d: [
            [MTLTRAIN, f"trainer.epochs={epochs}", f"trainer.threads={cores}", f"hydra.run.dir={d}"]
        ],
        "usual script": lambda d: [[*usual, "--epochs", str(epochs)]],
        f"stacked sweep of {sweep_jobs}, threads=auto": lambda d: [
            [*sweep, f"hydra.sweep.dir={d}"]
        ],
        f"stacked sweep of {sweep_jobs}, threads={cores}": lambda d: [
            [*sweep, f"trainer.threads={cores}", f"hydra.sweep.dir={d}"]
        ],
        f"usual script, {sweep_jobs} times": lambda d: [
            [*usual, "--epochs", "100"] for _ in range(sweep_jobs)
        ],
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in contenders}
    with cores_kept_busy():
        for i in range(rounds):
            for k, (name, commands) in enumerate(contenders.items()):
                times[name].append(sum(map(timed_process, commands(tmp / f"busy_{i}_{k}"))))
    return {
        "cores": cores,
        "epochs": epochs,
        "sweep_jobs": sweep_jobs,
        "wall_s": {n: statistics.median(t) for n, t in times.items()},
    }


BENCH_RANKS = Path(__file__).resolve().parent / "bench_ranks.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def distributed(root: str, tmp: Path, rounds: int = 3) -> dict:
    """One process on 1 and on 2 threads against torchrun's 2 processes of 1 thread each: the
    step time of a loss-based and two gradient-based strategies (at the parameters and at the
    representation) with the bytes each step sends, and a whole one-epoch MNIST run; each the
    median of `rounds` launches taken in turn."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    models = {"mnist_mtl": (mnist_overrides(root), "10"),  # overrides, steps per block
              "two_slope, shared MLP": (["model=sin_hetero"], "200")}  # fmt: skip
    ways = {  # launcher, intra-op threads per process
        "1 process, 1 thread": ([sys.executable], 1),
        "1 process, 2 threads": ([sys.executable], 2),
        "2 processes (torchrun), 1 thread each": (TORCHRUN, 1),
    }
    out: dict = {"steps": {}, "runs": {}}
    for model, (overrides, steps) in models.items():
        for strategy in ("fixed", "mgda", "mgda_ub"):
            found: dict[str, list[dict]] = {way: [] for way in ways}
            for _ in range(rounds):
                for way, (launcher, threads) in ways.items():
                    result = tmp / "ranks.json"
                    args = [str(result), steps, *overrides, f"trainer.threads={threads}"]
                    subprocess.run([*launcher, str(BENCH_RANKS), *args, f"weighting={strategy}"],
                                   check=True, capture_output=True, env=env)  # fmt: skip
                    found[way].append(json.loads(result.read_text()))
            out["steps"][f"{model}, {strategy}"] = {
                way: {
                    "ms_per_step": statistics.median(r["ms_per_step"] for r in runs),
                    "bytes_per_step": runs[0]["bytes_per_step"],
                }
                for way, runs in found.items()
            }
    run = [*mnist_overrides(root), "trainer.epochs=1"]
    alone = [MTLTRAIN, *run]
    both = [*TORCHRUN, "-m", "mtltrain", *run]
    walls: dict[str, list[float]] = {"1 process (trainer.threads=auto)": [], "2 processes": []}
    for i in range(rounds):
        walls["1 process (trainer.threads=auto)"].append(
            timed_process([*alone, f"hydra.run.dir={tmp / f'alone_{i}'}"])
        )
        walls["2 processes"].append(timed_process([*both, f"hydra.run.dir={tmp / f'ranks_{i}'}"]))
    out["runs"]["mnist_mtl, 1 epoch, fixed"] = {w: statistics.median(t) for w, t in walls.items()}
    return out


def distributed_table(section: dict) -> list[str]:
    ways = list(next(iter(section["steps"].values())))
    lines = ["", "| data-parallel step | " + " | ".join(ways) + " | bytes sent per step |",
             "|---|" + "---|" * (len(ways) + 1)]  # fmt: skip
    for name, row in section["steps"].items():
        base = row[ways[0]]["ms_per_step"]
        cells = [f"{r['ms_per_step']:.3g} ms ({r['ms_per_step'] / base:.2f}×)"
                 for r in row.values()]  # fmt: skip
        sent = row[ways[-1]]["bytes_per_step"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {sent / 1024:,.1f} KiB |")
    for name, walls in section["runs"].items():
        lines += ["", f"| whole run: {name} | wall time | × 1 process |", "|---|---|---|"]
        base = next(iter(walls.values()))
        lines += [f"| {way} | {s:.1f} s | {s / base:.2f} |" for way, s in walls.items()]
    return lines


def ratios(rates: dict[str, float], baseline: str) -> dict[str, float]:
    return {name: rate / rates[baseline] for name, rate in rates.items()}


def ceiling_table(mnist: dict) -> list[str]:
    """mtltrain's float32 MNIST rate as a share of the convolutions-alone ceiling's: the
    project's own convolutions (channels-last), so neither a bf16 run nor the usual way's
    NCHW ones are bounded by it."""
    rates = mnist["rates"]
    suffixes = [f", {threads_label(n)}" for n in THREADS]
    if not all(f"{CEILING}{s}" in rates for s in suffixes):  # a report from before the ceiling
        return []
    lines = ["", "| MNIST, float32: share of its channels-last convolutions alone | "
             + " | ".join(map(threads_label, THREADS)) + " |",
             "|---|" + "---|" * len(THREADS)]  # fmt: skip
    shares = [rates[f"mtltrain{s}"] / rates[f"{CEILING}{s}"] for s in suffixes]
    return [*lines, "| mtltrain | " + " | ".join(f"{100 * x:.0f}%" for x in shares) + " |"]


def strategy_table(strategies: dict) -> list[str]:
    """One row per strategy: its kind and its step time on each model, and × fixed."""
    mnist, wide = strategies["mnist_mtl"], strategies["wide"]
    header = (
        "| weighting | kind | MNIST model ms/step | × fixed "
        f"| 3 tasks, {wide['shared_parameters']:,} shared parameters: ms/step | × fixed |"
    )
    lines = ["", header, "|---|---|---|---|---|---|"]
    for name, kind in mnist["kind"].items():
        cells = [f"{m['ms_per_step'][name]:.2f} | {m['vs_fixed'][name]:.2f}" for m in (mnist, wide)]
        lines.append(f"| {name} | {kind} | {' | '.join(cells)} |")
    return lines


def rate_table(report: dict) -> list[str]:
    """The MNIST and two-slope rates of the report (those of its sections it has): a row per
    contender, with its ratio to the usual way's."""
    lines = ["| benchmark | contender | rate | × usual way |", "|---|---|---|---|"]
    for section in ("mnist", "two_slope"):
        data = report.get(section, {"rates": {}})
        for name, rate in data["rates"].items():
            ratio = data["ratios"][name]
            lines.append(f"| {section} | {name} | {rate:,.0f} {data['unit']} | {ratio:.2f} |")
    return lines


def markdown(report: dict) -> str:
    """The report's tables, of the sections it has."""
    lines = [
        f"Machine: {described(report['machine'])}.",
        "",
        *rate_table(report),
    ]
    if "mnist" in report:
        lines += ceiling_table(report["mnist"])
    if "strategies" in report:
        lines += strategy_table(report["strategies"])
    if "engine" in report:
        lines += ["", "| backward of a gradient-based strategy (MNIST model) | ms/step | × fixed |"]
        lines += ["|---|---|---|"]
        e = report["engine"]
        for name, ms in e["ms_per_step"].items():
            lines.append(f"| {name} | {ms:.1f} | {e['vs_fixed'][name]:.2f} |")
    if "levers" in report:
        lines += ["", "| speed setting undone | ms/step | × defaults |", "|---|---|---|"]
        for data, section in report["levers"].items():
            for name, ms in section["ms_per_step"].items():
                ratio = section["vs_defaults"][name]
                lines.append(f"| {data}: {name} | {ms:.3g} | {ratio:.2f} |")
    if "eval_logging" in report:
        lines += ["", "| epoch share of evaluation + logging | epoch | share |", "|---|---|---|"]
        for name, share in report["eval_logging"].items():
            lines.append(f"| {name} | {share['epoch_s']:.2f} s | {100 * share['share']:.1f}% |")
    if report.get("runs"):
        runs = dict(report["runs"])
        versus = runs.pop("two_slope, mtltrain vs usual script")
        lines += ["", "| whole run (defaults) | wall time | of which training | steps |"]
        lines += ["|---|---|---|---|"]
        for name, r in runs.items():
            lines.append(
                f"| `{name}` | {r['wall_s']:.1f} s | {r['train_s']:.1f} s | {r['steps']:,} |"
            )
        lines += ["", "| whole two-slope run (1500 epochs), median of 3 | wall time | × usual |"]
        lines += ["|---|---|---|"]
        ours, usual = versus["mtltrain_s"], versus["usual_s"]
        ours_name = "`mtltrain experiment=two_slope_source`"
        lines.append(f"| {ours_name} | {ours:.1f} s | {ours / usual:.2f} |")
        lines.append(f"| scripts/usual/two_slope.py | {usual:.1f} s | 1.00 |")
    if report.get("mnist_process"):
        section = report["mnist_process"]
        epochs = f"{section['epochs']} epoch{'s' if section['epochs'] > 1 else ''}"
        lines += ["", f"| whole §5B run on the CPU ({epochs}, start-up and test pass included; "
                  "the script's DataLoader has a worker per core at any thread count), median "
                  "of 3 | mtltrain | scripts/usual/mnist.py | usual ÷ mtltrain |",
                  "|---|---|---|---|"]  # fmt: skip
        for threads, r in section["rows"].items():
            ours, usual = r["mtltrain_s"], r["usual_s"]
            lines.append(f"| {threads} | {ours:.1f} s | {usual:.1f} s | {usual / ours:.2f}× |")
    if report.get("startup"):
        lines += startup_table(report["startup"])
    if report.get("busy"):
        lines += busy_table(report["busy"])
    if report.get("distributed"):
        lines += distributed_table(report["distributed"])
    lines += ["", f"Finished {report['finished']}. Reproduce: `{report['command']}`"]
    for name, rerun in report.get("sections_rerun", {}).items():
        on = f" on {described(rerun['machine'])}" if "machine" in rerun else ""
        lines.append(f"Section {name} run again {rerun['finished']}{on}: `{rerun['command']}`")
    return "\n".join(lines) + "\n"


def described(m: dict) -> str:
    """A machine in words: its CPU, cores, GPU, torch and device."""
    gpu = f", {m['gpu']}" if m["gpu"] else ""
    return f"{m['cpu']}, {m['cores']} cores{gpu}; torch {m['torch']}; device {m['device']}"


def startup_table(section: dict) -> list[str]:
    """The start-up row: each whole process's median wall time and its ratio to `import torch`."""
    walls = section["wall_s"]
    torch_alone = walls['python -c "import torch"']
    lines = ["", f"| start-up: a 1-epoch two-slope run, whole process, median of "
             f"{section['rounds']} | wall time | × import torch |", "|---|---|---|"]  # fmt: skip
    return lines + [f"| `{n}` | {s:.2f} s | {s / torch_alone:.2f} |" for n, s in walls.items()]


def busy_table(busy: dict) -> list[str]:
    """The cores-kept-busy rows: wall times, and (where the section has them) each run's
    ratio to the usual script's time for the same work (a sweep's: the script once per job)."""
    epochs = busy.get("epochs", 100)
    lines = ["", f"| {busy['cores']} cores kept busy by other processes: two-slope, {epochs} "
             "epochs; sweeps of 100 epochs a job | wall time | usual ÷ this |",
             "|---|---|---|"]  # fmt: skip
    walls = busy["wall_s"]
    jobs = busy.get("sweep_jobs")
    for name, s in walls.items():
        base = walls.get(f"usual script, {jobs} times" if "sweep" in name else "usual script")
        ratio = f"{base / s:.2f}×" if base else ""
        lines.append(f"| {name} | {s:.1f} s | {ratio} |")
    return lines


def strategy_names(text: str) -> list[str]:
    names = text.split(",")
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise argparse.ArgumentTypeError(f"no weighting config {unknown}: choose from {STRATEGIES}")
    return names


def published_arguments(argv: list[str]) -> list[str]:
    """The command line as the page records it: without --out and --markdown, which --publish
    replaces (and which name a folder of this machine)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--out", "--markdown"):
            skip = True
        elif not arg.startswith(("--out=", "--markdown=")):
            kept.append(arg)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist-root", default=MNIST_ROOT)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--block-scale",
        type=float,
        default=1.0,
        help="each timed block runs this many times its steps, at least one (default: 1)",
    )
    parser.add_argument(
        "--skip-runs", action="store_true", help="skip the whole-run and busy-machine timings"
    )
    parser.add_argument(
        "--strategies",
        type=strategy_names,
        default=STRATEGIES,
        help="comma-separated weighting configs to time against fixed (default: all)",
    )
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        help="comma-separated sections to run (again), the others kept from --out if it exists",
    )
    parser.add_argument(
        "--busy-epochs",
        type=int,
        default=1500,
        help="epochs of the two-slope runs on cores kept busy (default: 1500, the whole run)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument(
        "--publish",
        action="store_true",
        help="write docs/results/bench.json and .md and copy them into the pages that embed them",
    )
    args = parser.parse_args()
    if args.publish:
        args.out, args.markdown = PUBLISHED.with_suffix(".json"), PUBLISHED.with_suffix(".md")
    command = shlex.join(["python", "scripts/bench.py", *published_arguments(sys.argv[1:])])
    settle_threads()
    device = select_device(args.device)
    blocks = BlockSteps().scaled(args.block_scale)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = args.mnist_root
        if not (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
            print(f"no MNIST under {root}: using random images of its size", file=sys.stderr)
            root = str(mnist_mtl.write_random(tmp / "mnist_data", 60000, 10000))
        report: dict = {
            "machine": machine(device),
            "mnist_data": "real" if root == args.mnist_root else "random",
        }
        sections = {
            "mnist": lambda: bench_mnist(root, device, args.rounds, tmp, blocks),
            "two_slope": lambda: bench_two_slope(device, args.rounds, tmp, blocks),
            "strategies": lambda: {
                "mnist_mtl": bench_strategies(
                    mnist_overrides(root),
                    blocks.mnist,
                    args.strategies,
                    device,
                    args.rounds,
                    tmp / "mnist_mtl",
                ),
                "wide": bench_strategies(
                    WIDE_MODEL, blocks.wide, args.strategies, device, args.rounds, tmp / "wide"
                ),
            },
            "engine": lambda: bench_engine(root, device, args.rounds, tmp, blocks),
            "levers": lambda: bench_levers(root, device, args.rounds, tmp, blocks),
            "eval_logging": lambda: {
                "mnist_mtl": eval_and_logging_share(
                    mnist_overrides(root), device, tmp / "share_mnist"
                ),
                "two_slope": eval_and_logging_share([], device, tmp / "share_two_slope"),
            },
        }
        if not args.skip_runs:
            sections["runs"] = lambda: whole_runs(root, device, tmp)
            sections["mnist_process"] = lambda: mnist_processes(root, tmp)
            sections["startup"] = lambda: startup(tmp)
            sections["busy"] = lambda: busy_machine(tmp, args.busy_epochs)
            sections["distributed"] = lambda: distributed(root, tmp)
        rerunning = bool(args.only) and args.out.exists()
        if args.only:
            unknown = set(args.only) - set(sections)
            if unknown:
                parser.error(f"--only {sorted(unknown)}: choose among {list(sections)}")
            sections = {name: sections[name] for name in args.only}
        if rerunning:
            this_machine = report["machine"]  # the others as they were, on their machine
            report = {**report, **json.loads(args.out.read_text())}
            rerun = {"finished": time.strftime("%Y-%m-%d %H:%M"), "command": command,
                     "machine": this_machine}  # fmt: skip
            report["sections_rerun"] = {**report.get("sections_rerun", {}),
                                        **dict.fromkeys(args.only, rerun)}  # fmt: skip
        for name, section in sections.items():
            print(f"running {name} ...", file=sys.stderr, flush=True)
            report[name] = section()
            print(json.dumps(report[name], indent=2), file=sys.stderr, flush=True)
    if not rerunning:
        report["finished"] = time.strftime("%Y-%m-%d %H:%M")
        report["command"] = command
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.publish:
        update_readme.update()


if __name__ == "__main__":
    main()
