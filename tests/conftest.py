"""Shared test helpers: composing configs, running the CLI in this process (what a run changes
in the process put back), reading what runs wrote, and writing small MNIST IDX files."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mtltrain import cli, report
from mtltrain.config import compose_checked
from mtltrain.data import mnist_mtl
from mtltrain.loop._callbacks import Callback
from mtltrain.losses import LossTerm, mse

MTLTRAIN = str(Path(sys.executable).with_name("mtltrain"))
REPORT = str(Path(sys.executable).with_name("mtltrain-report"))


class StopAt(Callback):
    """Sends the process SIGTERM after step `step`."""

    def __init__(self, step: int) -> None:
        self.at = step

    def on_step_end(self, job, step) -> None:
        if step.number == self.at:
            signal.raise_signal(signal.SIGTERM)


def through_disk(state: dict) -> dict:
    """`state` saved and loaded as a checkpoint is."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def mse_terms(k: int) -> tuple[LossTerm, ...]:
    """K regression terms t0, t1, … with the mse loss: a strategy's terms without a data set."""
    return tuple(LossTerm(f"t{i}", f"t{i}", "mse", "regression", False, mse) for i in range(k))


def aggregated_with_extra(strategy, own: np.ndarray, first: np.ndarray, second: np.ndarray):
    """One aggregation of the step's Jacobian `own` by a strategy that takes two extra
    batches, with their Jacobians `first` and `second` (SDMGrad, MoDo): (direction, weights)."""
    strategy.observe_extra([torch.from_numpy(first), torch.from_numpy(second)])
    direction, weights = strategy.aggregate(torch.from_numpy(own), torch.ones(len(own)))
    return direction.numpy(), weights.numpy()


def make_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config `mtltrain <overrides>` would run with."""
    return compose_checked(overrides)


def run_cli(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    """`mtltrain <args>` in `cwd`, in this process (`in_process`)."""
    return in_process(cli.main, [MTLTRAIN, *map(str, args)], cwd)


def run_report(args: Sequence[object], cwd: Path) -> subprocess.CompletedProcess:
    """`mtltrain-report <args>` in `cwd`, in this process (`in_process`)."""
    return in_process(report.main, [REPORT, *map(str, args)], cwd)


def in_process(
    main: Callable[[], object], argv: list[str], cwd: Path
) -> subprocess.CompletedProcess:
    """What `sys.exit(main())` does as the console script `argv[0]` started with `argv` in
    `cwd`, run in this process: its exit status, and what it printed to stdout and stderr
    (at the file descriptors too); everything a run changes in the process is put back."""
    with kept_process_state(), captured_output() as said:
        os.chdir(cwd)
        sys.argv = list(argv)
        code = exit_status(main)
    return subprocess.CompletedProcess(argv, code, *said())


def run_console_script(
    args: Sequence[str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`mtltrain <args>` in `cwd` as a process of its own, for what only a process shows (its
    start, the interpreter's exit status, a signal from outside)."""
    return subprocess.run(
        [MTLTRAIN, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


def exit_status(main: Callable[[], object]) -> int:
    """The exit status of `sys.exit(main())` as the interpreter makes it: SystemExit's code (a
    message is printed, status 1), and an uncaught exception's traceback with status 1."""
    try:
        code = main()
    except SystemExit as e:
        code = e.code
    except Exception:
        traceback.print_exc()
        return 1
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def captured_output() -> Iterator[Callable[[], tuple[str, str]]]:
    """stdout and stderr, Python's and the file descriptors 1 and 2, into files; yields a
    function that returns what each got as (stdout, stderr) once the block has ended."""
    said: list[str] = []
    streams = sys.stdout, sys.stderr
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        for stream in streams:
            stream.flush()
        kept = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            with (
                open(1, "w", buffering=1, encoding="utf-8", closefd=False) as sys.stdout,
                open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace",
                     closefd=False) as sys.stderr,
            ):  # fmt: skip
                yield lambda: (said[0], said[1])
        finally:
            sys.stdout, sys.stderr = streams
            for fd, saved in zip((1, 2), kept, strict=True):
                os.dup2(saved, fd)
                os.close(saved)
            for file in (out, err):
                file.seek(0)
                said.append(file.read().decode("utf-8", errors="replace"))


@contextlib.contextmanager
def kept_process_state() -> Iterator[None]:
    """What a run changes in its process, put back when the block ends: the working folder,
    sys.argv and sys.path, the environment, signal handlers, warning filters (as a fresh
    interpreter has them while it runs, shown on stderr), logging's handlers and levels,
    Hydra's singletons, torch's threads, determinism and cuDNN settings, the random
    generators' states; torch.compile's graphs are dropped (they would count towards a later
    run's recompile limit). Not put back: glibc's malloc settings (trainer.keep_host_memory:
    speed only) and the modules a run imported."""
    cwd, argv, path, environ = os.getcwd(), sys.argv, list(sys.path), dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in signal.valid_signals()}
    loggers = logger_settings()
    hydra_config = HydraConfig.instance().cfg
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    rngs = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        with warnings.catch_warnings():
            warnings.resetwarnings()  # the interpreter's own filters, not pytest's
            for action, category in INTERPRETER_WARNINGS:
                warnings.simplefilter(action, category)
            warnings.filterwarnings("ignore", message=cli.SCHEMA_MATCHING_WARNING)  # at its import
            warnings.showwarning = show_on_stderr
            yield
    finally:
        os.chdir(cwd)
        sys.argv, sys.path[:] = argv, path
        os.environ.clear()
        os.environ.update(environ)
        for s, handler in handlers.items():
            if handler is not None and signal.getsignal(s) is not handler:
                signal.signal(s, handler)
        restore_loggers(loggers)
        if GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = hydra_config
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        random.setstate(rngs[0])
        np.random.set_state(rngs[1])
        torch.random.set_rng_state(rngs[2])
        torch.compiler.reset()


# the warning filters of an interpreter started without -W or PYTHONWARNINGS
INTERPRETER_WARNINGS = [("ignore", DeprecationWarning), ("ignore", PendingDeprecationWarning),
                        ("ignore", ImportWarning), ("ignore", ResourceWarning)]  # fmt: skip


def show_on_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning printed where the interpreter prints it (pytest would record it instead)."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


LoggerSettings = tuple[int, list[logging.Handler], bool, bool]
NEW_LOGGER: LoggerSettings = (logging.NOTSET, [], True, False)  # a logger as getLogger makes it


def logger_settings() -> dict[logging.Logger, LoggerSettings]:
    """Each logger's level, handlers, propagation and whether it is disabled."""
    loggers = [logging.root, *logging.root.manager.loggerDict.values()]
    return {
        logger: (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
        for logger in loggers
        if isinstance(logger, logging.Logger)
    }


def restore_loggers(settings: dict[logging.Logger, LoggerSettings]) -> None:
    """The loggers as `settings` found them; handlers added since (Hydra's console and
    <job>.log handlers) closed, loggers made since reset."""
    kept = {h for _, handlers, _, _ in settings.values() for h in handlers}
    for logger, now in logger_settings().items():
        level, handlers, propagate, disabled = settings.get(
            logger, (logging.NOTSET, [], True, False)
        )
        for handler in now[1]:
            if handler not in kept:
                handler.close()
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate, logger.disabled = propagate, disabled


def strict_json(path: Path) -> dict:
    """A results.json, refusing NaN and Infinity (which are not JSON)."""

    def refuse(name: str) -> float:
        raise ValueError(f"{name} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, modification time)} of every file under `folder`."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def write_fake_mnist(root: Path, n_train: int = 96, n_test: int = 48, seed: int = 0) -> Path:
    """Random 28×28 images with labels 0..9 in torchvision's layout under `root`."""
    return mnist_mtl.write_random(root, n_train, n_test, seed)


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--dist loadgroup's `<nodeid>@<group>` ids, which pytest-xdist (3.8) sets on the old
    `_nodeid` attribute that pytest 9 no longer reads (its ids come from `_id`): without this,
    the tests of an xdist_group go to any worker and each builds the group's costly fixture."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})  # fmt: skip
        if groups and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = type(item._id).parse(f"{item.nodeid}@{'_'.join(groups)}")
