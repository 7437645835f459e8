"""docs/your-problem.md: its files are examples/houses/'s, and its commands run, in order, on a
copy of that folder (each training run shortened to two epochs)."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_process, run_cli, run_report

from mtltrain import evaluate

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "your-problem.md"
EXAMPLE = ROOT / "examples" / "houses"
FILE_BLOCK = re.compile(r"^`([\w/.]+)`:\n\n```\w+\n(.*?)\n```$", re.S | re.M)
SHORT = ["trainer.epochs=2", "trainer.progress=false"]


def page_files() -> dict[str, str]:
    return dict(FILE_BLOCK.findall(PAGE.read_text()))


def page_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)\n```", PAGE.read_text(), re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line != "cd houses"]


def test_the_pages_files_are_the_examples():
    files = page_files()
    assert set(files) == {
        "housing/data.py", "housing/model.py", "housing/losses.py", "housing/metrics.py",
        "conf/dataset/houses.yaml", "conf/model/houses.yaml",
    }  # fmt: skip
    for name, text in files.items():
        assert (EXAMPLE / name).read_text().rstrip() == text, name


def run(command: list[str], cwd: Path) -> None:
    program, *args = command
    if program == "mtltrain":
        done = run_cli([*args, *SHORT], cwd)
    elif program == "mtltrain-report":
        done = run_report(args, cwd)
    else:
        main = {"mtltrain-eval": evaluate.main, "mtltrain-export": evaluate.export_main}[program]
        done = in_process(main, [program, *args], cwd)
    assert done.returncode == 0, f"{shlex.join(command)}: {done.stderr}"


@pytest.mark.xdist_group("your_problem")
def test_the_pages_commands_run_on_a_copy_of_the_example(tmp_path):
    folder = tmp_path / "houses"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    commands = page_commands()
    assert [c[0] for c in commands].count("mtltrain") == 5
    for command in commands:
        run(command, folder)
    runs = folder / "runs"
    first = json.loads((runs / "first" / "results.json").read_text())
    assert first["status"] == "completed"
    assert first["directions"]["price/within_ten_percent"] == 1
    assert {"test/price/rmse", "test/sold_30d/binary_auroc"} <= set(first["metrics"])
    assert not list((runs / "check").rglob("*.pt"))  # debug=fast writes no checkpoint
    assert len(list((runs / "compare").glob("*/results.json"))) == 6
    assert (runs / "logged" / "csv" / "metrics.csv").is_file()
    assert json.loads((runs / "logged" / "results.json").read_text())["tags"] == [
        "houses", "baseline"
    ]  # fmt: skip
    assert (runs / "first" / "eval" / "test.json").is_file()
    assert (folder / "exported" / "model.safetensors").is_file()
    assert (runs / "tune" / "optimization_results.yaml").is_file()


def test_the_examples_data_is_what_its_script_writes(tmp_path):
    subprocess.run([sys.executable, EXAMPLE / "make_data.py"], cwd=tmp_path, check=True)
    assert (tmp_path / "houses.csv").read_bytes() == (EXAMPLE / "houses.csv").read_bytes()
