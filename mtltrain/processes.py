"""Which process of a run this is: one of several that torchrun started (its rank), or a job
SLURM started again, read from the environment those launchers set; and the working directory
on the import path of a command and the processes it starts. Imports nothing heavy."""

import os
import sys


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


def importable_from_here() -> None:
    """The modules and packages of the working directory can be named as `_target_`s, as with
    `python -m`, in this process and the processes it starts (launchers, torchrun): appended
    to the import path, so that an installed package of the same name comes first."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([p for p in paths if p] + [here])
