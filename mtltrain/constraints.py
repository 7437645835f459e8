"""What a setting's value must be, written into the signature that takes it, and the check.

A data set's, model's or strategy's parameter says `hidden: Sequence[Width]` with `Width =
Annotated[int, at_least(1)]`; the config check (`mtltrain.config._compose.check_node`) reads the
type and the constraint from the hint (`mismatch`) and refuses a value outside them, naming the
value and what is allowed, before anything is built or written. Rules that tie several settings
together are a builder's `check_settings(settings)`, which the config check calls too; `checked`
gives a builder function one, and checks its arguments when it is called from Python as well.
"""

from __future__ import annotations

import collections.abc
import difflib
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Collection, Iterable, Mapping, Sized
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple, TypeVar

from mtltrain.errors import ConfigError


@dataclass(frozen=True)
class Constraint:
    """A test a setting's value must pass, and the words that say what passes."""

    holds: Callable[[Any], bool]
    words: str


def at_least(low: float) -> Constraint:
    return Constraint(lambda v: v >= low, f">= {low}")


def above(low: float) -> Constraint:
    return Constraint(lambda v: v > low, f"> {low}")


def one_of(options: Collection[Any]) -> Constraint:
    return Constraint(lambda v: v in options, f"(one of {', '.join(map(str, options))})")


def _has_entries(value: Sized) -> bool:
    return len(value) > 0


NON_EMPTY = Constraint(_has_entries, "with at least one entry")

# a layer's width: a whole number of units >= 1
Width = Annotated[int, at_least(1)]
# a number of samples to draw
Count = Annotated[int, at_least(1)]
# a number that cannot be negative (a standard deviation)
NonNegative = Annotated[float, at_least(0)]
# a seed of torch's generators (torch.manual_seed takes [0, 2**63); a negative one wraps round)
Seed = Annotated[int, Constraint(lambda v: 0 <= v < 2**63, "in [0, 2**63)")]
# the probability that dropout zeroes a unit
DropoutRate = Annotated[float, Constraint(lambda v: 0 <= v < 1, "in [0, 1)")]

Builder = TypeVar("Builder", bound=Callable[..., Any])


def checked(
    prefix: str, rules: Callable[[Mapping[str, Any]], None] | None = None
) -> Callable[[Builder], Builder]:
    """Check a builder function's arguments against its hints, and `rules` against all of
    them, whenever it is called (a ConfigError naming `prefix`.<argument>); `rules` is also its
    `check_settings`, which the config check calls before anything is built."""

    def wrap(builder: Builder) -> Builder:
        signature = inspect.signature(builder)

        hints = functools.cache(lambda: type_hints(builder))  # once the module is loaded

        @functools.wraps(builder)
        def build(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            for name, value in bound.arguments.items():
                hint = hints().get(name)
                if hint is not None and (bad := mismatch(value, hint, name)) is not None:
                    raise ConfigError(f"{prefix}.{bad.where}{bad.text}")
            if rules is not None:
                rules(bound.arguments)
            return builder(*args, **kwargs)

        build.check_settings = rules  # type: ignore[attr-defined]
        return build  # type: ignore[return-value]

    return wrap


def type_hints(target: Callable[..., Any]) -> dict[str, Any]:
    """The type hints of a function's or a class's parameters, constraints kept; none where
    the checker cannot resolve them."""
    try:
        return typing.get_type_hints(
            target.__init__ if isinstance(target, type) else target, include_extras=True
        )
    except (NameError, TypeError):
        return {}


def closest(key: str, known: Iterable[str]) -> str | None:
    """The known key a mistyped `key` most likely meant: one with the same last name
    (trainer.lr → trainer.optimizer.lr), else a sibling spelt alike (trainer.epoch →
    trainer.epochs); None when nothing is near."""
    known = [k for k in known if k != key]
    parent, _, name = key.rpartition(".")
    same = [k for k in known if k.rpartition(".")[2] == name]
    if same:
        return max(same, key=lambda k: difflib.SequenceMatcher(None, key, k).ratio())
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    near = difflib.get_close_matches(name, list(siblings), n=1, cutoff=0.6)
    return siblings[near[0]] if near else None


class Mismatch(NamedTuple):
    """Where in a setting its value does not fit the hint (a dotted key below the setting),
    and the rest of the line that says so."""

    where: str
    text: str


def mismatch(value: object, hint: object, where: str) -> Mismatch | None:
    """The first part of a config value that does not fit the type hint; None when it all
    fits (plain types, unions, sequences, mappings, TypedDicts, Annotated constraints)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    wrong = Mismatch(where, f"={value!r} is not allowed: it must be {describe(hint)}")
    if hint is typing.Any or isinstance(hint, typing.TypeVar):
        return None
    if origin is typing.Annotated:
        inner = mismatch(value, args[0], where)
        limits = [c for c in hint.__metadata__ if isinstance(c, Constraint)]
        return inner or next((wrong for c in limits if not c.holds(value)), None)
    if origin in (typing.Union, types.UnionType):
        return None if any(mismatch(value, a, where) is None for a in args) else wrong
    if typing.is_typeddict(hint):
        return _typeddict_mismatch(value, hint, where) if isinstance(value, dict) else wrong
    if origin in (collections.abc.Sequence, list, tuple):
        if not isinstance(value, (list, tuple)):
            return wrong
        parts = (mismatch(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)) if args else ()
        return next((p for p in parts if p is not None), None)
    if origin in (collections.abc.Mapping, dict):
        if not isinstance(value, dict):
            return wrong
        parts = (mismatch(v, args[1], f"{where}.{k}") for k, v in value.items()) if args else ()
        return next((p for p in parts if p is not None), None)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    plain = {
        type(None): value is None,
        float: number and math.isfinite(value),
        int: isinstance(value, int) and not isinstance(value, bool),
    }
    if hint in plain:
        return None if plain[hint] else wrong
    if isinstance(hint, type) and not isinstance(value, hint):
        return wrong
    return None  # other typing constructs (callables, literals): left to the target


def _typeddict_mismatch(value: dict, hint: Any, where: str) -> Mismatch | None:
    """A mapping against a TypedDict: no key it lacks, none it does not have, each value
    fitting its hint."""
    fields = typing.get_type_hints(hint, include_extras=True)
    for key in value:
        if key not in fields:
            known = [f"{where}.{f}" for f in fields]
            guess = closest(f"{where}.{key}", known)
            hint_text = f"did you mean {guess}? " if guess else ""
            takes = f"it takes {', '.join(fields)}"
            return Mismatch(f"{where}.{key}", f" is not a setting: {hint_text}{takes}")
    missing = sorted(hint.__required_keys__ - set(value))
    if missing:
        return Mismatch(where, f" lacks {missing}: it takes {', '.join(fields)}")
    parts = (mismatch(value[k], fields[k], f"{where}.{k}") for k in value)
    return next((p for p in parts if p is not None), None)


def describe(hint: object, many: bool = False) -> str:
    """A type hint in words: "a number", "a list of strings or null", "a whole number >= 1"..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        limits = [c.words for c in hint.__metadata__ if isinstance(c, Constraint)]
        return " ".join([describe(args[0], many), *limits])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a, many) for a in args)
    if typing.is_typeddict(hint):
        fields = ", ".join(typing.get_type_hints(hint))
        return f"mappings of {fields}" if many else f"a mapping of {fields}"
    if origin in (collections.abc.Sequence, list, tuple):
        return f"a list of {describe(args[0], True) if args else 'values'}"
    if origin in (collections.abc.Mapping, dict):
        return f"a mapping to {describe(args[1], True) if len(args) == 2 else 'values'}"
    one = {float: "a finite number", int: "a whole number", bool: "true or false", str: "a string"}
    several = {float: "finite numbers", int: "whole numbers", bool: "booleans", str: "strings"}
    if hint is type(None):
        return "null"
    return (several if many else one).get(hint, getattr(hint, "__name__", str(hint)))
