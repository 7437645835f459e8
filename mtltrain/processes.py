"""Which process of a run this is: one of several that torchrun started (its rank), or a job
SLURM started again. Read from the environment those launchers set; imports nothing heavy."""

import os


def launched() -> bool:
    """Whether this process is one of several that torchrun (or a like launcher) started for
    one run."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's rank under torchrun (0 alone): rank 0 alone writes the run folder."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def requeued() -> bool:
    """Whether SLURM started this job again (pre-empted or out of time, and requeued)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
