"""docs/theory.md is the project's own theory page: every citation of a section (`§5A`,
`docs/theory.md#<anchor>`) in the tracked files names a heading of it, and no file cites a
document the project does not hold."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
THEORY = REPO / "docs" / "theory.md"
PRIVATE_NOTE = "BACK" + "GROUND"  # spelt in two so that this file does not cite it either
SECTION_LABEL = re.compile(r"^#+ (\d+[A-Z]?)\. ", re.MULTILINE)
CITED_LABEL = re.compile(r"§(\d+[A-Z]?)")
CITED_ANCHOR = re.compile(r"docs/theory\.md#([\w-]+)")


def tracked_texts() -> dict[str, str]:
    """Every file git tracks that reads as UTF-8 text, by path."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, text=True
    ).stdout
    texts = {}
    for name in filter(None, listed.split("\0")):
        try:
            texts[name] = (REPO / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):  # pictures; a file deleted, not staged
            continue
    return texts


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings() -> list[str]:
    return re.findall(r"^#+ (.+)$", THEORY.read_text(), flags=re.MULTILINE)


def test_no_file_cites_the_private_note():
    cited = [name for name, text in tracked_texts().items() if PRIVATE_NOTE in text]
    assert cited == [], f"{cited} cite {PRIVATE_NOTE}: cite docs/theory.md instead"


def test_every_cited_section_is_a_heading_of_the_theory_page():
    labels = set(SECTION_LABEL.findall(THEORY.read_text()))
    anchors = {anchor(h) for h in headings()}
    assert {"1", "2", "3", "5", "5A", "5B", "5C", "5D", "6"} <= labels
    texts = tracked_texts()
    assert "docs/theory.md" in texts
    missing = [
        f"{name}: {cited}"
        for name, text in texts.items()
        for cited in {f"§{x}" for x in CITED_LABEL.findall(text) if x not in labels}
        | {f"#{x}" for x in CITED_ANCHOR.findall(text) if x not in anchors}
    ]
    assert missing == [], f"cited sections that docs/theory.md has no heading for: {missing}"


def test_anchor_is_githubs():
    assert anchor("5A. Two-slope regression") == "5a-two-slope-regression"
    assert anchor("6. Mistakes: in the source (K = 2)") == "6-mistakes-in-the-source-k--2"
