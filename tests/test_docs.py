"""The documentation site builds with warnings as errors (broken links and anchors fail), its
strategy page has a generated section per weighting config, every results file is a page, and
the README stays a front door whose links lead somewhere."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def test_the_site_builds_strictly_with_a_section_per_strategy(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    page = (tmp_path / "strategies" / "index.html").read_text()
    for config in sorted((REPO / "conf" / "weighting").glob("*.yaml")):
        assert f'id="weighting{config.stem}"' in page, f"no section for weighting={config.stem}"
    api = (tmp_path / "api" / "index.html").read_text()
    assert "shared_parameters" in api and "gramian_weights" in api  # mkdocstrings rendered them


def nav_pages(items) -> list[str]:
    """Every page of mkdocs.yml's nav."""
    pages = []
    for item in items:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_results_file_is_a_page_of_the_site():
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    pages = set(nav_pages(config["nav"]))
    results = {f"results/{p.name}" for p in (REPO / "docs" / "results").glob("*.md")}
    assert results <= pages  # gpu.md too: a page until a GPU machine's check replaces it


def test_the_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) < 200
    assert "--index-url https://download.pytorch.org/whl/cpu" in text  # the CPU-only install
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install --quiet ".[test]"' in ci and "\npytest\n" in ci
    assert 'pip install ".[test]" && ruff check . && pytest' in text  # the command CI runs
    assert "mkdocs serve" in text and "mkdocs build --strict" in text
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 10
    missing = [link for link in links if not (REPO / link).exists()]
    assert missing == [], f"the README links to files that do not exist: {missing}"
