"""Stacked runs (mtltrain.loop._stacked, hydra/launcher=vectorized): each job of a stack ends where
it would alone, in a folder like its own run's; faults stay per job; resume works per job.

Tolerance: the batched matrix products and vmapped reductions add in another order than one
run's, so a stacked job equals the same job alone to rounding, and rounding differences grow
with the steps trained. After the short runs here (SHORT: 2 epochs), every metric, learned
quantity, TensorBoard scalar and checkpoint tensor of a stacked job is within REL = 1e-5 of the
job's own value alone (where that value is near 0: 1e-7 absolute for results, 1e-6 for series
and tensors); measured over 5 seeds of every strategy, they differ by at most 2.1e-7. After
the default run's 1500 epochs, the final metrics are within FULL_REL and the learned quantities
within FULL_LEARNED_REL (slow tests, uncertainty weighting and FAMO; measured with the CLI's
sweeps on 3 seeds: metrics 5.3e-4, learned quantities 2.4e-3 at most, both with FAMO).
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from conftest import make_config, run_cli, run_report, write_fake_mnist
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtltrain.build import build_job
from mtltrain.errors import Interrupted, TrainingError
from mtltrain.loop._callbacks import Callback
from mtltrain.loop._stacked import StackedStep
from mtltrain.loop._trainer import Trainer, train_alone
from mtltrain.outputs import _checkpoint_file as checkpoint
from mtltrain.outputs import _run_folder as rundir
from mtltrain.outputs._results import read_results
from mtltrain.run import run, run_stacked
from mtltrain.stacking import groups_of, stack_key, unstackable
from mtltrain.weighting.imtl import IMTL

REL = 1e-5
FULL_REL = 2e-3
FULL_LEARNED_REL = 1e-2
COMPILED_REL = 1e-4  # trainer.compile on a stack, after SHORT (see its test)
SHORT = [
    "trainer.epochs=2",
    "trainer.eval_every=1",
    "trainer.log_every=10",
    "trainer.figure_every=0",
    "trainer.progress=false",
    "trainer.deterministic=true",
    "trainer.checkpoint_interval=0",
]


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = write_fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=64, n_test=32)
    return ["dataset=mnist_mtl", f"dataset.root={root}", "dataset.download=false"]


def jobs_of(
    base: Path,
    common: Sequence[str],
    per_job: Sequence[Sequence[str]],
    length: Sequence[str] = SHORT,
) -> list:
    return [
        (make_config([*length, *common, *own]), base / f"job{i}", list(own), {}, None)
        for i, own in enumerate(per_job)
    ]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def assert_same_results(stacked: Path, alone: Path, rel: float, learned_rel: float) -> None:
    """Same steps and selection; metrics within `rel` of alone's, learned quantities within
    `learned_rel`."""
    a, b = read_results(stacked), read_results(alone)
    assert a["status"] == b["status"] == "completed"
    assert a.keys() == b.keys()
    assert a["steps"] == b["steps"] and a["selected"] == b["selected"]
    assert a["metrics"].keys() == b["metrics"].keys()
    for k, v in b["metrics"].items():
        assert a["metrics"][k] == pytest.approx(v, rel=rel, abs=1e-7), k
    assert a["weighting"].keys() == b["weighting"].keys()
    for q, values in b["weighting"].items():
        assert a["weighting"][q] == pytest.approx(values, rel=learned_rel, abs=1e-7), q


def assert_same_run(stacked: Path, alone: Path) -> None:
    """Same results (to REL), same TensorBoard series at the same steps, same checkpoint."""
    assert_same_results(stacked, alone, REL, REL)
    sa, sb = scalars(stacked), scalars(alone)
    assert sa.keys() == sb.keys()
    for tag, series in sb.items():
        assert [s for s, _ in sa[tag]] == [s for s, _ in series], tag
        assert [v for _, v in sa[tag]] == pytest.approx([v for _, v in series], rel=REL, abs=1e-6)
    ca = checkpoint.load(stacked / "checkpoints" / "last.pt")["trainer"]
    cb = checkpoint.load(alone / "checkpoints" / "last.pt")["trainer"]
    assert ca["position"] == cb["position"]
    assert ca["optimizer"]["param_groups"] == cb["optimizer"]["param_groups"]
    for key, value in cb["model"].items():
        torch.testing.assert_close(ca["model"][key], value, rtol=REL, atol=1e-6)


def check_against_alone(tmp_path: Path, common: Sequence[str], per_job: Sequence[Sequence[str]]):
    stacked = run_stacked(jobs_of(tmp_path / "stacked", common, per_job))
    for job in jobs_of(tmp_path / "alone", common, per_job):
        run(*job)
    for i, value in enumerate(stacked):
        assert not isinstance(value, Exception), value
        assert_same_run(tmp_path / "stacked" / f"job{i}", tmp_path / "alone" / f"job{i}")


SEEDS = [["seed=0"], ["seed=1"], ["seed=2"]]
SMALL = ["dataset.n_train=96", "dataset.n_test=200"]  # §5A's data, 6 batches an epoch


SLOW = pytest.mark.slow  # the default suite is at its 10 minutes: these run under -m slow


@pytest.mark.parametrize(
    "strategy",
    ["fixed", "uncertainty", pytest.param("revised_uncertainty", marks=SLOW),
     pytest.param("uw_so", marks=SLOW), "geometric", pytest.param("scale_invariant", marks=SLOW),
     "rlw", "dwa", "famo", pytest.param("imtl_l", marks=SLOW)],
)  # fmt: skip
def test_each_stacked_job_ends_where_it_would_alone(tmp_path: Path, strategy: str) -> None:
    check_against_alone(tmp_path, [*SMALL, f"weighting={strategy}"], SEEDS)


@SLOW
@pytest.mark.parametrize("strategy", ["uncertainty", "famo"])
def test_full_length_stacked_jobs_end_within_full_rel(tmp_path: Path, strategy: str) -> None:
    """The default data, model and trainer (1500 epochs, 28,500 steps), 3 seeds stacked and
    alone: rounding differences grow with the steps; the final metrics stay within FULL_REL,
    the learned quantities (σ; FAMO's softmax z) within FULL_LEARNED_REL."""
    full = ["trainer.progress=false"]
    common = [f"weighting={strategy}"]
    stacked = run_stacked(jobs_of(tmp_path / "stacked", common, SEEDS, length=full))
    assert all(isinstance(v, float) for v in stacked), stacked
    for i, job in enumerate(jobs_of(tmp_path / "alone", common, SEEDS, length=full)):
        run(*job)
        stacked_job, alone_job = tmp_path / "stacked" / f"job{i}", tmp_path / "alone" / f"job{i}"
        assert_same_results(stacked_job, alone_job, FULL_REL, FULL_LEARNED_REL)


def test_dtp_stacks_on_the_vmapped_conv_model(
    tmp_path: Path, mnist: list[str], monkeypatch
) -> None:
    """MNIST's model has no forward_stacked: torch.func.vmap runs it; DTP reads KPIs per job.
    (On a CPU such a model runs alone for speed: stacked here to check it is exact.)"""
    monkeypatch.setattr("mtltrain.stacking._has_convolutions", lambda model: False)
    check_against_alone(tmp_path, [*mnist, "weighting=dtp", "trainer.epochs=2"], SEEDS[:2])


def test_a_loss_that_is_no_mean_per_element_is_vmapped(
    tmp_path: Path, mnist: list[str], monkeypatch
) -> None:
    """Dice sums over a job's whole batch: its losses are vmapped, not averaged per element."""
    monkeypatch.setattr("mtltrain.stacking._has_convolutions", lambda model: False)
    check_against_alone(
        tmp_path, [*mnist, "dataset.tasks=[cls3,seg]", "trainer.epochs=1"], SEEDS[:2]
    )


@SLOW
def test_conv_models_run_alone_on_a_cpu(tmp_path: Path, mnist: list[str], caplog) -> None:
    with caplog.at_level("INFO"):
        run_stacked(jobs_of(tmp_path, [*mnist, "trainer.epochs=1"], SEEDS[:2]))
    assert "2 jobs run one after another: vmapped convolutions" in caplog.text


@SLOW
def test_custom_losses_and_metrics_stack(tmp_path: Path, caplog) -> None:
    """A callable loss that takes reduction= is averaged per element, one that does not
    (torch.dist) is vmapped; a torchmetrics metric scores each job's own evaluations."""
    common = [
        "dataset.n_train=32",
        "dataset.n_test=32",
        "trainer.epochs=1",
        "dataset.losses.y1=[{_target_:torch.nn.functional.huber_loss,_partial_:true,delta:2.0}]",
        "dataset.losses.y2=[{_target_:torch.dist,_partial_:true}]",
        "+dataset.metrics.y1=[rmse,{_target_:torchmetrics.regression.MeanAbsoluteError}]",
    ]
    with caplog.at_level("INFO"):
        check_against_alone(tmp_path, common, SEEDS[:2])
    assert "one after another" not in caplog.text
    assert "test/y1/mean_absolute_error" in read_results(tmp_path / "stacked" / "job0")["metrics"]


def test_heteroscedastic_outputs_stack(tmp_path: Path) -> None:
    common = ["dataset=sin_hetero", "dataset.n_train=600", "dataset.n_test=200"]
    check_against_alone(tmp_path, [*common, "dataset.losses.y=[beta_nll]"], SEEDS[:2])


def test_settings_that_live_in_tensors_stack(tmp_path: Path) -> None:
    """Per-job learning rates (the optimizer then steps each job's rows), initial log σ² (the
    contributions still at once) and a form that changes a plain number (then per job)."""
    per_job = [
        ["seed=0", "trainer.optimizer.lr=1e-3", "weighting.init_log_var=0.5"],
        ["seed=0", "trainer.optimizer.lr=3e-4", "weighting.form=unit"],
        ["seed=3", "+trainer.optimizer.weight_decay=0.01"],
    ]
    check_against_alone(tmp_path, [*SMALL, "weighting=uncertainty"], per_job)


def test_forms_that_differ_in_a_number_stack_on_one_optimizer(tmp_path: Path) -> None:
    """Equal optimizer settings (one step over the stacked tensors), contributions per job."""
    per_job = [["seed=0", "weighting.form=unit"], ["seed=1"]]
    check_against_alone(tmp_path, [*SMALL, "weighting=uncertainty"], per_job)


@pytest.mark.parametrize(
    "optimizer",
    [
        "AdamW",
        pytest.param("SGD", marks=pytest.mark.slow),
        pytest.param("Adafactor", marks=pytest.mark.slow),
    ],
)
def test_other_optimizers_stack(tmp_path: Path, optimizer: str) -> None:
    """Elementwise ones step the stacked tensors, Adafactor (norms per tensor) each job's."""
    common = [*SMALL, f"trainer.optimizer._target_=torch.optim.{optimizer}"]
    check_against_alone(tmp_path, common, SEEDS[:2])


def test_trainer_compile_compiles_the_stacked_forward_once(monkeypatch) -> None:
    """trainer.compile stacks: the stack compiles its forward (model and losses) in that mode,
    and the jobs evaluate with their eager models (torch.compile recorded, not run)."""
    compiled = []

    def recorded(fn, mode=None, **_):
        compiled.append((fn, mode))
        return fn

    monkeypatch.setattr(torch, "compile", recorded)
    common = [*SHORT, *SMALL, "trainer.compile=max-autotune"]
    jobs = [build_job(make_config([*common, f"seed={s}"])) for s in (0, 1)]
    assert unstackable(jobs) == ""
    compiled.clear()  # each job's own compiled model, from its build
    stack = StackedStep(jobs)
    assert compiled == [(stack.forward, "max-autotune")]
    assert stack.forward_losses == stack.forward
    assert all(job.forward is job.model for job in jobs)


@SLOW
def test_a_compiled_stack_ends_close_to_each_job_alone(tmp_path: Path) -> None:
    """trainer.compile=default: the stacked jobs (compiled) end within COMPILED_REL of the same
    jobs alone (eager): the compiled kernels add in another order."""
    common = [*SMALL, "weighting=uncertainty"]
    assert_compiled_stack_close_to_alone(tmp_path, common, "trainer.compile=default")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_of_a_stack_end_close_to_each_job_alone(tmp_path: Path) -> None:
    """trainer.compile=reduce-overhead on a GPU (the stacked step replayed as CUDA graphs):
    each stacked job ends within COMPILED_REL of the same job alone, eager, on the GPU."""
    common = [*SMALL, "weighting=uncertainty", "trainer.device=cuda"]
    assert_compiled_stack_close_to_alone(tmp_path, common, "trainer.compile=reduce-overhead")


def assert_compiled_stack_close_to_alone(tmp_path: Path, common: list[str], compile: str) -> None:
    """Two seeds stacked with `compile` end within COMPILED_REL of each alone, eager."""
    stacked = run_stacked(jobs_of(tmp_path / "stacked", [*common, compile], SEEDS[:2]))
    for job in jobs_of(tmp_path / "alone", common, SEEDS[:2]):
        run(*job)
    for i, value in enumerate(stacked):
        assert not isinstance(value, Exception), value
        stacked_run, alone = (tmp_path / way / f"job{i}" for way in ("stacked", "alone"))
        assert_same_results(stacked_run, alone, COMPILED_REL, COMPILED_REL)


def test_the_docs_state_the_tolerances_proven_here() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "scaling-out.md").read_text()
    claim = " ".join(page.split("**Same results as alone")[1].split("\n- ")[0].split())

    def written(x: float) -> str:
        return f"{x:.0e}".replace("e-0", "e-")

    assert f"every stackable strategy on {len(SEEDS)} seeds" in claim
    assert "after 2 epochs" in claim and "trainer.epochs=2" in SHORT
    assert f"within a relative {written(REL)} of" in claim
    assert f"on {len(SEEDS)} seeds: the final" in claim
    assert f"within a relative {written(FULL_REL)}," in claim
    assert f"learned quantities within {written(FULL_LEARNED_REL)} of" in claim


def test_stack_key_ignores_only_stackable_settings() -> None:
    base = stack_key(make_config(["seed=0"]))
    same = [
        ["seed=5"],
        ["trainer.optimizer.lr=0.1"],
        ["weighting.init_log_var=2"],
        ["trainer.validation_seed=3"],
    ]
    for overrides in same:
        assert stack_key(make_config(overrides)) == base, overrides
    for overrides in (["trainer.epochs=3"], ["weighting=fixed"], ["dataset.n_train=100"]):
        assert stack_key(make_config(overrides)) != base, overrides


def test_groups_hold_at_most_group_size_and_say_why_others_run_alone() -> None:
    configs = [make_config([f"seed={s}"]) for s in range(5)]
    configs += [make_config(["weighting=mgda"])]
    configs += [make_config(["trainer.epochs=7"])]
    groups = groups_of(configs, 2)
    assert [g for g, _ in groups] == [[0, 1], [2, 3], [4], [5], [6]]
    whys = [why for _, why in groups]
    assert whys[:2] == ["", ""]
    assert "stackable settings only" in whys[2] and "stackable settings only" in whys[4]
    assert whys[3].startswith("MGDA: it combines per-task gradients")


def test_imtl_stacks_by_its_variant() -> None:
    """IMTL-L alone (imtl_l, or imtl with variant=loss) is loss-based, so its jobs stack; IMTL
    with its gradient part does not, and is grouped apart from them (the same class)."""
    configs = [make_config(["weighting=imtl_l"]), make_config(["weighting=imtl", "seed=1"])]
    configs.append(make_config(["weighting=imtl", "weighting.variant=loss", "seed=2"]))
    (stacked, none), (alone, why) = groups_of(configs, 4)
    assert (stacked, none, alone) == ([0, 2], "", [1])
    assert why.startswith("IMTL: it combines per-task gradients")


class SettingsAsKeywords(IMTL):
    """A user's IMTL that hands its settings on as **kwargs (its signature names none)."""

    def __init__(self, terms, **settings) -> None:
        super().__init__(terms, **settings)


def test_a_strategy_whose_signature_hides_its_settings_is_grouped_without_an_error() -> None:
    """Its variant unseen, it is judged gradient-based (runs alone), not a KeyError."""
    target = f"{__name__}.{SettingsAsKeywords.__name__}"
    configs = [OmegaConf.create({"seed": i, "weighting": {"_target_": target}}) for i in (0, 1)]
    ((members, why),) = groups_of(configs, 4)
    assert members == [0, 1] and why.startswith("SettingsAsKeywords: it combines per-task")


def test_unstackable_groups_run_one_after_another(tmp_path: Path, caplog) -> None:
    """A model that draws dropout masks cannot stack: its jobs run alone, with the reason."""
    common = ["dataset=sin_hetero", "+model.encoder.dropout=0.2", "dataset.n_train=200"]
    with caplog.at_level("INFO"):
        outcomes = run_stacked(jobs_of(tmp_path, common, SEEDS[:2]))
    assert all(isinstance(v, float) for v in outcomes)
    assert "2 jobs run one after another: the model draws dropout masks" in caplog.text
    for i, job in enumerate(jobs_of(tmp_path / "alone", common, SEEDS[:2])):
        run(*job)  # each from the random state its own build left: its own dropout masks
        assert_same_run(tmp_path / f"job{i}", tmp_path / "alone" / f"job{i}")


def test_a_diverging_job_stops_alone(tmp_path: Path) -> None:
    """A job whose loss overflows fails with the one-line error it would have alone, at the
    same step; the others go on and end as alone."""
    per_job = [["seed=0"], ["seed=1", "trainer.optimizer.lr=1e30"], ["seed=2"]]
    common = [*SMALL, "weighting=fixed"]
    outcomes = run_stacked(jobs_of(tmp_path / "stacked", common, per_job))
    assert isinstance(outcomes[1], TrainingError)
    assert "non-finite loss" in str(outcomes[1])
    with pytest.raises(TrainingError) as alone:
        run(*jobs_of(tmp_path / "alone", common, per_job)[1])
    assert str(alone.value) == str(outcomes[1]).replace("stacked", "alone")
    assert read_results(tmp_path / "stacked" / "job1")["status"] == "failed"
    for i in (0, 2):
        run(*jobs_of(tmp_path / "alone", common, per_job)[i])
        assert_same_run(tmp_path / "stacked" / f"job{i}", tmp_path / "alone" / f"job{i}")


def test_a_job_that_skips_steps_skips_them_alone(tmp_path: Path) -> None:
    """trainer.nonfinite=skip: the job with a NaN step keeps its rows and optimizer state
    (the stack then steps each job's rows) and ends where it would alone; so do the others."""
    per_job = [["seed=0"], ["seed=1", "weighting.weights=[1e38,1e38]"], ["seed=2"]]
    common = [*SMALL, "weighting=fixed", "trainer.nonfinite=skip", "trainer.max_skipped=1"]
    check_against_alone(tmp_path, common, per_job)
    assert read_results(tmp_path / "stacked" / "job1")["nonfinite_steps"] > 0
    assert read_results(tmp_path / "stacked" / "job0")["nonfinite_steps"] == 0


def test_a_signal_checkpoints_every_job_and_each_resumes(tmp_path: Path, monkeypatch) -> None:
    """SIGTERM mid-epoch: every job writes its checkpoint and is marked interrupted; one job
    then resumes alone, the other two stacked, and all end as uninterrupted runs do."""
    step = StackedStep.train_step

    def stopping(self, index):  # the signal arrives during step 7
        step(self, index)
        if self.number == 7:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(StackedStep, "train_step", stopping)
    common = [*SMALL, "weighting=uncertainty"]
    outcomes = run_stacked(jobs_of(tmp_path / "stacked", common, SEEDS))
    monkeypatch.undo()
    assert all(isinstance(v, Interrupted) for v in outcomes)
    for i in range(3):
        folder = tmp_path / "stacked" / f"job{i}"
        assert read_results(folder)["status"] == "interrupted"
        state = checkpoint.load(folder / "checkpoints" / "last.pt")
        assert state["trainer"]["position"]["step"] == 7
    resumed = jobs_of(tmp_path / "stacked", [*common, "resume_sweep=true"], SEEDS)
    run(*resumed[0])
    assert all(isinstance(v, float) for v in run_stacked(resumed[1:]))
    for i, job in enumerate(jobs_of(tmp_path / "alone", common, SEEDS)):
        run(*job)
        assert_same_run(tmp_path / "stacked" / f"job{i}", tmp_path / "alone" / f"job{i}")


def test_vectorized_launcher_sweep(tmp_path: Path, monkeypatch) -> None:
    """The installed CLI: loss-based jobs stack, MGDA's run one after another (a log line
    says why), and mtltrain-report reads every job's folder; each job's config is composed
    once, though both the sweeper (to check it) and the launcher ask for it."""
    composed: list[tuple[str, ...]] = []
    compose = ConfigLoaderImpl.load_sweep_config

    def counted(self, master_config, sweep_overrides):
        composed.append(tuple(sweep_overrides))
        return compose(self, master_config, sweep_overrides)

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counted)
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "hydra/launcher=vectorized",
        "hydra.launcher.group_size=2",
        "dataset=sin_hetero",
        "dataset.n_train=200",
        "dataset.n_test=100",
        "weighting=uncertainty,mgda",
        "seed=0,1,2",
        f"hydra.sweep.dir={sweep}",
        *SHORT,
    ]
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr
    logged = done.stdout + done.stderr
    assert "jobs #0, #1: stacked" in logged
    assert "#2 run one after another: no other job" in logged
    assert "#3, #4 run one after another: MGDA: it combines per-task gradients" in logged
    folders = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(folders) == 6 and len(composed) == len(set(composed)) == 6
    for folder in folders:
        assert read_results(folder)["status"] == "completed"
        assert (folder / ".hydra" / "config.yaml").is_file()
        assert (folder / "checkpoints" / "last.pt").is_file()
    done = run_report([sweep], tmp_path)
    assert done.returncode == 0, done.stderr
    report = done.stdout
    assert "| weighting=uncertainty | 3 |" in report and "| weighting=mgda | 3 |" in report


def test_group_size_must_be_a_positive_integer(tmp_path: Path) -> None:
    args = ["-m", "hydra/launcher=vectorized", "hydra.launcher.group_size=0", "seed=0,1"]
    done = run_cli([*args, f"hydra.sweep.dir={tmp_path / 's'}"], tmp_path)
    assert done.returncode != 0
    assert "hydra.launcher.group_size=0 is not allowed" in done.stderr


def test_the_loop_stops_a_job_whose_epoch_end_fails_and_the_others_go_on() -> None:
    """Two jobs through the one Trainer, on the stacked step: job 0's callback fails at its
    first epoch end; job 0 stops there, job 1 trains on and ends as it would alone."""

    class Broken(Callback):
        def on_epoch_end(self, job) -> None:
            raise RuntimeError("job 0's callback broke")

    configs = [make_config([*SHORT, *SMALL, f"seed={s}"]) for s in (0, 1)]
    jobs = [build_job(configs[0], extra_callbacks=[Broken()]), build_job(configs[1])]
    trainer = Trainer(jobs)
    assert isinstance(trainer.runner, StackedStep)
    errors = trainer.fit()
    assert isinstance(errors[0], RuntimeError) and errors[1] is None
    assert jobs[0].epoch == 1 and jobs[1].epoch == 2 and jobs[1].step == 2 * 6
    alone = build_job(configs[1])
    train_alone(alone)
    assert jobs[1].test_metrics == pytest.approx(alone.test_metrics, rel=REL, abs=1e-7)


def test_a_failed_stacked_job_is_one_line_and_the_others_finish(tmp_path: Path) -> None:
    """hydra/launcher=vectorized: one job with a setting refused, one whose loss goes NaN."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=vectorized", "trainer.optimizer.lr=1e-3,1e30",
            "weighting.init_log_var=0,1e6", "trainer.epochs=2", "dataset.n_train=32",
            "dataset.n_test=16", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "HydraConfig" not in proc.stderr and len(lines) == 4, proc.stderr
    jobs = rundir.jobs_in(sweep)
    assert [rundir.status(j) for j in jobs] == ["completed", "failed", "failed", "failed"]
    for job, line in zip(jobs[1:], lines, strict=False):
        assert line.startswith(f"mtltrain: error: job {job.name}: "), line
    assert "weighting.init_log_var=1000000.0 is not allowed" in lines[0]
    assert "non-finite loss" in lines[1]
    assert lines[3].startswith("mtltrain: 3 of 4 jobs did not finish")
