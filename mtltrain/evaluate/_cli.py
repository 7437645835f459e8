"""The commands `mtltrain-eval` and `mtltrain-export` (their --help: EVAL_HELP, EXPORT_HELP).
Their arguments are checked before torch is imported."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtltrain.errors import (
    MtlError,
    OneLineParser,
    RunFolderError,
    UnexpectedError,
    checked_error,
    first_line,
)
from mtltrain.evaluate._splits import SPLITS, check_split
from mtltrain.outputs._results import write_json
from mtltrain.processes import importable_from_here

if TYPE_CHECKING:
    from mtltrain.evaluate._trained import TrainedRun

EVAL_FOLDER = "eval"  # <run>/eval/<split>.json
EVAL_MARK = "mtltrain-eval"

EVAL_HELP = """\
Evaluates a trained run's selected model on one split of its data set, prints the metrics
(beside results.json's for the same split, where the data set is the run's) and writes them
to <run folder>/eval/<split>.json, or to --out FILE.

The model: a finished run's selected one (results.json's selected.by: best reads
checkpoints/best.pt, last checkpoints/last.pt); a run that stopped before its end, that of its
last checkpoint. The data set and model are rebuilt from the config saved in the checkpoint;
key=value overrides of dataset.* (dataset.root=..., dataset.n_test=...), trainer.device,
trainer.eval_batch_size and trainer.limit_batches apply on top of it. The evaluation is the
run's own: its metrics, evaluation batch size, precision and batches (a debug=overfit run's
first trainer.limit_batches; trainer.limit_batches=null: all), so the numbers equal
results.json's for the same split and data.

Files: nothing the run wrote is changed. An eval file is replaced only if mtltrain-eval wrote
it (its "written_by"); any other file of that name is left as it is (exit 2). A run folder in
use by a run, one without a trained model, an unknown split or one the run holds no data for,
and a bad override: one line on stderr, exit 2.
"""

EXPORT_HELP = """\
Exports a trained run's selected model (the one mtltrain-eval evaluates) into OUT, a new or
empty folder, or an earlier export's, whose files are replaced:

  model.safetensors  the weights (needs the safetensors package: pip install mtltrain[export])
  model.pt           the same state_dict, torch.save'd (torch.load(..., weights_only=True))
  config.yaml        the run's resolved config (with the overrides given here)
  tasks.json         its task specs: with config.yaml they rebuild the model
                     (mtltrain.evaluate.load_exported(OUT))
  model.pt2          a torch.export program, x -> {name: tensor} (a heteroscedastic task's
                     outputs as <task>.mean and <task>.log_var), any batch size;
                     torch.export.load(OUT/model.pt2).module()(x)
  export.json        the run, the checkpoint, the input shape, the output names, and a note
                     for each file that could not be written (model.pt2 where torch.export
                     does not take the model, model.safetensors without the package)

The data set is rebuilt (a batch of it is the example torch.export traces): dataset.*
overrides apply as for mtltrain-eval. Errors: one line on stderr, exit 2.
"""


def run_folder_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command's parser: its --help `description` as written, a run folder its first argument."""
    p = OneLineParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("folder", type=Path, help="a run folder (one job's folder of a sweep)")
    return p


def eval_parser() -> argparse.ArgumentParser:
    p = run_folder_parser("mtltrain-eval", EVAL_HELP)
    p.add_argument(
        "settings",
        nargs="*",
        default=[],
        metavar="split=NAME | key=value",
        help=f"the split, one of {', '.join(SPLITS)} (default: test); overrides",
    )
    p.add_argument("--out", type=Path, metavar="FILE", help="where to write the metrics (JSON)")
    return p


def export_parser() -> argparse.ArgumentParser:
    p = run_folder_parser("mtltrain-export", EXPORT_HELP)
    p.add_argument("out", type=Path, metavar="OUT", help="the folder to export into")
    p.add_argument(
        "settings", nargs="*", default=[], metavar="key=value", help="dataset.* overrides"
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """mtltrain-eval (EVAL_HELP)."""
    args = eval_parser().parse_args(argv)
    importable_from_here()
    _one_line("mtltrain-eval", lambda: evaluate_command(args.folder, args.settings, args.out))


def export_main(argv: Sequence[str] | None = None) -> None:
    """mtltrain-export (EXPORT_HELP)."""
    args = export_parser().parse_args(argv)
    importable_from_here()
    _one_line("mtltrain-export", lambda: export_command(args.folder, args.out, args.settings))


def evaluate_command(folder: Path, settings: Sequence[str], out: Path | None) -> None:
    """Evaluate the split `settings` name (split=..., default test) with the other settings as
    overrides, write the eval file, print the table."""
    split = "test"
    overrides = []
    for setting in settings:
        if setting.startswith("split="):
            split = setting.partition("=")[2]
        else:
            overrides.append(setting)
    check_split(split)
    out = out or folder / EVAL_FOLDER / f"{split}.json"
    check_own_eval_file(out)
    from mtltrain.evaluate._trained import open_trained  # torch: after the arguments' checks

    trained = open_trained(folder, overrides)
    metrics = trained.evaluate(split)
    same_data = not any(o.lstrip("+~").startswith("dataset.") for o in overrides)
    reported = trained.results["metrics"] if trained.results and same_data else None
    record = eval_record(trained, split, metrics)
    write_json(out, record)
    print(f"{heading(trained.folder, record['checkpoint'], trained.selected)}, split {split}")
    print(metrics_table(metrics, reported))


def export_command(folder: Path, out: Path, overrides: Sequence[str]) -> None:
    """Export the run's model into `out`; print what was written and why anything was not."""
    from mtltrain.evaluate._export import check_export_folder, export_run
    from mtltrain.evaluate._trained import open_trained

    check_export_folder(out)
    manifest = export_run(open_trained(folder, overrides), out)
    print(heading(manifest["run"], manifest["checkpoint"], manifest["selected"]))
    print(f"wrote into {out}: {', '.join(manifest['files'])}")
    for name, note in manifest["notes"].items():
        print(f"mtltrain-export: {name} {note}", file=sys.stderr)


def heading(run: object, checkpoint: str, selected: Mapping[str, Any] | None) -> str:
    """One line: which model of which run."""
    how = (
        f"selected by {selected['by']}: epoch {selected['epoch']}, step {selected['step']}"
        if selected
        else "the run did not finish"
    )
    return f"{run}: {checkpoint} ({how})"


def eval_record(trained: TrainedRun, split: str, metrics: dict[str, float]) -> dict[str, Any]:
    """What an eval file holds."""
    return {
        "written_by": EVAL_MARK,
        "run": str(trained.folder),
        "checkpoint": trained.checkpoint.relative_to(trained.folder).as_posix(),
        "selected": trained.selected,
        "split": split,
        "samples": trained.evaluated_samples(split),
        "overrides": trained.overrides,
        "metrics": metrics,
    }


def check_own_eval_file(path: Path) -> None:
    """An existing file at `path` is replaced only if mtltrain-eval wrote it."""
    if not path.exists():
        return
    try:
        ours = json.loads(path.read_text()).get("written_by") == EVAL_MARK
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise RunFolderError(
            f"{path} exists and mtltrain-eval did not write it: it is left as it is; write the "
            "metrics elsewhere with --out FILE"
        )


def metrics_table(metrics: Mapping[str, float], reported: Mapping[str, Any] | None) -> str:
    """metric | value (| results.json's value, where given: "-" where it has none)."""
    header = ("metric", "value", *(["results.json"] if reported is not None else []))
    rows = [
        (name, f"{value:.6g}", *([_number(reported.get(name))] if reported is not None else []))
        for name, value in metrics.items()
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in (header, *rows)
    )


def _number(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) else "-"


def _one_line(prog: str, command: Callable[[], None]) -> None:
    """Run `command`; an error is one line on stderr and the exit code (2 for the tool's own
    errors, 1 for any other)."""
    try:
        command()
    except MtlError as e:
        _fail(prog, e)
    except Exception as e:  # one of mtltrain's own behind a wrapper (Hydra's), else unexpected
        unexpected = UnexpectedError(f"{type(e).__name__}: {first_line(e)} (please report it)")
        _fail(prog, checked_error(e) or unexpected)


def _fail(prog: str, e: MtlError) -> None:
    print(f"{prog}: error: {e}", file=sys.stderr)
    raise SystemExit(e.exit_code) from None
