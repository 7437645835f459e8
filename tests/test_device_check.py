"""scripts/device_check.sh, the GPU check: its dry run (every part on the CPU, tiny) writes a
page with every part's numbers, and never the published docs/results/gpu.md (and its ranks
part's one-process run of scripts/bench_ranks.py sends nothing); a part that fails is reported
with why while the others still run, and the check then exits non-zero."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))  # device_check
PUBLISHED = REPO / "docs" / "results" / "gpu.md"
NUMBER = r"\d[\d,.]*"


def published_state() -> tuple[bool, bytes]:
    return PUBLISHED.exists(), PUBLISHED.read_bytes() if PUBLISHED.exists() else b""


def section(page: str, part: str) -> str:
    """The page's section of `part`, up to the next one."""
    return page.split(f"\n## {part}: ", 1)[1].split("\n## ", 1)[0]


def test_the_dry_run_writes_every_part_with_numbers(tmp_path):
    before = published_state()
    out, work = tmp_path / "out", tmp_path / "work"
    command = ["bash", "scripts/device_check.sh", "--dry-run", "--out", out, "--work", work]
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "installing mtltrain" not in done.stderr  # it ran on the Python at hand
    assert published_state() == before
    page = (out / "gpu.md").read_text()
    assert page.startswith("# GPU check (a dry run on the CPU")
    assert re.search(r"^Machine: .+, \d+ CPU cores, no GPU, torch .+; device cpu\.", page, re.M)
    for part in ("tests", "bench", "stacked", "ranks"):
        assert re.search(rf"^\| {part} \| .+ \| passed \| \d+ s \| \d+ s \|$", page, re.M), part
        assert "    python " in section(page, part)  # its commands
    assert re.search(r"\| test_speed\.py::test_cuda_runs_match_the_cpu \| skipped: ", page)
    bench = section(page, "bench")
    for row in ("mnist | mtltrain, 1 thread", "mnist | usual way, 2 threads",
                "two_slope | mtltrain, 2 threads"):  # fmt: skip
        assert re.search(rf"\| {row} \| {NUMBER} (samples|steps)/s \| {NUMBER} \|", bench), row
    stacked = section(page, "stacked")
    assert re.search(rf"\| default launcher, 2 jobs \| 2 \| {NUMBER} s \|", stacked)
    targets = page.split("Targets (issue 27", 1)[1].split("\n## ", 1)[0]
    assert re.search(
        rf"\| MNIST samples/s, mtltrain, \d threads? .+ \| {NUMBER}× \| ≥ 20× \|", targets
    )
    assert re.search(rf"\| runs/s of the stacked, N = 2 sweep .+ \| {NUMBER}× \| ≥ 15× \|", targets)
    assert re.search(rf"\| stacked, N = 2 \| 2 \| {NUMBER} s \| {NUMBER} \| {NUMBER}× \|", stacked)
    assert re.search(
        rf"\| §5B MNIST conv net \(vmap\) \| {NUMBER} µs \(\d+\) \| {NUMBER} µs", stacked
    )
    ranks = section(page, "ranks")
    assert re.search(rf"\| one process \| 1 \(no process group\) \| {NUMBER} \| {NUMBER} \|", ranks)
    assert re.search(rf"\| torchrun --nproc_per_node=2 \| 2 \(gloo\) \| {NUMBER} \|", ranks)
    assert re.search(rf"\| 2 process\(es\) \| gloo \| right \| {NUMBER} \|", ranks)
    assert str(tmp_path) not in page and str(REPO) not in page  # no machine's paths
    alone = json.loads((work / "ranks_one.json").read_text())  # scripts/bench_ranks.py's
    assert alone["ms_per_step"] > 0 and alone["processes"] == 1 and alone["backend"] is None
    assert alone["bytes_per_step"] == 0 and alone["collectives_per_step"] == 0  # nothing sent
    assert len(alone["first_step"]["losses"]) == 2
    after_first = torch.load(work / "ranks_one.pt")  # the parameters after the first step
    assert after_first.keys() and all(p.isfinite().all() for p in after_first.values())


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (within a few seconds)."""
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


# a process that starts another in a session of its own, as torchrun starts its workers
HANGS = """import subprocess, sys, time
grandchild = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(300)"
subprocess.Popen([sys.executable, "-c", grandchild, sys.argv[1]], start_new_session=True)
time.sleep(300)
"""


def parts_that_fail(folder: Path) -> list:
    """A part that exits with an error, one that outlives its limit (and started a process of
    its own: its pid goes to folder/grandchild.pid), one whose measurement is wrong, one that
    passes."""
    import device_check as dc

    (folder / "hangs.py").write_text(HANGS)

    def command(*args: str):
        return lambda check: [dc.python(*args)]

    def read(check):
        return dc.Report(["| a | 1 |"])

    def wrong(check):
        return dc.Report(["| a | 0 |"], ["a rate is not > 0"])

    hangs = command(str(folder / "hangs.py"), str(folder / "grandchild.pid"))
    return [
        dc.Part(
            "crashes", "exits with an error", 30, command("-c", "raise SystemExit('bad: 3')"), read
        ),
        dc.Part("hangs", "outlives its limit", 3, hangs, read),
        dc.Part("wrong", "measures wrong", 30, command("-c", "pass"), wrong),
        dc.Part("fine", "passes", 30, command("-c", "print('fine')"), read),
    ]


def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    import device_check as dc

    monkeypatch.setattr(dc, "PARTS", parts_that_fail(tmp_path))
    out, work = tmp_path / "out", tmp_path / "work"
    start = time.monotonic()
    status = dc.main(["--dry-run", "--out", str(out), "--work", str(work)])
    assert status == 1
    assert time.monotonic() - start < 60  # the hanging part was stopped at its limit
    assert gone(int((tmp_path / "grandchild.pid").read_text()))  # killed with the part's command
    page = (out / "gpu.md").read_text()
    rows = {line.split(" | ")[0][2:]: line for line in page.splitlines() if " | " in line}
    assert "FAILED: python" in rows["crashes"] and "exit status 1: bad: 3" in rows["crashes"]
    assert "FAILED: …/hangs.py: stopped at the part's time limit" in rows["hangs"]
    assert "| 9 s |" in rows["hangs"]  # its limit, × the dry run's 3
    assert "FAILED: a rate is not > 0" in rows["wrong"]
    assert "| passed |" in rows["fine"]
    assert "| a | 0 |" in section(page, "wrong") and "| a | 1 |" in section(page, "fine")
    said = capsys.readouterr().err
    assert "device_check: fine: passed" in said and "device_check: wrong: a rate" in said


def test_ctrl_c_stops_the_running_command_and_what_it_started(tmp_path):
    import device_check as dc

    (tmp_path / "hangs.py").write_text(HANGS)
    command = dc.python(str(tmp_path / "hangs.py"), str(tmp_path / "grandchild.pid"))
    pid_file = tmp_path / "grandchild.pid"

    def interrupt_once_it_runs() -> None:
        for _ in range(600):
            if pid_file.exists():
                break
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_it_runs, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        dc.run_command(command, 120, {}, tmp_path / "log")
    assert gone(int(pid_file.read_text()))


def test_a_dry_run_never_writes_the_published_page(capsys):
    import device_check as dc

    before = published_state()
    with pytest.raises(SystemExit) as stop:
        dc.main(["--dry-run", "--out", str(PUBLISHED.parent)])
    assert stop.value.code == 2
    assert (
        "error: --dry-run never writes docs/results: give another --out" in capsys.readouterr().err
    )
    assert published_state() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_without_a_gpu_only_the_dry_run_runs(capsys):
    import device_check as dc

    with pytest.raises(SystemExit) as stop:
        dc.main([])
    assert stop.value.code == 2
    assert "no CUDA GPU is visible: run it on a GPU machine, or with --dry-run" in (
        capsys.readouterr().err
    )


def test_the_docs_and_the_docstring_give_the_checks_sizes_and_limits():
    import device_check as dc

    limits = dc.duration(sum(part.limit_s for part in dc.PARTS))
    page = " ".join((REPO / "docs" / "performance.md").read_text().split())
    sizes = dc.GPU_SIZES
    assert f"({limits} in all;" in page
    stacked = (
        f"the default launcher's sweep of N = {sizes.stacked_jobs} jobs against a stacked sweep "
        f"of N = {sizes.stacked_size}, eager and with trainer.compile={sizes.compile_mode}"
    )
    assert f"({sizes.stacked_epochs} epochs a job): {stacked}" in page
    docstring = " ".join(dc.__doc__.split())
    assert f"The limits add up to {limits}." in docstring
    assert f"on the GPU, {sizes.stacked_epochs} epochs a job" in docstring
    assert stacked in docstring
