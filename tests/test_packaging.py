"""A non-editable install carries the Hydra configs inside the package."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, ROOT],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]  # pip's own reason (its build isolation
    return target  # fetches setuptools and wheel from the package index)


def test_installed_package_finds_its_configs(installed, tmp_path):
    code = "import mtltrain, mtltrain.config as c; print(mtltrain.__file__); print(c.config_dir())"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(installed), "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    module, configs = map(Path, proc.stdout.split())
    assert module.is_relative_to(installed)
    assert configs == installed / "mtltrain" / "conf"
    for group in ("dataset", "model", "trainer", "weighting"):
        assert sorted(p.name for p in (configs / group).glob("*.yaml")) == sorted(
            p.name for p in (ROOT / "conf" / group).glob("*.yaml")
        )


def test_installed_package_has_every_module(installed):
    """Every module of the source tree is in the install (a subpackage missing from
    pyproject.toml's `packages` would be left out)."""
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "mtltrain").rglob("*.py")}
    assert source <= {p.relative_to(installed).as_posix() for p in installed.rglob("*.py")}
