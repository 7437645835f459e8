"""The commands on the pages of the papers' tables (docs/results/papers.md and the benchmark
pages it links) stay valid: every `mtltrain` line and every `scripts/compare_strategies.py`
line composes with the settings it names, and every option of a swept config group exists."""

import itertools
import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mtltrain.compare._cli import chosen_strategies
from mtltrain.config._compose import compose_checked, config_groups

REPO = Path(__file__).resolve().parent.parent
PAGES = ["papers", "nyuv2", "cityscapes", "qm9", "celeba"]
BASH = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)
# the learning-rate schedule each page says its commands run with (the papers' protocols)
STEP_LR = {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 100, "gamma": 0.5}
PLATEAU = {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau"}
SCHEDULES = {
    "nyuv2": STEP_LR,
    "cityscapes": STEP_LR,
    "qm9": PLATEAU | {"factor": 0.7, "patience": 5, "min_lr": 1e-5},
}
# the strategies each page's mtltrain commands clip (the shared gradient to norm 1), as the
# authors' codes do: Nash-MTL's code clips Nash-MTL only, FAMO's (CelebA) PCGrad, GradDrop, CAGrad
NASH, SURGERY = {"nash_mtl"}, {"pcgrad", "graddrop", "cagrad"}
CLIPPED = {"nyuv2": NASH, "cityscapes": NASH, "qm9": NASH, "celeba": SURGERY}
CLIP = ["trainer.grad_clip=1", "trainer.grad_clip_over=shared"]


def command_lines(page: str) -> list[list[str]]:
    """The words of each command of the page's bash blocks (continued lines joined)."""
    text = (REPO / "docs" / "results" / f"{page}.md").read_text()
    lines = []
    for block in BASH.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(words)
    return lines


def overrides_of(words: list[str]) -> list[str] | None:
    """The overrides a training command composes, Hydra's own settings left out; None for a
    line that trains nothing (mtltrain-report, ...)."""
    if words[0] == "mtltrain":
        settings = [w for w in words[1:] if w != "-m"]
    elif words[:2] == ["python", "scripts/compare_strategies.py"]:
        flags = dict(zip(words[2::2], words[3::2], strict=False))
        settings = [f"dataset={flags['--dataset']}"]
        settings += [w for flag, w in itertools.pairwise(words) if flag == "--override"]
        if "--epochs" in flags:
            settings.append(f"trainer.epochs={flags['--epochs']}")
        if "--strategies" in flags:
            settings.append(f"weighting={flags['--strategies']}")
    else:
        return None
    return [s for s in settings if not s.startswith("hydra.")]


def first_of_each_sweep(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The run a sweep starts with (each comma list at its first value), and the swept config
    groups' other options."""
    groups = config_groups()
    run, swept = [], {}
    for override in overrides:
        key, value = override.split("=", 1)
        values = value.split(",") if not value.startswith("[") else [value]
        run.append(f"{key}={values[0]}")
        if key in groups:
            swept[key] = values
    return run, swept


def all_commands() -> list[tuple[str, list[str]]]:
    """(page, overrides) of every training command of the pages."""
    return [
        (page, overrides)
        for page in PAGES
        for words in command_lines(page)
        if (overrides := overrides_of(words)) is not None
    ]


COMMANDS = all_commands()


def test_every_benchmark_page_gives_commands():
    pages = {page for page, _ in COMMANDS}
    assert pages == set(PAGES) - {"papers"}
    for page, overrides in COMMANDS:
        assert "trainer.device=cuda" in overrides, f"{page}: {overrides} is not a GPU command"


@pytest.mark.parametrize(
    ("page", "overrides"), COMMANDS, ids=[f"{page}-{i}" for i, (page, _) in enumerate(COMMANDS)]
)
def test_the_command_composes(page, overrides):
    run, swept = first_of_each_sweep(overrides)
    cfg = compose_checked(run)
    groups = config_groups()
    for group, options in swept.items():
        unknown = set(options) - set(groups[group])
        assert not unknown, f"{page}: {group}={','.join(sorted(unknown))} does not exist"
    for override in run:  # each setting arrived where the page says it does
        key, value = override.split("=", 1)
        if key not in groups:
            wanted = OmegaConf.create(f"value: {value}").value  # read as Hydra reads it
            assert OmegaConf.select(cfg, key) == wanted, f"{page}: {override}"
    schedule = cfg.trainer.lr_scheduler
    schedule = None if schedule is None else OmegaConf.to_container(schedule)
    assert schedule == SCHEDULES.get(page), f"{page}: trainer.lr_scheduler={schedule}"


@pytest.mark.parametrize("page", sorted(CLIPPED))
def test_the_strategies_the_authors_clip_are_clipped(page):
    lines = [words for words in command_lines(page) if words[0] == "mtltrain"]
    seen = set()
    for words in lines:
        strategies = {s for w in words if w.startswith("weighting=") for s in w[10:].split(",")}
        if all(setting in words for setting in CLIP):
            assert strategies <= CLIPPED[page], f"{page} clips what its authors do not: {words}"
        else:
            assert not strategies & CLIPPED[page], f"{page} does not clip: {words}"
        seen |= strategies
    assert CLIPPED[page] <= seen, f"{page}: no command runs {CLIPPED[page] - seen}"


def test_the_compare_strategies_lines_name_strategies_the_command_takes():
    """mtltrain-compare's check of --strategies (known names, `fixed` or `equal` among them)
    passes on every compare_strategies.py line of the pages: a failing one exits before any
    run."""
    lines = [
        w
        for page in PAGES
        for w in command_lines(page)
        if w[1:2] == ["scripts/compare_strategies.py"]
    ]
    assert lines
    for words in lines:
        flags = dict(zip(words[2::2], words[3::2], strict=False))
        assert "fixed" in chosen_strategies(flags.get("--strategies"))
