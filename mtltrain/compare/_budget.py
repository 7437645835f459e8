"""A time budget and the plan that fits it. `--budget 2h`, `30m`, `1h30m`, `90s`: a probe times
one epoch of the reference strategy and a few steps of every strategy (steps × the
reference's); a run of strategy s is then estimated at setup + E·epoch·ratio_s seconds, the
single-task runs at the reference's, all one after another (an upper bound where jobs stack or
run in parallel). The plan takes the most epochs up to the trainer's that fit, and where one
epoch of everything does not, leaves out the slowest strategies (never the reference ones)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mtltrain.compare._table import REFERENCES
from mtltrain.errors import ConfigError

BUDGET = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
PROBE_STEPS = 5  # training steps per strategy in the probe


def parse_budget(text: str) -> float:
    """`2h` → 7200.0 seconds; `1h30m`, `30m`, `90s`, `0.5h`."""
    match = BUDGET.fullmatch(text.strip())
    if not text.strip() or match is None or not any(match.groups()):
        raise ConfigError(
            f"--budget={text} is not allowed: give a duration such as 2h, 30m, 1h30m or 90s"
        )
    hours, minutes, seconds = (float(g or 0) for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise ConfigError(f"--budget={text} is not allowed: give a duration above zero")
    return total


def said(seconds: float) -> str:
    """A duration as --budget takes it, rounded up: to the second under 10 minutes (40s,
    1m30s), else to the minute (12m, 1h05m)."""
    whole = math.ceil(seconds)
    if whole < 600:
        return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


@dataclass(frozen=True)
class Probe:
    """What the probe measured: a run's setup (its wall time beyond training), the reference's
    epoch, each strategy's step time × the reference's, and how long the probe took."""

    setup_s: float
    epoch_s: float
    ratios: dict[str, float]
    wall_s: float = 0.0  # the probe's own wall time

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @staticmethod
    def load(path: Path) -> Probe:
        return Probe(**json.loads(path.read_text()))

    def estimate(
        self, strategies: Sequence[str], runs_alone: int, seeds: int, epochs: int
    ) -> float:
        """Seconds for the strategies × seeds and `runs_alone` single-task runs, at `epochs`,
        one after another."""
        unknown = max(self.ratios.values(), default=1.0)  # a strategy whose probe failed
        per_epoch = seeds * sum(self.ratios.get(s, unknown) for s in strategies) + runs_alone
        setups = (seeds * len(strategies) + runs_alone) * self.setup_s
        return setups + epochs * self.epoch_s * per_epoch


@dataclass(frozen=True)
class Plan:
    """What the comparison runs: the strategies, the epochs, and the line that says so."""

    strategies: list[str]
    epochs: int
    line: str


def fit(
    probe: Probe, strategies: Sequence[str], seeds: int, runs_alone: int, most: int, budget: float
) -> Plan:
    """The most epochs up to `most` at which everything fits in `budget` seconds (what is left
    after the probe); where one epoch does not, the slowest strategies left out until it does
    (the reference ones kept); a strategy whose probe run failed is left out."""
    left = budget - probe.wall_s  # the probe's time is the budget's too
    failed = [s for s in strategies if s not in probe.ratios and s not in REFERENCES]
    kept = [s for s in strategies if s not in failed]  # their runs would fail as well
    slowest = sorted((s for s in kept if s not in REFERENCES), key=lambda s: -probe.ratios[s])
    while probe.estimate(kept, runs_alone, seeds, 1) > left and slowest:
        kept.remove(slowest.pop(0))
    if probe.estimate(kept, runs_alone, seeds, 1) > left:
        need = said(probe.wall_s + probe.estimate(kept, runs_alone, seeds, 1))
        raise ConfigError(
            f"--budget={said(budget)} is not allowed: the probe and one epoch of "
            f"{', '.join(kept)} × {seeds} seed(s) and the single-task runs take about {need} "
            "here: give at least that, fewer --seeds or --strategies"
        )
    fits = [e for e in range(2, most + 1) if probe.estimate(kept, runs_alone, seeds, e) <= left]
    epochs = max(fits, default=1)
    dropped = [s for s in strategies if s not in kept and s not in failed]
    left_out = f", leaving out the slowest: {', '.join(dropped)}" if dropped else ""
    if failed:
        left_out += f", leaving out those whose probe run failed: {', '.join(failed)}"
    estimate = said(probe.estimate(kept, runs_alone, seeds, epochs))
    line = (
        f"budget {said(budget)}: {len(kept)} of {len(strategies)} strategies{left_out}; "
        f"{epochs} epoch{'s' if epochs != 1 else ''} (of {most}) per run; about {estimate} "
        f"for {seeds * len(kept) + runs_alone} runs one after another "
        f"(probe: {said(probe.wall_s)}; an epoch of {next(s for s in REFERENCES if s in kept)} "
        f"{probe.epoch_s:.1f} s, a run's setup {probe.setup_s:.1f} s)"
    )
    return Plan(kept, epochs, line)
