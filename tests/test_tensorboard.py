"""What TensorBoard shows of a real sweep, read by TensorBoard's own plugin code (the hparams
and custom-scalars backends over the sweep's event files, as `tensorboard --logdir <sweep>`
serves them), and which points of a single run's series it logs."""

import json
import re
from pathlib import Path

import pytest
from conftest import run_cli
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.custom_scalar.custom_scalars_plugin import CustomScalarsPlugin
from tensorboard.plugins.hparams import (
    api_pb2,
    backend_context,
    get_experiment,
    list_session_groups,
    plugin_data_pb2,
)
from tensorboard.plugins.hparams.metadata import SESSION_START_INFO_TAG

# one worker builds the costly module-scoped `sweep`, `results`, `served` for the tests
# that use them; the other tests are free to go to any worker
SHARES_FIXTURE = pytest.mark.xdist_group("tensorboard")

TINY = ["dataset.n_train=32", "dataset.n_test=16", "trainer.epochs=1"]
TWO_EPOCHS = ["trainer.epochs=2", "dataset.n_train=32", "dataset.n_test=16"]
SHOWN = 5  # columns the HParams tab ticks at first (tf-hparams-query-pane: _computeHParams)


class Served:
    """A --logdir as TensorBoard's backend serves it."""

    def __init__(self, logdir):
        self.mux = plugin_event_multiplexer.EventMultiplexer()
        self.mux.AddRunsFromDirectory(str(logdir))
        self.mux.Reload()
        self.provider = data_provider.MultiplexerDataProvider(self.mux, str(logdir))
        tb = base_plugin.TBContext(
            logdir=str(logdir), multiplexer=self.mux, data_provider=self.provider
        )
        self.hparams, self.custom = backend_context.Context(tb), CustomScalarsPlugin(tb)
        self.request = context.RequestContext()

    def experiment(self):
        request = api_pb2.GetExperimentRequest(hparams_limit=1000)  # the frontend's limit
        return get_experiment.Handler(self.request, self.hparams, "", request).run()

    def session_groups(self):
        request = api_pb2.ListSessionGroupsRequest(
            allowed_statuses=[0, 1, 2, 3], start_index=0, slice_size=100
        )
        handler = list_session_groups.Handler(self.request, self.hparams, "", request)
        return {g.name: g for g in handler.run().session_groups}

    def layout(self):
        return json.loads(self.custom.layout_impl(self.request, ""))

    def scalars(self):
        """{run: {tag: [(step, value)]}}, as the Scalars tab reads them."""
        data = self.provider.read_scalars(
            self.request, experiment_id="", plugin_name="scalars", downsample=10_000
        )
        return {
            run: {tag: [(d.step, d.value) for d in points] for tag, points in tags.items()}
            for run, tags in data.items()
        }


def shown_by_default(experiment):
    """The HParams tab's ticked columns: those that differ first, then the first SHOWN (the
    frontend's sort of the experiment's columns is stable)."""
    infos = sorted(experiment.hparam_infos, key=lambda info: not info.differs)
    return [info.name for info in infos[:SHOWN]]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Six runs, three strategies × two seeds: the sweep's folder."""
    tmp = tmp_path_factory.mktemp("tb")
    folder = tmp / "sweep"
    args = [
        "-m",
        "weighting=fixed,uncertainty,famo",
        "seed=0,1",
        *TINY,
        f"hydra.sweep.dir={folder}",
    ]
    proc = run_cli(args, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.fixture(scope="module")
def results(sweep):
    """{job folder: its results.json}."""
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 6
    return {job.name: json.loads((job / "results.json").read_text()) for job in jobs}


@pytest.fixture(scope="module")
def served(sweep):
    return Served(sweep)


@SHARES_FIXTURE
def test_hparams_columns_are_what_differs_between_the_runs(served):
    experiment = served.experiment()
    columns = {info.name: info for info in experiment.hparam_infos}
    # the sweep's settings, not the constant dataset/model/trainer choices and overrides
    assert set(columns) == {"weighting", "seed"}
    assert all(info.differs for info in columns.values())
    assert set(shown_by_default(experiment)) == {"weighting", "seed"}
    assert set(columns["weighting"].domain_discrete) == {"fixed", "uncertainty", "famo"}


@SHARES_FIXTURE
def test_hparams_rows_show_the_seed_as_written_and_the_full_run_name(results, served):
    groups = served.session_groups()
    # each run is its own trial, named by its whole folder (no hash, nothing cut off)
    assert set(groups) == {f"{job}/tb/hparams" for job in results}
    for job, result in results.items():
        hparams = groups[f"{job}/tb/hparams"].hparams
        assert hparams["seed"].WhichOneof("kind") == "string_value"
        assert hparams["seed"].string_value == str(result["seed"])  # "1", not 1.0000
        assert hparams["weighting"].string_value == result["choices"]["weighting"]


@SHARES_FIXTURE
def test_hparams_metrics_are_the_reported_values_in_a_sub_run(results, served):
    experiment = served.experiment()
    metrics = [info.name.tag for info in experiment.metric_infos]
    assert {"test/y1/rmse", "weighting/sigma/y1", "weighting/z/y2", "weighting/weight/y1"} <= set(
        metrics
    )
    assert all(m.startswith("test/") for m in metrics[: SHOWN - 1])  # shown first: test metrics
    groups = served.session_groups()
    for job, result in results.items():
        values = {m.name.tag: m.value for m in groups[f"{job}/tb/hparams"].metric_values}
        learned = {f"weighting/{q}/{t}": v for q, per in result["weighting"].items()
                   for t, v in per.items()}  # fmt: skip
        expected = {k: v for k, v in result["metrics"].items() if k.startswith("test/")} | learned
        assert values == pytest.approx(expected, rel=1e-6), job


@SHARES_FIXTURE
def test_the_final_values_are_not_charts_at_the_top_of_scalars(results, served):
    scalars = served.scalars()
    for job, result in results.items():
        series, finals = scalars[f"{job}/tb"], scalars[f"{job}/tb/hparams"]
        assert not [t for t in series if t.startswith(("final/", "weighting/"))]
        assert all(points == [(result["steps"], pytest.approx(points[0][1]))]
                   for points in finals.values())  # fmt: skip
        # the Scalars tab has a section per tag's first part, in order: the final values' own
        # (weighting/) comes after those of the losses, metrics and weights; only a quantity
        # named after it (FAMO's z) follows it
        sections = {t.split("/")[0] for t in series}
        assert {t.split("/")[0] for t in finals} <= {"test", "validation", "weighting"}
        assert "weighting" not in sections and {"loss", "test", "train", "weight"} <= sections
        assert {s for s in sections if s > "weighting"} <= {"z"}


def drawn(regexes, scalars):
    """The (run, tag) pairs a custom-scalars chart with `regexes` draws."""
    return {
        (run, tag)
        for run, tags in scalars.items()
        for tag in tags
        if any(re.search(r, tag) for r in regexes)
    }


@SHARES_FIXTURE
def test_custom_scalars_charts_hold_one_quantity_of_every_run(served):
    scalars = served.scalars()
    charts = {
        chart["title"]: chart["multiline"]["tag"]
        for category in served.layout()["category"]
        for chart in category["chart"]
    }
    assert {"y1/rmse", "y2/mse", "sigma", "log_var", "z"} <= set(charts)
    for title, regexes in charts.items():
        lines = drawn(regexes, scalars)
        tags = {tag for _, tag in lines}
        assert not [t for t in tags if t.startswith("weight/")], title  # no strategy's weights
        if "/" in title:  # a task metric: its train and test curves (no validation held out)
            assert tags == {f"train/{title}", f"test/{title}"}, title
        else:  # a learned quantity: its curves, from the runs of the strategy that learns it
            assert {t.split("/")[0] for t in tags} == {title}, title
            learns = {"sigma": "uncertainty", "log_var": "uncertainty", "z": "famo"}[title]
            assert {run.split("weighting-")[1].split("/")[0] for run, _ in lines} == {learns}


def test_a_single_run_has_every_choice_and_override_as_a_column(tmp_path):
    args = [*TINY, "weighting=fixed", f"hydra.run.dir={tmp_path}/r"]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    served = Served(tmp_path / "r")
    (group,) = served.session_groups().values()
    assert group.name == "tb/hparams"
    assert {k: v.string_value for k, v in group.hparams.items()} == {
        "dataset": "two_slope", "model": "two_slope", "trainer": "two_slope",
        "weighting": "fixed", "architecture": "hps", "seed": "0",
        "dataset.n_train": "32", "dataset.n_test": "16", "trainer.epochs": "1",
    }  # fmt: skip
    start = served.mux.SummaryMetadata("tb/hparams", SESSION_START_INFO_TAG)
    assert start.plugin_data.plugin_name == "hparams"


def test_a_stacked_sweep_has_the_swept_settings_as_columns(tmp_path):
    """hydra/launcher=vectorized builds its jobs after Hydra has set them up, each alike."""
    args = ["-m", "hydra/launcher=vectorized", "seed=0,1", "weighting=fixed", *TINY,
            f"hydra.sweep.dir={tmp_path}/s"]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    groups = Served(tmp_path / "s").session_groups()
    assert len(groups) == 2
    assert [
        {k: v.string_value for k, v in g.hparams.items()} for _, g in sorted(groups.items())
    ] == [
        {"seed": "0"},
        {"seed": "1"},
    ]


# ---- a single run's series ---------------------------------------------------------------


def events(run_dir: Path, run: str = "tb") -> EventAccumulator:
    """The event files of `run_dir`/`run`, every point kept."""
    acc = EventAccumulator(str(run_dir / run), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_shows_what_sets_the_run_apart_and_its_last_step(tmp_path):
    args = [
        *TWO_EPOCHS,
        "weighting=uncertainty",
        "trainer.log_every=1000",
        f"hydra.run.dir={tmp_path}/r",
    ]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    acc = events(tmp_path / "r")
    scalars = set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("sigma/y1")] == [4]  # the last step, though 4 < 1000
    assert "lr" not in scalars and "nonfinite_steps" not in scalars  # constant series
    assert "config/text_summary" in acc.Tags()["tensors"]
    hparams = events(tmp_path / "r", "tb/hparams")  # the HParams entry: its own sub-run
    assert {"test/y1/rmse", "weighting/sigma/y1", "weighting/weight/y2"} <= set(
        hparams.Tags()["scalars"]
    )
    content = hparams.PluginTagToContent("hparams")
    infos = [plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values()]
    (start,) = (i.session_start_info for i in infos if i.HasField("session_start_info"))
    assert set(start.hparams) == {"dataset", "model", "architecture", "trainer", "weighting",
                                  "seed", "trainer.epochs", "dataset.n_train", "dataset.n_test",
                                  "trainer.log_every"}  # fmt: skip


def test_a_constant_series_is_logged_where_it_starts_and_at_the_end(tmp_path):
    args = [*TWO_EPOCHS, "weighting=fixed", "trainer.log_every=1", f"hydra.run.dir={tmp_path}/r"]
    assert run_cli(args, cwd=tmp_path).returncode == 0
    acc = events(tmp_path / "r")
    assert [e.step for e in acc.Scalars("weight/y1")] == [1, 4]
    assert [e.step for e in acc.Scalars("loss_raw/y1")] == [1, 2, 3, 4]
