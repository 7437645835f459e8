"""Building objects from configs: every `_target_` node goes through `build`."""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mtltrain.errors import ConfigError, MtlError, first_line


def config_dir() -> Path:
    """The Hydra configs: shipped inside the installed package, or the checkout's conf/."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no config.yaml in {package / 'conf'} or {package.parent / 'conf'}")


def compose_checked(overrides: Sequence[str]) -> DictConfig:
    """The config `mtltrain <overrides>` runs with, checked as `check` does; any problem is a
    one-line ConfigError. Hydra's own overrides (hydra.*) are left out."""
    from mtltrain.schema import register

    register()
    task = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=task)
    except (HydraException, OmegaConfBaseException) as e:
        raise config_error(e) from None
    check(cfg)
    return cfg


def check(cfg: DictConfig) -> None:
    """The settings' types and ranges (trainer, loss, seed), and the dataset, model, weighting
    and optimizer settings against their targets' signatures (numbers must be finite); a
    problem is a one-line ConfigError."""
    from mtltrain.schema import check_seed, settings

    try:
        settings(cfg.trainer)
        settings(cfg.loss)
    except OmegaConfBaseException as e:
        raise config_error(e) from None
    check_seed(cfg.seed)
    for group in ("dataset", "model", "weighting"):
        check_node(cfg[group])
    check_optimizer(check_node(cfg.trainer.optimizer).func, cfg.trainer.optimizer._target_)


def check_optimizer(optimizer: Any, name: str) -> None:
    """Refuse an optimizer whose step needs a closure (it evaluates the loss itself, several
    times a step), which a training step of mtltrain does not hand it."""
    step = getattr(optimizer, "step", None)
    closure = inspect.signature(step).parameters.get("closure") if callable(step) else None
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ConfigError(
            f"trainer.optimizer._target_={name} is not allowed: its step needs a closure that "
            "re-evaluates the loss, which mtltrain's step does not give; choose an optimizer "
            "such as torch.optim.Adam"
        )


def config_error(e: BaseException) -> ConfigError:
    """Hydra's or OmegaConf's error about composing a config, as one line; an unknown choice
    lists the options."""
    if isinstance(e, MissingConfigException):
        options = f": choose one of {', '.join(e.options)}" if e.options else ""
        return ConfigError(f"{first_line(e, 1000)}{options}")
    return ConfigError(_one_line(e))


def _one_line(e: BaseException) -> str:
    """Hydra's and OmegaConf's messages and their causes' on one line, bookkeeping dropped."""
    skip = ("reference_type", "object_type", "Set the environment", "full_key")
    lines = [line.strip() for line in str(e).splitlines()]
    text = " — ".join(line for line in lines if line and not line.startswith(skip))
    return f"{text} — {_one_line(e.__cause__)}" if e.__cause__ is not None else text


def build_partial(node: DictConfig) -> functools.partial:
    """A `_target_` node as a partial: its target with its settings, not yet called.

    Containers reach the target as plain dicts and lists. A nested node that cannot be built
    is reported as a ConfigError naming the node.
    """
    try:
        return instantiate(node, _convert_="all", _partial_=True)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, MtlError):
            raise cause from None
        raise ConfigError(f"{_where(node)}: {type(cause).__name__}: {first_line(cause)}") from None


def build(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a `_target_` node with `kwargs` added to its settings.

    `kwargs` (data set objects, task specs, parameters) are passed as they are, never turned
    into config nodes. Settings the target does not take are a ConfigError naming them.
    """
    factory = check_node(node)
    try:
        inspect.signature(factory.func).bind(*factory.args, **factory.keywords, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{_where(node)} ({node._target_}): {e}") from None
    return factory(**kwargs)


def check_node(node: DictConfig) -> functools.partial:
    """A `_target_` node as a partial, its settings checked against the target's signature
    and, where the target has one, its `check_settings`: names it does not take, values of the
    wrong type and values out of range are ConfigErrors."""
    factory = build_partial(node)
    target = factory.func
    try:
        inspect.signature(target).bind_partial(*factory.args, **factory.keywords)
    except TypeError as e:
        raise ConfigError(f"{_where(node)} ({node._target_}): {e}") from None
    try:
        hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except (NameError, TypeError):  # annotations the checker cannot resolve: nothing to check
        hints = {}
    for name, value in factory.keywords.items():
        if name in hints and (bad := _mismatch(value, hints[name], name)) is not None:
            where, found, hint = bad
            raise ConfigError(
                f"{_where(node)}.{where}={found!r} is not allowed: it must be {_describe(hint)}"
            )
    validate = getattr(target, "check_settings", None)  # a strategy's ranges, before any data
    if callable(validate):
        validate(factory.keywords)
    return factory


def _mismatch(value: object, hint: object, where: str) -> tuple[str, object, object] | None:
    """The first part of a config value that does not fit the type hint, as (dotted key,
    value, hint); None when it all fits (plain types, unions, sequences, mappings)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or isinstance(hint, typing.TypeVar):
        return None
    if origin in (typing.Union, types.UnionType):
        fits = any(_mismatch(value, a, where) is None for a in args)
        return None if fits else (where, value, hint)
    if origin in (collections.abc.Sequence, list, tuple):
        if not isinstance(value, (list, tuple)):
            return where, value, hint
        parts = (
            (_mismatch(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)) if args else ()
        )
        return next((p for p in parts if p is not None), None)
    if origin in (collections.abc.Mapping, dict):
        if not isinstance(value, dict):
            return where, value, hint
        parts = (_mismatch(v, args[1], f"{where}.{k}") for k, v in value.items()) if args else ()
        return next((p for p in parts if p is not None), None)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    plain = {
        type(None): value is None,
        float: number and math.isfinite(value),
        int: isinstance(value, int) and not isinstance(value, bool),
    }
    if hint in plain:
        return None if plain[hint] else (where, value, hint)
    if isinstance(hint, type) and not isinstance(value, hint):
        return where, value, hint
    return None  # other typing constructs (callables, literals): left to the target


def _describe(hint: object, many: bool = False) -> str:
    """A type hint in words: "a number", "a list of strings or null", ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, many) for a in args)
    if origin in (collections.abc.Sequence, list, tuple):
        return f"a list of {_describe(args[0], True) if args else 'values'}"
    if origin in (collections.abc.Mapping, dict):
        return f"a mapping to {_describe(args[1], True) if len(args) == 2 else 'values'}"
    one = {float: "a finite number", int: "a whole number", bool: "true or false", str: "a string"}
    several = {float: "finite numbers", int: "whole numbers", bool: "booleans", str: "strings"}
    if hint is type(None):
        return "null"
    return (several if many else one).get(hint, getattr(hint, "__name__", str(hint)))


def _where(node: DictConfig) -> str:
    return node._get_full_key(None) or "config"
