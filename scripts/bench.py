"""Benchmark mtltrain's training step against the usual PyTorch way, in one process.

    python scripts/bench.py --mnist-root ../shared/data/mnist --out bench.json --markdown bench.md

Every comparison interleaves blocks of steps of the contenders (A, B, A, B, ...) in one process
and reports the median over blocks, so a machine that is busy for a while slows both. The
baseline is written the way these experiments usually are: torchvision's MNIST with
ToTensor/Normalize through a DataLoader (batch 256, shuffled, default workers), a
TensorDataset through a DataLoader for the toy data, the same model and batch size, the same
Kendall uncertainty weighting written inline, torch.optim.Adam with its defaults, and the
running loss read with .item() every step. It runs with the C library's allocator defaults,
set again before each of its blocks; the project's blocks run with its own settings
(conf/trainer/default.yaml: fused optimizer, channels-last images, host memory kept).

Sections: MNIST samples/s (§5B model, batch 256); two-slope steps/s (§5A, batch 16, two
1→512→1 networks); the per-step time of every weighting strategy against `fixed` on the
MNIST model; the share of an epoch spent on evaluation and logging; the wall time of a whole
`mtltrain` run of each default configuration, start-up included.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from mtltrain.config import build, config_dir
from mtltrain.runtime import keep_host_memory, select_device, settle_threads
from mtltrain.schema import register, settings
from mtltrain.tblog import TensorBoardLog
from mtltrain.train import Trainer, build_run

STRATEGIES = ("fixed", "uncertainty", "revised_uncertainty", "dtp")


def machine(device: torch.device) -> dict[str, object]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def config(overrides: list[str]):
    register()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=overrides)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(blocks: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Run each block once per round, in turn; the median of each block's rate."""
    rates: dict[str, list[float]] = {name: [] for name in blocks}
    for block in blocks.values():  # warm-up round
        block()
    for _ in range(rounds):
        for name, block in blocks.items():
            rates[name].append(block())
    return {name: statistics.median(r) for name, r in rates.items()}


def forever(make: Callable[[], Iterator]) -> Iterator:
    return itertools.chain.from_iterable(make() for _ in itertools.count())


# ---- the project --------------------------------------------------------------------------


class ProjectRun:
    """A Trainer built from the project's configs, stepped in blocks."""

    def __init__(self, overrides: list[str], device: torch.device, log_dir: Path) -> None:
        self.cfg = config([*overrides, f"trainer.device={device.type}"])
        self.device = device
        keep_host_memory(self.cfg.trainer.keep_host_memory)
        torch.manual_seed(0)
        self.data, self.model, self.weighting, optimizer = build_run(self.cfg, device)
        self.tb = TensorBoardLog(log_dir)
        self.trainer = Trainer(
            self.model,
            self.weighting,
            optimizer,
            self.data,
            settings(self.cfg.trainer),
            self.tb,
            device,
            0,
        )
        size, split, gen = self.trainer.batch_size, self.trainer.train_split, self.trainer.generator
        self.batches = forever(lambda: split.shuffled(gen).batches(size))

    def block(self, steps: int) -> float:
        """Seconds for `steps` training steps."""
        keep_host_memory(self.cfg.trainer.keep_host_memory)
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.trainer.train_step(next(self.batches))
        sync(self.device)
        return time.perf_counter() - start


# ---- the usual way ------------------------------------------------------------------------


class UsualRun:
    """The same model and weighting written the usual way, fed by a DataLoader."""

    def __init__(self, model: nn.Module, loader, device: torch.device, targets, factors) -> None:
        self.model, self.loader, self.device = model.to(device), loader, device
        self.targets, self.factors = targets, factors
        self.log_var = nn.Parameter(torch.zeros(len(factors), device=device))
        self.optimizer = torch.optim.Adam([*model.parameters(), self.log_var], lr=1e-4)
        self.batches = forever(lambda: iter(loader))
        self.running_loss = 0.0

    def block(self, steps: int) -> float:
        keep_host_memory(False)
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            inputs, labels = next(self.batches)
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            outputs = self.model(inputs)
            losses = self.targets(outputs, inputs, labels)
            total = sum(
                c * torch.exp(-self.log_var[k]) * loss + 0.5 * self.log_var[k]
                for k, (loss, c) in enumerate(zip(losses, self.factors, strict=True))
            )
            self.optimizer.zero_grad()
            total.backward()
            self.optimizer.step()
            self.running_loss += total.item()
        sync(self.device)
        return time.perf_counter() - start


def mnist_losses(outputs, images, digits):
    cls3 = torch.where(digits == 2, 0, torch.where(digits == 6, 1, 2))
    return (
        F.cross_entropy(outputs["cls3"], cls3),
        F.cross_entropy(outputs["cls10"], digits),
        F.mse_loss(outputs["recon"], images),
    )


def usual_mnist(root: str, model: nn.Module, device: torch.device) -> UsualRun:
    from torchvision import datasets, transforms

    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    train = datasets.MNIST(root, train=True, transform=to_tensor)
    loader = torch.utils.data.DataLoader(train, batch_size=256, shuffle=True)
    return UsualRun(model, loader, device, mnist_losses, (1.0, 1.0, 0.5))


def usual_two_slope(data, model: nn.Module, device: torch.device) -> UsualRun:
    split = data.train
    dataset = torch.utils.data.TensorDataset(
        split.inputs.cpu(), torch.cat([split.targets["y1"], split.targets["y2"]], 1).cpu()
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True)

    def losses(outputs, inputs, y):
        return F.mse_loss(outputs["y1"], y[:, :1]), F.mse_loss(outputs["y2"], y[:, 1:])

    return UsualRun(model, loader, device, losses, (0.5, 0.5))


# ---- sections -----------------------------------------------------------------------------


def bench_mnist(root: str, device: torch.device, rounds: int, tmp: Path) -> dict:
    steps = 20
    runs = {"mtltrain": ProjectRun(mnist_overrides(root), device, tmp / "mnist")}
    if device.type == "cuda" or torch.backends.mkldnn.is_available():
        runs["mtltrain, precision=bf16"] = ProjectRun(
            [*mnist_overrides(root), "trainer.precision=bf16"], device, tmp / "mnist_bf16"
        )
    plain = config(mnist_overrides(root))
    usual = usual_mnist(root, build(plain.model, tasks=runs["mtltrain"].data.tasks), device)
    blocks = {name: (lambda r=r: 256 * steps / r.block(steps)) for name, r in runs.items()}
    blocks["usual way"] = lambda: 256 * steps / usual.block(steps)
    rates = interleave(blocks, rounds)
    return {"unit": "samples/s", "rates": rates, "ratios": ratios(rates, "usual way")}


def mnist_overrides(root: str) -> list[str]:
    return ["dataset=mnist_mtl", f"dataset.root={root}", "dataset.download=false"]


def bench_two_slope(device: torch.device, rounds: int, tmp: Path) -> dict:
    steps = 400
    project = ProjectRun([], device, tmp / "two_slope")
    torch.manual_seed(0)
    model = build(project.cfg.model, tasks=project.data.tasks)
    usual = usual_two_slope(project.data, model, device)
    rates = interleave(
        {
            "mtltrain": lambda: steps / project.block(steps),
            "usual way": lambda: steps / usual.block(steps),
        },
        rounds,
    )
    return {"unit": "steps/s", "rates": rates, "ratios": ratios(rates, "usual way")}


def bench_strategies(root: str, device: torch.device, rounds: int, tmp: Path) -> dict:
    steps = 20
    runs = {
        s: ProjectRun([*mnist_overrides(root), f"weighting={s}"], device, tmp / s)
        for s in STRATEGIES
    }
    times = interleave({s: (lambda r=r: r.block(steps) / steps) for s, r in runs.items()}, rounds)
    return {
        "unit": "ms/step",
        "ms_per_step": {s: 1e3 * t for s, t in times.items()},
        "vs_fixed": {s: t / times["fixed"] for s, t in times.items()},
    }


def eval_and_logging_share(overrides: list[str], device: torch.device, tmp: Path) -> dict:
    """Seconds of one training epoch, of logging at its `log_every`, and of one evaluation
    (test metrics, train-metric logs, figures at the default `figure_every`)."""
    run = ProjectRun(overrides, device, tmp / "share")
    trainer = run.trainer
    trainer.epoch = 0
    trainer.train_epoch(0)  # warm-up
    sync(device)
    start = time.perf_counter()
    trainer.train_epoch(0)
    sync(device)
    epoch = time.perf_counter() - start
    batch = next(run.batches)
    parts = trainer.train_step(batch)
    losses = dict.fromkeys(trainer.weighting.names, parts[0])
    start = time.perf_counter()
    for _ in range(20):
        trainer.log_step(losses, parts)
    per_log = (time.perf_counter() - start) / 20
    logging = per_log * trainer.data.train.num_batches(trainer.batch_size) / trainer.log_every
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        trainer.evaluate()
    sync(device)
    evaluation = (time.perf_counter() - start) / trainer.eval_every
    return {
        "epoch_s": epoch,
        "logging_s_per_epoch": logging,
        "evaluation_s_per_epoch": evaluation,
        "share": (logging + evaluation) / (epoch - logging),
    }


def whole_runs(root: str, device: torch.device, tmp: Path) -> dict:
    exe = str(Path(sys.executable).with_name("mtltrain"))
    out = {}
    for name, overrides in {
        "two_slope": [],
        "sin_hetero": ["dataset=sin_hetero"],
        "mnist_mtl": mnist_overrides(root),
    }.items():
        run_dir = tmp / f"run_{name}"
        start = time.perf_counter()
        subprocess.run(
            [exe, *overrides, f"trainer.device={device.type}", f"hydra.run.dir={run_dir}"],
            check=True,
            capture_output=True,
        )
        results = json.loads((run_dir / "results.json").read_text())
        out[name] = {
            "wall_s": time.perf_counter() - start,
            "train_s": results["train_time_s"],
            "steps": results["steps"],
        }
    return out


def ratios(rates: dict[str, float], baseline: str) -> dict[str, float]:
    return {name: rate / rates[baseline] for name, rate in rates.items()}


def fake_mnist(root: Path) -> str:
    """Random images in MNIST's files, for machines without the data set."""
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 60000), ("t10k", 10000)):
        for kind, shape in (("images-idx3", (n, 28, 28)), ("labels-idx1", (n,))):
            array = rng.integers(0, 10 if kind.startswith("labels") else 256, shape, np.uint8)
            header = bytes([0, 0, 8, array.ndim]) + b"".join(
                d.to_bytes(4, "big") for d in array.shape
            )
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(header + array.tobytes())
    return str(root)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores"
        + (f", {m['gpu']}" if m["gpu"] else "")
        + f"; torch {m['torch']}; device {m['device']}.",
        "",
        "| benchmark | contender | rate | × usual way |",
        "|---|---|---|---|",
    ]
    for section in ("mnist", "two_slope"):
        data = report[section]
        for name, rate in data["rates"].items():
            ratio = data["ratios"][name]
            lines.append(f"| {section} | {name} | {rate:,.0f} {data['unit']} | {ratio:.2f} |")
    lines += ["", "| weighting (MNIST model) | ms/step | × fixed |", "|---|---|---|"]
    s = report["strategies"]
    for name, ms in s["ms_per_step"].items():
        lines.append(f"| {name} | {ms:.1f} | {s['vs_fixed'][name]:.3f} |")
    lines += ["", "| epoch share of evaluation + logging | epoch | share |", "|---|---|---|"]
    for name, share in report["eval_logging"].items():
        lines.append(f"| {name} | {share['epoch_s']:.2f} s | {100 * share['share']:.1f}% |")
    if report.get("runs"):
        lines += ["", "| whole run (defaults) | wall time | of which training | steps |"]
        lines += ["|---|---|---|---|"]
        for name, r in report["runs"].items():
            lines.append(
                f"| `{name}` | {r['wall_s']:.1f} s | {r['train_s']:.1f} s | {r['steps']:,} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist-root", default="../shared/data/mnist")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--skip-runs", action="store_true", help="skip the whole-run timings")
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    settle_threads()
    device = select_device(args.device)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = args.mnist_root
        if not (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
            print(f"no MNIST under {root}: using random images of its size", file=sys.stderr)
            root = fake_mnist(tmp / "mnist_data")
        report: dict = {
            "machine": machine(device),
            "mnist_data": "real" if root == args.mnist_root else "random",
        }
        sections = {
            "mnist": lambda: bench_mnist(root, device, args.rounds, tmp),
            "two_slope": lambda: bench_two_slope(device, args.rounds, tmp),
            "strategies": lambda: bench_strategies(root, device, args.rounds, tmp),
            "eval_logging": lambda: {
                "mnist_mtl": eval_and_logging_share(mnist_overrides(root), device, tmp),
                "two_slope": eval_and_logging_share([], device, tmp),
            },
        }
        if not args.skip_runs:
            sections["runs"] = lambda: whole_runs(root, device, tmp)
        for name, section in sections.items():
            print(f"running {name} ...", file=sys.stderr, flush=True)
            report[name] = section()
            print(json.dumps(report[name], indent=2), file=sys.stderr, flush=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
