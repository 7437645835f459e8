"""`logger=wandb`: a run as a Weights & Biases run, offline by default (no account; its files in
the run's wandb/ folder, uploaded later with `wandb sync <run>/wandb/offline-run-*`).

The scalars are W&B history at their steps, the HParams columns its config, the tags its tags,
the final values its summary's `final/<tag>`; a run that stops early finishes with exit code 1.
A resumed run continues the same W&B run id (read from the name of its wandb/*run-*-<id>
folder); offline, W&B writes the continuation into a folder of its own, with that id (`wandb
sync` uploads each folder to the run of its id), opened at its first logged step (a resume
that fails before it logs leaves the W&B run as it was). The points a stopped run logged past
its checkpoint stay in its first folder.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mtltrain.outputs._logger import require
from mtltrain.outputs._run_folder import WANDB


def run_id(folder: Path) -> str | None:
    """The W&B run id of a run folder's wandb/ (its newest run's), or None."""
    runs = sorted(p.name for p in (folder / WANDB).glob("*run-*-*") if p.is_dir())
    return runs[-1].rpartition("-")[2] if runs else None


class WandbLog:
    """A `mtltrain.outputs.Logger` that logs into a W&B run named `name` (None: the run
    folder's name) of `project` (and `group`, if given) in `mode` (offline, online or
    disabled); see the module's note."""

    def __init__(
        self,
        folder: Path,
        resume_step: int | None = None,
        project: str = "mtltrain",
        name: str | None = None,
        group: str | None = None,
        mode: str = "offline",
    ) -> None:
        import wandb

        known = run_id(folder) if resume_step is not None else None
        self.init = functools.partial(
            wandb.init,
            dir=folder,  # W&B writes into its wandb/
            project=project,
            name=name or folder.name,
            group=group,
            mode=mode,
            id=known,
            resume="allow" if known else None,
            settings=wandb.Settings(
                silent=True,
                console="off",
                disable_git=True,
                save_code=False,
                x_disable_stats=True,
                reinit="create_new",  # each run of a stacked sweep its own
            ),
        )
        self.run = None if known else self.init()
        self.finished = False

    def opened(self) -> Any:
        """The W&B run, continued here where this run resumes one."""
        if self.run is None:
            self.run = self.init()
        return self.run

    @staticmethod
    def check_settings(settings: Mapping[str, Any]) -> None:
        require("wandb", "wandb", "logger=wandb")

    def start(self, hparams: Mapping[str, str], tags: Sequence[str]) -> None:
        self.run.config.update(dict(hparams))
        self.run.tags = tuple(tags)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        self.opened().log(dict(values), step=step)

    def finish(self, values: Mapping[str, float], step: int) -> None:
        run = self.opened()
        run.summary.update({f"final/{k}": v for k, v in values.items()})
        run.finish()
        self.finished = True

    def close(self) -> None:
        if self.run is not None and not self.finished:
            self.run.finish(exit_code=1)
