"""mtltrain-compare: which weighting strategy suits a data set? Every chosen strategy × seeds,
and each task trained alone, then a table and plots.

    mtltrain-compare --dataset multi_mnist --budget 2h --out runs/which
    mtltrain-compare --dataset mnist_mtl --strategies fixed,equal,mgda,famo --seeds 3 --epochs 2
    mtltrain-compare --config-dir conf --dataset houses --budget 30m --out runs/houses

Runs
  Two Hydra multiruns into --out: multi_task/ (every strategy × seed=0..N−1) and single_task/
  (weighting=fixed, dataset.tasks=[<task>] for each task × seed), on the stacked launcher
  (hydra/launcher=vectorized: jobs that differ in tensors only train together, the others one
  after another) unless --override hydra/launcher=... names another. Every run reports its
  last evaluation (trainer.select=last). A data set whose `tasks` is not a list of task names
  has no single-task runs: Δm% is then against the reference strategy.
Budget
  --budget 2h (30m, 1h30m, 90s): a probe (into --out/.probe/) times a sweep of one epoch of the
  reference strategy and a few steps of each strategy; the plan takes the most epochs, up to
  --epochs or the trainer's, that fit in what the probe left of the budget, leaving out the
  slowest strategies where one epoch of all does not (fixed and equal are kept), and those
  whose probe run failed (mtltrain-report --out/.probe/steps says why). Without
  --budget: every strategy, --epochs or the trainer's. The plan is said in one line before
  anything trains.
Resume
  The same command again continues the comparison in --out: finished runs kept, stopped ones
  resumed from their checkpoints, failed ones run again from the start (their folders moved
  to --out/.failed_before_resume/), the plan kept.
Output
  <dataset>_strategies.md (the table: each task's test metric, Δm% against single-task with
  its 95% interval, its difference from `fixed`'s, or `equal`'s, † where Welch's t-test at 5%
  tells them apart, the rank, the step time × the reference's; the protocol and the command),
  <dataset>_delta_m.png, <dataset>_pareto.png (two tasks), mtltrain-report's report.md,
  report.csv and plots, and compare.json (the arguments, the plan, the wall time).
Errors
  An unknown strategy, a list without fixed or equal, a bad --budget, --seeds or --epochs, a
  data set or override that does not compose or does not build (its files missing), an
  override of a setting the comparison sets (dataset, weighting, seed, trainer.epochs, ...),
  an --out that holds something else: one line on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mtltrain.build import build_data
from mtltrain.compare import _sweeps as sweeps
from mtltrain.compare._budget import PROBE_STEPS, Plan, Probe, fit, parse_budget, said
from mtltrain.compare._page import document
from mtltrain.compare._table import REFERENCES, Comparison
from mtltrain.config import compose_checked, config_dir
from mtltrain.errors import ConfigError, Interrupted, MtlError, OneLineParser
from mtltrain.outputs import _run_folder as rundir
from mtltrain.outputs._results import RESULTS_FILE, read_results
from mtltrain.processes import importable_from_here
from mtltrain.report import SINGLE_TASK, ReportError, write_report

PROG = "mtltrain-compare"
RECORD = "compare.json"
KEPT = ("dataset", "strategies", "seeds", "epochs", "budget", "override", "config_dir")
# the settings the comparison sets in every run, and the option that chooses each
OWN_SETTINGS = {
    "dataset": "--dataset", "weighting": "--strategies", "seed": "--seeds",
    "trainer.epochs": "--epochs or --budget", "dataset.tasks": "the single-task runs",
    "trainer.select": "the last evaluation", "trainer.eval_every": "the last evaluation",
    "hydra.sweep.dir": "--out", "resume_sweep": "the same command again",
}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="multi_mnist", help="dataset= (default: %(default)s)")
    p.add_argument("--strategies", help="comma-separated weighting configs, fixed or equal among "
                   "them (default: every one)")  # fmt: skip
    p.add_argument("--seeds", type=int, default=3, help="seeds per setting (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="epochs per run, the most --budget may take "
                   "(default: the trainer config's)")  # fmt: skip
    p.add_argument("--budget", help="wall time for the whole comparison: 2h, 30m, 1h30m, 90s")
    p.add_argument("--out", type=Path, help="the output folder (default: runs/compare_<dataset>)")
    p.add_argument("--config-dir", type=Path, help="a folder of your own configs, as mtltrain's")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="one more mtltrain override for every run (repeatable)")  # fmt: skip
    p.add_argument("--threads", type=int, help="intra-op threads per run (default: torch's)")
    p.add_argument("--tables-only", action="store_true",
                   help="the table and plots of the runs in --out; no training")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None, command: str | None = None) -> None:
    """The command; `command`: the command line the page publishes (default: this one)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    args.command = command or sweeps.command_line([PROG], argv)
    try:
        with sweeps.threads(args.threads):
            compare(args)
    except (MtlError, ReportError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(getattr(e, "exit_code", 2)) from None
    except KeyboardInterrupt:
        print(f"{PROG}: stopped; the same command continues the comparison", file=sys.stderr)
        raise SystemExit(130) from None


def compare(args: argparse.Namespace) -> None:
    """Check, plan, run the sweeps, write the table and plots."""
    out: Path = args.out or Path("runs") / f"compare_{args.dataset}"
    importable_from_here()  # the user's own modules, as mtltrain imports them
    arguments = checked_arguments(args)
    before = read_record(out, arguments, args.tables_only)
    if args.tables_only:  # the comparison's own data set and configs, not the defaults
        recorded = before["arguments"]
        args.dataset, args.override = recorded["dataset"], recorded["override"]
        args.config_dir = recorded["config_dir"] and Path(recorded["config_dir"])
    cfg = composed(args)
    tasks = task_names(cfg)
    if args.tables_only:
        record = before
    else:
        strategies = chosen_strategies(args.strategies, args.config_dir)
        if before is None:
            check_data(args.dataset, cfg)
        plan = Plan(**before["plan"]) if before else make_plan(args, cfg, strategies, tasks, out)
        print(f"{PROG}: {plan.line}", flush=True)
        record = run(args, out, arguments, plan, cfg, tasks, before)
    write_tables(out, args.dataset, tasks, record)


def checked_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """What makes the comparison, checked: the arguments the record keeps."""
    for name in ("seeds", "epochs", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name}={value} is not allowed: give a whole number ≥ 1")
    if args.budget is not None:
        parse_budget(args.budget)
    if args.config_dir is not None and not (args.config_dir / ".").is_dir():
        raise ConfigError(f"--config-dir={args.config_dir} is not allowed: no such folder")
    if args.strategies is not None:
        chosen_strategies(args.strategies, args.config_dir)
    for override in args.override:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in OWN_SETTINGS:
            raise ConfigError(
                f"--override={override} is not allowed: {PROG} sets {key} in every run "
                f"({OWN_SETTINGS[key]}); override any other setting"
            )
    kept = {key: getattr(args, key) for key in KEPT}
    kept["config_dir"] = None if args.config_dir is None else str(args.config_dir)
    return kept


def every_strategy(own: Path | None = None) -> list[str]:
    """The weighting configs: mtltrain's and those of the folder `own` (--config-dir)."""
    folders = [config_dir(), *([own] if own else [])]
    return sorted({p.stem for folder in folders for p in (folder / "weighting").glob("*.yaml")})


def chosen_strategies(text: str | None, own: Path | None = None) -> list[str]:
    """--strategies as names of weighting configs (mtltrain's or, with --config-dir, one's
    own), fixed or equal among them; every one by default."""
    every = every_strategy(own)
    names = every if text is None else [n.strip() for n in text.split(",")]
    unknown = [n for n in names if n not in every]
    if unknown or not set(REFERENCES) & set(names) or len(set(names)) != len(names):
        what = f"{', '.join(unknown)} unknown" if unknown else "fixed or equal missing, or twice"
        raise ConfigError(
            f"--strategies={text} is not allowed ({what}): give names among {', '.join(every)}, "
            "fixed or equal among them (the reference)"
        )
    return names


def search_path(args: argparse.Namespace) -> list[str]:
    """The override that adds --config-dir to the configs a compose reads."""
    if args.config_dir is None:
        return []
    return [rundir.search_path_override([f"file://{args.config_dir.resolve()}"])]


def composed(args: argparse.Namespace) -> Any:
    """The config of the comparison's first run (a bad data set or override: one line)."""
    return compose_checked([*search_path(args), f"dataset={args.dataset}", *args.override])


def check_data(name: str, cfg: Any) -> None:
    """The data set builds, as every run builds it: a missing file is one line before anything
    runs, not a failure in every run."""
    try:
        build_data(cfg.dataset, cfg.trainer)
    except MtlError:
        raise
    except Exception as e:  # the user's own data set may raise anything
        raise ConfigError(f"--dataset={name} does not build: {type(e).__name__}: {e}") from None


def task_names(cfg: Any) -> list[str] | None:
    """The data set's tasks where its config lists them (single-task runs take one), else
    None."""
    tasks = OmegaConf.to_container(cfg.dataset).get("tasks")
    if isinstance(tasks, list) and all(isinstance(t, str) for t in tasks) and len(tasks) > 1:
        return tasks
    return None


def read_record(out: Path, arguments: dict[str, Any], tables_only: bool) -> dict[str, Any] | None:
    """What an earlier run of this comparison into `out` recorded (None for a new one); `out`
    must hold nothing else, and the comparison of the same arguments."""
    record_file = out / RECORD
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out={out} is not allowed: it is a file, not a folder")
    if not record_file.is_file():
        if tables_only:
            raise ConfigError(f"--out={out} holds no comparison: no {RECORD}")
        if out.exists() and any(p.name != sweeps.PROBE for p in out.iterdir()):  # a probe: ours
            raise ConfigError(
                f"--out={out} is not allowed: it holds files of something else than a "
                "comparison; they are left as they are: name another folder"
            )
        return None
    record = json.loads(record_file.read_text())
    if tables_only:
        return record
    differ = [k for k in KEPT if record["arguments"].get(k) != arguments[k]]
    if differ:
        there = ", ".join(f"{k}={record['arguments'].get(k)!r}" for k in differ)
        raise ConfigError(
            f"--out={out} is not allowed: it holds a comparison of other settings ({there}); "
            "the same command continues it, another --out starts a new one"
        )
    return record


def common_overrides(args: argparse.Namespace, epochs: int) -> list[str]:
    """Every run's: the data set, the seeds, the last evaluation reported (one objective would
    favour its task in the multi-task runs only), the epochs, the user's overrides."""
    seeds = "seed=" + ",".join(str(s) for s in range(args.seeds))
    return [f"dataset={args.dataset}", seeds, "trainer.select=last",
            f"trainer.epochs={epochs}", f"trainer.eval_every={epochs}", *args.override]  # fmt: skip


def launcher(args: argparse.Namespace) -> list[str]:
    """The stacked launcher unless the overrides name one."""
    named = any(o.startswith("hydra/launcher=") for o in args.override)
    return [] if named else ["hydra/launcher=vectorized"]


def make_plan(
    args: argparse.Namespace, cfg: Any, strategies: list[str], tasks: list[str] | None, out: Path
) -> Plan:
    """Every strategy at --epochs (or the trainer's), or what fits --budget."""
    most = args.epochs or int(cfg.trainer.epochs)
    alone = "" if tasks else "; no single-task runs (the data set lists no tasks)"
    if args.budget is None:
        line = (f"{len(strategies)} strategies × {args.seeds} seed(s), {most} epoch(s) per run, "
                f"{len(tasks or [])} task(s) alone{alone}; no --budget")  # fmt: skip
        return Plan(strategies, most, line)
    probe = run_probe(args, strategies, out / sweeps.PROBE)
    runs_alone = len(tasks or []) * args.seeds
    plan = fit(probe, strategies, args.seeds, runs_alone, most, parse_budget(args.budget))
    return Plan(plan.strategies, plan.epochs, plan.line + alone)


def run_probe(args: argparse.Namespace, strategies: list[str], folder: Path) -> Probe:
    """An epoch of the reference and PROBE_STEPS steps of each strategy, one run after another
    (the basic launcher: timings alone), unless an earlier probe in `folder` measured them. A
    run's setup: the reference's sweep of one run, its training aside."""
    saved = folder / "probe.json"
    if saved.is_file():
        return Probe.load(saved)
    if folder.exists():  # a probe stopped before it measured everything: its times are partial
        shutil.rmtree(folder)
    reference = next(s for s in REFERENCES if s in strategies)
    user = [o for o in args.override if not o.startswith(("hydra/launcher", "hydra.launcher."))]
    base = [f"dataset={args.dataset}", "seed=0", "trainer.epochs=1", "trainer.checkpoint=false",
            "trainer.progress=false", *user]  # fmt: skip
    steps = [f"weighting={','.join(strategies)}", f"trainer.limit_batches={PROBE_STEPS}"]
    started = time.perf_counter()
    swept([*base, f"weighting={reference}"], folder / "epoch", args.config_dir)
    sweep_s = time.perf_counter() - started  # a run's wall time as a sweep runs it
    swept([*base, *steps], folder / "steps", args.config_dir)
    wall_s = time.perf_counter() - started
    epoch = finished_results(folder / "epoch")
    if not epoch:
        raise ConfigError(
            f"--dataset={args.dataset}: the probe's run of {reference} did not finish "
            f"(mtltrain-report {folder / 'epoch'} says why): no run of the comparison would"
        )
    first = epoch[0]
    per_step = {r["choices"]["weighting"]: r["train_time_s"] / r["steps"]
                for r in finished_results(folder / "steps")}  # fmt: skip
    base_step = per_step.get(reference) or first["train_time_s"] / first["steps"]
    probe = Probe(
        setup_s=max(0.0, sweep_s - first["train_time_s"]),
        epoch_s=first["train_time_s"],
        ratios={s: t / base_step for s, t in per_step.items()},
        wall_s=wall_s,
    )
    probe.save(saved)
    return probe


def swept(overrides: list[str], folder: Path, config_dir: Path | None) -> int:
    """The sweep's exit status; a signal that stopped it stops the comparison (Interrupted)."""
    code = sweeps.sweep(overrides, folder, config_dir)
    if code > 128:
        raise Interrupted(f"stopped in {folder}: the same command continues the comparison",
                          code - 128)  # fmt: skip
    return code


def finished_results(sweep_dir: Path) -> list[dict[str, Any]]:
    """The results.json of the sweep's completed jobs."""
    return [read_results(job) for job in rundir.jobs_in(sweep_dir)
            if (job / RESULTS_FILE).is_file() and rundir.status(job) == "completed"]  # fmt: skip


def run(
    args: argparse.Namespace,
    out: Path,
    arguments: dict[str, Any],
    plan: Plan,
    cfg: Any,
    tasks: list[str] | None,
    before: dict[str, Any] | None,
) -> dict[str, Any]:
    """Both sweeps (continued where `before` ran them); the record, written before they start
    and after they end."""
    common = [*common_overrides(args, plan.epochs), *launcher(args)]
    record = before or {
        "arguments": arguments,
        "plan": {"strategies": plan.strategies, "epochs": plan.epochs, "line": plan.line},
        "dataset": args.dataset,
        "seeds": args.seeds,
        "epochs": plan.epochs,
        "validation": cfg.trainer.get("validation"),
        "overrides": common,
        "command": args.command,
        "machine": sweeps.machine(args.threads),
        "wall_s": 0.0,
        "finished": None,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_record(out, record)
    started = time.perf_counter()
    sweeps_of = [([f"weighting={','.join(plan.strategies)}", *common], out / sweeps.MULTI)]
    if tasks:
        alone = "dataset.tasks=" + ",".join(f"[{t}]" for t in tasks)
        sweeps_of.append((["weighting=fixed", alone, *common], out / sweeps.SINGLE))
    try:
        for overrides, folder in sweeps_of:
            code = swept(overrides, folder, args.config_dir)
            if code not in (0, sweeps.FAILED_JOBS):
                raise ConfigError(f"the sweep into {folder} did not run (the line above says why)")
    finally:  # a stopped comparison's time counts in its wall time too
        wall = round(time.perf_counter() - started, 1)
        record["wall_s"] = record["wall_s"] + wall
        write_record(out, record)
    if before is not None:
        record["resumed"] = {"command": args.command, "wall_s": wall}
    record["finished"] = time.strftime("%Y-%m-%d %H:%M")
    write_record(out, record)
    return record


def write_record(out: Path, record: dict[str, Any]) -> None:
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")


def write_tables(out: Path, dataset: str, tasks: list[str] | None, record: dict[str, Any]) -> None:
    """The comparison's page and plots, and mtltrain-report's report, into `out`."""
    names = tasks or list(
        dict.fromkeys(t for s in Comparison(out, []).sweep.settings for t in s.main)
    )
    comparison = Comparison(out, names, sweeps.run_again(out), single_task=bool(tasks))
    write_report(comparison.sweep, out, SINGLE_TASK if comparison.single_task
                 else f"weighting={comparison.reference}")  # fmt: skip
    pictures = comparison.plot(out, dataset)
    text = document(comparison, record, pictures)
    (out / f"{dataset}_strategies.md").write_text(text)
    print(text)
    print(f"{PROG}: wrote {out / f'{dataset}_strategies.md'} and its plots; the runs took "
          f"{said(record['wall_s'])}")  # fmt: skip
