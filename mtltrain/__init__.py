"""mtltrain: train multi-task networks and learn how to weigh their losses."""

__version__ = "0.1.0"
