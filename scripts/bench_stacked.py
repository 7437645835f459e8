"""Stacked sweeps (`hydra/launcher=vectorized`) against the same sweeps on Hydra's default
launcher, on this machine, in one run.

    python scripts/bench_stacked.py [--epochs 1500] [--publish]

1. Whole sweeps of the §5A two-slope model (seeds 0…N−1, the default strategy), each a whole
   `mtltrain -m` process: N = 16 on the default launcher (one job after another, each on the
   thread count its own run picks) and stacked with N = 4, 16 and 64. Runs per second, and
   the ratio to the default launcher's.
2. Steps: one training step of a job alone (`Trainer.train_step`) against a stacked step of N
   jobs (`StackedTrainer.train_step`) per job, for the §5A, sin-curve (§5C) and §5B MNIST
   models at N = 4 and 16: medians of interleaved rounds. The §5B model reads the shared
   MNIST copy where it is present, else random images of MNIST's shape.
3. A hand-written stacked loop: the 16 §5A jobs stacked by hand in plain torch as a user
   would write it (`HandStacked`, the issue's prototype: no metrics, logging or checks), in
   the same rounds as the §5A steps; and the whole-sweep ratio a sweep of its step speed,
   with nothing else, would reach.

`--publish` writes docs/results/stacked.md (and the README section that embeds it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench import MTLTRAIN, interleave, timed_process
from repro_common import MNIST_ROOT, REPO, mnist_overrides
from update_readme import update

from mtltrain.build import build_trainer
from mtltrain.config import compose_checked
from mtltrain.data.mnist_mtl import write_random
from mtltrain.runtime import machine
from mtltrain.stacked import StackedTrainer

FORWARD_STACKED = "§5A two-slope MLPs (forward_stacked)"
SWEEP_JOBS = 16  # the default launcher's sweep, and the hand-written stack
HAND = f"by hand, N = {SWEEP_JOBS}"
DEFAULT = f"default launcher, {SWEEP_JOBS} jobs"


def sweep_seconds(jobs: int, epochs: int, stacked: bool, folder: Path) -> float:
    launcher = ["hydra/launcher=vectorized", f"hydra.launcher.group_size={jobs}"]
    command = [
        MTLTRAIN,
        "-m",
        f"seed=range({jobs})",
        f"trainer.epochs={epochs}",
        f"hydra.sweep.dir={folder}",
        *(launcher if stacked else []),
        "trainer.progress=false",
    ]
    return timed_process(command)


def whole_sweeps(epochs: int, tmp: Path) -> dict:
    default = sweep_seconds(SWEEP_JOBS, epochs, False, tmp / "default")
    rows = {DEFAULT: {"jobs": SWEEP_JOBS, "seconds": default}}
    for n in (4, 16, 64):
        rows[f"stacked, N = {n}"] = {
            "jobs": n,
            "seconds": sweep_seconds(n, epochs, True, tmp / f"stacked{n}"),
        }
    base = SWEEP_JOBS / default
    for row in rows.values():
        row["runs_per_s"] = row["jobs"] / row["seconds"]
        row["ratio"] = row["runs_per_s"] / base
    return {"epochs": epochs, "rows": rows}


class HandStacked:
    """N §5A jobs stacked by hand, as a user who writes the loop would: each job's two
    1→512→1 ReLU networks as batched products over jobs and tasks, each job on its own random
    batch of its own data, MSE per job and task, likelihood-form uncertainty weighting, one
    backward pass and one fused Adam over the stacked tensors. Nothing else: no metrics,
    logging, checks or evaluation."""

    def __init__(self, n: int, tasks: int = 2, hidden: int = 512, batch_size: int = 16) -> None:
        self.n, self.tasks, self.batch_size = n, tasks, batch_size
        nets = n * tasks
        shapes = [(nets, 1, hidden), (nets, 1, hidden), (nets, hidden, 1), (nets, 1, 1)]
        self.layers = [(torch.rand(s) - 0.5).requires_grad_() for s in shapes]
        self.log_var = torch.zeros(n, tasks, requires_grad=True)
        self.optimizer = torch.optim.Adam([*self.layers, self.log_var], lr=3e-4, fused=True)
        self.x = torch.randn(n, 300, 1)
        self.y = torch.randn(n, tasks, 300, 1)
        self.jobs = torch.arange(n)[:, None]

    def losses(self, index: torch.Tensor) -> torch.Tensor:
        """[jobs, tasks] MSE, job i on its samples index[i]."""
        w1, b1, w2, b2 = self.layers
        x, y = self.x[self.jobs, index], self.y[self.jobs, :, index].transpose(1, 2)
        h = x.unsqueeze(1).expand(-1, self.tasks, -1, -1).flatten(0, 1)
        h = torch.relu(torch.baddbmm(b1, h, w1))
        out = torch.baddbmm(b2, h, w2).unflatten(0, (self.n, self.tasks))
        return (out - y).square().mean(dim=(2, 3))

    def step(self) -> None:
        index = torch.randint(self.x.shape[1], (self.n, self.batch_size))
        total = 0.5 * torch.exp(-self.log_var) * self.losses(index) + 0.5 * self.log_var
        self.optimizer.zero_grad()
        total.sum().backward()
        self.optimizer.step()


def trainers(overrides: list[str], n: int) -> list:
    return [
        build_trainer(compose_checked([*overrides, f"seed={s}", "trainer.device=cpu"]))
        for s in range(n)
    ]


def step_rates(name: str, overrides: list[str], rounds: int, hand: bool = False) -> dict:
    """Per job and step: µs alone (on the threads its run picks) and stacked at N = 4 and 16
    (on every core, as a stack runs; built directly, so a model the launcher would run alone
    on a CPU is measured stacked too), and with `hand` SWEEP_JOBS `HandStacked`; medians of
    interleaved rounds."""
    alone = trainers(overrides, 1)[0]
    alone_threads = torch.get_num_threads()
    batch = alone.train_split.take(slice(0, alone.batch_size))
    stacks = {n: StackedTrainer(trainers(overrides, n)) for n in (4, 16)}
    stacked_threads = torch.get_num_threads()
    steps = 10 if "mnist" in name else 200

    def per_job(step: Callable[[], object], threads: int, jobs: int) -> Callable[[], float]:
        """A block of `steps` calls of `step`, on `threads`: seconds per job and step."""

        def block() -> float:
            torch.set_num_threads(threads)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            return (time.perf_counter() - start) / steps / jobs

        return block

    blocks = {"alone": per_job(lambda: alone.train_step(batch), alone_threads, 1)}
    for n, stack in stacks.items():
        order = torch.arange(stack.first.batch_size)[None].expand(n, -1)
        blocks[f"N = {n}"] = per_job(lambda s=stack, o=order: s.train_step(o), stacked_threads, n)
    if hand:
        blocks[HAND] = per_job(HandStacked(SWEEP_JOBS).step, stacked_threads, SWEEP_JOBS)
    medians = interleave(blocks, rounds)
    return {
        **{k: v * 1e6 for k, v in medians.items()},
        "alone threads": alone_threads,
        "batches per epoch": alone.batches_per_epoch,
    }


def markdown(report: dict) -> str:
    sweeps, m = report["sweeps"], report["machine"]
    lines = [
        "# Stacked sweeps",
        "",
        f"Measured by `python scripts/bench_stacked.py --epochs {sweeps['epochs']} --publish` "
        f"on {m['cpu']} ({m['cores']} cores), torch {m['torch']}, {report['threads']} CPU "
        "threads for the stacks and the step measurements.",
        "",
        f"**Whole sweeps** of the §5A two-slope model ({sweeps['epochs']} epochs a job, the "
        "default strategy, seeds 0…N−1), each a whole `mtltrain -m` process: the default "
        "launcher runs one job after another (each run picks one thread, its step being "
        "small); `hydra/launcher=vectorized` trains the N jobs stacked in one process, on "
        "every core, each in its own folder.",
        "",
        "| sweep | jobs | wall time | runs per second | × default launcher |",
        "|---|---|---|---|---|",
    ]
    for name, row in sweeps["rows"].items():
        lines.append(
            f"| {name} | {row['jobs']} | {row['seconds']:.1f} s | {row['runs_per_s']:.3f} | "
            f"{row['ratio']:.1f}× |"
        )
    lines += [
        "",
        "**Steps**: µs of training step per job, alone (`Trainer.train_step`) and stacked "
        "(`StackedTrainer.train_step` over N jobs, divided by N); medians of "
        f"{report['rounds']} interleaved rounds.",
        "",
        "| model | alone (its threads) | stacked N = 4 | stacked N = 16 |",
        "|---|---|---|---|",
    ]
    for name, rates in report["steps"].items():
        a = rates["alone"]
        cells = [f"{rates[k]:.0f} µs ({a / rates[k]:.2g}×)" for k in ("N = 4", "N = 16")]
        alone = f"{a:.0f} µs ({rates['alone threads']})"
        lines.append(f"| {name} | {alone} | {' | '.join(cells)} |")
    lines += hand_written(report)
    lines += [
        "",
        "On this CPU a stack of the §5B conv net is slower per job than one job at a time "
        "(vmap runs its convolutions as grouped ones), so the launcher runs such jobs one "
        "after another on a CPU, with a log line that says so.",
    ]
    return "\n".join(lines) + "\n"


def hand_written(report: dict) -> list[str]:
    """The hand-written stacked loop against mtltrain's stack, and the sweep ratio its step
    speed alone would give."""
    rates, sweeps = report["steps"][FORWARD_STACKED], report["sweeps"]
    hand, stacked, alone = rates[HAND], rates["N = 16"], rates["alone"]
    steps = sweeps["epochs"] * rates["batches per epoch"]
    ratio = sweeps["rows"][DEFAULT]["seconds"] / (SWEEP_JOBS * steps * hand * 1e-6)
    return [
        "",
        f"**A hand-written stacked loop**: the {SWEEP_JOBS} §5A jobs stacked by hand in plain "
        "torch, as a user would write it (`HandStacked`: the batched products, MSE, "
        "uncertainty weighting, one backward pass and torch's fused Adam; no metrics, logging, "
        f"checks or evaluation) take {hand:.0f} µs per job and step, in the same rounds as "
        f"the steps above: mtltrain's stack ({stacked:.0f} µs) runs at {hand / stacked:.0%} of "
        f"its speed, a job alone ({alone:.0f} µs) at {hand / alone:.0%}. A sweep whose "
        f"{steps} steps a job each took only that, with no start-up, evaluation, figures or "
        f"checkpoints, would be {ratio:.1f}× as fast as the default launcher's sweep above.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mnist-root", default=MNIST_ROOT)
    parser.add_argument("--publish", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_stacked.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        root = args.mnist_root
        if not (Path(root) / "MNIST" / "raw").is_dir():
            root = str(write_random(tmp / "mnist", 60000, 10000, 0))
        mnist = mnist_overrides(root)
        steps = {
            FORWARD_STACKED: step_rates("two_slope", [], args.rounds, hand=True),
            "§5C sin-curve shared MLP (vmap)": step_rates(
                "sin", ["dataset=sin_hetero"], args.rounds
            ),
            "§5B MNIST conv net (vmap)": step_rates("mnist", mnist, args.rounds),
        }
        report = {
            "machine": machine(torch.device("cpu")),
            "threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "steps": steps,
            "sweeps": whole_sweeps(args.epochs, tmp),
        }
    args.out.write_text(json.dumps(report, indent=2))
    text = markdown(report)
    print(text)
    if args.publish:
        (REPO / "docs" / "results" / "stacked.md").write_text(text)
        update()


if __name__ == "__main__":
    main()
