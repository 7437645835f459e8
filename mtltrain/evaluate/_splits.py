"""The splits of a run's data set its model can be evaluated on (checked before torch loads)."""

from mtltrain.errors import ConfigError

SPLITS = ("train", "validation", "test")


def check_split(name: str) -> None:
    """Refuse a split name outside SPLITS."""
    if name not in SPLITS:
        raise ConfigError(f"split={name} is not allowed: choose one of {', '.join(SPLITS)}")
