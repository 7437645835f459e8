"""Many tasks: the step of gradient-based strategies at K = 3, 11 and 40 against `fixed`'s.

The model of issue 26: a shared 784 → 256 → 256 MLP (ReLU) with K two-class linear heads,
batch 256, random data, one thread. Each job is built by `mtltrain.build.build_job` from the
project's configs (its data set and model configs are written to a temporary folder) and
stepped by the product's per-job step, so the step measured is the one a run takes.

    python scripts/bench_ktasks.py [--tasks 3 11 40] [--rounds 5] [--steps 10]
        [--weightings fixed mgda upgrad mgda_ub upgrad_ub] [--extra weighting.every=10]
        [--memory] [--solvers] [--per-term]

Medians of interleaved rounds in one process; each strategy's step is printed in ms and as a
ratio × `fixed`'s step of the same round (only such ratios are comparable on a loaded
machine); `--memory` adds the most memory one step holds at once beyond what it started
with (torch's profiler: each op's allocations less its frees, in order).
`--solvers` also times the solvers alone on the Gramian of 40 correlated random gradients;
`--per-term` adds each strategy with the engine's one backward pass per term (the engine
before the heads' views: each pass runs through all K heads).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mtltrain.build import build_job
from mtltrain.config._compose import compose_checked
from mtltrain.data import MultiTaskData, Split, task_specs
from mtltrain.loop._engine import engine_over
from mtltrain.loop._job_step import PerJobStep

WIDTH, INPUTS, BATCH = 256, 784, 256
# name → overrides of a strategy; "_ub": the strategy on the shared representation
STRATEGIES = {
    "fixed": ["weighting=fixed"],
    "mgda": ["weighting=mgda"],
    "upgrad": ["weighting=upgrad"],
    "mgda_ub": ["weighting=mgda_ub"],
    "upgrad_ub": ["weighting=upgrad", "weighting.representation=true"],
    "cagrad": ["weighting=cagrad"],
    "pcgrad": ["weighting=pcgrad"],
    "nash_mtl": ["weighting=nash_mtl"],
}


def build_data(tasks: int, losses: dict, metrics: dict | None = None) -> MultiTaskData:
    """`tasks` two-class tasks on 784 random inputs (4 batches of train rows, one of test)."""
    gen = torch.Generator().manual_seed(0)
    names = [f"t{k}" for k in range(tasks)]

    def split(n: int) -> Split:
        x = torch.randn(n, INPUTS, generator=gen)
        return Split(x, {t: torch.randint(0, 2, (n,), generator=gen) for t in names})

    available = {t: ("classification", 2) for t in names}
    specs = task_specs(names, available, {t: losses.get(t, ["cross_entropy"]) for t in names})
    return MultiTaskData(specs, split(4 * BATCH), split(BATCH))


def write_configs(folder: Path) -> None:
    (folder / "dataset").mkdir(parents=True, exist_ok=True)
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "dataset" / "ktasks.yaml").write_text(
        "_target_: __main__.build_data\ntasks: 3\nlosses: {}\n"
    )
    (folder / "model" / "ktasks.yaml").write_text(
        "_target_: mtltrain.models.MultiTaskModel\n"
        "encoder:\n  _target_: mtltrain.models.mlp.MLP\n"
        f"  in_features: {INPUTS}\n  out_features: {WIDTH}\n  hidden: [{WIDTH}]\n"
        "  activate_output: true\n"
        "head:\n  _target_: torch.nn.Linear\n  _partial_: true\n"
        f"  in_features: {WIDTH}\n"
    )


class Bench:
    """One job of the K-task model, stepped by its per-job step on 4 batches in turn."""

    def __init__(
        self, folder: Path, tasks: int, overrides: list[str], per_term: bool = False
    ) -> None:
        cfg = compose_checked(
            [
                f"hydra.searchpath=[file://{folder}]",
                "dataset=ktasks",
                "model=ktasks",
                f"dataset.tasks={tasks}",
                *overrides,
                "trainer.device=cpu",
                f"trainer.batch_size={BATCH}",
                "logger=[]",
            ]
        )
        self.job = build_job(cfg)
        self.runner = PerJobStep(self.job)
        if per_term:  # the engine before the heads' views: one backward pass per term
            model = self.job.model
            model.split_features = False
            self.runner.backward = engine_over(
                self.job.strategy, model.shared_parameters(), list(model.parameters())
            )
        split = self.job.train_split
        self.batches = [split.take(slice(i * BATCH, (i + 1) * BATCH)) for i in range(4)]
        self.steps = 0

    def step(self) -> None:
        """One training step, on the next of the 4 batches in turn."""
        self.runner.train_step(self.batches[self.steps % 4])
        self.steps += 1

    def block(self, steps: int) -> float:
        """Seconds a step, over `steps` steps."""
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - start) / steps

    def peak_memory(self) -> float:
        """MiB the CPU allocator holds at most during one step (torch's profiler)."""
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.step()
        held, peak = 0, 0  # each op's own allocations less its frees, in the order they ran
        for event in sorted(prof.events(), key=lambda e: e.time_range.start):
            held += event.self_cpu_memory_usage
            peak = max(peak, held)
        return peak / 2**20


def solver_times(rounds: int) -> dict[str, float]:
    """ms of each solver alone on the float64 Gramian of 40 random correlated gradients."""
    from mtltrain.weighting.solvers import fair_weights, min_norm_point, project_to_dual_cone

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 4096, generator=gen, dtype=torch.float64)
    rows = base + torch.randn(40, 4096, generator=gen, dtype=torch.float64)
    gramian = rows @ rows.T
    k = len(gramian)
    ways = {
        "min_norm_point (mgda)": lambda: min_norm_point(gramian),
        "project_to_dual_cone × 1": lambda: project_to_dual_cone(gramian, torch.eye(k)[0] / k),
        "upgrad's K projections": lambda: [
            project_to_dual_cone(gramian, torch.eye(k, dtype=torch.float64)[i] / k)
            for i in range(k)
        ],
        "fair_weights (nash_mtl)": lambda: fair_weights(gramian),
    }
    out = {}
    for name, way in ways.items():
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            way()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times) * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[3, 11, 40])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--weightings", nargs="+", default=["fixed", "mgda", "upgrad", "mgda_ub", "upgrad_ub"]
    )
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every strategy")
    parser.add_argument("--memory", action="store_true", help="also the peak memory of a step")
    parser.add_argument(
        "--per-term", action="store_true", help="also each strategy with one pass per term"
    )
    parser.add_argument("--solvers", action="store_true", help="also the solvers alone, K = 40")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.solvers:
        for name, ms in solver_times(max(args.rounds, 5)).items():
            print(f"solver {name}: {ms:.2f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_configs(folder)
        for k in args.tasks:
            chosen = [w for w in args.weightings if w != "fixed"]
            names = ["fixed", *chosen, *(f"{w}/per-term" for w in chosen if args.per_term)]
            benches = {
                n: Bench(
                    folder,
                    k,
                    [*STRATEGIES[n.split("/")[0]], *(args.extra if n != "fixed" else [])],
                    per_term=n.endswith("/per-term"),
                )
                for n in names
            }
            times: dict[str, list[float]] = {n: [] for n in names}
            ratios: dict[str, list[float]] = {n: [] for n in names}
            for b in benches.values():
                b.block(2)  # warm-up
            for _ in range(args.rounds):
                for n, b in benches.items():
                    times[n].append(b.block(args.steps))
                for n in names:
                    ratios[n].append(times[n][-1] / times["fixed"][-1])
            print(f"K = {k}")
            for n in names:
                line = (
                    f"  {n:18s} {statistics.median(times[n]) * 1e3:8.1f} ms"
                    f"  {statistics.median(ratios[n]):6.2f} × fixed"
                )
                if args.memory:
                    line += f"  peak {benches[n].peak_memory():7.1f} MiB"
                print(line)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
