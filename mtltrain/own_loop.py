"""A weighting strategy in one's own training loop (plain PyTorch, PyTorch Lightning's manual
optimization): build it by name (`create_strategy`), let it do each step's backward pass
(`backward`) and its update after the optimizer's step (`after_step`).

A step of such a loop, in the order the CLI's loop takes it (`mtltrain.loop`):

    optimizer.zero_grad()
    losses = [...]                      # one loss per term, in the strategy's term order
    weights = backward(losses, strategy, shared_params=encoder.parameters())
    optimizer.step()                    # its params: the model's and
                                        # strategy.model_optimizer_parameters()
    after_step(strategy, lambda: [...]) # the same batch's losses again (FAMO reads them)

and at the end of each epoch `strategy.on_epoch_end(epoch, mean_losses)` (DWA). The backward
pass is the CLI's own (`mtltrain.loop.engine_for`), so a strategy gives the same gradients in
either loop; in one process (gradients are not summed over torchrun's ranks).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from omegaconf import OmegaConf, open_dict
from torch import Tensor

from mtltrain.config import build, compose_checked, config_groups
from mtltrain.config._compose import weighting_node
from mtltrain.config._schema import settings as typed
from mtltrain.data.base import Split
from mtltrain.errors import ConfigError
from mtltrain.loop import engine_over
from mtltrain.losses import LOSSES, LossTerm, detach, loss_terms
from mtltrain.step import Step
from mtltrain.tasks import TASK_KINDS, TaskSpec
from mtltrain.weighting.base import Weighting

# the losses of a step: one 0-d tensor per term (in term order, or {term: loss}), or a vector
Losses = Sequence[Tensor] | Mapping[str, Tensor] | Tensor
DEFAULT_LOSS = "mse"  # a task named without its loss or kind: a regression term, loss ≥ 0


def create_strategy(
    name: str, tasks: Sequence[str] | Mapping[str, str], **settings: Any
) -> Weighting:
    """The strategy `weighting=<name>` of the CLI over `tasks`, its settings those of
    conf/weighting/<name>.yaml updated by `settings` (checked as the CLI checks them).

    `tasks`: the loss terms in the order `backward` gets their losses: names (each a
    regression term with a loss ≥ 0, as MSE), or {name: a task kind or one of mtltrain's
    losses} (`classification`, `cross_entropy`, `gaussian_nll`, ...), which says what a
    strategy reads of a term: its kind (uncertainty's c_k) and whether its loss can be
    negative or learns its own σ(x). `seed` (the strategies that draw random numbers) is 0
    unless given. Any problem is a one-line ConfigError naming what is allowed.
    """
    names = config_groups()["weighting"]
    if name not in names:
        raise ConfigError(f"weighting={name!r} is not allowed: choose one of {names}")
    cfg = compose_checked([f"weighting={name}"])
    node = cfg.weighting
    with open_dict(node):
        node.merge_with(OmegaConf.create(settings))
    return build(weighting_node(cfg), terms=terms_of(tasks, cfg.loss))


def terms_of(tasks: Sequence[str] | Mapping[str, str], loss_settings: Any) -> tuple[LossTerm, ...]:
    """One loss term per task of `tasks` (see `create_strategy`), the `loss.*` settings the
    CLI's defaults."""
    if isinstance(tasks, str) or not tasks:
        raise ConfigError(
            f"tasks={tasks!r} is not allowed: give the terms' names, or {{name: kind or loss}}"
        )
    given = tasks.items() if isinstance(tasks, Mapping) else ((t, DEFAULT_LOSS) for t in tasks)
    specs = [_spec(str(task), what) for task, what in given]
    if len({s.name for s in specs}) != len(specs):
        raise ConfigError(f"tasks={list(tasks)} is not allowed: name each term once")
    return loss_terms(specs, typed(loss_settings))


def _spec(task: str, what: str) -> TaskSpec:
    """A task of one term: its kind and loss from `what`, a kind (its first loss) or a loss."""
    if what in LOSSES:
        kind, loss = LOSSES[what].kinds[0], what
    elif what in TASK_KINDS:
        kind, loss = what, next(n for n, fits in LOSSES.items() if what in fits.kinds)
    else:
        raise ConfigError(
            f"tasks.{task}={what!r} is not allowed: give a task kind {list(TASK_KINDS)} or a loss "
            f"{list(LOSSES)}"
        )
    return TaskSpec(task, kind, out_features=1, losses=(loss,))


class _Progress:
    """What `backward` keeps of a strategy between calls: the parameters it was set up with
    and the last step (for `after_step`)."""

    def __init__(self, shared: Sequence[Tensor]) -> None:
        self.shared_ids = [id(p) for p in shared]
        self.step: Step | None = None
        self.steps = 0


_progress: weakref.WeakKeyDictionary[Weighting, _Progress] = weakref.WeakKeyDictionary()


class _SharedPart:
    """The model as `Weighting.setup` sees it: its shared parameters as given."""

    def __init__(self, shared: Sequence[Tensor]) -> None:
        self.shared = list(shared)

    def shared_parameters(self) -> list[Tensor]:
        return self.shared


def backward(
    losses: Losses,
    strategy: Weighting,
    *,
    shared_params: Iterable[Tensor] | None = None,
    features: Tensor | Sequence[Tensor] | None = None,
    task_params: Iterable[Tensor] | None = None,
    outputs: Mapping[str, Tensor] | None = None,
    targets: Mapping[str, Tensor] | None = None,
    extra_losses: Sequence[Losses] = (),
) -> Tensor:
    """Accumulate into `.grad`, as `loss.backward()` does, the gradients `strategy` makes of
    a step's term `losses`; return the weight each term got (detached, in term order).

    A loss-based strategy back-propagates Σ_k contribution_k (e.g. Σ_k w_k·L_k) into every
    parameter, its own (uncertainty's log σ²) too. A gradient-based one combines the terms'
    gradients of the shared part: of `shared_params` (MGDA, PCGrad, ...), or of the shared
    representation `features` (the `representation: true` settings, MGDA-UB), which is then
    back-propagated into the shared parameters; each task parameter gets the unweighted
    gradient of its own loss. `shared_params` default to the parameters `features` are
    computed from; `task_params` to every other parameter the losses depend on (not through
    `features`). DTP reads each task's `outputs` and `targets` (its KPIs). The strategy is
    set up (`Weighting.setup`) on the first call, and again if `shared_params` change. A
    strategy with extra batches (`strategy.extra_batches`: SDMGrad's and MoDo's two more
    training batches) takes their term losses, computed by the same model, as `extra_losses`
    (those of that many batches, or none); without them it uses the step's own batch in their
    place (the deterministic form). Where a loss or the combined gradient is not finite,
    `.grad` is not: check it before the optimizer's step where that can happen.
    """
    vector = loss_vector(losses, strategy)
    represented = _as_tuple(features)
    shared = _shared(strategy, shared_params, represented)
    progress = _set_up(strategy, shared)
    if strategy.observes_predictions and (outputs is None or targets is None):
        raise ConfigError(
            f"{type(strategy).__name__} reads each task's predictions: pass backward(..., "
            "outputs={task: output}, targets={task: target})"
        )
    wanted = len(strategy.extra_batches) if strategy.level is not None else 0
    if extra_losses and len(extra_losses) != wanted:
        raise ConfigError(
            f"extra_losses of {len(extra_losses)} batches are not allowed: "
            f"{type(strategy).__name__} takes those of {wanted} or none"
        )
    progress.steps += 1
    batch = Split(torch.empty(0), dict(targets or {}))
    seen = {task: detach(out) for task, out in (outputs or {}).items()}
    step = Step(progress.steps, 0, batch, seen, vector)
    strategy.observe(step)
    if strategy.level is None:
        step.parts, step.total = engine_over(strategy, (), ())(vector, ())
    else:
        heads = (
            list(task_params)
            if task_params is not None
            else _leaves([vector], stop=[*represented, *shared, *strategy.parameters()])
        )
        with _accumulated([*shared, *heads, *strategy.parameters()]):
            engine = engine_over(strategy, shared, [*shared, *heads])
            extra = [loss_vector(e, strategy) for e in extra_losses]
            step.parts, step.total = engine(vector, represented, extra)
    step.losses = vector.detach()  # kept for `after_step`, without the step's graph
    progress.step = step
    return strategy.weights()


def after_step(strategy: Weighting, losses_now: Callable[[], Losses] | None = None) -> None:
    """After the optimizer's step: the strategy's own update, then its own optimizers' steps
    (FAMO's ξ, GradNorm's w). Call it after every step; `losses_now()` gives the last
    `backward`'s batch's losses under the updated model, which FAMO reads (one more forward
    pass, computed under `torch.no_grad`), called only by a strategy that needs them."""
    progress = _progress.get(strategy)
    if progress is None or progress.step is None:
        raise ConfigError(f"after_step({type(strategy).__name__}) comes after a backward(...)")

    def recompute(_: Step) -> Tensor:
        if losses_now is None:
            raise ConfigError(
                f"{type(strategy).__name__} updates from the batch's losses after the step: "
                "pass after_step(strategy, losses_now=<a function that computes them>)"
            )
        with torch.no_grad():
            return loss_vector(losses_now(), strategy)

    strategy.after_step(progress.step, recompute)
    for optimizer in strategy.optimizers():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def loss_vector(losses: Losses, strategy: Weighting) -> Tensor:
    """The term losses as one vector in the strategy's term order."""
    names = list(strategy.names)
    if isinstance(losses, Mapping):
        if set(losses) != set(names):
            raise ConfigError(
                f"losses for {sorted(losses)} are not allowed: the strategy's terms are {names}"
            )
        losses = [losses[n] for n in names]
    if not isinstance(losses, Tensor):
        losses = [torch.as_tensor(v) for v in losses]
        shapes = [list(v.shape) for v in losses]
        if any(shapes):
            raise ConfigError(
                f"losses of shapes {shapes} are not allowed: give one 0-d loss per term of "
                f"{names} (reduce each, e.g. with .mean())"
            )
    vector = losses if isinstance(losses, Tensor) else torch.stack(losses)
    if vector.shape != (len(names),):
        raise ConfigError(
            f"losses of shape {list(vector.shape)} are not allowed: give one 0-d loss per term "
            f"of {names}"
        )
    return vector


def _as_tuple(features: Tensor | Sequence[Tensor] | None) -> tuple[Tensor, ...]:
    if features is None:
        return ()
    return (features,) if isinstance(features, Tensor) else tuple(features)


def _shared(
    strategy: Weighting, given: Iterable[Tensor] | None, features: Sequence[Tensor]
) -> list[Tensor]:
    """The shared parameters: as given, else those `features` are computed from."""
    if strategy.level == "representation" and not features:
        raise ConfigError(
            f"{type(strategy).__name__} with representation=true combines the gradients of "
            "the shared representation: pass backward(..., features=<the encoder's output>)"
        )
    if given is not None:
        return [p for p in given if p.requires_grad]
    return _leaves(features, stop=[]) if features else []


def _set_up(strategy: Weighting, shared: Sequence[Tensor]) -> _Progress:
    """`strategy.setup` on the shared parameters, unless done with these already."""
    progress = _progress.get(strategy)
    if progress is None or progress.shared_ids != [id(p) for p in shared]:
        try:
            strategy.setup(_SharedPart(shared))  # type: ignore[arg-type]
        except ConfigError:
            if shared or strategy.level is None:  # not about the shared part
                raise
            raise ConfigError(
                f"{type(strategy).__name__} needs the shared parameters: pass backward(..., "
                "shared_params=<the parameters every task's loss depends on>) or features="
            ) from None
        progress = _Progress(shared)
        _progress[strategy] = progress
    return progress


def _leaves(roots: Sequence[Tensor], stop: Sequence[Tensor]) -> list[Tensor]:
    """The tensors that require a gradient and that `roots` are computed from, in the order
    the graph is walked, not through (nor being) the `stop` tensors."""
    stop_ids = {id(t) for t in stop}
    stop_nodes = {t.grad_fn for t in stop if t.grad_fn is not None}
    found: dict[int, Tensor] = {}
    seen: set[Any] = set()
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen or node in stop_nodes:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)
        if leaf is not None and id(leaf) not in stop_ids:
            found.setdefault(id(leaf), leaf)
        stack.extend(n for n, _ in reversed(node.next_functions) if n is not None)
    return list(found.values())


@contextlib.contextmanager
def _accumulated(params: Sequence[Tensor]) -> Iterator[None]:
    """Around the engine, which sets `.grad`: the gradients `params` held before are added
    back after."""
    unique = list({id(p): p for p in params}.values())
    before = [p.grad for p in unique]
    for p in unique:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in zip(unique, before, strict=True):
            if grad is not None:
                p.grad = grad if p.grad is None else p.grad + grad
