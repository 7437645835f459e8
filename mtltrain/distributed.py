"""The processes one run is split over: one (`Ranks`), or those `torchrun` starts (`ProcessGroup`).

Data-parallel training here is exact, not the usual average of per-rank results: every rank
takes its shard of the same global batch, and the term losses are summed over ranks *before*
any strategy sees them (`global_losses`), so each rank holds the global batch's losses and every
strategy's state (σ, c, GradNorm's weights, FAMO's logits, DWA's history, DTP's KPIs) evolves
identically on every rank. Each rank back-propagates only its own share of those losses; the
gradients of the model are then summed over ranks (`sum_gradients`), which gives the global
batch's gradient for any strategy, however non-linear in the losses. A gradient-based strategy's
Jacobian is summed (or, at the representation, gathered) before it is aggregated
(`mtltrain.loop._engine`), since aggregating per rank and averaging would be another method.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtltrain.data.base import Split
from mtltrain.errors import ConfigError, RankLost, TrainingError, first_line
from mtltrain.interrupts import SIGNALS
from mtltrain.processes import launched


class Ranks:
    """The processes a run is split over; this base is one process, where every reduction is
    the identity and a batch's shard is the whole batch."""

    rank, size = 0, 1

    def shard(self, batch: Split) -> tuple[Split, float]:
        """This rank's part of a global batch, and its fraction of the batch."""
        return batch, 1.0

    def global_losses(self, local: Tensor, share: float) -> Tensor:
        return local

    def sum(self, tensor: Tensor) -> Tensor:
        return tensor

    def sum_gradients(self, params: Iterable[Tensor]) -> None:
        pass

    def gather_columns(self, rows: Tensor) -> tuple[Tensor, slice]:
        return rows, slice(0, rows.shape[1])

    def agreed_signal(self, received: int | None) -> int | None:
        return received

    def broadcast(self, modules: Iterable[nn.Module]) -> None:
        pass

    def barrier(self) -> None:
        pass

    def check_same(self, modules: Iterable[nn.Module], step: int) -> None:
        pass

    def close(self) -> None:
        pass

    def separate_random_streams(self, seed: int, step: int) -> None:
        pass


ONE_PROCESS = Ranks()


class _SumOverRanks(torch.autograd.Function):
    """Forward: Σ over ranks of this rank's tensor. Backward: the gradient unchanged, to this
    rank's part (each rank back-propagates its own part; `sum_gradients` adds them up)."""

    @staticmethod
    def forward(ctx, part: Tensor) -> Tensor:
        total = part.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class ProcessGroup(Ranks):
    """The ranks of a `torch.distributed` process group (one per process under torchrun), and
    the folder rank 0 writes the run into (None: a run without one)."""

    def __init__(self, device: torch.device, run_dir: Path | None) -> None:
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.run_dir = run_dir
        # stop flags go over the CPU: reading them must not wait for a GPU's step
        self.signals = dist.new_group(backend="gloo") if device.type == "cuda" else None

    @contextlib.contextmanager
    def collective(self) -> Iterator[None]:
        """Where the ranks exchange tensors: a failure there (a rank is gone: killed, or its
        machine lost) stops this rank with `RankLost`, and SIGTERM is ignored from then on:
        torchrun sends it to the ranks left as soon as one is gone, which would cut short the
        failure's one line and results.json (torchrun sends SIGKILL 30 s later if need be)."""
        try:
            yield
        except RuntimeError as e:  # gloo and NCCL raise RuntimeError (DistError is one)
            if threading.current_thread() is threading.main_thread():  # handlers live there
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise self.lost(e) from e

    def lost(self, e: RuntimeError) -> RankLost:
        """The error of a collective that failed: which rank is gone, the backend's words, and
        how the run continues from its last checkpoint."""
        if self.size == 2:
            who, gone = f"rank {1 - self.rank} of the 2 processes", 1 - self.rank
        else:  # the collective does not say which
            who, gone = f"one of the other {self.size - 1} processes", None
        # the backend's first sentence, without its source location: "[pair.cc:545] Read ..."
        words = re.sub(r"^\[[^\]]*\]\s*", "", first_line(e, limit=400)).split(". ")[0]
        message = f"{who} stopped mid-run ({dist.get_backend()}: {words})"
        if self.run_dir is None:
            return RankLost(f"{message}; the run cannot go on without it", gone)
        from mtltrain.outputs._run_folder import checkpoint_file, resume_command  # a layer up

        if not checkpoint_file(self.run_dir).exists():
            return RankLost(f"{message}; no checkpoint was written yet: start the run again", gone)
        return RankLost(
            f"{message}; its last checkpoint, {checkpoint_file(self.run_dir)}, is kept: "
            f"continue with: {resume_command(self.run_dir)}",
            gone,
        )

    def shard(self, batch: Split) -> tuple[Split, float]:
        """This rank's consecutive rows of a global batch (sizes differ by at most one), and
        its fraction of the batch."""
        n = len(batch)
        first, end = self.rank * n // self.size, (self.rank + 1) * n // self.size
        return batch.take(slice(first, end)), (end - first) / n

    def global_losses(self, local: Tensor, share: float) -> Tensor:
        """The global batch's term losses Σ_r share_r·L_r (share_r: rank r's fraction of the
        batch), identical on every rank; gradients flow to this rank's share_r·L_r only."""
        if share:
            part = local * share
        else:  # an empty shard's mean is NaN; its part is 0, still on the graph (grads of 0)
            part = torch.where(torch.zeros_like(local, dtype=torch.bool), local, 0.0)
        with self.collective():
            return _SumOverRanks.apply(part)

    def sum(self, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        with self.collective():
            dist.all_reduce(total)
        return total

    def sum_gradients(self, params: Iterable[Tensor]) -> None:
        """`.grad` of every parameter that has one summed over ranks, in one message."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        with self.collective():
            dist.all_reduce(flat)
        for g, piece in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(piece.view_as(g))

    def gather_columns(self, rows: Tensor) -> tuple[Tensor, slice]:
        """The K × Σ_r D_r matrix of every rank's K × D_r `rows` side by side in rank order
        (padded to the widest for the collective), and the columns that are this rank's."""
        width = torch.tensor([rows.shape[1]], device=rows.device)
        widths = [torch.empty_like(width) for _ in range(self.size)]
        with self.collective():
            dist.all_gather(widths, width)
        sizes = [int(w) for w in widths]
        padded = rows.new_zeros(rows.shape[0], max(sizes))
        padded[:, : rows.shape[1]] = rows
        pieces = [torch.empty_like(padded) for _ in range(self.size)]
        with self.collective():
            dist.all_gather(pieces, padded)
        first = sum(sizes[: self.rank])
        gathered = torch.cat([p[:, :n] for p, n in zip(pieces, sizes, strict=True)], dim=1)
        return gathered, slice(first, first + rows.shape[1])

    def agreed_signal(self, received: int | None) -> int | None:
        """The stop signal any rank received, the same on every rank (SIGINT before SIGTERM)."""
        flags = torch.tensor([float(received == s) for s in SIGNALS])
        with self.collective():
            dist.all_reduce(flags, group=self.signals)
        return next((int(s) for s, f in zip(SIGNALS, flags.tolist(), strict=True) if f), None)

    def broadcast(self, modules: Iterable[nn.Module]) -> None:
        """Rank 0's parameters and buffers to every rank: all start from one model."""
        with self.collective():
            for module in modules:
                for t in (*module.parameters(), *module.buffers()):
                    dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        with self.collective():
            dist.barrier()

    def check_same(self, modules: Iterable[nn.Module], step: int) -> None:
        """Stop if the ranks' parameters and buffers differ: each rank applies the update it
        computed itself, which kernels that are not deterministic could make drift apart."""
        sums = torch.stack(
            [t.detach().double().sum() for m in modules for t in (*m.parameters(), *m.buffers())]
        ).nan_to_num()
        bounds = torch.cat([sums, -sums])
        with self.collective():
            dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
        spread = (bounds[: len(sums)] + bounds[len(sums) :]).max().item()  # max − min
        if spread > 0:
            raise TrainingError(
                f"the {self.size} processes' models differ at step {step} (parameter sums up to "
                f"{spread:.3g} apart): set trainer.deterministic=true, or train on one process"
            )

    def close(self) -> None:
        """Leave the process group (torchrun's processes exit cleanly only after)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def separate_random_streams(self, seed: int, step: int) -> None:
        """Rank r > 0 draws its dropout masks from a stream of its own (seed, rank, step);
        rank 0 keeps the process's stream, as one process would."""
        if self.rank:
            torch.manual_seed(hash((seed, self.rank, step)) % 2**63)


def join(device: torch.device, run_dir: Path | None = None) -> Ranks:
    """This run's ranks: the process group torchrun set up in the environment (NCCL on CUDA,
    gloo on the CPU), which learns rank 0's `run_dir` (the others' errors name it), or one
    process."""
    if not launched():
        return ONE_PROCESS
    if not dist.is_initialized():
        if device.type == "cuda" and not dist.is_nccl_available():
            raise ConfigError("trainer.device is CUDA under torchrun but NCCL is not available")
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's collectives run on the current device
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    folder = [None if run_dir is None else str(run_dir)]
    dist.broadcast_object_list(folder, src=0)
    return ProcessGroup(device, None if folder[0] is None else Path(folder[0]))
