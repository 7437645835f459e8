"""A shared encoder and one head per task: inputs → {task: output}."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor, nn

from mtltrain.data.base import TaskSpec

HeadFactory = Callable[..., nn.Module]


class MultiTaskModel(nn.Module):
    """`encoder` (None: no shared layers) feeds every task's head.

    Heads are built from `heads[task]` when given, else from `head`; each factory is called
    with `out_features` from the task's spec.
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        head: HeadFactory,
        encoder: nn.Module | None = None,
        heads: Mapping[str, HeadFactory] | None = None,
    ) -> None:
        super().__init__()
        heads = heads or {}
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.heads = nn.ModuleDict(
            {t.name: heads.get(t.name, head)(out_features=t.out_features) for t in tasks}
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        z = self.encoder(x)
        return {name: head(z) for name, head in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss depends on (empty without shared layers)."""
        return list(self.encoder.parameters())
