"""trainer.lr_scheduler and trainer.grad_clip: the learning rate over epochs against its hand
values (StepLR; ReduceLROnPlateau on the validation objective), its state through an exact
resume, the clipped update against one clipped by hand, and the refusals."""

import copy

import pytest
import torch
from conftest import StopAt, make_config, run_cli, through_disk
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtltrain.build import build_job
from mtltrain.errors import CheckpointError, ConfigError, Interrupted
from mtltrain.loop import Callback, PerJobStep
from mtltrain.loop._trainer import train_alone
from mtltrain.stacking import unstackable

# two_slope: 32 samples in batches of 16, two steps an epoch
TINY = [
    "dataset.n_train=32",
    "dataset.n_test=16",
    "trainer.batch_size=16",
    "trainer.eval_every=1",
    "trainer.deterministic=true",
    "trainer.optimizer.lr=1e-2",
]
STEP_LR = "trainer.lr_scheduler={_target_:torch.optim.lr_scheduler.StepLR,step_size:2,gamma:0.5}"
PLATEAU = "trainer.lr_scheduler={_target_:torch.optim.lr_scheduler.ReduceLROnPlateau,patience:0,factor:0.5,eps:0}"  # noqa: E501


class Seen(Callback):
    """The validation y1/rmse of each evaluation, and the model's learning rate after each
    epoch's end."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.lrs: list[float] = []

    def on_evaluation(self, job, metrics) -> None:
        self.values.append(metrics["validation"]["y1/rmse"])

    def on_epoch_end(self, job) -> None:
        self.lrs.append(job.optimizer.param_groups[0]["lr"])


def test_step_lr_halves_the_rate_every_step_size_epochs_and_tensorboard_logs_it(tmp_path):
    proc = run_cli(
        [*TINY, STEP_LR, "trainer.epochs=5", "trainer.log_every=1", f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("lr")]
    # epochs 1–2 at 1e-2, 3–4 at 5e-3, 5 at 2.5e-3; two steps an epoch
    hand = [1e-2] * 4 + [5e-3] * 4 + [2.5e-3] * 2
    assert [s for s, _ in logged] == list(range(1, 11))
    assert [v for _, v in logged] == pytest.approx(hand, rel=1e-6)


def test_reduce_on_plateau_reads_the_validation_objective_and_lowers_a_stalled_rate():
    # a rate so small that the objective cannot improve by the scheduler's threshold (1e-4)
    cfg = make_config(
        [*TINY, PLATEAU, "trainer.epochs=3", "trainer.optimizer.lr=1e-9",
         "trainer.validation=8", "objective=validation/y1/rmse"]
    )  # fmt: skip
    seen = Seen()
    job = build_job(cfg, extra_callbacks=[seen])
    train_alone(job)
    # the first evaluation sets the best (mode min: rmse falls), each later one is no better
    assert seen.lrs == pytest.approx([1e-9, 5e-10, 2.5e-10], rel=1e-12)
    scheduler = job.schedule.scheduler
    assert scheduler.mode == "min" and scheduler.best == seen.values[0]
    assert seen.values[0] != job.test_metrics["y1/rmse"]  # validation's, not test's


def test_a_resumed_run_with_a_schedule_continues_bit_identically():
    # halved after epoch 3, which the run is stopped in: a schedule counted from the resume
    # (its state lost) would not halve it before the end
    cfg = make_config([*TINY, STEP_LR, "trainer.lr_scheduler.step_size=3", "trainer.epochs=4"])
    alone = build_job(cfg)
    train_alone(alone)
    stopped = build_job(cfg, extra_callbacks=[StopAt(5)])  # mid epoch 3
    with pytest.raises(Interrupted):
        train_alone(stopped)
    state = through_disk(stopped.state_dict())
    assert state["lr_scheduler"]["state"]["last_epoch"] == 2
    resumed = build_job(cfg)
    resumed.load_state_dict(state)
    train_alone(resumed)
    for a, b in zip(alone.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert alone.test_metrics == resumed.test_metrics
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)
    # a resume keeps the schedule: another one, or none, is refused
    other = copy.deepcopy(cfg)
    other.trainer.lr_scheduler.step_size = 2
    with pytest.raises(CheckpointError, match="a run keeps its schedule"):
        build_job(other).load_state_dict(state)
    other.trainer.lr_scheduler = None
    with pytest.raises(CheckpointError, match=r"trainer\.lr_scheduler=null is not allowed"):
        build_job(other).load_state_dict(state)


@pytest.mark.parametrize("over", ["model", "shared"])
def test_the_clipped_update_is_the_step_on_gradients_clipped_by_hand(over):
    """SGD (lr 0.1) on sin_hetero's shared MLP and head: the update is −lr·g·c/‖g‖ where ‖g‖,
    the 2-norm of the gradients `over` clips, exceeds c; the other gradients stay as they are."""
    settings = ["dataset=sin_hetero", "dataset.n_train=32", "dataset.n_test=16",
                "trainer.batch_size=16", "trainer.optimizer._target_=torch.optim.SGD",
                "trainer.optimizer.lr=0.1", "weighting=equal"]  # fmt: skip
    plain = build_job(make_config(settings))
    clipped = build_job(make_config([*settings, "trainer.grad_clip=0.01",
                                     f"trainer.grad_clip_over={over}"]))  # fmt: skip
    before = copy.deepcopy(plain.model.state_dict())
    batch = next(plain.train_split.batches(16))
    PerJobStep(plain).train_step(batch)
    PerJobStep(clipped).train_step(batch)
    chosen = plain.model.shared_parameters() if over == "shared" else list(plain.model.parameters())
    ids = {id(p) for p in chosen}
    norm = torch.cat([p.grad.reshape(-1) for p in chosen]).norm()
    assert norm > 0.01  # clipping is at work
    for (name, p), q in zip(
        plain.model.named_parameters(), clipped.model.parameters(), strict=True
    ):
        grad = p.grad * (0.01 / (norm + 1e-6)) if id(p) in ids else p.grad
        torch.testing.assert_close(q.grad, grad)
        torch.testing.assert_close(q.detach(), before[name] - 0.1 * grad)


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("trainer.lr_scheduler={_target_:torch.optim.Adam}",
         "trainer.lr_scheduler._target_=torch.optim.Adam is not allowed"),
        ("trainer.lr_scheduler=5", "trainer.lr_scheduler=5 is not allowed"),
        ("trainer.lr_scheduler={_target_:torch.optim.lr_scheduler.StepLR,size:3}", "size"),
        ("trainer.lr_scheduler={_target_:torch.optim.lr_scheduler.StepLR,step_size:0}",
         "refuses its settings {'step_size': 0}: ZeroDivisionError"),  # fails when stepped
        ("trainer.grad_clip=-1", "trainer.grad_clip=-1.0 is not allowed"),
        ("trainer.grad_clip_over=heads", "trainer.grad_clip_over='heads' is not allowed"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused(setting, says):
    with pytest.raises(ConfigError) as refused:
        make_config([setting])
    assert says in str(refused.value)


def test_reduce_on_plateau_without_a_validation_split_is_one_line(tmp_path):
    proc = run_cli([*TINY, PLATEAU, "trainer.epochs=1"], cwd=tmp_path)
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert "never on test; set trainer.validation" in line
    with pytest.raises(ConfigError, match="mode=max is not allowed"):
        build_job(
            make_config([*TINY, PLATEAU, "trainer.validation=8", "+trainer.lr_scheduler.mode=max"])
        )


def test_scheduled_or_clipped_jobs_do_not_stack():
    for setting, says in ((STEP_LR, "trainer.lr_scheduler"), ("trainer.grad_clip=1", "grad_clip")):
        cfg = make_config([*TINY, setting])
        again = copy.deepcopy(cfg)
        again.seed = 1
        assert says in unstackable([build_job(cfg), build_job(again)])


@pytest.mark.slow
def test_a_scheduled_and_clipped_run_under_torchrun_ends_where_one_process_does(tmp_path):
    """The ranks hold the summed gradients when they clip, and step ReduceLROnPlateau on the
    validation objective they reduced together."""
    from test_distributed import RUN, the_same_run_in_two_processes_and_one

    args = [*RUN, "trainer.epochs=3", "trainer.eval_every=1", "trainer.grad_clip=0.5",
            "trainer.lr_scheduler={_target_:torch.optim.lr_scheduler.ReduceLROnPlateau,patience:0}"]  # fmt: skip  # noqa: E501
    the_same_run_in_two_processes_and_one(args, tmp_path)
