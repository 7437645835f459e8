"""The Markdown page of a comparison, `<dataset>_strategies.md`: the protocol as the sweeps ran
it, the table, what Δm% and the marks mean, the plots, the runs that did not finish, and the
machine, the wall time and the command that made it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtltrain.compare._table import PUBLISHED_ON, Comparison, duration

PAPER_EPOCHS = {"multi_mnist": 100, "qm9": 300}
STACKED = (
    " The runs went to the stacked launcher (hydra/launcher=vectorized): where a row's jobs "
    "trained together, its time per step is the stack's (all of its jobs at once)."
)


def document(comparison: Comparison, record: dict[str, Any], pictures: dict[str, Path]) -> str:
    """The Markdown of the comparison; the protocol as the sweeps ran it (`record`)."""
    dataset, ref = record["dataset"], f"`{comparison.reference}`"
    published = dataset == PUBLISHED_ON and comparison.single_task
    against = "single-task learning" if comparison.single_task else ref
    parts = [
        f"# Every strategy on {dataset}, {record['seeds']} seeds, against {against}",
        f"{protocol(record)}; test metrics of that model. Rows are sorted by Δm%"
        + (
            f"; † marks a Δm% that differs from {ref}'s at 5% (Welch's t-test over seeds; one "
            "test per row, uncorrected for their number): without †, the data do not tell the "
            f"strategy from {ref}."
            if comparison.single_task
            else "."
        ),
        comparison.table(published),
        formula(comparison, ref, bool(record.get("resumed")))
        + (STACKED if "hydra/launcher=vectorized" in record["overrides"] else ""),
    ]
    if published:
        parts.append(
            "Sener & Koltun's numbers are one run each, 100 epochs on all 60,000 training images, "
            "on pairs drawn without a seed, MultiLeNet with their dropout (one channel mask per "
            "batch in the encoder, none rescaled); ours are seeded pairs, standard dropout, 10% "
            "held out and the epochs above: compare orderings, not digits. Nothing here was "
            "tuned to their numbers."
        )
    parts += [f"![{name}]({name})" for name in pictures]
    failed = [r for r in comparison.sweep.runs if not r.finished]
    if failed:
        parts.append(
            "Runs that did not finish: "
            + ", ".join(
                f"`{r.name}` ({unplaced(r.results.get('error', r.status))})" for r in failed
            )
        )
    parts.append(footer(comparison, record))
    return "\n\n".join(parts) + "\n"


def protocol(record: dict[str, Any]) -> str:
    """The epochs (and a subset of the data or model, where the overrides take one), and which
    evaluation each run reports."""
    epochs, settings = record["epochs"], record["overrides"]
    subset = [o for o in settings if o.startswith(("dataset.n_", "model."))]
    paper = PAPER_EPOCHS.get(record["dataset"])
    shorter = (
        f" (not the paper's {paper} epochs: a check that runs on small machines; strategies "
        "that need longer to separate may not)"
        if paper and epochs < paper
        else ""
    )
    held = (
        f", with {record['validation']} of the training set held out for validation (its "
        "metrics are in each run's results.json)"
        if record.get("validation")
        else ""
    )
    return (
        f"**Protocol: {epochs} epoch{'s' if epochs != 1 else ''}**"
        + (f" on {', '.join(f'`{o}`' for o in subset)}" if subset else "")
        + f"{shorter}; the reported model is the last evaluation{held}. Selecting each run's "
        "best epoch by one validation objective would favour the objective's task in the "
        "multi-task runs only, so both sweeps report their last epoch"
    )


def formula(comparison: Comparison, ref: str, resumed: bool) -> str:
    """What Δm%, its interval and the time per step are."""
    baseline = (
        "M_b,k the mean over seeds of task k trained alone with the same architecture"
        if comparison.single_task
        else f"M_b,k the mean over seeds of {ref} (the data set names no tasks to train alone)"
    )
    again = (
        "; ‡: some of the row's jobs failed and ran again later, on a machine loaded "
        "otherwise, so its time is not comparable."
        if resumed
        else "."
    )
    return (
        "Δm% = (100/K)·Σ_k d_k·(M_k − M_b,k)/|M_b,k| over the tasks' main test metrics (d_k = "
        f"+1 where higher is better, −1 where lower is), {baseline}; its interval is Student's "
        "t over the row's seeds (the baseline's means taken as exact). Time per step: the "
        "training wall time (evaluations and checkpoints included) per step, against "
        f"{ref}'s in the same sweep{again}"
    )


def footer(comparison: Comparison, record: dict[str, Any]) -> str:
    """Machine, wall time, the plan and the command that makes the page again."""
    resumed = record.get("resumed")
    again = (
        f" (run again after an interruption or a failure: `{resumed['command']}`, "
        f"{duration(resumed['wall_s'])} of the wall time)"
        if resumed
        else ""
    )
    return (
        f"Machine: {record['machine']}.  \nWall time: {duration(record['wall_s'])} for "
        f"{len(comparison.sweep.finished)} runs; finished {record['finished']}.  \n"
        f"Plan: {record['plan']['line']}.  \n"
        f"Reproduce: `{record['command']}`{again}"
    )


def unplaced(text: str) -> str:
    """`text` with this machine's working directory left out of the paths in it."""
    return text.replace(f"{Path.cwd()}/", "")
