"""Loss-weighting strategies: one class per module behind the `Weighting` interface."""

from mtltrain.weighting.base import Weighting

__all__ = ["Weighting"]
