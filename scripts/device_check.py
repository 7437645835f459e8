"""The GPU check: what needs a CUDA GPU, run in one go and written up as docs/results/gpu.md.

    bash scripts/device_check.sh              # on a GPU machine (it installs what is missing)
    bash scripts/device_check.sh --dry-run    # the same parts on the CPU, tiny: gpu.md elsewhere

Four parts, each a list of commands under its own time limit. A part that fails (a command's
exit status, its time limit, or a check of what it measured) is reported with why, the others
still run, and the script exits with status 1.

- tests: the CUDA-marked tests (`pytest -m cuda` on the test files that mark any).
- bench: the MNIST and two-slope rows of scripts/bench.py on the GPU.
- stacked: scripts/bench_stacked.py on the GPU, 50 epochs a job (the CPU page
  docs/results/stacked.md has 1500) so that the part fits its limit: the default launcher's
  sweep of N = 16 jobs against a stacked sweep of N = 64, eager and with
  trainer.compile=reduce-overhead (the compiled step replayed as CUDA graphs), and their steps.
- ranks: scripts/bench_ranks.py as one process and under torchrun with one process per GPU
  (NCCL), its first step compared and its step times; and scripts/all_reduce_check.py under
  the same torchrun. A run of one process joins no process group (mtltrain.processes.launched),
  so on one GPU the all_reduce check is what shows that NCCL works.

Each part's targets (issue 27: MNIST ≥ 20× the usual way's samples per second; the stacked
sweep ≥ 15× the default launcher's runs per second; the CUDA graphs' gain over the eager
stacked step) are gathered in the page's table of targets; one that is missed is reported
there, and does not fail its part. The limits add up to 9 min 15 s. MNIST: --mnist-root (a
folder holding MNIST/raw), else
random images of its size (mtltrain.data.mnist_mtl.write_random; such a machine has no
download). --dry-run runs every part on the CPU with tiny sizes (torchrun with two gloo
processes, 512 MNIST images, blocks of 1/20 the steps) and writes gpu.md into --out (default:
a new temporary folder), never into docs/results/; tests/test_device_check.py runs it so the
script does not rot. The parts' outputs and logs stay in --work (default: a new temporary
folder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bench
import bench_stacked
import torch
from repro_common import duration

from mtltrain.data.mnist_mtl import write_random
from mtltrain.loop._runtime import machine

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
PUBLISHED = REPO / "docs" / "results"
PAGE = "gpu.md"
TOLERANCE = 1e-6  # one process against torchrun's first step, as tests/test_distributed.py
Command = list[str]


@dataclass(frozen=True)
class Sizes:
    """How big each part runs."""

    rounds: int  # interleaved rounds of the benches
    block_scale: float  # the benches' steps per timed block, × this
    stacked_jobs: int  # the default launcher's sweep in the stacked bench
    stacked_size: int  # the stacked bench's N
    stacked_epochs: int
    compile_mode: str  # the stacked bench's trainer.compile ("": none)
    mnist_images: tuple[int, int]  # train, test: the random stand-in's
    limit_scale: float  # each part's time limit × this


GPU_SIZES = Sizes(
    rounds=5,
    block_scale=1.0,
    stacked_jobs=16,
    stacked_size=64,
    stacked_epochs=50,
    compile_mode="reduce-overhead",
    mnist_images=(60000, 10000),
    limit_scale=1.0,
)
# a CPU shared with other work (a CI machine's) is slow, whatever the sizes
DRY_SIZES = Sizes(
    rounds=1,
    block_scale=0.05,
    stacked_jobs=2,
    stacked_size=2,
    stacked_epochs=1,
    compile_mode="",  # compiling on a CPU takes a minute
    mnist_images=(512, 256),
    limit_scale=3.0,
)


def python(*args: str) -> Command:
    """`args` run by this Python."""
    return [sys.executable, *args]


@dataclass(frozen=True)
class Check:
    """Where and how big the parts run, and where their outputs go."""

    device: str  # cuda, or cpu for a dry run
    sizes: Sizes
    work: Path
    mnist_root: Path
    processes: int  # torchrun's

    @property
    def dry(self) -> bool:
        return self.device == "cpu"

    def bench_options(self) -> list[str]:
        """What scripts/bench.py and bench_stacked.py take alike."""
        s = self.sizes
        return ["--device", self.device, "--rounds", str(s.rounds), "--block-scale",
                str(s.block_scale), "--mnist-root", str(self.mnist_root)]  # fmt: skip

    def torchrun(self, *args: str) -> Command:
        return python(
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={self.processes}",
            *args,
        )


@dataclass(frozen=True)
class Report:
    """A part's tables, and what its measurements got wrong (the part fails if anything)."""

    lines: list[str]
    problems: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)  # rows of the page's table of targets


@dataclass(frozen=True)
class Part:
    name: str
    title: str
    limit_s: float
    commands: Callable[[Check], list[Command]]
    report: Callable[[Check], Report]  # read from the outputs the commands left in check.work
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's


@dataclass(frozen=True)
class Outcome:
    part: Part
    commands: list[Command]
    limit_s: float
    seconds: float
    failure: str | None  # why the part failed; None: it passed
    lines: list[str]
    targets: list[str] = field(default_factory=list)


# --- the parts ---------------------------------------------------------------------------------


def cuda_test_files() -> list[Path]:
    """The test files that mark a test (or themselves) `cuda`."""
    return sorted(p for p in (REPO / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())


def test_commands(check: Check) -> list[Command]:
    files = [str(p.relative_to(REPO)) for p in cuda_test_files()]
    options = ["-m", "cuda", "-n", "0", "-p", "no:cacheprovider"]
    return [python("-m", "pytest", *options, f"--junitxml={check.work / 'tests.xml'}", *files)]


def test_report(check: Check) -> Report:
    """A row per CUDA-marked test; a failure or error fails the part, and so does a skip on a
    GPU (the dry run's CPU skips them all)."""
    lines = ["| test | outcome | seconds |", "|---|---|---|"]
    problems = []
    for case in ET.parse(check.work / "tests.xml").iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}.py::{case.get('name')}"
        # junit's elements: <failure>, <error> or <skipped> in a test that did not pass
        found = {child.tag: child.get("message", "") for child in case}
        tag = next((t for t in ("failure", "error", "skipped") if t in found), None)
        outcome = "passed" if tag is None else f"{tag}: {found[tag]}"
        lines.append(f"| {name} | {outcome} | {float(case.get('time', 'nan')):.1f} |")
        if tag in ("failure", "error") or (tag == "skipped" and not check.dry):
            problems.append(f"{name}: {outcome}")
    if len(lines) == 2:
        problems.append("no CUDA-marked test was found")
    return Report(lines, problems)


def bench_commands(check: Check) -> list[Command]:
    return [
        python("scripts/bench.py", "--only", "mnist,two_slope", *check.bench_options(),
                     "--out", str(check.work / "bench.json"))
    ]  # fmt: skip


MNIST_TARGET, STACKED_TARGET = 20.0, 15.0  # × the usual way, × the default launcher


def target_row(what: str, value: float, target: float | None) -> str:
    """A row of the table of targets: what, measured, target, whether met."""
    if target is None:
        return f"| {what} | {value:.2f}× | – | – |"
    return f"| {what} | {value:.2f}× | ≥ {target:g}× | {'met' if value >= target else 'MISSED'} |"


def bench_report(check: Check) -> Report:
    report = json.loads((check.work / "bench.json").read_text())
    rates = [r for section in ("mnist", "two_slope") for r in report[section]["rates"].values()]
    problems = [] if all(r > 0 and math.isfinite(r) for r in rates) else ["a rate is not > 0"]
    ratios = report["mnist"]["ratios"]
    best = max((k for k in ratios if k.startswith("mtltrain, ") and "bf16" not in k),
               key=ratios.__getitem__)  # fmt: skip
    what = f"MNIST samples/s, {best} ÷ the usual way at as many threads"
    targets = [target_row(what, ratios[best], MNIST_TARGET)]
    return Report(bench.rate_table(report), problems, targets)


def stacked_commands(check: Check) -> list[Command]:
    s = check.sizes
    compiled = ["--compile", s.compile_mode] if s.compile_mode else []
    return [
        python("scripts/bench_stacked.py", "--jobs", str(s.stacked_jobs), "--sizes",
               str(s.stacked_size), "--epochs", str(s.stacked_epochs), *compiled,
               *check.bench_options(), "--out", str(check.work / "stacked.json"))
    ]  # fmt: skip


def stacked_report(check: Check) -> Report:
    report = json.loads((check.work / "stacked.json").read_text())
    (sweeps,) = report["sweeps"]  # one epoch count
    lines = [
        "Whole sweeps of the §5A two-slope model:",
        *bench_stacked.sweep_table(sweeps),
        "",
        f"Steps (µs per job and step; medians of {report['rounds']} interleaved rounds):",
        "",
        *bench_stacked.step_table(report["steps"]),
        *bench_stacked.hand_written(report),
    ]
    n = check.sizes.stacked_size
    targets = [
        target_row(f"runs/s of the {name} sweep ÷ the default launcher's", row["ratio"],
                   STACKED_TARGET if name.startswith(f"stacked, N = {n}") else None)
        for name, row in sweeps["rows"].items() if name.startswith("stacked")
    ]  # fmt: skip
    steps = report["steps"][bench_stacked.FORWARD_STACKED]
    mode = check.sizes.compile_mode
    if mode:
        gain = steps[f"N = {n}"] / steps[bench_stacked.compiled_label(n, mode)]
        targets.append(target_row(f"§5A step at N = {n}, compile={mode} ÷ eager", gain, None))
    else:
        targets.append(f"| §5A step at N = {n}, compiled ÷ eager | not measured | – | – |")
    return Report(lines, targets=targets)


# one process against torchrun: a gradient-based strategy (its Jacobian goes over the ranks) on
# the two-slope data's shared MLP, STEPS steps per timed block
RANKS_RUN = ["model=sin_hetero", "weighting=mgda", "trainer.deterministic=true"]
RANKS_STEPS = 200
WAYS = ("one", "torchrun")


def rank_commands(check: Check) -> list[Command]:
    steps = str(max(1, round(RANKS_STEPS * check.sizes.block_scale)))
    run = [*RANKS_RUN, f"trainer.device={check.device}"]
    one, ranks = (str(check.work / f"ranks_{way}.json") for way in WAYS)
    return [
        python("scripts/bench_ranks.py", one, steps, *run),
        check.torchrun("scripts/bench_ranks.py", ranks, steps, *run),
        check.torchrun(
            "scripts/all_reduce_check.py", str(check.work / "all_reduce.json"), check.device
        ),
    ]


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        return math.inf
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def rank_report(check: Check) -> Report:
    """A row per way; torchrun's first step must be one process's to TOLERANCE; the
    all_reduce must sum right."""
    found = {}
    for way in WAYS:
        out = check.work / f"ranks_{way}.json"
        found[way] = (json.loads(out.read_text()), torch.load(out.with_suffix(".pt")))
    (one, one_params), (ranks, ranks_params) = (found[way] for way in WAYS)
    pairs = zip(one["first_step"]["losses"], ranks["first_step"]["losses"], strict=True)
    losses = max(abs(a - b) for a, b in pairs)
    params = largest_difference(one_params, ranks_params)
    lines = [
        f"`{' '.join(RANKS_RUN)}`:",
        "",
        "| way | processes (backend) | ms per step | first step's total loss "
        "| largest difference from one process after the first step |",
        "|---|---|---|---|---|",
    ]
    for way, (result, _) in found.items():
        label = "one process" if way == "one" else f"torchrun --nproc_per_node={check.processes}"
        backend = result["backend"] or "no process group"
        differs = "–" if way == "one" else f"losses {losses:.2g}, parameters {params:.2g}"
        lines.append(
            f"| {label} | {result['processes']} ({backend}) | "
            f"{result['ms_per_step']:.3g} | {result['first_step']['total']:.6g} | "
            f"{differs} |"
        )
    problems = []
    if not max(losses, params) <= TOLERANCE:
        problems.append(
            f"torchrun's first step is {max(losses, params):.3g} from one "
            f"process's (tolerance {TOLERANCE:g})"
        )
    collective = json.loads((check.work / "all_reduce.json").read_text())
    lines += [
        "",
        "| all_reduce of 1 MiB under the same torchrun | backend | sum | µs |",
        "|---|---|---|---|",
        f"| {collective['processes']} process(es) | {collective['backend']} | "
        f"{'right' if collective['sum_right'] else 'WRONG'} | "
        f"{collective['us_per_all_reduce']:.0f} |",
    ]
    if not collective["sum_right"]:
        problems.append(f"all_reduce over {collective['backend']} summed wrong")
    return Report(lines, problems)


PARTS = [
    Part("tests", "the CUDA-marked tests", 140, test_commands, test_report),
    Part(
        "bench",
        "the MNIST and two-slope rows of scripts/bench.py",
        75,
        bench_commands,
        bench_report,
    ),
    Part(
        "stacked",
        "the stacked bench, scripts/bench_stacked.py",
        280,
        stacked_commands,
        stacked_report,
    ),
    Part(
        "ranks",
        "torchrun against one process",
        60,
        rank_commands,
        rank_report,
        env={"OMP_NUM_THREADS": "1"},
    ),
]


# --- running -----------------------------------------------------------------------------------


def without_paths(text: str) -> str:
    """`text` with every absolute folder replaced by "…/" (no machine's paths in the page)."""
    return re.sub(r"(?<![\w.])/(?:[\w.+-]+/)+", "…/", text)


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "(no output)")[:300]


def descendants(pid: int) -> list[int]:
    """The processes that `pid` started, and theirs, ... (Linux's /proc)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children + [d for c in children for d in descendants(c)]


def kill_all(pid: int) -> None:
    """SIGKILL to `pid`'s process group and to every process below it, also those in sessions
    of their own (torchrun's workers: with its agent gone they would wait forever)."""
    below = descendants(pid)
    os.killpg(pid, signal.SIGKILL)
    for other in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(other, signal.SIGKILL)


def run_command(command: Command, seconds: float, env: dict[str, str], log: Path) -> str | None:
    """Run `command` in the repository, its output appended to `log`, for at most `seconds`
    (then it and every process it started are killed): why it failed, or None."""
    with log.open("a") as out:
        print(f"+ {shlex.join(command)}", file=out, flush=True)
        with subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ) as proc:
            try:
                status = proc.wait(timeout=max(seconds, 0))
            except subprocess.TimeoutExpired:
                kill_all(proc.pid)
                proc.wait()
                return "stopped at the part's time limit"
            except KeyboardInterrupt:  # Ctrl-C reaches this process alone: stop the command too
                kill_all(proc.pid)
                raise
    return f"exit status {status}: {last_line(log)}" if status else None


def script(command: Command) -> str:
    """What `command` runs: the module after -m, else its script, else the program."""
    if "-m" in command:
        return command[command.index("-m") + 1]
    if any(a.endswith(".py") for a in command):
        return next(a for a in command if a.endswith(".py"))
    return Path(command[0]).name


def run_part(part: Part, check: Check) -> Outcome:
    """The part's commands one after another within its time limit, then its report."""
    commands = part.commands(check)
    limit = part.limit_s * check.sizes.limit_scale
    log = check.work / f"{part.name}.log"
    env = {"PYTHONUNBUFFERED": "1", **part.env}
    start = time.monotonic()
    failure = None
    for command in commands:
        why = run_command(command, limit - (time.monotonic() - start), env, log)
        if why:
            failure = f"{script(command)}: {why}"
            break
    seconds = time.monotonic() - start
    lines: list[str] = []
    targets: list[str] = []
    if failure is None:
        try:
            report = part.report(check)
        except Exception as e:  # whatever is wrong with one part's outputs fails it alone
            failure = f"its output could not be read ({type(e).__name__}: {e})"
        else:
            lines, targets = report.lines, report.targets
            failure = "; ".join(report.problems) or None
    if failure is not None:
        failure = without_paths(failure)
    return Outcome(part, commands, limit, seconds, failure, lines, targets)


def run_all(parts: list[Part], check: Check) -> list[Outcome]:
    """Every part, whatever the others' outcomes, each said on stderr."""
    outcomes = []
    for part in parts:
        print(f"device_check: {part.name} ...", file=sys.stderr, flush=True)
        outcomes.append(run_part(part, check))
        failure = outcomes[-1].failure
        print(f"device_check: {part.name}: {failure or 'passed'}", file=sys.stderr, flush=True)
    return outcomes


def shown(command: Command, check: Check) -> str:
    """`command` as the page shows it: `python`, and WORK and MNIST for the folders."""
    text = shlex.join(["python", *command[1:]])
    text = text.replace(str(check.work), "WORK").replace(str(check.mnist_root), "MNIST")
    return without_paths(text)


def page(outcomes: list[Outcome], check: Check, argv: list[str], mnist: str, seconds: float) -> str:
    """docs/results/gpu.md: the machine, the parts' outcomes, then each part's tables."""
    m = machine(torch.device(check.device))
    title = "# GPU check" + (
        " (a dry run on the CPU: tiny sizes, numbers that mean nothing)" if check.dry else ""
    )
    command = without_paths(shlex.join(["bash", "scripts/device_check.sh", *argv]))
    lines = [
        title,
        "",
        f"Machine: {m['cpu']}, {m['cores']} CPU cores, {m['gpu'] or 'no GPU'}, "
        f"torch {m['torch']}, Python {m['python']}; device {check.device}.  ",
        f"MNIST: {mnist}.  ",
        f"Wall time: {duration(seconds)}; finished {time.strftime('%Y-%m-%d %H:%M')}.  ",
        f"Run: `{command}` (WORK: the folder of the parts' outputs; MNIST: the data's).",
        "",
        "| part | what | outcome | time | limit |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        outcome = "passed" if o.failure is None else f"FAILED: {o.failure}"
        lines.append(
            f"| {o.part.name} | {o.part.title} | {outcome} | {o.seconds:.0f} s | "
            f"{o.limit_s:.0f} s |"
        )
    targets = [row for o in outcomes for row in o.targets]
    if targets:
        lines += ["", "Targets (issue 27; a missed one fails no part):", "",
                  "| measured | value | target | |", "|---|---|---|---|", *targets]  # fmt: skip
    for o in outcomes:
        lines += ["", f"## {o.part.name}: {o.part.title}", ""]
        lines += [f"    {shown(c, check)}" for c in o.commands]
        if o.lines:
            lines += ["", *o.lines]
    return "\n".join(lines) + "\n"


# --- the command -------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="every part on the CPU at tiny sizes (gpu.md goes to --out)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for gpu.md (default: docs/results; a dry run's: a new temporary folder)",
    )
    parser.add_argument("--work", type=Path, help="folder for the parts' outputs and logs")
    parser.add_argument("--mnist-root", type=Path, help="a folder holding MNIST/raw")
    args = parser.parse_args(argv)
    if args.dry_run and args.out and args.out.resolve() == PUBLISHED.resolve():
        parser.error(f"--dry-run never writes {PUBLISHED.relative_to(REPO)}: give another --out")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible: run it on a GPU machine, or with --dry-run")
    if args.mnist_root and not (args.mnist_root / "MNIST" / "raw").is_dir():
        parser.error(f"--mnist-root {args.mnist_root}: no MNIST/raw folder in it")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every part; 0 if all passed, else 1."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.monotonic()
    sizes = DRY_SIZES if args.dry_run else GPU_SIZES
    work = (args.work or Path(tempfile.mkdtemp(prefix="device_check_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.mnist_root:
        root, mnist = args.mnist_root.resolve(), "the files in --mnist-root"
    else:
        train, test = sizes.mnist_images
        root = write_random(work / "mnist", train, test)
        mnist = f"random images of its size ({train:,} + {test:,}; no download)"
    check = Check(
        device="cpu" if args.dry_run else "cuda",
        sizes=sizes,
        work=work,
        mnist_root=root,
        processes=2 if args.dry_run else torch.cuda.device_count(),
    )
    outcomes = run_all(PARTS, check)
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu_check_")) if args.dry_run else PUBLISHED)
    out.mkdir(parents=True, exist_ok=True)
    (out / PAGE).write_text(page(outcomes, check, argv, mnist, time.monotonic() - started))
    print(f"device_check: wrote {out / PAGE}; outputs and logs in {work}", file=sys.stderr)
    return 1 if any(o.failure for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
