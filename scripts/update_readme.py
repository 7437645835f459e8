"""Copy the generated results in docs/results/*.md into README.md, so that every number in the
README comes from a run.

    python scripts/update_readme.py

A generated section of README.md sits between `<!-- generated: docs/results/NAME.md -->` and
`<!-- end generated -->`; its text is replaced by that file with its title one level deeper
(`# T` → `### T`) and its pictures' links made relative to the repository root. The
reproduce_*.py scripts and `bench.py --publish` call this after writing their file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECTION = re.compile(
    r"(<!-- generated: (?P<source>[^ ]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL
)


def embedded(source: Path, root: Path = REPO) -> str:
    """The generated file as a README section: titles deeper, picture links from `root`."""
    text = source.read_text().strip()
    text = re.sub(r"^(#+) ", r"\1## ", text, flags=re.MULTILINE)
    folder = source.parent.relative_to(root).as_posix()
    return re.sub(r"\]\(([^/():]+\.png)\)", rf"]({folder}/\1)", text)


def update(root: Path = REPO) -> list[str]:
    """Refresh every generated section of `root`/README.md; returns the sources copied."""
    readme = root / "README.md"
    copied: list[str] = []

    def refill(match: re.Match[str]) -> str:
        source = root / match["source"]
        if not source.is_file():
            return match[0]  # not produced yet: leave what is there
        copied.append(match["source"])
        return f"{match[1]}{embedded(source, root)}\n{match[4]}"

    readme.write_text(SECTION.sub(refill, readme.read_text()))
    return copied


if __name__ == "__main__":
    sources = update()
    print("README.md: " + (", ".join(sources) or "no generated section found"), file=sys.stderr)
