"""One run in its folder: build the trainer, fit, and leave TensorBoard logs, checkpoints,
figures and results.json behind; continue the run of `cfg.resume` where it stopped."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from mtltrain import checkpoint, rundir
from mtltrain.build import build_trainer
from mtltrain.data.base import Split
from mtltrain.errors import ConfigError, Interrupted, MtlError
from mtltrain.losses import LossTerm
from mtltrain.metrics import main_metric, metric_names
from mtltrain.results import RESULTS_FILE, summary_table, write_json
from mtltrain.tasks import TaskSpec
from mtltrain.tblog import TensorBoardLog
from mtltrain.train import Trainer, evaluate

log = logging.getLogger("mtltrain.train")


def true_sigma(split: Split, terms: Sequence[LossTerm]) -> dict[str, float | None]:
    """Per term, the RMS of the true label-noise σ: what a homoscedastic σ should learn."""
    return {
        t.name: split.noise_std[t.task].square().mean().sqrt().item()
        if t.task in split.noise_std
        else None
        for t in terms
    }


def resolve_objective(cfg: DictConfig, tasks: Sequence[TaskSpec], sigma: Collection[str]) -> str:
    """The metric the task function returns: `objective`, or test/<first task's main metric>."""
    known = [f"{split}/{m}" for split in ("test", "train") for m in metric_names(tasks, sigma)]
    objective = cfg.objective or f"test/{main_metric(tasks[0])}"
    if objective not in known:
        raise ConfigError(
            f"objective={objective!r} is not a metric of this run: choose one of {known}"
        )
    return objective


def run(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    choices: dict[str, str] | None = None,
) -> float:
    """Train as `cfg` says, write TensorBoard logs, checkpoints and results.json into
    `run_dir`; continue the run of `cfg.resume` where it stopped.

    Returns the objective metric, for Hydra sweepers. A failure of a fresh run leaves a
    results.json that says so; nothing a run wrote before is ever replaced by a failure.
    """
    info = {"choices": choices or {}, "overrides": list(overrides)}
    if not cfg.resume:
        rundir.check_fresh(run_dir)
    try:
        return _run(cfg, run_dir, info)
    except MtlError as e:
        if not cfg.resume or isinstance(e, Interrupted):
            status = "interrupted" if isinstance(e, Interrupted) else "failed"
            write_json(run_dir / RESULTS_FILE, {"status": status, "error": str(e), **info})
        raise


def _run(cfg: DictConfig, run_dir: Path, info: dict[str, Any]) -> float:
    started = time.perf_counter()
    state = checkpoint.load(rundir.checkpoint_of(Path(cfg.resume))) if cfg.resume else None
    purge = state["trainer"]["position"]["step"] + 1 if state else None
    run_info = {**info, "config": OmegaConf.to_container(cfg, resolve=True)}
    with TensorBoardLog(run_dir / "tb", purge_step=purge) as tb, logging_redirect_tqdm():
        trainer = build_trainer(cfg, run_dir, tb, run_info, resumed=state is not None)
        data = trainer.data
        objective = resolve_objective(cfg, data.tasks, data.test.noise_std)
        log.info(
            "%s: %d train / %d test samples, tasks %s, weighting %s, device %s",
            info["choices"].get("dataset", "data"),
            len(data.train),
            len(data.test),
            [t.name for t in data.tasks],
            type(trainer.strategy).__name__,
            trainer.device,
        )
        if state:
            trainer.load_state_dict(state["trainer"])
            log.info("resumed at step %d (epoch %d)", trainer.step, trainer.epoch + 1)
        fit_started = time.perf_counter()
        try:
            test_metrics = trainer.fit()
        except Interrupted as e:
            raise Interrupted(
                f"{e}; checkpoint written to {checkpoint.path_in(run_dir)}; continue with: "
                f"mtltrain resume={run_dir}",
                e.signal_number,
            ) from None
        train_time = time.perf_counter() - fit_started
    results = _results(cfg, trainer, test_metrics, objective, info)
    results["wall_time_s"] = round(time.perf_counter() - started, 3)
    results["train_time_s"] = round(train_time, 3)
    write_json(run_dir / RESULTS_FILE, results)
    tasks = {t.name: t for t in data.tasks}
    terms = trainer.strategy.terms
    main = {t.name: main_metric(tasks[t.task]) for t in terms}
    print(summary_table(results, main, [t.name for t in terms if not t.heteroscedastic]))
    return results["objective"]["value"]


def _results(
    cfg: DictConfig,
    trainer: Trainer,
    test_metrics: dict[str, float],
    objective: str,
    info: dict[str, Any],
) -> dict[str, Any]:
    """What results.json says of a finished run (timings are added by the caller)."""
    data, strategy = trainer.data, trainer.strategy
    train_metrics = evaluate(
        trainer.forward, data.train, data.tasks, trainer.cfg.eval_batch_size, trainer.precision
    )
    metrics = {f"test/{k}": v for k, v in test_metrics.items()}
    metrics.update({f"train/{k}": v for k, v in train_metrics.items()})
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
        "objective": {"name": objective, "value": metrics[objective]},
        "metrics": metrics,
        "weighting": learned,
        "true_sigma": true_sigma(data.train, strategy.terms),
    }
