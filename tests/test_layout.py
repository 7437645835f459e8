"""The package's layers and public surface: no module imports from a layer above its own, the
layer packages' modules are private by name, and every exported name exists."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mtltrain"
# bottom to top: what a module may import is its own layer and those below it
LAYERS = {
    "building blocks": (
        "mtltrain.atomic", "mtltrain.constraints", "mtltrain.data", "mtltrain.distributed",
        "mtltrain.errors", "mtltrain.interrupts", "mtltrain.lean_torch",
        "mtltrain.lazy_exports", "mtltrain.losses", "mtltrain.metrics", "mtltrain.models",
        "mtltrain.processes", "mtltrain.step", "mtltrain.tasks", "mtltrain.weighting",
    ),
    "config": ("mtltrain.config",),
    "loop": ("mtltrain.loop",),
    "outputs": ("mtltrain.outputs",),
    "builder and report": ("mtltrain.build", "mtltrain.own_loop", "mtltrain.report"),
    "runs": ("mtltrain.run", "mtltrain.stacking", "mtltrain.torchrun", "mtltrain.evaluate"),
    "entry point": ("mtltrain.cli", "mtltrain.__main__"),
    "commands over the entry point": ("mtltrain.compare",),
}  # fmt: skip
PUBLIC_PACKAGES = ("mtltrain", "mtltrain.config", "mtltrain.loop", "mtltrain.outputs",
                   "mtltrain.data", "mtltrain.models", "mtltrain.weighting",
                   "mtltrain.weighting.solvers", "mtltrain.report",
                   "mtltrain.evaluate", "mtltrain.compare")  # fmt: skip


def layer_of(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS.values()):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found.append((".".join(parts).removesuffix(".__init__"), path))
    return found


def imported(path: Path) -> list[str]:
    """The mtltrain modules (or names) a module imports when it is imported."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            if node.module == "mtltrain":
                names += [f"mtltrain.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [n for n in names if n.startswith("mtltrain.")]


def test_every_module_has_a_layer():
    assert [m for m, _ in modules() if m != "mtltrain" and layer_of(m) is None] == []


def test_no_module_imports_from_a_layer_above_its_own():
    climbs = [
        f"{module} imports {name}"
        for module, path in modules()
        if module != "mtltrain"
        for name in imported(path)
        if layer_of(name) is not None and layer_of(name) > layer_of(module)
    ]
    assert climbs == []


@pytest.mark.parametrize("package", ["config", "loop", "outputs", "evaluate", "compare"])
def test_the_layer_packages_modules_are_private_by_name(package):
    names = [p.name for p in (PACKAGE / package).glob("*.py") if p.name != "__init__.py"]
    assert names and all(n.startswith("_") for n in names)


@pytest.mark.parametrize("package", PUBLIC_PACKAGES)
def test_every_exported_name_exists(package):
    module = importlib.import_module(package)
    assert module.__all__ and [n for n in module.__all__ if not hasattr(module, n)] == []


@pytest.mark.parametrize("package", ["mtltrain", "mtltrain.outputs", "mtltrain.evaluate"])
def test_a_lazily_exported_package_imports_its_names_on_use_and_knows_no_other(package):
    code = (
        f"import sys, {package} as p; before = 'torch' in sys.modules; "
        "[getattr(p, n) for n in p.__all__]; print(before, 'torch' in sys.modules, "
        "hasattr(p, 'no_such_name'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "False"]


def test_every_strategy_config_names_an_exported_strategy():
    import mtltrain.weighting as weighting

    configs = (PACKAGE.parent / "conf" / "weighting").glob("*.yaml")
    targets = {line.split(":", 1)[1].strip() for c in configs for line in c.read_text().splitlines()
               if line.startswith("_target_:")}  # fmt: skip
    assert targets and all(t.rpartition(".")[2] in weighting.__all__ for t in targets)
