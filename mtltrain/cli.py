"""`mtltrain`: compose the Hydra config, hand it to `train.run`, report user errors in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mtltrain.config import config_dir
from mtltrain.errors import MtlError


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _main(cfg: DictConfig) -> float:
    from mtltrain import train  # after Hydra has parsed the command line: `--help` stays fast

    hc = HydraConfig.get()
    choices = {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    try:
        return train.run(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task), choices)
    except MtlError as e:
        print(f"mtltrain: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    _main()
