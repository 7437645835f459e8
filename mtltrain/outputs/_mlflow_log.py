"""`logger=mlflow`: a run as an MLflow run, by default in a file store in the run's mlruns/
folder (no server; `tracking_uri` names another store or a server).

The scalars are MLflow metrics at their steps, the HParams columns its params, the tags one tag
`tags` (comma-separated), the final values metrics `final/<tag>` at the last step; the run ends
FINISHED, or FAILED where it stopped early. The MLflow run's id is kept in mlruns/run_id, and a
resumed run reopens that MLflow run and logs on from the step after its checkpoint (MLflow has no
way to delete points: those a stopped run logged past its checkpoint stay, beside the resumed
run's at the same steps), marked RUNNING again at its first logged step (a resume that fails
before it logs leaves the MLflow run as it was). MLflow refuses its file store unless
MLFLOW_ALLOW_FILE_STORE=true: the logger sets it while it opens the store (and so must a
reader: `MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri <run>/mlruns`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mtltrain.outputs._logger import require
from mtltrain.outputs._run_folder import MLRUNS

RUN_ID = "run_id"  # the MLflow run's id, in mlruns/


@contextlib.contextmanager
def file_store_allowed() -> Iterator[None]:
    """MLFLOW_ALLOW_FILE_STORE=true while MLflow opens a store, as it was after."""
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_ALLOW_FILE_STORE"]
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


def store_uri(folder: Path) -> str:
    """The file store of a run folder, as an MLflow tracking URI."""
    return (folder / MLRUNS).resolve().as_uri()


class MlflowLog:
    """A `mtltrain.outputs.Logger` that logs into an MLflow run named `run_name` (None: the
    run folder's name) of `experiment` in `tracking_uri` (None: folder/mlruns); see the
    module's note."""

    def __init__(
        self,
        folder: Path,
        resume_step: int | None = None,
        tracking_uri: str | None = None,
        experiment: str = "mtltrain",
        run_name: str | None = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.id_file = folder / MLRUNS / RUN_ID
        self.id_file.parent.mkdir(exist_ok=True)
        with file_store_allowed():
            self.client = MlflowClient(tracking_uri=tracking_uri or store_uri(folder))
            self.client.search_experiments(max_results=1)  # the store is opened here
        self.running = False  # marked RUNNING: this run is the MLflow run's to end
        if resume_step is not None and self.id_file.is_file():
            self.run_id = self.id_file.read_text().strip()
        else:
            known = self.client.get_experiment_by_name(experiment)
            experiment_id = (
                known.experiment_id if known else self.client.create_experiment(experiment)
            )
            run = self.client.create_run(experiment_id, run_name=run_name or folder.name)
            self.run_id = run.info.run_id
            self.id_file.write_text(self.run_id + "\n")
            self.running = True

    @staticmethod
    def check_settings(settings: Mapping[str, Any]) -> None:
        require("mlflow", "mlflow", "logger=mlflow")

    def start(self, hparams: Mapping[str, str], tags: Sequence[str]) -> None:
        from mlflow.entities import Param, RunTag

        self.client.log_batch(
            self.run_id,
            params=[Param(k, v) for k, v in hparams.items()],
            tags=[RunTag("tags", ",".join(tags))] if tags else [],
        )

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if not self.running:  # a resumed run's first step
            self.client.update_run(self.run_id, status="RUNNING")
            self.running = True
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's most metrics in one batch
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def finish(self, values: Mapping[str, float], step: int) -> None:
        self.scalars({f"final/{k}": v for k, v in values.items()}, step)
        self.client.set_terminated(self.run_id, "FINISHED")
        self.running = False

    def close(self) -> None:
        if self.running:
            self.client.set_terminated(self.run_id, "FAILED")
