"""What each test of the default suite costs in CPU seconds (its own process's and those of the
processes it started and waited for), which a machine shared with other work does not
inflate as it does wall time.

    python scripts/suite_costs.py [--top 40] [pytest arguments, e.g. tests/test_x.py -k name]

It runs pytest with the project's options (`-n auto --dist loadgroup`, so a worker's
collection shows as its own row) and this file as a plugin, then prints the costliest tests,
each file's total and the whole suite's CPU seconds and wall time. On a quiet machine with W
workers the suite's wall time is about its CPU seconds / W when the groups balance.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OUT = "TEST_COSTS_OUT"  # the folder each pytest process appends its rows to


def cpu_seconds() -> float:
    """This process's user and system time, and that of its children it has waited for."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))  # fmt: skip
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def record(name: str, cpu: float, wall: float) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(Path(os.environ[OUT]) / f"{worker}.jsonl", "a") as rows:
        rows.write(json.dumps([name, cpu, wall]) + "\n")


# --- the plugin (pytest -p suite_costs) ----------------------------------------------------------

_started = (cpu_seconds(), time.monotonic())


def pytest_collection_finish(session) -> None:
    if OUT in os.environ:
        record("<collection>", cpu_seconds() - _started[0], time.monotonic() - _started[1])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Each test's setup, call and teardown together."""
    cpu, wall = cpu_seconds(), time.monotonic()
    yield
    if OUT in os.environ:
        record(item.nodeid.split("@")[0], cpu_seconds() - cpu, time.monotonic() - wall)


# --- the command --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=40, help="how many of the costliest tests")
    args, pytest_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, OUT: folder,
               "PYTHONPATH": os.pathsep.join([str(REPO / "scripts"), str(REPO),
                                              os.environ.get("PYTHONPATH", "")])}  # fmt: skip
        start = time.monotonic()
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "-p", "suite_costs", *pytest_args]  # fmt: skip
        status = subprocess.run(command, cwd=REPO, env=env, check=False).returncode
        wall = time.monotonic() - start
        rows = [json.loads(line) for f in Path(folder).glob("*.jsonl") for line in f.open()]
    rows.sort(key=lambda row: -row[1])
    print(f"\n{'CPU s':>7} {'wall s':>7}  test")
    for name, cpu, seconds in rows[: args.top]:
        print(f"{cpu:7.1f} {seconds:7.1f}  {name}")
    files: collections.Counter = collections.Counter()
    for name, cpu, _ in rows:
        files[name.split("::")[0]] += cpu
    print(f"\n{'CPU s':>7}  file")
    for name, cpu in files.most_common(args.top):
        print(f"{cpu:7.1f}  {name}")
    print(f"\n{len(rows)} rows, {sum(r[1] for r in rows):.0f} CPU s in all; wall {wall:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
