"""The README's results and benchmark tables are the files the scripts wrote, not typed in."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import update_readme  # noqa: E402


def test_readme_sections_are_the_generated_files():
    readme = (REPO / "README.md").read_text()
    sections = list(update_readme.SECTION.finditer(readme))
    assert {m["source"] for m in sections} >= {
        "docs/results/bench.md", "docs/results/two_slope.md", "docs/results/mnist.md",
        "docs/results/sin.md", "docs/results/seg.md",
    }  # fmt: skip
    for match in sections:
        source = REPO / match["source"]
        assert source.is_file(), f"{match['source']} is missing: run the script that writes it"
        assert match["body"] == update_readme.embedded(source) + "\n", (
            f"README.md differs from {match['source']}: run python scripts/update_readme.py"
        )


def test_update_embeds_the_file_with_deeper_titles_and_picture_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n| x |\n| 1 |\n\n![plot](a.png)\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- generated: docs/a.md -->\nold\n<!-- end generated -->\n"
        "<!-- generated: docs/missing.md -->\nkept\n<!-- end generated -->\nend\n"
    )
    assert update_readme.update(tmp_path) == ["docs/a.md"]
    want = (
        "intro\n<!-- generated: docs/a.md -->\n### Title\n\n| x |\n| 1 |\n\n"
        "![plot](docs/a.png)\n<!-- end generated -->\n"
        "<!-- generated: docs/missing.md -->\nkept\n<!-- end generated -->\nend\n"
    )
    assert readme.read_text() == want
    update_readme.update(tmp_path)
    assert readme.read_text() == want  # a second pass changes nothing
