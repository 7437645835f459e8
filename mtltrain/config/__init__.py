"""The config layer: compose the Hydra config and check it (`compose_checked`, `check`), its
typed schemas, and `build`, which turns a `_target_` node into its object (`mtltrain.build`
builds a whole run's from a checked config).

What is exported here is public; the underscore modules are this package's own."""

from mtltrain.config._compose import build, check, compose_checked, config_dir, config_groups
from mtltrain.config._schema import TrainerConfig

__all__ = ["TrainerConfig", "build", "check", "compose_checked", "config_dir", "config_groups"]
