"""One run in its folder: open it (lock, checks, its job built or resumed: `open_run`), fit
its job alone or stacked with other runs' (`mtltrain.loop._trainer.Trainer`), and close it with the
error that stopped the fit, if any (`OpenRun.close`), which leaves results.json beside the
logs (TensorBoard, ...), checkpoints and figures the job's callbacks wrote; continue the run of
`cfg.resume` where it stopped."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from mtltrain.build import build_job
from mtltrain.config._compose import check, compose_checked
from mtltrain.data.base import Split
from mtltrain.errors import (
    UNWRITABLE,
    CheckpointError,
    Interrupted,
    MtlError,
    OutputError,
    Pruned,
    TrainingError,
    UnexpectedError,
    first_line,
)
from mtltrain.interrupts import signal_of, stopped_by
from mtltrain.loop._job import Job, evaluate
from mtltrain.loop._runtime import rng_states, set_rng_states
from mtltrain.loop._trainer import Trainer
from mtltrain.losses import LossTerm
from mtltrain.metrics import main_metric, metric_directions
from mtltrain.outputs import _checkpoint_file as checkpoint
from mtltrain.outputs import _run_folder as rundir
from mtltrain.outputs._logger import open_loggers
from mtltrain.outputs._results import (
    RESULTS_FILE,
    Results,
    read_results,
    summary_table,
    task_means,
    write_json,
)
from mtltrain.processes import rank, requeued
from mtltrain.stacking import unstackable

log = logging.getLogger("mtltrain.loop._trainer")
# a run of `run_stacked`: the arguments of `run`
RunArgs = tuple[DictConfig, Path, Sequence[str], dict[str, str] | None, str | None, Sequence[str]]


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
    checked: bool = False,
) -> float:
    """Train as `cfg` says, write its logs (logger=), checkpoints and results.json into
    `run_dir`; continue the run of `cfg.resume` where it stopped, and with `resume_sweep` (or
    in a job SLURM requeued) the run already in `run_dir` (a finished one is left as it is).
    `job` names the sweep's job in its summary, where parallel jobs print side by side;
    `hydra_files` are the files Hydra made in `run_dir` for this run (.hydra/, its log);
    `checked`: `cfg` was checked with `overrides` already (`check`), so it is not again.

    Returns the objective metric, for Hydra sweepers. The folder is locked for the run's life.
    Every failure raises an MtlError (errors the tool does not check for become an
    UnexpectedError, their traceback in the run's log); a failure of a fresh run leaves a
    results.json that says so; nothing a run wrote before is ever replaced by a failure.
    """
    with logging_redirect_tqdm():
        handle = open_run(cfg, run_dir, overrides, choices, job, hydra_files, checked)
        if handle.job is None:  # a finished run kept as it is
            return handle.objective
        (error,) = _fit([handle.job])
        return handle.close(error)


def train(overrides: Sequence[str], run_dir: str | Path) -> Results:
    """The run `mtltrain <overrides>` makes, in `run_dir`, from Python: its config composed
    and checked (a ConfigError names a bad override), trained in this process as `run` does,
    and its results.json read. Raises the MtlError that stopped a run that did not complete
    (its folder says so, as the CLI's would)."""
    overrides = list(overrides)
    run(compose_checked(overrides), Path(run_dir), overrides, checked=True)
    return Results.read(Path(run_dir))


def run_stacked(runs: Sequence[RunArgs]) -> list[float | MtlError]:
    """`run` for each of `runs` ((cfg, run_dir, overrides, choices, job, hydra_files) each):
    those that can train stacked in one process (`mtltrain.loop._stacked`), each in its own folder
    as alone; the others one after another, each from the random state its build left, with
    a log line that says why. Returns per run its objective, or the error that stopped it."""
    outcomes: list[float | MtlError] = [float("nan")] * len(runs)
    started: dict[tuple[int, int, int], list[_Started]] = {}
    with logging_redirect_tqdm():
        for i, args in enumerate(runs):
            try:
                handle = open_run(*args)
            except MtlError as e:
                outcomes[i] = e
                continue
            if handle.job is None:  # finished already: kept as it is
                outcomes[i] = handle.objective
                continue
            # runs resumed at other steps than the rest train in a stack of their own
            job = handle.job
            started.setdefault((job.epoch, job.batch, job.step), []).append(
                _Started(i, handle, rng_states())
            )
        for group in started.values():
            for member, error in zip(group, _fitted(group), strict=True):
                try:
                    outcomes[member.index] = member.handle.close(error)
                except MtlError as e:
                    outcomes[member.index] = e
    return outcomes


class _Started(NamedTuple):
    """A run of `run_stacked` opened (built or resumed) and waiting to be fitted."""

    index: int
    handle: OpenRun
    rng: dict[str, Any]  # the random state its build (or its checkpoint) left


def _fitted(group: Sequence[_Started]) -> list[BaseException | None]:
    """Fit the group's jobs stacked where they can be (`stacking.unstackable`), else one
    after another, each from the random state its build left; each job's error, or None."""
    jobs = [member.handle.job for member in group]
    assert all(job is not None for job in jobs)
    why = unstackable(jobs) if len(jobs) > 1 else ""
    if len(jobs) > 1 and not why:
        return _fit(jobs)
    if why:
        log.info("%d jobs run one after another: %s", len(jobs), why)
    errors: list[BaseException | None] = []
    for member, job in zip(group, jobs, strict=True):
        set_rng_states(member.rng)
        errors.extend(_fit([job]))
    return errors


def _fit(jobs: Sequence[Job]) -> list[BaseException | None]:
    """One trainer over `jobs`, fitted: each job's error, or None. An error outside every
    job's (setting the stack up) is each job's; a second Ctrl-C or SIGTERM (raised mid-step)
    an Interrupted whose step and checkpoint are lost."""
    try:
        return Trainer(jobs).fit()
    except KeyboardInterrupt as e:
        lost = Interrupted(f"{stopped_by(e, 'at once ')} (a second signal), mid-step", signal_of(e))
        return [lost] * len(jobs)
    except Exception as e:
        return [e] * len(jobs)


def open_run(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    choices: dict[str, str] | None = None,
    job: str | None = None,
    hydra_files: Sequence[str] = (),
    checked: bool = False,
) -> OpenRun:
    """`run` up to its fit: the folder locked and checked, its log file and loggers
    open, its job built (or resumed), to be fitted alone or stacked with others'
    (`mtltrain.loop._trainer`); `close(error)` then writes its results. A run that finished
    already is kept as it is: its `job` is None, its `objective` read back. Raises what `run`
    raises."""
    handle = OpenRun(cfg, run_dir, overrides, choices, job, checked)
    handle.open(hydra_files)
    return handle


class OpenRun:
    """A run between its build and its results (`open_run`); while open it holds its folder's
    lock, its log file and its loggers."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        overrides: Sequence[str],
        choices: dict[str, str] | None,
        name: str | None,
        checked: bool = False,
    ) -> None:
        self.cfg, self.run_dir, self.name, self.checked = cfg, run_dir, name, checked
        self.info = {"choices": choices or {}, "overrides": list(overrides)}
        self.overrides = overrides
        self.job: Job | None = None
        self.objective = float("nan")
        self.owned = False  # past the folder's checks: this run's to write into
        self.resume: Path | None = None
        self.exits = contextlib.ExitStack()  # the lock and the log file, till `close`
        self.logs = contextlib.ExitStack()  # the loggers, till the fit ends
        self.file_log = self.exits.enter_context(_log_file(run_dir / rundir.LOG_FILE))
        self.started = self.fit_started = time.perf_counter()

    def open(self, hydra_files: Sequence[str]) -> None:
        """Lock and check the folder, then build the job (see `open_run`)."""
        cfg, run_dir = self.cfg, self.run_dir
        with self.failures():
            self.exits.enter_context(rundir.lock(run_dir))
            self.resume = _resume_from(cfg, run_dir)
            if self.resume is None:
                rundir.check_fresh(run_dir, hydra_files)
            elif not cfg.resume and rundir.status(run_dir) == "completed":
                log.info("%s already holds a finished run: kept as it is", run_dir)
                self.objective = read_results(run_dir)["objective"]["value"]
                self.exits.close()
                return
            self.owned = True
            if not self.checked:  # a sweep's job was not checked before Hydra made its folder
                check(cfg, self.overrides)
            self.job = self.build()

    def build(self) -> Job:
        """The run's job, resumed from its checkpoint where it continues one; under torchrun
        every rank trains and rank 0 alone writes (the others' `run_dir` is a scratch folder)."""
        cfg, run_dir = self.cfg, self.run_dir
        state = checkpoint.load(self.resume) if self.resume is not None else None
        resume_step = state["trainer"]["position"]["step"] if state else None
        self.run_info = {**self.info, "config": OmegaConf.to_container(cfg, resolve=True)}
        self.lead = rank() == 0  # the job's ranks are joined only when it is built
        self.exits.enter_context(self.logs)
        loggers = (
            open_loggers(cfg.get("logger"), run_dir, resume_step, self.logs) if self.lead else []
        )
        job = build_job(
            cfg, run_dir if self.lead else None, loggers, self.run_info, state is not None
        )
        data = job.data
        log.info(
            "%s: %d train / %d validation / %d test samples, tasks %s, weighting %s, device %s",
            self.info["choices"].get("dataset", "data"),
            len(data.train),
            0 if data.validation is None else len(data.validation),
            len(data.test),
            [t.name for t in data.tasks],
            type(job.strategy).__name__,
            job.device,
        )
        if state:
            _load(job, state, self.run_info["config"])
            log.info("resumed at step %d (epoch %d)", job.step, job.epoch + 1)
            self.file_log.info("resumed at step %d", job.step)
        self.fit_started = time.perf_counter()
        return job

    def close(self, error: BaseException | None) -> float:
        """After the job's fit, with the error that stopped it (None: it finished): write the
        run's results and return its objective, or record the failure and raise it as an
        MtlError. The folder is unlocked."""
        if self.job is None:
            return self.objective
        try:
            with self.failures():
                if isinstance(error, Interrupted):
                    saved = rundir.checkpoint_file(self.run_dir)
                    then = (
                        f"last checkpoint: {saved}; continue with: "
                        f"{rundir.resume_command(self.run_dir)}"
                        if self.job.cfg.checkpoint
                        else "no checkpoint (trainer.checkpoint=false)"
                    )
                    raise Interrupted(f"{error}; {then}", error.signal_number) from None
                if error is not None:
                    raise error
                return self.write_results(self.job)
        finally:
            self.exits.close()

    def write_results(self, job: Job) -> float:
        """results.json and the summary of a run whose fit finished; its objective."""
        train_time = time.perf_counter() - self.fit_started
        self.logs.close()
        results = _results(self.cfg, job, self.info)
        job.ranks.close()
        results["wall_time_s"] = round(time.perf_counter() - self.started, 3)
        results["train_time_s"] = round(train_time, 3)
        if not self.lead:
            return results["objective"]["value"]
        write_json(self.run_dir / RESULTS_FILE, results)
        tasks = {t.name: t for t in job.data.tasks}
        terms = job.strategy.terms
        main = {t.name: main_metric(tasks[t.task]) for t in terms}
        table = summary_table(results, main, [t.name for t in terms if not t.heteroscedastic])
        print(table if self.name is None else f"{self.name}\n{table}")
        self.file_log.info("summary\n%s", table)
        return results["objective"]["value"]

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Any error raised in it becomes the run's one-line MtlError: a run past its
        folder's checks logs it to its file and, if fresh (or interrupted), records it in its
        results.json; the run is closed (loggers, lock, log file)."""
        try:
            yield
        except (Exception, KeyboardInterrupt) as e:
            error = _as_mtl_error(e, self.run_dir)
            self.close_loggers()
            if self.owned:
                self.file_log.error("error: %s", error, exc_info=None if error is e else e)
                if self.resume is None or isinstance(error, Interrupted):
                    status = _failed_status(error)
                    results = {"status": status, "error": str(error), **self.info}
                    _record_failure(self.run_dir, results, self.file_log)
            self.exits.close()
            if error is e:
                raise
            raise error from e

    def close_loggers(self) -> None:
        """The loggers closed after a failure; one that fails to close too (a tracking server
        gone) is logged to the run's file: the run reports the error that stopped it."""
        try:
            self.logs.close()
        except Exception as e:
            self.file_log.error("a logger failed to close: %s: %s", type(e).__name__, e)


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


def _failed_status(error: MtlError) -> str:
    """results.json's status of a run an error stopped."""
    if isinstance(error, Interrupted):
        return "interrupted"
    return "pruned" if isinstance(error, Pruned) else "failed"


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


def _load(job: Job, state: dict[str, Any], config: dict[str, Any]) -> None:
    """The checkpoint into the job. A run continues with its own settings (trainer.* aside):
    other ones, or state that does not fit, are refused with what differs."""
    changed = checkpoint.changed_settings(state.get("config", {}), config)
    try:
        job.load_state_dict(state["trainer"])
    except CheckpointError as e:
        settings = f"; settings that differ: {changed}" if changed else ""
        raise CheckpointError(f"{e}{settings}") from None
    checkpoint.refuse_other_settings(changed)


def _results(cfg: DictConfig, job: Job, info: dict[str, Any]) -> dict[str, Any]:
    """What results.json says of a finished run (timings are added by the caller): the
    selected evaluation's metrics, and the train metrics and learned quantities of the model
    and strategy it evaluated (the job ends in that state)."""
    data, strategy, selection = job.data, job.strategy, job.selection
    chosen = selection.chosen
    if chosen is None:
        raise TrainingError(
            f"no evaluation had a finite {selection.objective}, so trainer.select=best has "
            "nothing to report: see the run's TensorBoard for where training diverged"
        )
    train_metrics = evaluate(
        job.forward,
        data.train,
        data.tasks,
        job.cfg.eval_batch_size,
        job.precision,
        job.ranks,
        job.cfg.limit_batches,
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
        "tags": list(cfg.get("tags") or []),
        "epochs": job.epochs,
        "steps": job.step,
        "nonfinite_steps": job.skipped_steps,
        "device": str(job.device),
        "processes": job.ranks.size,
        "objective": {"name": objective, "value": metrics[objective]},
        "selected": {"by": selection.select, "epoch": chosen["epoch"], "step": chosen["step"]},
        "metrics": metrics,
        # per split and metric every task reports, the mean over the tasks (CelebA's mean accuracy)
        "task_means": task_means(metrics, [t.name for t in data.tasks]),
        # which way each "<task>/<metric>" improves (+1 higher is better, −1 lower): Δm%'s d_k
        "directions": metric_directions(data.tasks, data.test.noise_std),
        "weighting": learned,
        "true_sigma": true_sigma(data.train, strategy.terms),
    }
