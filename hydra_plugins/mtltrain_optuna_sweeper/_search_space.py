"""Hydra's sweep syntax as Optuna distributions, and a sampled value back as an override.

    key=choice(a, b, c) or key=a,b,c   categorical: one of the values
    key=range(start, stop[, step])     whole numbers (or multiples of a float step) from start,
                                       stop left out, as Hydra's basic sweeper takes them
    key=shuffle(range(...))            categorical over the range's values
    key=interval(low, high)            a float, uniform in [low, high]
    key=int(interval(low, high))       a whole number in [low, high]
    key=tag(log, interval(...))        the same on a log scale (uniform in log value)

Anything else is a fixed override, handed to every trial as given.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
)
from hydra.errors import HydraException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from mtltrain.config._sweep import check_swept
from mtltrain.errors import ConfigError


def search_space(overrides: Iterable[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The swept settings of `overrides` as distributions by key, and the other overrides as
    given; of two overrides of one key the later wins (the command line over
    hydra.sweeper.params)."""
    by_key: dict[str, Override] = {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.is_sweep_override():
            check_swept(o, optuna=True)  # hydra.sweeper.params' too, not only the command line's
        by_key[o.get_key_element()] = o
    space = {k: distribution(o) for k, o in by_key.items() if o.is_sweep_override()}
    fixed = [o.input_line for o in by_key.values() if not o.is_sweep_override()]
    return space, fixed


def distribution(o: Override) -> BaseDistribution:
    """The distribution a sweep override samples from (see the module)."""
    sweep = o.value()
    if isinstance(sweep, ChoiceSweep) or (isinstance(sweep, RangeSweep) and sweep.shuffle):
        return CategoricalDistribution(list(o.sweep_iterator()))
    if isinstance(sweep, RangeSweep):
        return _range(sweep)
    if isinstance(sweep, IntervalSweep):
        log = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    raise ConfigError(
        f"{o.input_line} is not allowed: hydra/sweeper=mtltrain_optuna samples choice(), "
        "range() and interval() (glob() is the basic sweeper's)"
    )


def _range(sweep: RangeSweep) -> BaseDistribution:
    """range(start, stop, step): the values from start by step, stop left out."""
    start, stop, step = sweep.start, sweep.stop, sweep.step or 1
    n = math.ceil((stop - start) / step)
    ends = (start, start + (n - 1) * step)
    if all(isinstance(v, int) for v in (start, stop, step)):
        return IntDistribution(min(ends), max(ends), step=abs(step))
    # the far end in decimal, so that 0.1 + 3 × 0.1 is 0.4 and Optuna keeps it
    far = float(Decimal(str(start)) + (n - 1) * Decimal(str(step)))
    return FloatDistribution(min(start, far), max(start, far), step=abs(float(step)))


def grid(space: dict[str, BaseDistribution]) -> dict[str, list[Any]]:
    """The values of each setting for `hydra/sweeper/sampler=grid`: a choice's, a range's."""
    values = {}
    for key, d in space.items():
        if isinstance(d, CategoricalDistribution):
            values[key] = list(d.choices)
        elif isinstance(d, IntDistribution) and not d.log:
            values[key] = list(range(d.low, d.high + 1, d.step))
        elif isinstance(d, FloatDistribution) and d.step is not None:
            n = round((d.high - d.low) / d.step) + 1
            values[key] = [float(Decimal(str(d.low)) + i * Decimal(str(d.step))) for i in range(n)]
        else:
            raise ConfigError(
                f"{key} sweeps an interval, which hydra/sweeper/sampler=grid cannot list: the "
                "grid sampler takes choice() and range(); sample intervals with tpe or random"
            )
    return values


def as_override(key: str, value: Any) -> str:
    """`key=value` that Hydra parses back to `value` (a string quoted where it must be)."""
    if isinstance(value, str):
        for text in (value, _quoted(value)):
            with contextlib.suppress(HydraException):
                parsed = OverridesParser.create().parse_override(f"{key}={text}")
                if not parsed.is_sweep_override() and parsed.value() == value:
                    return f"{key}={text}"
        raise ConfigError(f"{key}={value!r} is not allowed: Hydra cannot take it back as a value")
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value!r}"


def _quoted(value: str) -> str:
    """`value` in Hydra's single quotes."""
    return "'" + value.replace("'", "\\'") + "'"


def trial_overrides(params: dict[str, Any], fixed: Sequence[str]) -> list[str]:
    """A trial's overrides: its sampled values, then the fixed overrides."""
    return [*(as_override(k, v) for k, v in params.items()), *fixed]
