"""The *Weighting strategies* page, generated: one section per config in conf/weighting/, from
the config (its header comment, its settings with their comments) and the docstring of the class
it builds (formula, notes, `Paper:`, `Scale:`, `Logs:`), with its cost from the last benchmark
(docs/results/bench.json).

mkdocs.yml names this file under `hooks:`; `on_page_markdown` replaces the line
`<!-- strategies -->` of docs/strategies.md with the sections.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "conf" / "weighting"
BENCH = REPO / "docs" / "results" / "bench.json"
MARKER = "<!-- strategies -->"
FIELDS = ("Paper", "Scale", "Logs")
# The meaning of a setting many strategies share, where its config gives none.
SHARED_MEANING = {
    "representation": "true: combine the gradients of the shared representation, the encoder's "
    "output (one pass through the encoder instead of K; see Kind above)",
    "seed": "of its own generator (the run's `seed` by default)",
}
SETTING = re.compile(r"^(?P<key>\w+):\s*(?P<value>[^#\n]*?)\s*(?:#\s*(?P<comment>.*))?$")


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    comment: str


@dataclass(frozen=True)
class Strategy:
    """What the page says of one `weighting=<name>`."""

    name: str
    summary: str  # the config's header comment
    rule: str  # the class docstring's first line
    notes: str
    paper: str | None
    scale: str
    logs: tuple[str, ...]  # what it logs besides `weight`
    kind: str  # loss, gradient or representation
    settings: tuple[Setting, ...]
    class_path: str


def config_chain(name: str) -> list[Path]:
    """The config file of `name` after the configs its `defaults` list puts first."""
    path = CONFIGS / f"{name}.yaml"
    defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults", [])
    bases = [d for d in defaults if d != "_self_"]
    return [p for base in bases for p in config_chain(base)] + [path]


def header(path: Path) -> str:
    """The comment lines a config file starts with, as one paragraph."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    return " ".join(lines)


def settings_of(chain: list[Path]) -> tuple[str, dict[str, Setting]]:
    """The `_target_` and the settings (value as written, comment) of a chain of configs, the
    later ones winning."""
    target, settings = "", {}
    for path in chain:
        for line in path.read_text().splitlines():
            match = SETTING.match(line)
            if not match or match["key"] == "defaults":
                continue
            if match["key"] == "_target_":
                target = match["value"]
                continue
            old = settings.get(match["key"])
            comment = match["comment"] or (old.comment if old else "")
            settings[match["key"]] = Setting(match["key"], match["value"], comment)
    return target, settings


def docstring_parts(cls: type) -> tuple[str, str, dict[str, str]]:
    """A strategy class docstring's first line, its notes, and its `Field: value` lines."""
    doc = inspect.getdoc(cls) or ""
    first, _, rest = doc.partition("\n")
    fields = {}
    notes = []
    for line in rest.strip().splitlines():
        field, sep, value = line.partition(": ")
        if sep and field.split(" (")[0] in FIELDS:  # `Logs (variant=loss):` for one variant
            fields[field] = value.rstrip(".")
        else:
            notes.append(line)
    missing = [f for f in FIELDS[1:] if f not in fields]
    if missing:
        raise ValueError(f"{cls.__qualname__}'s docstring lacks {missing} lines")
    return first, " ".join(notes).strip(), fields


def strategy(name: str) -> Strategy:
    target, settings = settings_of(config_chain(name))
    module, _, attr = target.rpartition(".")
    cls = getattr(importlib.import_module(module), attr)
    rule, notes, fields = docstring_parts(cls)
    written = {name: x.default for name, x in settings.items()}
    for field in [f for f in fields if " (" in f]:  # `Field (setting=value)`: where it holds
        setting, _, value = field.partition(" (")[2].rstrip(")").partition("=")
        if written.get(setting) == value:
            fields[field.partition(" (")[0]] = fields[field]
    if written.get("representation") == "true":
        kind = "representation"
    else:  # IMTL with `variant: loss` (imtl_l) combines no gradients
        loss_based = cls.level is None or written.get("variant") == "loss"
        kind = "loss" if loss_based else "gradient"
    logs = tuple(re.findall(r"`(\w+)`", fields["Logs"]))
    return Strategy(
        name, header(CONFIGS / f"{name}.yaml"), rule, notes, fields.get("Paper"),
        fields["Scale"], logs, kind, tuple(settings.values()), target,
    )  # fmt: skip


def strategies() -> list[Strategy]:
    """Every `weighting=` config, by name."""
    return [strategy(p.stem) for p in sorted(CONFIGS.glob("*.yaml"))]


def cost(name: str, bench: dict) -> str:
    """Its step time against `fixed` in the last benchmark, on both of its models."""
    measured = bench.get("strategies", {})
    mnist, wide = measured.get("mnist_mtl", {}), measured.get("wide", {})
    if name not in mnist.get("vs_fixed", {}):
        return "not measured by the last benchmark"
    return (
        f"{mnist['vs_fixed'][name]:.2f}× `fixed`'s step on the §5B MNIST model "
        f"({mnist['ms_per_step'][name]:.2f} ms), {wide['vs_fixed'][name]:.2f}× on three "
        f"regression tasks sharing {wide['shared_parameters']:,} parameters "
        f"({wide['ms_per_step'][name]:.2f} ms) ([Performance](performance.md))"
    )


def section(s: Strategy, bench: dict) -> str:
    lines = [f"## `weighting={s.name}`", "", s.summary, "", f"**Rule**: {s.rule}", ""]
    if s.notes:
        lines += [s.notes, ""]
    facts = [
        ("Kind", s.kind),
        ("Paper", s.paper or "none"),
        ("Scale", s.scale),
        ("Logs besides `weight`", ", ".join(f"`{q}`" for q in s.logs) or "nothing"),
        ("Cost per step", cost(s.name, bench)),
        ("Class", f"`{s.class_path}`"),
    ]
    lines += [f"- **{label}**: {value}" for label, value in facts]
    if s.settings:
        lines += ["", "| setting | default | meaning |", "|---|---|---|"]
        for x in s.settings:
            meaning = (x.comment or SHARED_MEANING.get(x.name, "")).replace("|", "\\|")
            lines.append(f"| `weighting.{x.name}` | `{x.default}` | {meaning} |")
    return "\n".join(lines) + "\n"


def page_sections() -> str:
    bench = json.loads(BENCH.read_text()) if BENCH.is_file() else {}
    return "\n".join(section(s, bench) for s in strategies())


def on_page_markdown(markdown: str, **_: object) -> str:
    """mkdocs hook (called with page, config and files too): the generated sections in place
    of the marker."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, page_sections())
