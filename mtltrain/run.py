"""One run in its folder: build the trainer, fit, and leave TensorBoard logs, checkpoints,
figures and results.json behind; continue the run of `cfg.resume` where it stopped."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from mtltrain.build import build_trainer
from mtltrain.config._compose import check
from mtltrain.data.base import Split
from mtltrain.errors import (
    UNWRITABLE,
    CheckpointError,
    Interrupted,
    MtlError,
    OutputError,
    TrainingError,
    UnexpectedError,
    first_line,
)
from mtltrain.interrupts import signal_of, stopped_by
from mtltrain.loop._stacked import StackedTrainer, unstackable
from mtltrain.loop._trainer import Trainer, evaluate
from mtltrain.losses import LossTerm
from mtltrain.metrics import main_metric
from mtltrain.outputs import _checkpoint_file as checkpoint
from mtltrain.outputs import _run_folder as rundir
from mtltrain.outputs._event_writer import TensorBoardLog
from mtltrain.outputs._results import RESULTS_FILE, read_results, summary_table, write_json
from mtltrain.processes import rank, requeued

log = logging.getLogger("mtltrain.loop._trainer")
# a job of `run_stacked`: the arguments of `run`
Job = tuple[DictConfig, Path, Sequence[str], dict[str, str] | None, str | None, Sequence[str]]


def true_sigma(split: Split, terms: Sequence[LossTerm]) -> dict[str, float | None]:
    """Per term, the RMS of the true label-noise σ: what a homoscedastic σ should learn."""
    return {
        t.name: split.noise_std[t.task].square().mean().sqrt().item()
        if t.task in split.noise_std
        else None
        for t in terms
    }


def run(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    choices: dict[str, str] | None = None,
    job: str | None = None,
    hydra_files: Sequence[str] = (),
) -> float:
    """Train as `cfg` says, write TensorBoard logs, checkpoints and results.json into
    `run_dir`; continue the run of `cfg.resume` where it stopped, and with `resume_sweep` (or
    in a job SLURM requeued) the run already in `run_dir` (a finished one is left as it is).
    `job` names the sweep's job in its summary, where parallel jobs print side by side;
    `hydra_files` are the files Hydra made in `run_dir` for this run (.hydra/, its log).

    Returns the objective metric, for Hydra sweepers. The folder is locked for the run's life.
    Every failure raises an MtlError (errors the tool does not check for become an
    UnexpectedError, their traceback in the run's log); a failure of a fresh run leaves a
    results.json that says so; nothing a run wrote before is ever replaced by a failure.
    """
    steps = job_run(cfg, run_dir, overrides, choices, job, hydra_files)
    with logging_redirect_tqdm():
        try:
            trainer = next(steps)
        except StopIteration as done:  # a finished run kept as it is
            return done.value
        return finish(steps, _fit(trainer.fit))


def finish(steps: Generator[Trainer, None, float], error: BaseException | None) -> float:
    """Let the run whose trainer `steps` yielded write its results, now it is fitted; the
    error that stopped its fit, if any, goes back into the run, which records it and raises
    it as an MtlError."""
    if error is not None:
        steps.throw(error)  # raises: the run records the failure and raises it again
    try:
        steps.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("a run yields its trainer once")


def run_stacked(jobs: Sequence[Job]) -> list[float | MtlError]:
    """`run` for each of `jobs` ((cfg, run_dir, overrides, choices, job) each): those that can
    train stacked in one process (`mtltrain.loop._stacked`), each in its own folder as alone; the
    others one after another, each from the random state its build left, with a log line
    that says why. Returns per job its objective, or the error that stopped it."""
    outcomes: list[float | MtlError] = [float("nan")] * len(jobs)
    started: dict[tuple[int, int, int], list[_Started]] = {}
    with logging_redirect_tqdm():
        for i, job in enumerate(jobs):
            steps = job_run(*job)
            try:
                trainer = next(steps)
            except StopIteration as done:  # finished already: kept as it is
                outcomes[i] = done.value
            except MtlError as e:
                outcomes[i] = e
            else:  # jobs resumed at other steps than the rest train in a stack of their own
                position = (trainer.epoch, trainer.batch, trainer.step)
                started.setdefault(position, []).append(
                    _Started(i, steps, trainer, checkpoint.rng_states())
                )
        for group in started.values():
            for job, outcome in zip(group, _fitted(group), strict=True):
                outcomes[job.index] = outcome
    return outcomes


class _Started(NamedTuple):
    """A job of `run_stacked` built (or resumed) and waiting to be fitted."""

    index: int
    steps: Generator[Trainer, None, float]
    trainer: Trainer
    rng: dict[str, Any]  # the random state its build (or its checkpoint) left


def _fitted(group: Sequence[_Started]) -> list[float | MtlError]:
    """Fit the group's trainers stacked where they can be, else one after another; each job's
    objective or error."""
    trainers = [job.trainer for job in group]
    why = unstackable(trainers) if len(trainers) > 1 else ""
    errors: list[BaseException | None]
    if len(trainers) > 1 and not why:
        try:
            errors = StackedTrainer(trainers).fit()
        except Exception as e:  # not any one job's: every job of the stack gets it
            errors = [e] * len(group)
    else:
        if why:
            log.info("%d jobs run one after another: %s", len(trainers), why)
        errors = [_alone(job) for job in group]
    outcomes: list[float | MtlError] = []
    for job, error in zip(group, errors, strict=True):
        try:
            outcomes.append(finish(job.steps, error))
        except MtlError as e:
            outcomes.append(e)
    return outcomes


def _alone(job: _Started) -> Exception | None:
    """The job's own fit, from the random state it was built (or resumed) with: its error."""
    checkpoint.set_rng_states(job.rng)
    return _fit(job.trainer.fit)


def _fit(fit: Callable[[], object]) -> Exception | None:
    """The error that stopped `fit`, or None; a second Ctrl-C or SIGTERM (raised mid-step) as
    an Interrupted whose step and checkpoint are lost."""
    try:
        fit()
    except KeyboardInterrupt as e:
        return Interrupted(f"{stopped_by(e, 'at once ')} (a second signal), mid-step", signal_of(e))
    except Exception as e:
        return e
    return None


def job_run(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    choices: dict[str, str] | None = None,
    job: str | None = None,
    hydra_files: Sequence[str] = (),
) -> Generator[Trainer, None, float]:
    """`run` in steps: yields its built (or resumed) trainer, to be fitted alone or stacked
    with others' (`mtltrain.loop._stacked`); sent None once it is fitted (or thrown the error that
    stopped it), it writes the run's results and returns the objective, as `run` does."""
    info = {"choices": choices or {}, "overrides": list(overrides)}
    owned, resume = False, None  # owned: past the folder's checks, this run's to write into
    with _log_file(run_dir / rundir.LOG_FILE) as file_log:
        try:
            with rundir.lock(run_dir):
                resume = _resume_from(cfg, run_dir)
                if resume is None:
                    rundir.check_fresh(run_dir, hydra_files)
                elif not cfg.resume and rundir.status(run_dir) == "completed":
                    log.info("%s already holds a finished run: kept as it is", run_dir)
                    return read_results(run_dir)["objective"]["value"]
                owned = True
                check(cfg, overrides)  # a sweep's job was not checked before Hydra made its folder
                return (yield from _run(cfg, run_dir, info, resume, job, file_log))
        except (Exception, KeyboardInterrupt) as e:
            error = _as_mtl_error(e, run_dir)
            if owned:
                file_log.error("error: %s", error, exc_info=None if error is e else e)
                if resume is None or isinstance(error, Interrupted):
                    status = "interrupted" if isinstance(error, Interrupted) else "failed"
                    results = {"status": status, "error": str(error), **info}
                    _record_failure(run_dir, results, file_log)
            if error is e:
                raise
            raise error from e


@contextlib.contextmanager
def _log_file(path: Path) -> Iterator[logging.Logger]:
    """A logger of what goes to the run's log file only (summaries, errors, tracebacks),
    beside Hydra's own lines if it writes that file; one per run, as runs stacked in one
    process are open at once."""
    file_log = logging.Logger("mtltrain.logfile")
    handler = logging.FileHandler(path, delay=True)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    file_log.addHandler(handler)
    try:
        yield file_log
    finally:
        handler.close()


def _resume_from(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint this run continues from, if any."""
    if cfg.resume:
        return rundir.checkpoint_of(Path(cfg.resume))
    continuing = cfg.resume_sweep or requeued()
    if continuing and (rundir.status(run_dir) == "completed" or rundir.unfinished(run_dir)):
        return rundir.checkpoint_file(run_dir)
    return None


def _as_mtl_error(e: BaseException, run_dir: Path) -> MtlError:
    """The one-line error of a failure: the tool's own, Ctrl-C before training, a folder that
    cannot be written, or an error outside the tool's checks (its traceback goes to the run's
    log)."""
    if isinstance(e, MtlError):
        return e
    if isinstance(e, KeyboardInterrupt):
        return Interrupted(stopped_by(e), signal_of(e))
    if isinstance(e, OSError) and e.errno in UNWRITABLE and _inside(e.filename, run_dir):
        return OutputError(f"could not write into {run_dir} ({e.strerror})")
    # torchrun's ranks 1… log into a scratch folder that is removed: their traceback is printed
    where = f"in {run_dir / rundir.LOG_FILE}" if rank() == 0 else "printed below"
    return UnexpectedError(
        f"{type(e).__name__}: {first_line(e)} (not an error mtltrain checks for: the "
        f"traceback is {where}; please report it)"
    )


def _inside(filename: object, run_dir: Path) -> bool:
    """Whether an OSError's file (None: unknown, taken as the run's) is in the run folder."""
    if not filename:
        return True
    return Path(str(filename)).resolve().is_relative_to(run_dir.resolve())


def _record_failure(run_dir: Path, results: dict[str, Any], file_log: logging.Logger) -> None:
    """results.json of a failed run, where the folder can still be written."""
    try:
        write_json(run_dir / RESULTS_FILE, results)
    except OutputError as e:
        file_log.error("%s", e)


def _run(
    cfg: DictConfig,
    run_dir: Path,
    info: dict[str, Any],
    resume: Path | None,
    job: str | None,
    file_log: logging.Logger,
) -> Generator[Trainer, None, float]:
    """Build the trainer, yield it to be fitted, and write the run's folder; under torchrun
    every rank trains and rank 0 alone writes (the others' `run_dir` is a scratch folder)."""
    started = time.perf_counter()
    state = checkpoint.load(resume) if resume is not None else None
    purge = state["trainer"]["position"]["step"] + 1 if state else None
    run_info = {**info, "config": OmegaConf.to_container(cfg, resolve=True)}
    lead = rank() == 0  # the trainer's ranks are joined only when it is built
    logs = (
        TensorBoardLog(run_dir / rundir.TB, purge_step=purge) if lead else contextlib.nullcontext()
    )
    with logs as tb:
        trainer = build_trainer(
            cfg, run_dir if lead else None, tb, run_info, resumed=state is not None
        )
        data = trainer.data
        log.info(
            "%s: %d train / %d validation / %d test samples, tasks %s, weighting %s, device %s",
            info["choices"].get("dataset", "data"),
            len(data.train),
            0 if data.validation is None else len(data.validation),
            len(data.test),
            [t.name for t in data.tasks],
            type(trainer.strategy).__name__,
            trainer.device,
        )
        if state:
            _load(trainer, state, run_info["config"])
            log.info("resumed at step %d (epoch %d)", trainer.step, trainer.epoch + 1)
            file_log.info("resumed at step %d", trainer.step)
        fit_started = time.perf_counter()
        try:
            yield trainer
        except Interrupted as e:
            raise Interrupted(
                f"{e}; last checkpoint: {rundir.checkpoint_file(run_dir)}; continue with: "
                f"{rundir.resume_command(run_dir)}",
                e.signal_number,
            ) from None
        train_time = time.perf_counter() - fit_started
    results = _results(cfg, trainer, info)
    trainer.ranks.close()
    results["wall_time_s"] = round(time.perf_counter() - started, 3)
    results["train_time_s"] = round(train_time, 3)
    if not lead:
        return results["objective"]["value"]
    write_json(run_dir / RESULTS_FILE, results)
    tasks = {t.name: t for t in data.tasks}
    terms = trainer.strategy.terms
    main = {t.name: main_metric(tasks[t.task]) for t in terms}
    table = summary_table(results, main, [t.name for t in terms if not t.heteroscedastic])
    print(table if job is None else f"{job}\n{table}")
    file_log.info("summary\n%s", table)
    return results["objective"]["value"]


def _load(trainer: Trainer, state: dict[str, Any], config: dict[str, Any]) -> None:
    """The checkpoint into the trainer. A run continues with its own settings (trainer.* aside):
    other ones, or state that does not fit, are refused with what differs."""
    changed = checkpoint.changed_settings(state.get("config", {}), config)
    try:
        trainer.load_state_dict(state["trainer"])
    except CheckpointError as e:
        settings = f"; settings that differ: {changed}" if changed else ""
        raise CheckpointError(f"{e}{settings}") from None
    checkpoint.refuse_other_settings(changed)


def _results(cfg: DictConfig, trainer: Trainer, info: dict[str, Any]) -> dict[str, Any]:
    """What results.json says of a finished run (timings are added by the caller): the
    selected evaluation's metrics, and the train metrics and learned quantities of the model
    and strategy it evaluated (the trainer ends in that state)."""
    data, strategy, selection = trainer.data, trainer.strategy, trainer.selection
    chosen = selection.chosen
    if chosen is None:
        raise TrainingError(
            f"no evaluation had a finite {selection.objective}, so trainer.select=best has "
            "nothing to report: see the run's TensorBoard for where training diverged"
        )
    train_metrics = evaluate(
        trainer.forward,
        data.train,
        data.tasks,
        trainer.cfg.eval_batch_size,
        trainer.precision,
        trainer.ranks,
    )
    metrics = {
        f"{split}/{k}": v for split, values in chosen["metrics"].items() for k, v in values.items()
    }
    metrics.update({f"train/{k}": v for k, v in train_metrics.items()})
    objective = selection.objective
    learned = {
        q: v.item() if v.dim() == 0 else dict(zip(strategy.names, v.tolist(), strict=True))
        for q, v in strategy.report().items()
    }
    return {
        "status": "completed",
        **info,
        "seed": int(cfg.seed),
        "epochs": trainer.epochs,
        "steps": trainer.step,
        "nonfinite_steps": trainer.skipped_steps,
        "device": str(trainer.device),
        "processes": trainer.ranks.size,
        "objective": {"name": objective, "value": metrics[objective]},
        "selected": {"by": selection.select, "epoch": chosen["epoch"], "step": chosen["step"]},
        "metrics": metrics,
        "weighting": learned,
        "true_sigma": true_sigma(data.train, strategy.terms),
    }
