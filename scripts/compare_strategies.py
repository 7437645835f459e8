"""The comparisons of docs/results/<dataset>_strategies.md: `mtltrain-compare` (mtltrain/compare/,
which does all of the work) with the pages' protocols, MNIST read where it lies, and the page
and its plots published into docs/results/.

    python scripts/compare_strategies.py --quick   # MultiMNIST, 5 epochs: < 1 hour on 2 cores
    python scripts/compare_strategies.py           # the paper's 100 epochs: a GPU or a cluster
    python scripts/compare_strategies.py --dataset qm9 --quick   # QM9_QUICK's subset, 2 cores

Options of its own: --quick (QUICK_EPOCHS epochs; QM9: QM9_QUICK's subset and epochs),
--mnist-root (where MNIST lies: no download), --runs (mtltrain-compare's --out, default
runs/compare_<dataset>), --no-docs (write nothing into docs/), --resume (kept for the pages'
commands: running the same command again continues a comparison). Every other option is
mtltrain-compare's (`mtltrain-compare --help`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import repro_common as rc
import update_readme

from mtltrain import compare
from mtltrain.config import compose_checked

QUICK_EPOCHS = 5
# QM9 on two CPU cores: 2,000 training and 1,000 test molecules (no validation split), a
# 16-wide network (edge network 32) and 3 epochs of batch 120, evaluated at the end only
QM9_QUICK = ["dataset.n_train=2000", "dataset.n_val=0", "dataset.n_test=1000",
             "model.encoder.dim=16", "model.encoder.edge_hidden=32",
             "trainer.lr_scheduler=null"]  # fmt: skip
QM9_QUICK_EPOCHS = 3


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="multi_mnist", help="default: %(default)s")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs, not the paper's")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the trainer config's)")
    p.add_argument("--runs", type=Path, help="default: runs/compare_<dataset>")
    p.add_argument("--mnist-root", default=rc.MNIST_ROOT, help="default: %(default)s")
    p.add_argument("--no-docs", action="store_true", help="write nothing into docs/results/")
    p.add_argument("--resume", action="store_true", help="(the same command continues)")
    return p.parse_known_args(argv)


def compare_arguments(args: argparse.Namespace, rest: Sequence[str]) -> list[str]:
    """mtltrain-compare's command line for the script's."""
    words = ["--dataset", args.dataset, "--out", str(args.runs), *rest]
    if "download" in compose_checked([f"dataset={args.dataset}"]).dataset:  # MNIST's
        words += ["--override", f"dataset.root={args.mnist_root}",
                  "--override", "dataset.download=false"]  # fmt: skip
    if args.dataset == "qm9" and args.quick:
        words += [w for o in QM9_QUICK for w in ("--override", o)]
        return [*words, "--epochs", str(args.epochs or QM9_QUICK_EPOCHS)]
    if args.quick or args.epochs:
        words += ["--epochs", str(args.epochs or QUICK_EPOCHS)]
    return words


def main(argv: Sequence[str] | None = None) -> None:
    args, rest = parse_args(argv)
    args.runs = args.runs or Path("runs") / f"compare_{args.dataset}"
    compare.main(compare_arguments(args, rest), command=rc.command_line())
    if not args.no_docs:
        rc.DOCS.mkdir(parents=True, exist_ok=True)
        for name in (f"{args.dataset}_strategies.md", *compare.pictures(args.dataset)):
            if (args.runs / name).is_file():
                shutil.copyfile(args.runs / name, rc.DOCS / name)
        update_readme.update()


if __name__ == "__main__":
    main(sys.argv[1:])
