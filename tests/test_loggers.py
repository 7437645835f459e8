"""Loggers (logger=tensorboard, csv, mlflow, wandb, several at once), the user's callbacks and
tags, each read back by its own library: TensorBoard's EventAccumulator, the csv module,
MLflow's client on the run's file store, and W&B's offline run file (its records are W&B's own
protobuf messages, framed as W&B writes them: W&B ships no Python reader of them)."""

import csv
import json
import struct
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.hparams.metadata import SESSION_START_INFO_TAG

from mtltrain.outputs._mlflow_log import file_store_allowed, store_uri

# one worker builds the costly module-scoped `logged` for the tests
# that use it; the other tests are free to go to any worker
SHARES_FIXTURE = pytest.mark.xdist_group("loggers")

TINY = ["dataset=two_slope", "dataset.n_train=32", "dataset.n_test=16", "trainer.epochs=2",
        "trainer.log_every=1"]  # fmt: skip
ALL = "logger=[tensorboard,csv,mlflow,wandb]"


def csv_rows(run: Path) -> dict[int, dict[str, float]]:
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        return {
            int(r.pop("step")): {k: float(v) for k, v in r.items() if v not in ("", None)}
            for r in csv.DictReader(f)
        }


def by_tag(rows: dict[int, dict[str, float]]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for step, row in rows.items():
        for tag, value in row.items():
            series.setdefault(tag, []).append((step, value))
    return series


def tensorboard_series(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def mlflow_run(run: Path):
    from mlflow.tracking import MlflowClient

    with file_store_allowed():
        client = MlflowClient(store_uri(run))
        run_id = (run / "mlruns" / "run_id").read_text().strip()
        return client, client.get_run(run_id)


def wandb_records(run: Path) -> list:
    """The records of a run's W&B offline files, oldest first: each file is a header (":W&B",
    magic, version: 7 bytes), then 32 KiB blocks of chunks (crc32, length, type: 7 bytes;
    type 1 a whole record, 2/3/4 its first, middle and last part) holding Record messages."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for path in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):
        data, pos, parts = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if left < 7 or kind == 0:  # the rest of the block is padding
                pos += left
                continue
            parts += data[pos + 7 : pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(parts)
                records.append(record)
                parts = b""
    return records


def wandb_logged(run: Path):
    """{tag: [(step, value)]} of a run's W&B history, its config, tags and summary."""
    series, config, tags, summary = {}, {}, [], {}
    for r in wandb_records(run):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            for item in r.history.item:
                key = "/".join(item.nested_key) or item.key
                if not key.startswith("_"):
                    series.setdefault(key, []).append(
                        (r.history.step.num, json.loads(item.value_json))
                    )
        elif kind == "run":
            tags = list(r.run.tags) or tags
            config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "summary":
            summary.update({u.key: json.loads(u.value_json) for u in r.summary.update if u.key})
    config.pop("_wandb", None)
    return series, config, tags, summary


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One run into all four loggers, with tags."""
    cwd = tmp_path_factory.mktemp("loggers")
    proc = run_cli([*TINY, ALL, "tags=[baseline,tiny]", "hydra.run.dir=r"], cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd / "r"


@SHARES_FIXTURE
def test_every_logger_has_the_same_scalars_at_the_same_steps(logged):
    rows = csv_rows(logged)
    expected = by_tag(rows)
    assert {"loss/total", "weight/y1", "sigma/y2", "test/y1/rmse", "train/y2/mse"} <= set(expected)
    assert sorted(rows) == [1, 2, 3, 4]  # a row per logged step
    approx = {t: [(s, pytest.approx(v, rel=1e-6)) for s, v in p] for t, p in expected.items()}
    assert tensorboard_series(logged / "tb") == approx
    client, run = mlflow_run(logged)
    tags = [t for t in run.data.metrics if not t.startswith("final/")]
    history = {t: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, t)]
               for t in tags}  # fmt: skip
    assert history == approx
    assert wandb_logged(logged)[0] == approx


@SHARES_FIXTURE
def test_every_logger_has_the_hparams_tags_and_final_values(logged):
    results = json.loads((logged / "results.json").read_text())
    assert results["tags"] == ["baseline", "tiny"]
    written = yaml.safe_load((logged / "csv" / "hparams.yaml").read_text())
    hparams = written["hparams"]
    assert hparams["seed"] == "0" and hparams["weighting"] == "uncertainty"
    assert not {"logger", "tags", "callbacks"} & set(hparams)  # no column of their own
    assert written["tags"] == ["baseline", "tiny"] and written["step"] == results["steps"]
    final = written["final"]
    assert final["test/y1/rmse"] == pytest.approx(results["metrics"]["test/y1/rmse"])
    assert final["weighting/sigma/y1"] == pytest.approx(results["weighting"]["sigma"]["y1"])
    # TensorBoard: the HParams session (with a tags column), the tags as text, final values
    session = EventAccumulator(str(logged / "tb" / "hparams"))
    session.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        session.PluginTagToContent("hparams")[SESSION_START_INFO_TAG]
    ).session_start_info
    columns = {k: v.string_value for k, v in start.hparams.items()}
    assert columns == {**hparams, "tags": "baseline,tiny"}
    finals = {t: v[-1][1] for t, v in tensorboard_series(logged / "tb" / "hparams").items()}
    assert finals == pytest.approx(final)
    text = EventAccumulator(str(logged / "tb"), size_guidance={"tensors": 0})
    text.Reload()
    assert b"baseline, tiny" in text.Tensors("tags/text_summary")[0].tensor_proto.string_val[0]
    # MLflow: params, a tags tag, final/ metrics, a finished run
    _, run = mlflow_run(logged)
    assert run.data.params == hparams and run.data.tags["tags"] == "baseline,tiny"
    assert {k[6:]: v for k, v in run.data.metrics.items() if k[:6] == "final/"} == pytest.approx(
        final
    )
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    # W&B: config, tags, summary
    _, config, tags, summary = wandb_logged(logged)
    assert config == hparams and tags == ["baseline", "tiny"]
    assert {k[6:]: v for k, v in summary.items() if k[:6] == "final/"} == pytest.approx(final)


def test_no_logger_leaves_results_and_figures_only(tmp_path):
    proc = run_cli([*TINY, "logger=[]", "trainer.figures=true", "hydra.run.dir=r"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    kept = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"results.json", "figures"} <= kept and not {"tb", "csv", "mlruns", "wandb"} & kept


def test_a_logger_whose_library_is_missing_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    proc = run_cli([*TINY, "logger=[csv,wandb]", "hydra.run.dir=r"], cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "logger=wandb is not allowed" in line and 'pip install "mtltrain[wandb]"' in line
    assert not (tmp_path / "r").exists()  # refused before the run's folder is made


def logged_past_its_checkpoint(tmp_path):
    """A finished run with csv, MLflow and W&B logs, whose csv file has a row after its last
    checkpoint (as a run killed after logging it would leave)."""
    first = run_cli([*TINY, "logger=[csv,mlflow,wandb]", "hydra.run.dir=r"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "r"
    with (run / "csv" / "metrics.csv").open("a") as f:
        f.write("5,99.0\n")
    return run


def test_a_resumed_run_continues_the_csv_mlflow_and_wandb_logs(tmp_path):
    run = logged_past_its_checkpoint(tmp_path)
    _, before = mlflow_run(run)
    more = "logger=[csv,mlflow,wandb,tensorboard]"  # a resume may log into more loggers
    resumed = run_cli([f"resume={run}", "trainer.epochs=3", more], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    rows = csv_rows(run)
    assert sorted(rows) == [1, 2, 3, 4, 5, 6] and rows[5]["loss/total"] != 99.0
    assert rows[6]["test/y1/rmse"] == pytest.approx(
        json.loads((run / "results.json").read_text())["metrics"]["test/y1/rmse"]
    )
    client, after = mlflow_run(run)
    assert after.info.run_id == before.info.run_id and after.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(after.info.run_id, "loss/total")]
    assert steps == [1, 2, 3, 4, 5, 6]
    parts = sorted((run / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<run id>, with "-1" after it where both parts started in one second
    assert len(parts) == 2 and len({p.name.split("-")[3] for p in parts}) == 1
    assert [s for s, _ in wandb_logged(run)[0]["loss/total"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in tensorboard_series(run / "tb")["loss/total"]] == [5, 6]


def test_a_refused_resume_leaves_the_csv_mlflow_and_wandb_logs_as_they_were(tmp_path):
    run = logged_past_its_checkpoint(tmp_path)
    table, parts = (run / "csv" / "metrics.csv").read_text(), sorted((run / "wandb").iterdir())
    # refused once the run is opened (its device is checked as its job is built)
    refused = run_cli([f"resume={run}", "trainer.epochs=3", "trainer.device=cuda:99"], tmp_path)
    assert refused.returncode != 0 and "trainer.device=cuda:99" in refused.stderr
    assert (run / "csv" / "metrics.csv").read_text() == table
    assert mlflow_run(run)[1].info.status == "FINISHED"
    assert sorted((run / "wandb").iterdir()) == parts


CALLBACKS = """
import json
from pathlib import Path

from mtltrain.loop import Callback


class CountSteps(Callback):
    def __init__(self, file: str) -> None:
        self.file, self.steps = file, 0

    def on_step_end(self, job, step) -> None:
        self.steps += 1

    def on_fit_end(self, job) -> None:
        Path(self.file).write_text(json.dumps({"steps": self.steps, "at": job.step}))


class Recorder:  # a logger of the user's own
    def __init__(self, folder, resume_step) -> None:
        self.file, self.seen = Path(folder) / "recorded.json", {"steps": []}

    def start(self, hparams, tags) -> None:
        self.seen["tags"] = list(tags)

    def scalars(self, values, step) -> None:
        self.seen["steps"].append(step)

    def finish(self, values, step) -> None:
        self.seen["final"] = values["test/y1/rmse"]

    def close(self) -> None:
        self.file.write_text(json.dumps(self.seen))


class Unreachable(Recorder):  # a logger whose server goes away mid-run
    def scalars(self, values, step) -> None:
        if step > 1:
            raise ConnectionError("tracking server unreachable")

    def close(self) -> None:
        raise ConnectionError("tracking server unreachable")


class FitEnd:  # not a Callback: only the hook it needs
    def on_fit_end(self, job) -> None:
        Path("fit_end.txt").write_text(str(job.epoch))
"""


def test_a_users_callbacks_and_logger_run_by_their_target(tmp_path, monkeypatch):
    (tmp_path / "my_callbacks.py").write_text(CALLBACKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    own = tmp_path / "my_conf" / "callbacks"
    own.mkdir(parents=True)
    (own / "mine.yaml").write_text("end:\n  _target_: my_callbacks.FitEnd\n")
    proc = run_cli(["--config-dir", own.parent, *TINY, "logger=[]", "hydra.run.dir=r",
                    "callbacks=mine", "+callbacks.count._target_=my_callbacks.CountSteps",
                    "+callbacks.count.file=steps.json",
                    "+logger.mine._target_=my_callbacks.Recorder"], cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "steps.json").read_text()) == {"steps": 4, "at": 4}
    assert (tmp_path / "fit_end.txt").read_text() == "2"
    recorded = json.loads((tmp_path / "r" / "recorded.json").read_text())
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert recorded["final"] == pytest.approx(results["metrics"]["test/y1/rmse"])
    assert recorded["tags"] == [] and sorted(set(recorded["steps"])) == [1, 2, 3, 4]


def test_a_logger_that_fails_and_fails_to_close_leaves_the_runs_error(tmp_path, monkeypatch):
    (tmp_path / "my_callbacks.py").write_text(CALLBACKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    proc = run_cli([*TINY, "logger=[csv]", "+logger.gone._target_=my_callbacks.Unreachable",
                    "hydra.run.dir=r"], cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["status"] == "failed" and "tracking server unreachable" in results["error"]
    assert "a logger failed to close" in (tmp_path / "r" / "mtltrain.log").read_text()
    assert sorted(csv_rows(tmp_path / "r")) == [1, 2]  # the other logger closed: rows kept


@pytest.mark.parametrize(
    ("override", "says"),
    [
        (
            "+callbacks.count._target_=my_callbacks.CountStep",
            "did you mean my_callbacks.CountSteps",
        ),
        ("+callbacks.count=5", "callbacks={'count': 5} is not allowed"),
        ("logger=[csv,nope]", "logger=nope is not an option"),
        ("tags=[a,[b]]", "tags: ['b'] is not allowed: each tag is a non-empty text"),
        ("tags=['a,b']", "tags: 'a,b' is not allowed"),  # the loggers join tags with commas
        ("tags=baseline", "tags=baseline is not allowed: tags takes a list of labels"),
    ],
)
def test_a_bad_callback_or_logger_is_one_line(tmp_path, monkeypatch, override, says):
    (tmp_path / "my_callbacks.py").write_text(CALLBACKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    proc = run_cli([*TINY, override, "hydra.run.dir=r"], cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert says in line, line
    assert not (tmp_path / "r").exists()


def test_each_run_of_a_stacked_sweep_logs_into_its_own_loggers(tmp_path):
    args = ["-m", "hydra/launcher=vectorized", "hydra.launcher.group_size=2", "seed=0,1",
            "logger=[csv,wandb]", "hydra.sweep.dir=s", *TINY]  # fmt: skip
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "jobs #0, #1: stacked" in done.stdout + done.stderr
    runs = sorted(p for p in (tmp_path / "s").iterdir() if p.is_dir())
    ids = set()
    for run in runs:
        rows, results = csv_rows(run), json.loads((run / "results.json").read_text())
        assert rows[4]["test/y1/rmse"] == pytest.approx(results["metrics"]["test/y1/rmse"])
        series = {
            t: [(s, pytest.approx(v, rel=1e-6)) for s, v in p] for t, p in by_tag(rows).items()
        }
        assert wandb_logged(run)[0] == series
        ids |= {p.name.rpartition("-")[2] for p in (run / "wandb").glob("offline-run-*")}
    assert len(runs) == 2 and csv_rows(runs[0])[1] != csv_rows(runs[1])[1] and len(ids) == 2


def test_a_callback_without_hooks_is_one_line(tmp_path):
    no_hooks = "+callbacks.x._target_=argparse.Namespace"
    proc = run_cli([*TINY, "logger=[]", no_hooks, "hydra.run.dir=r"], cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "callbacks.x._target_=argparse.Namespace is not allowed: it builds a Namespace" in line
