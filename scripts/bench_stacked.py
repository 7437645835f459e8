"""Stacked sweeps (`hydra/launcher=vectorized`) against the same sweeps on Hydra's default
launcher, on this machine, in one run.

    python scripts/bench_stacked.py [--epochs 1500] [--publish]
    python scripts/bench_stacked.py --jobs 16 --epochs 300,1500 --publish   # the issue's two rows
    python scripts/bench_stacked.py --device cuda --jobs 16 --sizes 64 --epochs 50 \
        --compile reduce-overhead                                # on a GPU (CUDA graphs)

1. Whole sweeps of the §5A two-slope model (seeds 0…N−1, the default strategy), each a whole
   `mtltrain -m` process: N = 16 on the default launcher (one job after another, each on the
   thread count its own run picks) and stacked with N = 4, 16 and 64. Runs per second, and
   the ratio to the default launcher's.
2. Steps: one training step of a job alone (`PerJobStep.train_step`) against a stacked step of
   N jobs (`StackedStep.train_step`) per job, for the §5A, sin-curve (§5C) and §5B MNIST
   models at N = 4 and 16: medians of interleaved rounds. The §5B model reads the shared
   MNIST copy where it is present, else random images of MNIST's shape.
3. A hand-written stacked loop: the 16 §5A jobs stacked by hand in plain torch as a user
   would write it (`HandStacked`, the issue's prototype: no metrics, logging or checks), in
   the same rounds as the §5A steps; and the whole-sweep ratio a sweep of its step speed,
   with nothing else, would reach.

`--jobs N` measures one N instead: the default launcher's sweep of N jobs against the
stacked sweep of N, the steps at N and the hand-written loop of N; `--sizes` gives the N of
the stacked sweeps and steps instead (the hand-written loop: the largest), the default
launcher's runs per second the base of every ratio. `--compile MODE` adds a stacked sweep and
a §5A step with `trainer.compile=MODE` at the largest N (the sweep's wall time includes the
compilation; `reduce-overhead` on a GPU: CUDA graphs of the compiled step). `--device` picks
where every run and step trains (default: the CPU, which `--publish` requires).
`--publish` writes docs/results/stacked.md (and the section of docs/scaling-out.md that embeds it).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench import MTLTRAIN, interleave, sync, timed_process
from repro_common import MNIST_ROOT, REPO, mnist_overrides
from update_readme import update

from mtltrain.build import build_job
from mtltrain.config._compose import compose_checked
from mtltrain.data.mnist_mtl import write_random
from mtltrain.loop._job_step import PerJobStep
from mtltrain.loop._runtime import machine, select_device
from mtltrain.loop._stacked import StackedStep

FORWARD_STACKED = "§5A two-slope MLPs (forward_stacked)"
SWEEP_JOBS = 16  # the default launcher's sweep, and the hand-written stack
SWEEP_SIZES, STEP_SIZES = (4, 16, 64), (4, 16)  # the N of the stacked sweeps and steps


def hand_label(jobs: int) -> str:
    return f"by hand, N = {jobs}"


def default_label(jobs: int) -> str:
    return f"default launcher, {jobs} jobs"


def compiled_label(n: int, mode: str) -> str:
    return f"N = {n}, compile={mode}"


def sweep_seconds(
    jobs: int, epochs: int, stacked: bool, folder: Path, device: str, compile_mode: str = ""
) -> float:
    launcher = ["hydra/launcher=vectorized", f"hydra.launcher.group_size={jobs}"]
    compiled = [f"trainer.compile={compile_mode}"] if compile_mode else []
    command = [
        MTLTRAIN,
        "-m",
        f"seed=range({jobs})",
        f"trainer.epochs={epochs}",
        f"trainer.device={device}",
        f"hydra.sweep.dir={folder}",
        *(launcher if stacked else []),
        *compiled,
        "trainer.progress=false",
    ]
    return timed_process(command)


def whole_sweeps(
    epochs: int, tmp: Path, device: str, jobs: int, sizes: tuple[int, ...], compile_mode: str = ""
) -> dict:
    """The default launcher's sweep of `jobs` jobs, then a stacked sweep of each N in `sizes`,
    and with `compile_mode` one of the largest N with trainer.compile=`compile_mode`."""
    default = sweep_seconds(jobs, epochs, False, tmp / "default", device)
    rows = {default_label(jobs): {"jobs": jobs, "seconds": default}}
    for n in sizes:
        rows[f"stacked, N = {n}"] = {
            "jobs": n,
            "seconds": sweep_seconds(n, epochs, True, tmp / f"stacked{n}", device),
        }
    if compile_mode:
        n = max(sizes)
        rows[f"stacked, {compiled_label(n, compile_mode)}"] = {
            "jobs": n,
            "seconds": sweep_seconds(n, epochs, True, tmp / "compiled", device, compile_mode),
        }
    base = jobs / default
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

    def __init__(
        self,
        n: int,
        tasks: int = 2,
        hidden: int = 512,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
    ) -> None:
        self.n, self.tasks, self.batch_size = n, tasks, batch_size
        nets = n * tasks
        shapes = [(nets, 1, hidden), (nets, 1, hidden), (nets, hidden, 1), (nets, 1, 1)]
        self.layers = [(torch.rand(s, device=device) - 0.5).requires_grad_() for s in shapes]
        self.log_var = torch.zeros(n, tasks, device=device, requires_grad=True)
        self.optimizer = torch.optim.Adam([*self.layers, self.log_var], lr=3e-4, fused=True)
        self.x = torch.randn(n, 300, 1, device=device)
        self.y = torch.randn(n, tasks, 300, 1, device=device)
        self.jobs = torch.arange(n, device=device)[:, None]

    def losses(self, index: torch.Tensor) -> torch.Tensor:
        """[jobs, tasks] MSE, job i on its samples index[i]."""
        w1, b1, w2, b2 = self.layers
        x, y = self.x[self.jobs, index], self.y[self.jobs, :, index].transpose(1, 2)
        h = x.unsqueeze(1).expand(-1, self.tasks, -1, -1).flatten(0, 1)
        h = torch.relu(torch.baddbmm(b1, h, w1))
        out = torch.baddbmm(b2, h, w2).unflatten(0, (self.n, self.tasks))
        return (out - y).square().mean(dim=(2, 3))

    def step(self) -> None:
        index = torch.randint(self.x.shape[1], (self.n, self.batch_size), device=self.x.device)
        total = 0.5 * torch.exp(-self.log_var) * self.losses(index) + 0.5 * self.log_var
        self.optimizer.zero_grad()
        total.sum().backward()
        self.optimizer.step()


def jobs(overrides: list[str], n: int, device: str) -> list:
    """`n` jobs of the config `overrides` give, with seeds 0…n−1: composed once (Hydra's
    composition is most of a small job's build), the seed set in a copy per job; its
    interpolations (`dataset.seed: ${seed}`) resolve as they would in a config composed with
    `seed=<s>`."""
    cfg = compose_checked([*overrides, f"trainer.device={device}"])
    built = []
    for s in range(n):
        own = copy.deepcopy(cfg)
        own.seed = s
        built.append(build_job(own))
    return built


def step_rates(
    name: str,
    overrides: list[str],
    rounds: int,
    device: str = "cpu",
    sizes: tuple[int, ...] = STEP_SIZES,
    hand: int = 0,
    block_scale: float = 1.0,
    compile_mode: str = "",
) -> dict:
    """Per job and step: µs alone (on the threads its run picks) and stacked at each N in
    `sizes` (on every core, as a stack runs; built directly, so a model the launcher would run
    alone on a CPU is measured stacked too), and with `hand` a `HandStacked` of that many
    jobs, and with `compile_mode` a stack of the largest N with trainer.compile=`compile_mode`
    (compiled before the rounds); medians of interleaved rounds of blocks of 10 (MNIST) or
    200 steps × `block_scale`."""
    alone = jobs(overrides, 1, device)[0]
    alone_threads = torch.get_num_threads()
    batch = alone.train_split.take(slice(0, alone.batch_size))
    stacks = {f"N = {n}": StackedStep(jobs(overrides, n, device)) for n in sizes}
    if compile_mode:
        n = max(sizes)
        compiled = [*overrides, f"trainer.compile={compile_mode}"]
        stacks[compiled_label(n, compile_mode)] = StackedStep(jobs(compiled, n, device))
    stacked_threads = torch.get_num_threads()
    steps = max(1, round((10 if "mnist" in name else 200) * block_scale))

    def per_job(step: Callable[[], object], threads: int, jobs: int) -> Callable[[], float]:
        """A block of `steps` calls of `step`, on `threads`: seconds per job and step."""

        def block() -> float:
            torch.set_num_threads(threads)
            sync(alone.device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            sync(alone.device)
            return (time.perf_counter() - start) / steps / jobs

        return block

    alone_step = PerJobStep(alone).train_step
    blocks = {"alone": per_job(lambda: alone_step(batch), alone_threads, 1)}
    for label, stack in stacks.items():
        order = torch.arange(stack.first.batch_size, device=stack.train.inputs.device)
        order = order[None].expand(stack.n, -1)
        step = functools.partial(stack.train_step, order)
        blocks[label] = per_job(step, stacked_threads, stack.n)
    if hand:
        hand_step = HandStacked(hand, device=alone.device).step
        blocks[hand_label(hand)] = per_job(hand_step, stacked_threads, hand)
    medians = interleave(blocks, rounds)
    return {
        **{k: v * 1e6 for k, v in medians.items()},
        "alone threads": alone_threads,
        "batches per epoch": alone.batches_per_epoch,
    }


def markdown(report: dict) -> str:
    """The page docs/results/stacked.md (a CPU's measurements)."""
    sweeps, m = report["sweeps"], report["machine"]
    compiled = f" --compile {report['compile']}" if report.get("compile") else ""
    epochs = ",".join(str(s["epochs"]) for s in sweeps)
    one_n = f" --jobs {report['jobs']}" if report.get("only_jobs") else ""
    lines = [
        "# Stacked sweeps",
        "",
        f"Measured by `python scripts/bench_stacked.py{one_n} --epochs {epochs}{compiled} "
        "--publish` "
        f"on {m['cpu']} ({m['cores']} cores), torch {m['torch']}, {report['threads']} CPU "
        "threads for the stacks and the step measurements.",
        "",
        "**Whole sweeps** of the §5A two-slope model (the default strategy, seeds 0…N−1), "
        "each a whole `mtltrain -m` process: the default "
        "launcher runs one job after another (each run picks one thread, its step being "
        "small); `hydra/launcher=vectorized` trains the N jobs stacked in one process, on "
        "every core, each in its own folder.",
        *(line for sweep in sweeps for line in sweep_table(sweep)),
        "",
        "**Steps**: µs of training step per job, alone (`PerJobStep.train_step`) and stacked "
        "(`StackedStep.train_step` over N jobs, divided by N); medians of "
        f"{report['rounds']} interleaved rounds.",
        "",
        *step_table(report["steps"]),
        *hand_written(report),
    ]
    lines += [
        "",
        "On this CPU a stack of the §5B conv net is slower per job than one job at a time "
        "(vmap runs its convolutions as grouped ones), so the launcher runs such jobs one "
        "after another on a CPU, with a log line that says so.",
    ]
    return "\n".join(lines) + "\n"


def sweep_table(sweeps: dict) -> list[str]:
    """A row per whole sweep of one epoch count: its wall time, runs per second and ratio to
    the default launcher's."""
    lines = [
        "",
        f"{sweeps['epochs']} epochs a job:",
        "",
        "| sweep | jobs | wall time | runs per second | × default launcher |",
        "|---|---|---|---|---|",
    ]
    for name, row in sweeps["rows"].items():
        lines.append(
            f"| {name} | {row['jobs']} | {row['seconds']:.1f} s | {row['runs_per_s']:.3f} | "
            f"{row['ratio']:.1f}× |"
        )
    return lines


def step_table(steps: dict) -> list[str]:
    """A row per model: µs per job and step alone and at each stacked N (× alone)."""
    sizes = [k for k in next(iter(steps.values())) if k.startswith("N = ")]
    lines = [
        "| model | alone (its threads) | " + " | ".join(f"stacked {n}" for n in sizes) + " |",
        "|---|---|" + "---|" * len(sizes),
    ]
    for name, rates in steps.items():
        a = rates["alone"]
        cells = [f"{rates[k]:.0f} µs ({a / rates[k]:.2g}×)" if k in rates else "–" for k in sizes]
        alone = f"{a:.0f} µs ({rates['alone threads']})"
        lines.append(f"| {name} | {alone} | {' | '.join(cells)} |")
    return lines


def hand_written(report: dict) -> list[str]:
    """The hand-written stacked loop against mtltrain's stack, and the sweep ratio its step
    speed alone would give."""
    rates, jobs = report["steps"][FORWARD_STACKED], report["jobs"]
    sweeps = max(report["sweeps"], key=lambda sweep: sweep["epochs"])
    n = report.get("hand", jobs)  # the stack of the hand-written loop's N
    hand, stacked, alone = rates[hand_label(n)], rates[f"N = {n}"], rates["alone"]
    steps = sweeps["epochs"] * rates["batches per epoch"]
    ratio = sweeps["rows"][default_label(jobs)]["seconds"] / (jobs * steps * hand * 1e-6)
    compiled = [k for k in rates if k.startswith(f"N = {n}, compile=")]
    faster = "".join(
        f" The stack compiled ({k.split(', ', 1)[1]}: {rates[k]:.0f} µs) runs at "
        f"{hand / rates[k]:.0%} of the hand-written loop's speed, {stacked / rates[k]:.2f}× "
        "the eager stack's."
        for k in compiled
    )
    return [
        "",
        f"**A hand-written stacked loop**: the {n} §5A jobs stacked by hand in plain "
        "torch, as a user would write it (`HandStacked`: the batched products, MSE, "
        "uncertainty weighting, one backward pass and torch's fused Adam; no metrics, logging, "
        f"checks or evaluation) take {hand:.0f} µs per job and step, in the same rounds as "
        f"the steps above: mtltrain's stack ({stacked:.0f} µs) runs at {hand / stacked:.0%} of "
        f"its speed, a job alone ({alone:.0f} µs) at {hand / alone:.0%}. A sweep whose "
        f"{steps} steps a job each took only that, with no start-up, evaluation, figures or "
        f"checkpoints, would be {ratio:.1f}× as fast as the default launcher's sweep above."
        + faster,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=(1500,),
        help="epochs a job of the whole sweeps, comma-separated for several (default: 1500)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mnist-root", default=MNIST_ROOT)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--jobs", type=int, help="measure only this N (default: all)")
    parser.add_argument(
        "--sizes",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        help="comma-separated N of the stacked sweeps and steps (default: --jobs, else all)",
    )
    parser.add_argument(
        "--compile",
        default="",
        choices=("", "default", "reduce-overhead", "max-autotune"),
        help="also a sweep and a step of the largest N with trainer.compile=MODE",
    )
    parser.add_argument(
        "--block-scale",
        type=float,
        default=1.0,
        help="each timed block of steps runs this many times its steps, at least one",
    )
    parser.add_argument("--publish", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench_stacked.json"))
    args = parser.parse_args()
    if args.publish and args.device != "cpu":
        parser.error("--publish writes the CPU's page docs/results/stacked.md: use --device cpu")
    jobs = args.jobs or SWEEP_JOBS
    sweep_sizes, step_sizes = ((jobs,), (jobs,)) if args.jobs else (SWEEP_SIZES, STEP_SIZES)
    if args.sizes:
        sweep_sizes = step_sizes = args.sizes
    hand = max(step_sizes)
    rates = functools.partial(
        step_rates,
        rounds=args.rounds,
        device=args.device,
        sizes=step_sizes,
        block_scale=args.block_scale,
    )
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        root = args.mnist_root
        if not (Path(root) / "MNIST" / "raw").is_dir():
            root = str(write_random(tmp / "mnist", 60000, 10000, 0))
        mnist = mnist_overrides(root)
        steps = {
            FORWARD_STACKED: rates("two_slope", [], hand=hand, compile_mode=args.compile),
            "§5C sin-curve shared MLP (vmap)": rates("sin", ["dataset=sin_hetero"]),
            "§5B MNIST conv net (vmap)": rates("mnist", mnist),
        }
        report = {
            "machine": machine(select_device(args.device)),
            "threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "jobs": jobs,
            "only_jobs": bool(args.jobs),
            "hand": hand,
            "compile": args.compile,
            "steps": steps,
            "sweeps": [
                whole_sweeps(e, tmp / f"e{e}", args.device, jobs, sweep_sizes, args.compile)
                for e in args.epochs
            ],
        }
    args.out.write_text(json.dumps(report, indent=2))
    text = markdown(report)
    print(text)
    if args.publish:
        (REPO / "docs" / "results" / "stacked.md").write_text(text)
        update()


if __name__ == "__main__":
    main()
