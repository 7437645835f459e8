"""Building objects from configs: every `_target_` node goes through `build`."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import functools
import importlib
import importlib.resources
import importlib.util
import inspect
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mtltrain.config._overrides import parse_overrides
from mtltrain.constraints import closest, mismatch, type_hints
from mtltrain.errors import ConfigError, MtlError, checked_error, first_line

# the config groups whose choice is a `_target_` node a run builds
TARGET_GROUPS = ("dataset", "model", "weighting")
# the settings that hold {name: _target_ node}, each built by a run
NAMED_TARGETS = ("logger", "callbacks")


def config_dir() -> Path:
    """The Hydra configs: shipped inside the installed package, or the checkout's conf/."""
    package = Path(__file__).resolve().parent.parent  # mtltrain/
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no config.yaml in {package / 'conf'} or {package.parent / 'conf'}")


def config_groups() -> dict[str, list[str]]:
    """The config groups mtltrain ships (hydra/launcher and hydra/sweeper too), each with its
    options' names."""
    root = config_dir()
    folders = [p for p in (*root.iterdir(), *(root / "hydra").iterdir()) if p.is_dir()]
    return {
        str(p.relative_to(root)): sorted(f.stem for f in p.glob("*.yaml"))
        for p in folders
        if p.name != "hydra"
    }


def compose_checked(overrides: Sequence[str]) -> DictConfig:
    """The config `mtltrain <overrides>` runs with, checked as `check` does; any problem is a
    one-line ConfigError. Hydra's own overrides (hydra.*) are left out."""
    from mtltrain.config._schema import register

    register()
    task = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    search = [o for o in overrides if o.startswith("hydra.searchpath=")]
    try:
        cfg = _compose([*search, *task], hydra=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise config_error(e, task) from None
    check(cfg, task)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _compose(overrides: Sequence[str], hydra: bool = False) -> DictConfig:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def check(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Every setting is one mtltrain reads (`check_keys`) and every override changes what it
    says (`check_overrides`); the settings' types and ranges (trainer, loss, seed), and the
    dataset, model, weighting and optimizer settings against their targets' signatures
    (numbers must be finite); a problem is a one-line ConfigError."""
    from mtltrain.config._schema import check_boolean, check_seed, check_tags, settings

    check_keys(cfg)
    hydra = cfg.hydra if "hydra" in cfg else hydra_config()
    if hydra is not None:
        trainer_choice(hydra)
    check_target_nodes(cfg)
    architecture = architecture_node(cfg)
    check_overrides(overrides, cfg)
    check_boolean("resume_sweep", cfg.resume_sweep)
    try:
        settings(cfg.trainer)
        settings(cfg.loss)
    except OmegaConfBaseException as e:
        raise config_error(e) from None
    check_seed(cfg.seed)
    check_tags(cfg.get("tags", []))
    dataset, transforms = split_transforms(cfg.dataset)
    weighting = weighting_node(cfg)
    built = (dataset, cfg.model, weighting, *(n for v in transforms.values() for n in v))
    for node in (*built, *([architecture] if architecture is not None else [])):
        check_node(node)
    for key in NAMED_TARGETS:
        check_named_nodes(cfg, key)
    check_optimizer(check_node(cfg.trainer.optimizer), cfg.trainer.optimizer._target_)
    check_lr_scheduler(cfg.trainer.lr_scheduler)


TRANSFORMS = ("transform", "train_transform")  # dataset.<key>: mtltrain's, not the build's


def split_transforms(dataset: DictConfig) -> tuple[DictConfig, dict[str, list[DictConfig]]]:
    """The dataset node without its TRANSFORMS, and those as {key: [node, ...]} (a transform
    is a `_target_` node or a list of them, applied in order)."""
    node = copy.copy(dataset)
    transforms: dict[str, list[DictConfig]] = {key: [] for key in TRANSFORMS}
    with open_dict(node):
        for key in TRANSFORMS:
            value = node.pop(key, None)
            items = value if isinstance(value, ListConfig) else [] if value is None else [value]
            for item in items:
                if not (isinstance(item, DictConfig) and "_target_" in item):
                    raise ConfigError(
                        f"dataset.{key}={item!r} is not allowed: give a mapping with a "
                        "_target_ (a callable applied to each input) or a list of them"
                    )
                transforms[key].append(item)
    return node, transforms


def check_keys(cfg: DictConfig) -> None:
    """Refuse a key of a schema-typed node (the top level, trainer, loss) that its schema does
    not have: Hydra lets `+trainer.epoch=5` add one, which nothing would read. The keys of
    `_target_` nodes are checked against their targets' signatures (`check_node`)."""
    from mtltrain.config._schema import LossConfig, RunConfig, TrainerConfig

    schemas = {"": RunConfig, "trainer": TrainerConfig, "loss": LossConfig}
    for name, schema in schemas.items():
        allowed = {f.name for f in dataclasses.fields(schema)} | ({"hydra"} if not name else set())
        node = cfg[name] if name else cfg
        for key in node:
            if key not in allowed:
                setting = f"{name}.{key}" if name else str(key)
                raise ConfigError(unknown_setting(setting, setting_keys(cfg)))


def hydra_config() -> DictConfig | None:
    """The running Hydra app's own config (its choices and config search path), if any."""
    return HydraConfig.get() if HydraConfig.initialized() else None


def trainer_choice(hydra: DictConfig) -> str:
    """The trainer config a run composed with, from Hydra's own config: the one `trainer=`
    names, the data set's own, or `default` where the data set has none. The trainer entry of
    conf/config.yaml is optional, so Hydra would skip a name it does not find without a word:
    a `trainer=<name>` that is not on the config search path is a ConfigError."""
    choices = hydra.runtime.choices
    options = group_options("trainer", hydra.runtime.config_sources)
    if choices.trainer in options:
        return choices.trainer
    if choices.trainer == choices.get("dataset"):
        return "default"
    near = difflib.get_close_matches(choices.trainer, options, n=1, cutoff=0.5)
    guess = f"did you mean trainer={near[0]}? " if near else ""
    raise ConfigError(
        f"trainer={choices.trainer} is not an option: {guess}choose one of "
        f"{', '.join(options)} (leave it out for the data set's own, else default)"
    )


def group_options(group: str, sources: Iterable[DictConfig]) -> list[str]:
    """The options of a config group in the config sources of Hydra's search path (folders,
    packages and the config store), by name."""
    names: set[str] = set(config_groups().get(group, []))
    for source in sources:
        if source.schema == "file":
            names.update(f.stem for f in (Path(source.path) / group).glob("*.yaml"))
        elif source.schema == "pkg" and importlib.util.find_spec(source.path) is not None:
            folder = importlib.resources.files(source.path) / group
            if folder.is_dir():
                names.update(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))
    return sorted(names)


def check_target_nodes(cfg: DictConfig) -> None:
    """The groups a run builds from (dataset, model, weighting, trainer.optimizer) are each a
    mapping with a `_target_`, not a plain value put in their place."""
    for key in (*TARGET_GROUPS, "trainer.optimizer"):
        node = OmegaConf.select(cfg, key)
        if not (isinstance(node, DictConfig) and "_target_" in node):
            raise ConfigError(
                f"{key}={OmegaConf.to_container(node) if isinstance(node, DictConfig) else node!r}"
                f" is not allowed: it is a mapping with a _target_ (the class or function that "
                f"builds it) and its settings, e.g. {key}._target_=<module.Name>"
            )


def architecture_node(cfg: DictConfig) -> DictConfig | None:
    """The `architecture` node a model is built with, None for hps (`{}`, or no such key in an
    older run's config: the model config as it builds it). Any other architecture is a
    `_target_` node wiring the model config's `encoder` (the backbone) and heads; a model
    config without an encoder is a one-line ConfigError."""
    node = cfg.get("architecture")
    if node is None or (isinstance(node, DictConfig) and len(node) == 0):
        return None
    if not (isinstance(node, DictConfig) and "_target_" in node):
        given = OmegaConf.to_container(node) if isinstance(node, DictConfig) else node
        raise ConfigError(
            f"architecture={given!r} is not allowed: it is {{}} (hps: the model as it is) or a "
            "mapping with a _target_ (the architecture class) and its settings: choose "
            "architecture=<option>, an option of conf/architecture/"
        )
    if cfg.model.get("encoder") is None or "head" not in cfg.model:
        name = str(node._target_).rpartition(".")[2]
        raise ConfigError(
            f"architecture {name} is not allowed with the model {cfg.model._target_}: it wires "
            "a model config's encoder (the shared backbone) and head(s), and this one has no "
            "model.encoder; choose a model with an encoder and a head, or architecture=hps"
        )
    return node


def weighting_node(cfg: DictConfig) -> DictConfig:
    """The `weighting` node a strategy is built from: as composed, or for a strategy that wraps
    another (`weighting=cr_mogm weighting.inner=<name>`: its class has `wraps(cls)`) with
    `inner` the node of conf/weighting/<name>.yaml updated by `weighting.inner_settings`, which
    the wrapper builds (a partial). A name that is not an option, or whose strategy the wrapper
    cannot wrap, is a one-line ConfigError listing those it can."""
    node = cfg.weighting
    named = "inner" in node and not isinstance(node.inner, DictConfig)  # not a _target_ node
    wrapper = build_partial(node).func if named else None
    if not callable(getattr(wrapper, "wraps", None)):
        return node
    options = {name: group_option("weighting", name) for name in config_groups()["weighting"]}
    fits = [n for n, o in options.items() if _wraps(wrapper, o)]
    if not isinstance(node.inner, str) or node.inner not in options:
        choices = ", ".join(fits)
        raise ConfigError(f"weighting.inner={node.inner} is not an option: choose one of {choices}")
    settings = node.get("inner_settings") or {}
    inner = OmegaConf.merge(options[node.inner], settings, {"_partial_": True})
    if node.inner not in fits or not _wraps(wrapper, inner):
        changed = f" with weighting.inner_settings={dict(settings)}" if node.inner in fits else ""
        raise ConfigError(
            f"weighting.inner={node.inner}{changed} is not allowed: {wrapper.__name__} averages "
            "the weights of a gradient-based strategy whose direction is Σ_k w_k·g_k of the "
            "step's task gradients (not a loss-based one, a masked or averaged direction, or "
            f"itself); choose one of {', '.join(fits)}"
        )
    resolved = copy.deepcopy(cfg)  # the inner node's interpolations (${seed}) resolve in it
    with open_dict(resolved):
        resolved.weighting.inner_settings = inner  # checked where the user sets it
        check_inner(resolved.weighting.inner_settings)
        resolved.weighting.inner = resolved.weighting.pop("inner_settings")
    return resolved.weighting


def _wraps(wrapper: Any, node: DictConfig) -> bool:
    """Whether `wrapper` (CR-MOGM) can wrap the strategy of a weighting option's node with its
    settings as written (IMTL is gradient-based, imtl_l's variant=loss is not)."""
    target = get_class(node._target_)
    return wrapper.wraps(target, called_with(target, OmegaConf.to_container(node, resolve=False)))


def check_inner(node: DictConfig) -> None:
    """`check_node` of a wrapped strategy's node, at `weighting.inner_settings`: a strategy's
    ranges name a setting `weighting.<name>`, which the user sets as
    `weighting.inner_settings.<name>`."""
    try:
        check_node(node)
    except ConfigError as e:
        text = str(e)
        if text.startswith("weighting.") and not text.startswith("weighting.inner_settings"):
            text = "weighting.inner_settings." + text.removeprefix("weighting.")
        raise ConfigError(text) from None


def group_option(group: str, name: str) -> DictConfig:
    """An option of one of mtltrain's config groups as Hydra composes it, where its defaults
    list names options of the same group (and `_self_`, last where it is not named)."""
    node = OmegaConf.load(config_dir() / group / f"{name}.yaml")
    with open_dict(node):
        defaults = list(node.pop("defaults", []))
    if "_self_" not in defaults:
        defaults.append("_self_")
    return OmegaConf.merge(*(node if d == "_self_" else group_option(group, d) for d in defaults))


def check_named_nodes(cfg: DictConfig, key: str) -> None:
    """`cfg[key]` is null or {name: _target_ node}, each node checked as `check_node` does."""
    node = cfg.get(key)
    if node is None:
        return
    plain = isinstance(node, DictConfig)
    entries = [node[name] for name in node] if plain else []
    if plain and all(isinstance(e, DictConfig) and "_target_" in e for e in entries):
        for entry in entries:
            check_node(entry)
        return
    raise ConfigError(
        f"{key}={OmegaConf.to_container(node) if plain else node!r} is not allowed: it is "
        f"null or a mapping of names to nodes with a _target_ (the class that builds each), "
        f"e.g. +{key}.<name>._target_=<module.Name>"
    )


def check_overrides(overrides: Sequence[str], cfg: DictConfig) -> None:
    """Refuse `key={}` where the config has entries at `key`: Hydra merges a mapping into the
    one there, so the override changes nothing, though it reads as "none"."""
    for o in parse_overrides([o for o in overrides if not o.startswith("hydra")]):
        if o.is_delete() or o.value() != {}:
            continue
        there = OmegaConf.select(cfg, o.key_or_group)
        if isinstance(there, DictConfig) and len(there) > 0:
            raise ConfigError(
                f"{o.input_line} is not allowed: Hydra merges a mapping into the one there, so "
                f"{o.key_or_group} would keep {list(there)}; remove entries with "
                f"~{o.key_or_group}.<name>{_TASK_LOSSES.get(o.key_or_group, '')}"
            )


_TASK_LOSSES = {"dataset.tasks": " (and a task's losses with ~dataset.losses.<name>)"}


def setting_keys(cfg: DictConfig) -> list[str]:
    """The dotted keys of every setting and group of settings in a config (Hydra's own left
    out), as a user writes them."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    return list(_keys(plain, ""))


def _keys(value: Any, key: str) -> Iterator[str]:
    if key:
        yield key
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _keys(v, f"{key}.{k}" if key else str(k))


def unknown_setting(key: str, known: Iterable[str], owner: str = "mtltrain") -> str:
    """The one line for a setting nothing reads, with the closest known one."""
    known = [k for k in known if k != key]
    guess = closest(key, known)
    if guess:
        return f"{key} is not a setting of {owner}: did you mean {guess}?"
    parent = key.rpartition(".")[0]
    siblings = [
        name
        for k in known
        if k.rpartition(".")[0] == parent and not (name := k.rpartition(".")[2]).startswith("_")
    ]
    if parent and siblings:
        return f"{key} is not a setting of {owner}: {parent} takes {', '.join(siblings)}"
    return f"{key} is not a setting of {owner}: `mtltrain --cfg job` lists the settings"


def _targets_within(node: DictConfig | ListConfig) -> Iterator[DictConfig]:
    """The outermost `_target_` nodes inside `node`, at any depth of mappings and lists
    (`model.heads.recon` as well as `model.head`)."""
    children = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for _, child in children:
        if isinstance(child, DictConfig) and "_target_" in child:
            yield child
        elif isinstance(child, (DictConfig, ListConfig)):
            yield from _targets_within(child)


def check_optimizer(factory: functools.partial, name: str) -> None:
    """Refuse an optimizer whose step needs a closure (it evaluates the loss itself, several
    times a step), which a training step of mtltrain does not hand it, and one that refuses
    its settings when it is made (torch checks lr, betas, weight_decay... there)."""
    step = getattr(factory.func, "step", None)
    closure = inspect.signature(step).parameters.get("closure") if callable(step) else None
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise ConfigError(
            f"trainer.optimizer._target_={name} is not allowed: its step needs a closure that "
            "re-evaluates the loss, which mtltrain's step does not give; choose an optimizer "
            "such as torch.optim.Adam"
        )
    import torch  # imported already: the factory is torch's

    from mtltrain.lean_torch import defer_dynamo_import

    defer_dynamo_import()  # the throwaway optimizer does not import torch._dynamo
    try:
        factory(params=[torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError, IndexError, RuntimeError) as e:
        raise ConfigError(
            f"trainer.optimizer ({name}) refuses its settings {factory.keywords}: "
            f"{type(e).__name__}: {first_line(e)}"
        ) from None


def check_lr_scheduler(node: Any) -> None:
    """`trainer.lr_scheduler` is null or a `_target_` node of a torch learning-rate scheduler
    class that takes its settings when built on an optimizer; else a one-line ConfigError."""
    if node is None:
        return
    import torch  # imported already: the optimizer is torch's

    schedulers = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    target = check_node(node).func if isinstance(node, DictConfig) and "_target_" in node else None
    if not (inspect.isclass(target) and issubclass(target, schedulers)):
        plain = OmegaConf.to_container(node) if isinstance(node, DictConfig) else node
        shown = node._target_ if target is not None else plain
        raise ConfigError(
            f"trainer.lr_scheduler{'._target_' * (target is not None)}={shown} is not allowed: "
            "give null or a learning-rate scheduler class of torch.optim.lr_scheduler, e.g. "
            "trainer.lr_scheduler={_target_: torch.optim.lr_scheduler.StepLR, step_size: 100}"
        )
    factory = build_partial(node)
    if "optimizer" in factory.keywords:
        raise ConfigError(
            "trainer.lr_scheduler.optimizer is not allowed: the scheduler is built on the run's "
            "optimizer (trainer.optimizer)"
        )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        dry_steps(factory(optimizer))
    except (ValueError, TypeError, IndexError, RuntimeError, KeyError, ArithmeticError) as e:
        raise ConfigError(
            f"trainer.lr_scheduler ({node._target_}) refuses its settings {factory.keywords}: "
            f"{type(e).__name__}: {first_line(e)}"
        ) from None


def dry_steps(scheduler: Any, steps: int = 2) -> None:
    """A few steps of a scheduler built on a throwaway optimizer, so that settings it takes
    when built but fails on when stepped (StepLR's step_size=0) are refused before the run."""
    import torch

    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "step() before optimizer.step()": nothing to train
        for _ in range(steps):
            if plateau:
                scheduler.step(1.0)
            else:
                scheduler.step()


def config_error(e: BaseException, overrides: Sequence[str] = ()) -> MtlError:
    """Hydra's or OmegaConf's error about composing a config (with `overrides`), as one line:
    an unknown choice lists the options and the closest, an unknown key names the closest
    known one, an override Hydra cannot parse shows the form it takes."""
    if isinstance(e, MissingConfigException):
        return ConfigError(_missing_option(e))
    if isinstance(e, OverrideParseException):
        return ConfigError(
            f"{e.override} cannot be read ({first_line(e)}): write key=value, a list as "
            "key=[1,2], a mapping as key={a:1,b:2}, and quote values with spaces or brackets"
        )
    ours = checked_error(e)  # raised by a resolver of ours (mtltrain.direction) in Hydra's compose
    if ours is not None:
        return ours
    text = str(e)
    bad = re.match(r"Could not override '([^']+)'", text) or re.search(
        r"Could not delete from config. '([^']+)' does not exist", text
    )
    if isinstance(e, ConfigCompositionException) and bad:
        return ConfigError(unknown_setting(bad.group(1), _known_without(bad.group(1), overrides)))
    chosen = re.match(r"Multiple values for ([\w/]+)", text)
    if chosen:
        return ConfigError(
            f"+{chosen.group(1)}=... is not allowed: {chosen.group(1)} is chosen already (by "
            f"default); drop the + to choose another: {chosen.group(1)}=<option>"
        )
    deleted = re.match(r"Error merging override (~\S+)", text)
    if deleted and "does not support deletion" in str(_cause(e)):
        return ConfigError(
            f"{deleted.group(1)} is not allowed: a setting of the trainer or of the losses "
            "cannot be removed; set another value instead"
        )
    return ConfigError(_one_line(e))


def _cause(e: BaseException) -> BaseException:
    """The innermost exception of a chain."""
    while e.__cause__ is not None:
        e = e.__cause__
    return e


def _missing_option(e: MissingConfigException) -> str:
    """An unknown choice of a config group: the options, and the closest of them."""
    group, _, choice = (e.missing_cfg_file or "").rpartition("/")
    options = e.options or config_groups().get(group)  # Hydra names none for a list's item
    if not options:
        return first_line(e, 1000)
    near = difflib.get_close_matches(choice, options, n=1, cutoff=0.5)
    guess = f"did you mean {group}={near[0]}? " if near else ""
    line = f"{group}={choice} is not an option: {guess}choose one of {', '.join(options)}"
    return line + (" (the model defaults to the data set's name)" if group == "model" else "")


def _known_without(key: str, overrides: Sequence[str]) -> list[str]:
    """The settings of the config composed from `overrides` less those naming `key` (else
    from their group choices alone, else from the defaults)."""
    kept = [o for o in overrides if o.lstrip("+~").partition("=")[0] != key]
    choices = [o for o in kept if "." not in o.partition("=")[0]]
    GlobalHydra.instance().clear()  # a failed hydra.main leaves its own initialised
    for attempt in (kept, choices, []):
        try:
            return setting_keys(_compose(attempt))
        except (HydraException, OmegaConfBaseException):
            continue
    return []


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
        if isinstance(cause, ImportError) and cause.__cause__ is not None:
            raise ConfigError(_unloadable(node, cause.__cause__)) from None
        raise ConfigError(f"{_where(node)}: {type(cause).__name__}: {first_line(cause)}") from None


def _unloadable(node: DictConfig, cause: BaseException) -> str:
    """Why a `_target_` could not be loaded: the error its import raised, and for a name its
    module lacks, the closest one it has."""
    target = str(node._target_)
    line = f"{_where(node)}._target_={target} cannot be loaded: {type(cause).__name__}: "
    line += first_line(cause)
    if isinstance(cause, (AttributeError, ModuleNotFoundError)):
        module, _, name = target.rpartition(".")
        with contextlib.suppress(ImportError):  # the module itself cannot be imported
            near = difflib.get_close_matches(name, dir(importlib.import_module(module)), n=1)
            line += f"; did you mean {module}.{near[0]}?" if near else ""
    return line


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
    (names it does not take, values of the wrong type or outside the hint's constraints), its
    `check_settings` where it has one, and the same for every `_target_` node inside it; a
    problem is a one-line ConfigError."""
    for inner in _targets_within(node):  # inner nodes first: they are built below
        check_node(inner)
    factory = build_partial(node)
    target = factory.func
    where = _where(node)
    try:
        parameters = inspect.signature(target).parameters
    except ValueError:  # a builtin without a signature (torch.dist): its call checks it
        return factory
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        for name in factory.keywords:
            if name not in parameters:
                known = [f"{where}.{p}" for p in parameters]
                raise ConfigError(unknown_setting(f"{where}.{name}", known, node._target_))
    hints = type_hints(target)
    for name, value in factory.keywords.items():
        if name in hints and (bad := mismatch(value, hints[name], name)) is not None:
            raise ConfigError(f"{where}.{bad.where}{bad.text}")
    validate = getattr(target, "check_settings", None)  # ranges and rules, before any data
    if callable(validate):
        validate(called_with(target, factory.keywords))
    return factory


def called_with(target: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """The settings `target` is called with: `given`, and its signature's defaults for those
    `given` leaves out."""
    parameters = inspect.signature(target).parameters
    defaults = {n: p.default for n, p in parameters.items() if p.default is not p.empty}
    return {**defaults, **given}


def _where(node: DictConfig) -> str:
    return node._get_full_key(None) or "config"
