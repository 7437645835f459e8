"""`mtltrain` runs for the tests without an interpreter's start-up and imports each time (a tiny
run: 0.7 s instead of 4–6 s): a server process per test worker imports what a run imports,
once, and forks a child per run. The child is what the console script is:
`sys.exit(mtltrain.cli.main())` with the run's argv, working folder and environment, its own
stdin, stdout and stderr (which first gets what the imports printed), and the interpreter's
exit steps that a run can see. The server never runs a torch op, so every child starts
torch's thread pools afresh.

    python tests/forked_cli.py    # the server: one JSON request a line on stdin, a reply each
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import NoReturn

# what a run imports: mtltrain's modules, matplotlib for figures, and torch._dynamo, which
# torch.optim's constructor imports
IMPORTS = ("matplotlib.figure", "torch._dynamo", "mtltrain.cli", "mtltrain.run")


def serve() -> None:
    printed = imported(IMPORTS)
    main = importlib.import_module("mtltrain.cli").main
    gc.freeze()  # the children's collections then leave the imported objects' pages shared
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            run_child(request, main, printed)
        pidfd = os.pidfd_open(pid)
        ended = select.select([pidfd], [], [], request["timeout"])[0]
        os.close(pidfd)
        if not ended:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        reply = {"returncode": os.waitstatus_to_exitcode(status), "timed_out": not ended}
        print(json.dumps(reply), flush=True)


def imported(modules: tuple[str, ...]) -> bytes:
    """Import `modules`; what they printed to stderr (each child prints it again)."""
    with tempfile.TemporaryFile() as said:
        stderr = os.dup(2)
        os.dup2(said.fileno(), 2)
        try:
            for name in modules:
                importlib.import_module(name)
        finally:
            sys.stderr.flush()
            os.dup2(stderr, 2)
            os.close(stderr)
        said.seek(0)
        return said.read()


def run_child(request: dict, main: Callable[[], object], printed: bytes) -> NoReturn:
    """In the forked child: become the console script's process and run it."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, mode in ((0, os.devnull, os.O_RDONLY), *request["outputs"]):
            file = os.open(path, mode)
            os.dup2(file, fd)
            os.close(file)
        os.write(2, printed)
        sys.argv = list(request["argv"])
        sys.path[0] = os.path.dirname(sys.argv[0])  # the console script's folder
        sys.exit(main())
    except SystemExit as e:
        code = exit_code(e.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())
    finally:
        shut_down()
        os._exit(code)


def exit_code(code: object) -> int:
    """The exit status of `SystemExit(code)`, as the interpreter makes it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def shut_down() -> None:
    """What the interpreter's exit does that a run can see (threads joined after their exit
    hooks, atexit functions, streams flushed), without tearing down every module: that takes
    0.7 s a child, writing to the pages it shares with the server."""
    threading._shutdown()  # type: ignore[attr-defined]  (what Py_FinalizeEx calls)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    ctypes.CDLL(None).fflush(None)  # C's stdio: os._exit skips it


# the tests' environment before any test changes it: the server's
ENV = dict(os.environ)
# set while the tests run, and read by no import: a child can take them from the request
READ_LATER = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR", "CUBLAS_WORKSPACE_CONFIG"}


class ForkServer:
    """The client of one server process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        assert self.process.stdin is not None and self.process.stdout is not None
        with tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            written = os.O_WRONLY | os.O_CREAT
            request = {
                "argv": argv,
                "cwd": str(cwd),
                "env": dict(os.environ),
                "outputs": [(1, str(out), written), (2, str(err), written)],
                "timeout": timeout,
            }
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the fork server stopped (exit code {self.process.wait()})")
            reply = json.loads(line)
            stdout, stderr = out.read_text(), err.read_text()
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr)
        return subprocess.CompletedProcess(argv, reply["returncode"], stdout, stderr)


@cache
def fork_server() -> ForkServer:
    return ForkServer()


def forks(cwd: Path) -> bool:
    """Whether a run in `cwd` forks (else it is a process of its own): where the system has
    pidfds, the folder exists (else subprocess's own error), and no test changed the
    environment an import reads."""
    return (
        hasattr(os, "pidfd_open")
        and Path(cwd).is_dir()
        and _without(os.environ, READ_LATER) == _without(ENV, READ_LATER)
    )


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """`subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)` for
    an `mtltrain` command, forked where `forks(cwd)`."""
    if forks(cwd):
        return fork_server().run(argv, cwd, timeout)
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def _without(env: Mapping[str, str], names: set[str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


if __name__ == "__main__":
    serve()
