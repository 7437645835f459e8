"""Copy the generated results in docs/results/*.md into the README and the documentation pages
that embed them, so that every number there comes from a run.

    python scripts/update_readme.py

A generated section sits between `<!-- generated: docs/results/NAME.md -->` and
`<!-- end generated -->` in README.md or a page under docs/; its text is replaced by that file
with its titles one level deeper (`# T` → `### T`) and its pictures' links made relative to the
page. `<!-- generated: docs/results/NAME.md tables=N -->` takes the file only up to the end of
its N-th table. The reproduce_*.py scripts, `bench.py --publish` and `bench_stacked.py
--publish` call this after writing their file.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTION = re.compile(
    r"(<!-- generated: (?P<source>[^ ]+)(?: tables=(?P<tables>\d+))? -->\n)(?P<body>.*?)"
    r"(?P<end><!-- end generated -->)",
    re.DOTALL,
)


def pages(root: Path = REPO) -> list[Path]:
    """The files that may hold generated sections: README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def first_tables(text: str, tables: int) -> str:
    """`text` up to the end of its `tables`-th table (blocks separated by blank lines)."""
    kept, seen = [], 0
    for block in text.split("\n\n"):
        kept.append(block)
        seen += block.startswith("|")
        if seen == tables:
            break
    return "\n\n".join(kept)


def embedded(source: Path, page: Path, tables: int | None = None) -> str:
    """The generated file as a section of `page`: titles deeper, picture links from the page's
    folder; with `tables`, only up to the end of that many tables."""
    text = source.read_text().strip()
    if tables:
        text = first_tables(text, tables)
    text = re.sub(r"^(#+) ", r"\1## ", text, flags=re.MULTILINE)
    folder = Path(os.path.relpath(source.parent, page.parent)).as_posix()
    return re.sub(r"\]\(([^/():]+\.png)\)", rf"]({folder}/\1)", text)


def expected(match: re.Match[str], page: Path, root: Path = REPO) -> str | None:
    """What a generated section of `page` must hold; None where its file is not produced yet."""
    source = root / match["source"]
    if not source.is_file():
        return None
    return embedded(source, page, int(match["tables"]) if match["tables"] else None) + "\n"


def update(root: Path = REPO) -> list[str]:
    """Refresh every generated section of README.md and the pages under `root`/docs; returns
    the sources copied, once per section."""
    copied: list[str] = []
    for page in pages(root):
        if not page.is_file():
            continue

        def refill(match: re.Match[str], page: Path = page) -> str:
            body = expected(match, page, root)
            if body is None:
                return match[0]  # not produced yet: leave what is there
            copied.append(match["source"])
            return f"{match[1]}{body}{match['end']}"

        text = page.read_text()
        new = SECTION.sub(refill, text)
        if new != text:
            page.write_text(new)
    return copied


if __name__ == "__main__":
    sources = update()
    print("updated: " + (", ".join(sources) or "no generated section found"), file=sys.stderr)
