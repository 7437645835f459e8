"""Building objects from configs: every `_target_` node goes through `build`."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def config_dir() -> Path:
    """The Hydra configs: shipped inside the installed package, or the checkout's conf/."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no config.yaml in {package / 'conf'} or {package.parent / 'conf'}")


def build_partial(node: DictConfig) -> functools.partial:
    """A `_target_` node as a partial: its target with its settings, not yet called.

    Containers reach the target as plain dicts and lists.
    """
    return instantiate(node, _convert_="all", _partial_=True)


def build(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a `_target_` node with `kwargs` added to its settings.

    `kwargs` (data set objects, task specs, parameters) are passed as they are, never turned
    into config nodes.
    """
    return build_partial(node)(**kwargs)


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as {"a.b.c": scalar}; lists and None become strings."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:
            out[prefix] = str(value)

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return out
