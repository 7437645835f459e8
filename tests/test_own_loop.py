"""A strategy in one's own training loop (`mtltrain.own_loop`: `create_strategy`, `backward`,
`after_step`) and a whole run from Python (`mtltrain.train`).

Every strategy of conf/weighting/, built by name with the CLI's defaults, steps a hand-written
plain-PyTorch loop through the same batches as mtltrain's own loop: every parameter's gradient
at every step, and the parameters at the end, are the loop's (float64). The gradients against
a hand computation for a loss-based (fixed weights) and a gradient-based strategy (MGDA on two
tasks: the min-norm point of the segment between the task gradients); a small loop reduces its
losses under strategies of each kind; bad input is one line naming what is allowed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_config
from torch import nn

import mtltrain
from mtltrain.build import build_job
from mtltrain.config import config_groups
from mtltrain.errors import ConfigError
from mtltrain.loop import Callback, train_alone

STRATEGIES = config_groups()["weighting"]
# runs the model itself at other parameters on other batches: refused in a loop of one's own
NEEDS_THE_MODEL = ["auto_lambda"]
TASKS = ["y1", "y2", "y3"]
PAGE = Path(__file__).resolve().parent.parent / "docs" / "library.md"
SMALL = [
    "dataset=two_slope",
    "model=sin_hetero",
    "+dataset.tasks.y3={slope:0.5,intercept:-1.0,noise_std:1.0}",
    "+dataset.losses.y3=[mse]",
    "dataset.n_train=48",
    "dataset.n_test=16",
    "trainer.batch_size=16",
    "trainer.epochs=3",
    "trainer.optimizer.lr=1e-2",
    "trainer.deterministic=true",
]


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


class Recorder(Callback):
    """Each step of the loop before its update: its epoch, batch and every parameter's
    gradient, in the order of `model.parameters()`."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, object, list[torch.Tensor]]] = []

    def allows_update(self, job, step) -> bool:
        grads = [p.grad.clone() for p in job.model.parameters()]
        self.steps.append((step.epoch, step.batch, grads, step.extra_batches))
        return True


def mse_losses(outputs, targets) -> list[torch.Tensor]:
    return [F.mse_loss(outputs[t], targets[t]) for t in TASKS]


@pytest.mark.parametrize("name", [s for s in STRATEGIES if s not in NEEDS_THE_MODEL])
def test_a_plain_loop_gets_the_gradients_of_mtltrains_loop(name, float64):
    cfg = make_config([*SMALL, f"weighting={name}"])
    recorder = Recorder()
    loop = build_job(cfg, extra_callbacks=[recorder])
    train_alone(loop)

    model = build_job(cfg).model  # the same initial weights: the run's seed
    strategy = mtltrain.create_strategy(name, TASKS)
    assert strategy.state_dict().keys() == loop.strategy.state_dict().keys()
    optimizer = torch.optim.Adam(
        [
            {"params": model.parameters()},
            {"params": strategy.model_optimizer_parameters(), "weight_decay": 0.0},
        ],
        lr=1e-2,
    )
    epoch_losses = torch.zeros(len(TASKS))
    for i, (epoch, batch, loop_grads, extra) in enumerate(recorder.steps):
        optimizer.zero_grad()
        outputs, features = model(batch.inputs)
        losses = mse_losses(outputs, batch.targets)
        mtltrain.backward(
            losses,
            strategy,
            shared_params=model.shared_parameters(),
            features=features,
            outputs=outputs,
            targets=batch.targets,
            extra_losses=[mse_losses(model(b.inputs)[0], b.targets) for b in extra],
        )
        for p, expected in zip(model.parameters(), loop_grads, strict=True):
            torch.testing.assert_close(p.grad, expected, rtol=1e-9, atol=1e-12)
        optimizer.step()
        mtltrain.after_step(strategy, lambda b=batch: mse_losses(model(b.inputs)[0], b.targets))
        epoch_losses += torch.stack(losses).detach()
        if i + 1 == len(recorder.steps) or recorder.steps[i + 1][0] != epoch:
            strategy.on_epoch_end(epoch, epoch_losses / 3)
            epoch_losses.zero_()
    for p, expected in zip(model.parameters(), loop.model.parameters(), strict=True):
        torch.testing.assert_close(p, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(strategy.weights(), loop.strategy.weights(), rtol=1e-9, atol=1e-12)


class TwoTasks(nn.Module):
    """A shared linear layer and a linear head per task, on fixed data."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(3, 4)
        self.heads = nn.ModuleList([nn.Linear(4, 1), nn.Linear(4, 1)])
        self.x = torch.randn(32, 3)
        self.y = [
            self.x @ torch.tensor([[1.0], [2.0], [0.0]]),
            self.x @ torch.tensor([[-1.0], [0.0], [1.5]]),
        ]

    def losses(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        z = torch.tanh(self.shared(self.x))
        return [F.mse_loss(h(z), y) for h, y in zip(self.heads, self.y, strict=True)], z

    def gradients(self, loss: torch.Tensor) -> list[torch.Tensor]:
        """∇ loss of every parameter (zeros where it does not depend on one)."""
        params = list(self.parameters())
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def test_fixed_weights_give_the_weighted_sum_of_the_task_gradients(float64):
    net = TwoTasks()
    strategy = mtltrain.create_strategy("fixed", ["a", "b"], weights={"a": 2.0, "b": 0.5})
    losses, _ = net.losses()
    g_a, g_b = net.gradients(losses[0]), net.gradients(losses[1])
    already = [torch.ones_like(p) for p in net.parameters()]  # accumulated, as .backward() does
    for p, g in zip(net.parameters(), already, strict=True):
        p.grad = g.clone()
    weights = mtltrain.backward({"b": losses[1], "a": losses[0]}, strategy)
    torch.testing.assert_close(weights, torch.tensor([2.0, 0.5]))
    for p, a, b, before in zip(net.parameters(), g_a, g_b, already, strict=True):
        torch.testing.assert_close(p.grad, before + 2.0 * a + 0.5 * b, rtol=1e-12, atol=1e-14)


def test_mgda_on_two_tasks_takes_the_min_norm_point_between_their_gradients(float64):
    net = TwoTasks()
    strategy = mtltrain.create_strategy("mgda", ["a", "b"])
    losses, _ = net.losses()
    shared = list(net.shared.parameters())
    flat = [torch.cat([g.flatten() for g in net.gradients(loss)[: len(shared)]]) for loss in losses]
    g1, g2 = flat
    # min over α in [0, 1] of ‖α·g1 + (1 − α)·g2‖²
    alpha = float(((g2 - g1) @ g2 / (g1 - g2).square().sum()).clamp(0, 1))
    assert 0.05 < alpha < 0.95  # the tasks conflict: the point is inside the segment
    heads = [net.gradients(loss) for loss in losses]
    weights = mtltrain.backward(losses, strategy, shared_params=shared)
    torch.testing.assert_close(weights, torch.tensor([alpha, 1 - alpha]), rtol=1e-8, atol=1e-10)
    direction = torch.cat([p.grad.flatten() for p in shared])
    torch.testing.assert_close(direction, alpha * g1 + (1 - alpha) * g2, rtol=1e-8, atol=1e-10)
    for k, head in enumerate(net.heads):  # each head: its own task's unweighted gradient
        own = heads[k][len(shared) + 2 * k : len(shared) + 2 * k + 2]
        for p, g in zip(head.parameters(), own, strict=True):
            torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["uncertainty", "famo", "mgda", "mgda_ub", "pcgrad"])
def test_a_plain_training_loop_reduces_the_losses(name):
    net = TwoTasks()
    strategy = mtltrain.create_strategy(name, ["a", "b"])
    optimizer = torch.optim.Adam(
        [*net.parameters(), *strategy.model_optimizer_parameters()], lr=0.02
    )
    first = None
    for _ in range(60):
        optimizer.zero_grad()
        losses, features = net.losses()
        first = first or [float(v.detach()) for v in losses]
        mtltrain.backward(losses, strategy, features=features)
        optimizer.step()
        mtltrain.after_step(strategy, lambda: net.losses()[0])
    last = [float(v.detach()) for v in net.losses()[0]]
    assert all(after < 0.5 * before for after, before in zip(last, first, strict=True))


def test_uncertainty_trains_its_log_variance_through_the_given_optimizer():
    net = TwoTasks()
    strategy = mtltrain.create_strategy("uncertainty", {"a": "regression", "b": "classification"})
    assert strategy.factor.tolist() == [0.5, 1.0]  # c_k from each term's kind
    (log_var,) = strategy.model_optimizer_parameters()
    losses, _ = net.losses()
    mtltrain.backward(losses, strategy)
    assert log_var.grad is not None and torch.all(log_var.grad != 0)


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: mtltrain.create_strategy("nope", ["a"]), "weighting='nope' is not allowed: "
                                                          "choose one of ['aligned_mtl'"),
        (lambda: mtltrain.create_strategy("famo", ["a"], lr=-1), "weighting.lr=-1"),
        (lambda: mtltrain.create_strategy("famo", ["a"], lrr=1), "weighting.lrr"),
        (lambda: mtltrain.create_strategy("famo", {"a": "gaussian_nll"}), "can be negative"),
        (lambda: mtltrain.create_strategy("equal", {"a": "pixels"}), "tasks.a='pixels' is not"),
        (lambda: mtltrain.create_strategy("equal", ["a", "a"]), "name each term once"),
    ],
)  # fmt: skip
def test_bad_strategies_are_one_line_naming_what_is_allowed(call, says):
    with pytest.raises(ConfigError) as raised:
        call()
    assert says in str(raised.value) and "\n" not in str(raised.value)


def test_bad_calls_say_what_to_pass():
    net = TwoTasks()
    losses, _ = net.losses()
    with pytest.raises(ConfigError, match="the strategy's terms are"):
        mtltrain.backward({"a": losses[0]}, mtltrain.create_strategy("equal", ["a", "b"]))
    with pytest.raises(ConfigError, match=r"losses of shapes \[\[3\], \[\]\] are not allowed"):
        mtltrain.backward([torch.ones(3), losses[1]], mtltrain.create_strategy("equal", ["a", "b"]))
    with pytest.raises(ConfigError, match=r"pass backward.*shared_params="):
        mtltrain.backward(losses, mtltrain.create_strategy("mgda", ["a", "b"]))
    with pytest.raises(ConfigError, match="features="):
        mtltrain.backward(losses, mtltrain.create_strategy("mgda_ub", ["a", "b"]))
    with pytest.raises(ConfigError, match="outputs="):
        mtltrain.backward(losses, mtltrain.create_strategy("dtp", ["a", "b"]))
    shared = list(net.shared.parameters())
    for name, extra in [("modo", [losses]), ("mgda", [losses]), ("equal", [losses, losses])]:
        says = f"extra_losses of {len(extra)} batches are not allowed: .* takes those of"
        with pytest.raises(ConfigError, match=says):
            strategy = mtltrain.create_strategy(name, ["a", "b"])
            mtltrain.backward(losses, strategy, shared_params=shared, extra_losses=extra)
    famo = mtltrain.create_strategy("famo", ["a", "b"])
    with pytest.raises(ConfigError, match="after a backward"):
        mtltrain.after_step(famo)
    mtltrain.backward(losses, famo)
    with pytest.raises(ConfigError, match="losses_now="):
        mtltrain.after_step(famo)


def test_train_runs_the_clis_run_and_returns_its_results(tmp_path):
    overrides = [*SMALL[:6], "trainer.epochs=1", "weighting=famo"]
    results = mtltrain.train(overrides, tmp_path / "run")
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results.status == "completed" and results.data == written
    assert results.objective == written["objective"]["value"] == written["metrics"]["test/y1/rmse"]
    assert results.weighting["weight"].keys() == set(TASKS) and written["overrides"] == overrides
    with pytest.raises(ConfigError, match="weighting=nope"):
        mtltrain.train(["weighting=nope"], tmp_path / "bad")


def plain_pytorch_fits_both_tasks(done: dict) -> bool:
    return float(done["losses"]["price"]) < 0.2 and float(done["losses"]["churn"]) < 0.3


def lightning_trains_its_epochs(done: dict) -> bool:
    trainer = done["trainer"]
    return trainer.current_epoch == 10 and float(trainer.callback_metrics["loss/price"]) < 0.5


def the_run_completes(done: dict) -> bool:
    return done["results"].status == "completed" and Path("runs/famo/results.json").is_file()


@pytest.mark.parametrize(
    "check", [plain_pytorch_fits_both_tasks, lightning_trains_its_epochs, the_run_completes]
)
def test_the_library_pages_code_blocks_run(check, tmp_path, monkeypatch):
    """docs/library.md's examples as they are written, in the page's order, each with what it
    must leave behind."""
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    checks = [plain_pytorch_fits_both_tasks, lightning_trains_its_epochs, the_run_completes]
    assert len(blocks) == len(checks)
    index = checks.index(check)
    done: dict = {"__name__": f"library_md_{index}"}
    exec(compile(blocks[index], f"{PAGE.name}, block {index + 1}", "exec"), done)
    assert check(done)
