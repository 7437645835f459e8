"""The command line and overrides as Hydra reads them (with the parsers `hydra.main` itself
uses; Hydra has no public ones)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from mtltrain.errors import ConfigError


def command_line(argv: Sequence[str]) -> tuple[list[str], bool, list[Override]]:
    """The command line as Hydra reads it: its flags, whether it is a multirun, and its
    overrides parsed; a flag it does not know is a one-line ConfigError, not argparse's usage
    block."""
    parser = get_args_parser()
    parser.error = _refuse_flag  # type: ignore[method-assign]
    args = parser.parse_args(list(argv))
    flags = [a for a in argv if a not in args.overrides]
    return flags, args.multirun, parse_overrides(args.overrides)


def config_dir_flag(flags: Sequence[str]) -> str | None:
    """The folder `--config-dir` (`-cd`) adds to the config search path, if given."""
    return get_args_parser().parse_args(list(flags)).config_dir


def _refuse_flag(message: str) -> NoReturn:
    raise ConfigError(f"{message}: `mtltrain --help` lists the flags and the settings")


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """Overrides as Hydra reads them."""
    return OverridesParser.create().parse_overrides(list(overrides))
