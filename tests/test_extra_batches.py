"""The hook for strategies that need more than the step's batch (`Weighting.extra_batches`,
`Step.extra_batches`, `observe_extra`; `mtltrain.loop._extra_batches`): a strategy that asks
for two training batches gets two batches other than the step's own and each other, an epoch
still takes its steps on one pass over the training set and each stream is one pass too, a
resumed run draws what the run left alone drew, "validation" comes from the validation split
where one is held out, and what cannot provide them (stacking, torchrun) says so in one line.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import StopAt, make_config, through_disk
from torch.utils.data import Dataset

from mtltrain.build import build_job
from mtltrain.data.base import DatasetSplit, Split
from mtltrain.errors import ConfigError, Interrupted
from mtltrain.loop._callbacks import Callback
from mtltrain.loop._extra_batches import extra_batches
from mtltrain.loop._job_step import refuse_extra_batches
from mtltrain.loop._trainer import train_alone
from mtltrain.stacking import unstackable
from mtltrain.weighting.fixed import FixedWeighting

SMALL = [
    "dataset=two_slope",
    "model=sin_hetero",
    "dataset.n_train=64",
    "dataset.n_test=16",
    "trainer.batch_size=16",
    "trainer.epochs=2",
    "trainer.deterministic=true",
    "logger=[]",
]


class Seen(Callback):
    """Each step's epoch, own batch's inputs and extra batches' inputs (x identifies a
    sample: two_slope draws x ~ N(0, 1))."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, torch.Tensor, list[torch.Tensor]]] = []

    def on_step_end(self, job, step) -> None:
        extra = [b.inputs.flatten().clone() for b in step.extra_batches]
        self.steps.append((step.number, step.epoch, step.batch.inputs.flatten().clone(), extra))


def run(strategy: str, *more: str, stop: int | None = None):
    seen = Seen()
    callbacks = [seen] if stop is None else [seen, StopAt(stop)]
    cfg = make_config([*SMALL, f"weighting={strategy}", *more])
    return build_job(cfg, extra_callbacks=callbacks), seen


def test_two_extra_batches_differ_and_each_stream_is_one_pass_per_epoch():
    job, seen = run("modo")
    train_alone(job)
    train_x = job.train_split.inputs.flatten().sort().values
    assert job.step == 2 * job.batches_per_epoch == 8  # the epoch counts the steps' own batches
    for epoch in range(2):
        steps = [s for s in seen.steps if s[1] == epoch]
        own = torch.cat([x for _, _, x, _ in steps])
        first, second = (torch.cat([e[j] for *_, e in steps]) for j in range(2))
        for stream in (own, first, second):
            assert torch.equal(stream.sort().values, train_x)  # every sample once
        assert not torch.equal(first, second) and not torch.equal(first, own)
        for _, _, x, (a, b) in steps:
            assert len(a) == len(b) == len(x) == 16
            assert not torch.equal(a, b) and not torch.equal(a, x)
    epochs = [torch.cat([s[3][0] for s in seen.steps if s[1] == e]) for e in range(2)]
    assert not torch.equal(epochs[0], epochs[1])  # a new order each epoch


def test_a_resumed_run_draws_the_extra_batches_of_the_run_left_alone():
    alone, seen_alone = run("sdmgrad")
    train_alone(alone)
    stopped, _ = run("sdmgrad", stop=6)  # mid epoch 2
    with pytest.raises(Interrupted):
        train_alone(stopped)
    resumed, seen_resumed = run("sdmgrad")
    resumed.load_state_dict(through_disk(stopped.state_dict()))
    train_alone(resumed)
    later = [s for s in seen_alone.steps if s[0] > 6]
    assert [s[0] for s in seen_resumed.steps] == [s[0] for s in later] == [7, 8]
    for (_, _, x, extra), (_, _, y, again) in zip(later, seen_resumed.steps, strict=True):
        assert torch.equal(x, y)
        assert all(torch.equal(a, b) for a, b in zip(extra, again, strict=True))
    for a, b in zip(alone.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_validation_batches_come_from_the_validation_split_where_one_is_held_out():
    job, seen = run("auto_lambda", "trainer.validation=16", "trainer.epochs=1")
    train_alone(job)
    held = set(job.data.validation.inputs.flatten().tolist())
    drawn = torch.cat([e[0] for *_, e in seen.steps])
    assert len(seen.steps) == 3 and set(drawn.tolist()) == held  # 48 train: 3 steps, 1 batch
    job, seen = run("auto_lambda", "trainer.epochs=1")  # none held out: the training set's
    train_alone(job)
    drawn = torch.cat([e[0] for *_, e in seen.steps])
    assert torch.equal(drawn.sort().values, job.train_split.inputs.flatten().sort().values)


def test_a_stream_over_a_shorter_split_begins_again_in_a_new_order():
    split = Split(torch.arange(6.0)[:, None], {"y": torch.zeros(6, 1)})
    batches = extra_batches(split, batch_size=2, seed=0, epoch=0, stream=0, start=0)
    drawn = [next(batches).inputs.flatten() for _ in range(6)]  # two passes of three batches
    passes = [torch.cat(drawn[:3]), torch.cat(drawn[3:])]
    assert all(torch.equal(p.sort().values, torch.arange(6.0)) for p in passes)
    assert not torch.equal(passes[0], passes[1])
    later = extra_batches(split, batch_size=2, seed=0, epoch=0, stream=0, start=4)
    assert torch.equal(next(later).inputs.flatten(), drawn[4])  # from a step on: the same
    other = extra_batches(split, batch_size=2, seed=0, epoch=0, stream=1, start=0)
    assert not torch.equal(torch.cat([next(other).inputs.flatten() for _ in range(3)]), passes[0])


class Items(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        return torch.tensor([float(i)]), {"y": torch.zeros(1)}


def test_a_datasets_stream_draws_the_batches_of_the_same_split_in_memory():
    in_memory = Split(torch.arange(6.0)[:, None], {"y": torch.zeros(6, 1)})
    streams = [
        extra_batches(split, batch_size=4, seed=3, epoch=1, stream=0, start=1)
        for split in (in_memory, DatasetSplit(Items()))
    ]
    for _ in range(3):
        a, b = (next(s) for s in streams)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets["y"], b.targets["y"])


def test_what_cannot_provide_extra_batches_says_so_in_one_line(monkeypatch):
    job = build_job(make_config([*SMALL, "weighting=modo"]))
    job.ranks = SimpleNamespace(size=2)
    with pytest.raises(ConfigError) as raised:
        refuse_extra_batches(job)
    message = str(raised.value)
    assert "weighting=MoDo is not allowed under torchrun" in message and "\n" not in message
    monkeypatch.setattr(FixedWeighting, "extra_batches", ("train",))
    jobs = [build_job(make_config([*SMALL, "weighting=fixed", f"seed={s}"])) for s in (0, 1)]
    assert unstackable(jobs) == "FixedWeighting: the stacked step draws no extra batches"
