"""The results and benchmark tables of the README and the documentation pages are the files the
scripts wrote, not typed in, the README's first output is what the default command prints, and
the example commands of *Getting started* run."""

import re
import shlex
import sys
from itertools import product
from pathlib import Path

import pytest
from conftest import run_cli, write_fake_mnist

from mtltrain.build import build_job
from mtltrain.config._compose import compose_checked

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import update_readme  # noqa: E402


def test_generated_sections_are_the_generated_files():
    sources = []
    for page in update_readme.pages():
        for match in update_readme.SECTION.finditer(page.read_text()):
            name = page.relative_to(REPO)
            source = REPO / match["source"]
            assert source.is_file(), f"{match['source']} is missing: run the script that writes it"
            assert match["body"] == update_readme.expected(match, page), (
                f"{name} differs from {match['source']}: run python scripts/update_readme.py"
            )
            sources.append((name.as_posix(), match["source"]))
    assert {
        ("README.md", "docs/results/bench.md"),
        ("docs/performance.md", "docs/results/bench.md"),
        ("docs/scaling-out.md", "docs/results/stacked.md"),
    } <= set(sources)


def test_update_embeds_the_file_with_deeper_titles_and_picture_links(tmp_path):
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "a.md").write_text(
        "# Title\n\n| x |\n| 1 |\n\n![plot](a.png)\n\n| y |\n| 2 |\n"
    )
    readme, page = tmp_path / "README.md", tmp_path / "docs" / "page.md"
    readme.write_text(
        "intro\n<!-- generated: docs/results/a.md -->\nold\n<!-- end generated -->\n"
        "<!-- generated: docs/missing.md -->\nkept\n<!-- end generated -->\nend\n"
    )
    page.write_text("<!-- generated: docs/results/a.md tables=1 -->\n<!-- end generated -->\n")
    assert update_readme.update(tmp_path) == ["docs/results/a.md", "docs/results/a.md"]
    want = (
        "intro\n<!-- generated: docs/results/a.md -->\n### Title\n\n| x |\n| 1 |\n\n"
        "![plot](docs/results/a.png)\n\n| y |\n| 2 |\n<!-- end generated -->\n"
        "<!-- generated: docs/missing.md -->\nkept\n<!-- end generated -->\nend\n"
    )
    want_page = (
        "<!-- generated: docs/results/a.md tables=1 -->\n### Title\n\n| x |\n| 1 |\n"
        "<!-- end generated -->\n"
    )
    assert readme.read_text() == want
    assert page.read_text() == want_page  # the first table only, links from docs/
    update_readme.update(tmp_path)
    assert readme.read_text() == want and page.read_text() == want_page  # a second pass: same


FENCED = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def run_it() -> tuple[str, str]:
    """README's *Run it* section, and the output shown in it: the table the default run ends
    with."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Run it\n", 1)[1].split("\n## ", 1)[0]
    output = next(body for language, body in FENCED.findall(section) if not language)
    return section, output.rstrip("\n")


def test_run_it_quotes_its_own_table():
    section, table = run_it()
    header, *rows = table.splitlines()
    assert header.split()[-2:] == ["train", "test"] and len(rows) == 2
    train = [row.split()[-2] for row in rows]
    assert f"`train` column: {train[0]} and {train[1]}" in section


@pytest.mark.slow  # the default run: 1500 epochs, half a minute to a minute
def test_run_it_shows_what_the_default_command_prints(tmp_path):
    done = run_cli([], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip("\n").endswith("\n" + run_it()[1]), (
        f"README.md's *Run it* table is not what `mtltrain` printed:\n{done.stdout[-400:]}"
    )


def example_commands() -> list[list[str]]:
    """The overrides of every `mtltrain` line of the Examples of *Getting started*, one list
    per run (a sweep's comma lists expanded)."""
    page = (REPO / "docs" / "getting-started.md").read_text()
    block = page.split("## Examples", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    runs = []
    for line in block.splitlines():
        words = shlex.split(line.split("#", 1)[0])
        if words[:1] != ["mtltrain"] or "--cfg" in words:
            continue
        overrides = [w for w in words[1:] if w != "-m"]
        if "-m" in words:
            keys, values = zip(*(o.split("=", 1) for o in overrides), strict=True)
            for pick in product(*(v.split(",") for v in values)):
                runs.append([f"{k}={v}" for k, v in zip(keys, pick, strict=True)])
        else:
            runs.append(overrides)
    return runs


def test_every_example_command_builds(tmp_path):
    """Each example composes, passes the checks and builds its trainer (MNIST from a small
    stand-in): a renamed setting or a strategy the model cannot take fails here."""
    root = write_fake_mnist(tmp_path / "mnist")
    runs = example_commands()
    assert len(runs) >= 20 and runs[0] != ["weighting=upgrad"]
    for overrides in runs:
        kept = [o for o in overrides if not o.startswith(("dataset.root=", "hydra."))]
        if "root" in compose_checked(kept).dataset:  # the MNIST data sets
            kept += [f"dataset.root={root}", "dataset.download=false"]
        build_job(compose_checked(kept))


def test_the_strategy_count_is_the_number_of_weighting_configs():
    """The front door's "N strategies" counts conf/weighting/."""
    count = len(list((REPO / "conf" / "weighting").glob("*.yaml")))
    assert f"{count} strategies" in (REPO / "README.md").read_text()
