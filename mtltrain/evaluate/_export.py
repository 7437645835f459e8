"""A trained run's model in forms other tools load (`mtltrain-export`), and read back
(`load_exported`).

An export folder holds: model.safetensors (the weights; needs the `safetensors` package, the
`export` extra), model.pt (the same state_dict written by torch.save, readable with
torch.load(weights_only=True)), config.yaml (the run's resolved config) and tasks.json (its
task specs: kind, width and losses by name), which rebuild the model with mtltrain; model.pt2,
a `torch.export` program of x → {output name: tensor} that torch.export.load runs without
mtltrain, where torch.export takes the model; and export.json, what was exported from where,
with a note for each file that could not be written.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from mtltrain.atomic import torch_bytes, write_all_atomically
from mtltrain.build import build_model
from mtltrain.errors import RunFolderError, first_line
from mtltrain.evaluate._trained import TrainedRun
from mtltrain.losses import MeanLogVar, loss_name
from mtltrain.models.base import Outputs
from mtltrain.tasks import TaskSpec

MARK = "mtltrain-export/1"
MANIFEST, CONFIG, TASKS = "export.json", "config.yaml", "tasks.json"
WEIGHTS, STATE_DICT, PROGRAM = "model.safetensors", "model.pt", "model.pt2"
FILES = (MANIFEST, CONFIG, TASKS, WEIGHTS, STATE_DICT, PROGRAM)


def flat_outputs(outputs: Outputs) -> dict[str, Tensor]:
    """A model's outputs as one tensor per name: a task's under its name, a heteroscedastic
    task's μ and log σ² as <task>.mean and <task>.log_var."""
    flat: dict[str, Tensor] = {}
    for name, output in outputs.items():
        if isinstance(output, MeanLogVar):
            flat[f"{name}.mean"], flat[f"{name}.log_var"] = output.mean, output.log_var
        else:
            flat[name] = output
    return flat


class Predictions(nn.Module):
    """x → `flat_outputs` of the model's outputs (its shared features left out): what the
    exported program computes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return flat_outputs(self.model(x)[0])


def task_record(task: TaskSpec) -> dict[str, Any]:
    """A task spec as tasks.json holds it: what rebuilds its head, and its losses by name (a
    loss from the config by its function's name); its metrics are left out."""
    return {
        "name": task.name,
        "kind": task.kind,
        "out_features": task.out_features,
        "losses": [loss_name(loss) for loss in task.losses],
        "heteroscedastic": task.heteroscedastic,
    }


def export_run(trained: TrainedRun, out: Path) -> dict[str, Any]:
    """Write the export folder `out` (see the module) for `trained`'s model, all files or
    none; returns what export.json says. `out` must be new, empty, or an earlier export,
    whose files are replaced."""
    check_export_folder(out)
    model = copy.deepcopy(trained.model).to("cpu", memory_format=torch.contiguous_format).eval()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tasks = [task_record(t) for t in trained.data.tasks]
    example = trained.data.test.head(2).inputs.to("cpu").contiguous()
    notes: dict[str, str] = {}
    files = {
        CONFIG: OmegaConf.to_yaml(trained.config).encode(),
        TASKS: (json.dumps(tasks, indent=2) + "\n").encode(),
        STATE_DICT: torch_bytes(state),
    }
    makers = {
        WEIGHTS: lambda: safetensors_bytes(state),
        PROGRAM: lambda: program_bytes(model, example),
    }
    for name, make in makers.items():
        try:
            files[name] = make()
        except Exception as e:
            notes[name] = f"not written: {type(e).__name__}: {first_line(e)}"
    manifest = {
        "written_by": "mtltrain-export",
        "format": MARK,
        "run": str(trained.folder),
        "checkpoint": trained.checkpoint.relative_to(trained.folder).as_posix(),
        "selected": trained.selected,
        "input_shape": ["batch", *example.shape[1:]],
        "outputs": output_names(model, example),
        "files": sorted([*files, MANIFEST]),
        "notes": notes,
    }
    files[MANIFEST] = (json.dumps(manifest, indent=2) + "\n").encode()
    write_all_atomically({out / name: data for name, data in files.items()})
    for stale in set(FILES) - set(files):  # an earlier export's file this one could not write
        (out / stale).unlink(missing_ok=True)
    return manifest


def output_names(model: nn.Module, example: Tensor) -> list[str]:
    """The names of the exported program's outputs (`flat_outputs`)."""
    with torch.no_grad():
        return list(flat_outputs(model(example)[0]))


def safetensors_bytes(state: dict[str, Tensor]) -> bytes:
    """The state_dict as safetensors (ImportError without the `safetensors` package)."""
    try:
        from safetensors.torch import save
    except ImportError:
        raise ImportError(
            "the safetensors package is missing: pip install mtltrain[export]"
        ) from None
    return save(state, metadata={"format": "pt", "mtltrain": MARK})


def program_bytes(model: nn.Module, example: Tensor) -> bytes:
    """`Predictions(model)` exported by torch.export for any batch size, as torch.export.save
    writes it."""
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        program = torch.export.export(
            Predictions(model), (example,), dynamic_shapes=({0: batch},), strict=False
        )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def check_export_folder(out: Path) -> None:
    """`out` is new, an empty folder, or an earlier export (its export.json says so)."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} is a file: give a new or empty folder to export into")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        ours = json.loads((out / MANIFEST).read_text()).get("format") == MARK
    except (OSError, ValueError, AttributeError):
        ours = False
    foreign = sorted(p.name for p in out.iterdir() if not ours or p.name not in FILES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise RunFolderError(
            f"{out} holds files mtltrain-export did not write ({shown}): they are left as they "
            "are; give a new or empty folder (or an earlier export's) to export into"
        )


def load_exported(folder: Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of an export folder, built from its config.yaml and tasks.json and given
    its weights (model.safetensors where the safetensors package is installed, else
    model.pt), in eval mode on `device`."""
    config = OmegaConf.load(folder / CONFIG)
    specs = json.loads((folder / TASKS).read_text())
    tasks = tuple(TaskSpec(**{**s, "losses": tuple(s["losses"])}) for s in specs)
    shape = json.loads((folder / MANIFEST).read_text())["input_shape"][1:]
    model = build_model(config, tasks, lambda: shape)
    model.load_state_dict(exported_weights(folder))
    return model.to(device).eval()


def exported_weights(folder: Path) -> dict[str, Tensor]:
    """An export folder's state_dict: from model.safetensors where it and the safetensors
    package are there, else from model.pt."""
    if (folder / WEIGHTS).is_file():
        try:
            from safetensors.torch import load_file
        except ImportError:
            pass
        else:
            return load_file(folder / WEIGHTS)
    return torch.load(folder / STATE_DICT, map_location="cpu", weights_only=True)
