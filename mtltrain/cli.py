"""`mtltrain`: compose the Hydra config, hand it to `train.run`, report user errors in one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mtltrain import rundir
from mtltrain.config import compose_checked, config_dir
from mtltrain.errors import MtlError
from mtltrain.schema import register

register()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _main(cfg: DictConfig) -> float:
    from mtltrain import train  # after Hydra has parsed the command line: `--help` stays fast

    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    try:
        return train.run(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task), choices)
    except MtlError as e:
        print(f"mtltrain: error: {e}", file=sys.stderr)
        if hc.mode == RunMode.MULTIRUN:
            return float("nan")  # the job's folder says it failed; the sweep goes on
        raise SystemExit(e.exit_code) from None


class SweepSummary(Callback):
    """After a sweep: exit non-zero, with one line, when some of its jobs did not finish."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        jobs = [p for p in Path(config.hydra.sweep.dir).iterdir() if (p / ".hydra").is_dir()]
        unfinished = sorted(p.name for p in jobs if rundir.status(p) != "completed")
        if unfinished:
            print(
                f"mtltrain: {len(unfinished)} of {len(jobs)} jobs did not finish: "
                f"{', '.join(unfinished)} (mtltrain-report {config.hydra.sweep.dir} lists why)",
                file=sys.stderr,
            )
            raise SystemExit(1)


def main() -> None:
    try:
        argv = rundir.prepare_arguments(sys.argv[1:])
        if all(rundir.override_key(a) is not None for a in argv):  # a single run, no flags
            compose_checked(argv)  # bad settings: one line, before anything is written
        sys.argv[1:] = argv
    except MtlError as e:
        print(f"mtltrain: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    _main()
