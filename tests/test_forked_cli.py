"""tests/forked_cli.py stands in for a process of the `mtltrain` console script: the same
output, exit status and time limit."""

import subprocess
from pathlib import Path

import forked_cli
import pytest
from conftest import MTLTRAIN


@pytest.mark.parametrize(
    "args",
    [
        ["trainer.epochs=0"],  # a config error: exit 2, one line on stderr
        ["--cfg", "job", "trainer.epochs=3"],  # Hydra prints the config: exit 0, on stdout
        ["trainer.epochs=abc"],  # Hydra's own parse error, turned into one line
    ],
)
def test_a_forked_run_says_and_exits_what_a_process_does(tmp_path: Path, args: list[str]):
    assert forked_cli.forks(tmp_path)
    argv = [MTLTRAIN, *args, f"hydra.run.dir={tmp_path / 'run'}"]
    forked = forked_cli.run(argv, tmp_path, timeout=120)
    alone = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        alone.returncode,
        alone.stdout,
        alone.stderr,
    )


def test_a_forked_run_past_its_time_is_killed(tmp_path: Path):
    argv = [MTLTRAIN, "trainer.epochs=100000", f"hydra.run.dir={tmp_path / 'run'}"]
    with pytest.raises(subprocess.TimeoutExpired):
        forked_cli.run(argv, tmp_path, timeout=3)
    # the server goes on
    done = forked_cli.run([MTLTRAIN, "trainer.epochs=0"], tmp_path, timeout=120)
    assert done.returncode == 2


def test_exit_codes_are_the_interpreters(capsys):
    assert [forked_cli.exit_code(c) for c in (None, 0, 3)] == [0, 0, 3]
    assert forked_cli.exit_code("stopped") == 1
    assert capsys.readouterr().err == "stopped\n"


def test_a_missing_folder_or_a_changed_environment_runs_a_process(tmp_path, monkeypatch):
    assert not forked_cli.forks(tmp_path / "nowhere")
    monkeypatch.setenv("MTLTRAIN_TEST_SETTING", "1")  # any variable an import might read
    assert not forked_cli.forks(tmp_path)
    monkeypatch.delenv("MTLTRAIN_TEST_SETTING")
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "another")  # read by no import
    assert forked_cli.forks(tmp_path)
