"""QM9 (Ramakrishnan et al. 2014): 130,831 small molecules, 11 regression targets as Nash-MTL
(Navon et al. 2022) trains them, read offline from the `qm9pack` package's CSV files.

Targets, in PyG's units (torch_geometric.datasets.QM9 indices 0, 1, 2, 3, 5, 6, 12–15, 11):
μ (D), α (a₀³), HOMO, LUMO (eV), ⟨R²⟩ (a₀²), ZPVE (eV), the atomization energies U0, U, H, G
(eV: the molecule's energy minus its atoms' reference energies, QM9's atomref table) and c_v
(cal/mol·K). Hartree → eV by 27.211386246 (PyG's factor).

Each molecule is one tensor [29, 13] (29 = QM9's most atoms), a row per atom, padding rows
zero: `ATOM_FEATURES` node features (one-hot H, C, N, O, F; atomic number; bonded hydrogens;
bonded atoms), the covalent radius (Å), x, y, z (Å) and a mask (1 for a real atom). Two atoms
are bonded where their distance is at most `BOND_TOLERANCE` × the sum of their covalent radii.
The parsed tensors are cached in `<root>/QM9/`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from torch import Tensor

from mtltrain.constraints import Count, Seed, at_least, checked
from mtltrain.data.base import MultiTaskData, Split, check_tasks, task_specs
from mtltrain.errors import ConfigError, DataError, first_line
from mtltrain.tasks import LossChoice, MetricChoice

HARTREE_EV = 27.211386246
ELEMENTS = "HCNOF"
ATOMIC_NUMBER = (1, 6, 7, 8, 9)
COVALENT_RADIUS = (0.31, 0.76, 0.71, 0.66, 0.57)  # Å, Cordero et al. 2008 (C: sp3)
BOND_TOLERANCE = 1.2
MAX_ATOMS = 29
ATOM_FEATURES = 8  # one-hot element (5), atomic number, bonded hydrogens, bonded atoms
RADIUS, XYZ, MASK = 8, slice(9, 12), 12  # the columns after the node features
COLUMNS = 13
# QM9's atomref table (Hartree): each element's free-atom energy, per energy column
ATOMREF = {
    "InternalEnergy_0K_au": (-0.500273, -37.846772, -54.583861, -75.064579, -99.718730),
    "InternalEnergy_298K_au": (-0.498857, -37.845355, -54.582445, -75.063163, -99.717314),
    "Enthalphy_298K_au": (-0.497912, -37.844411, -54.581501, -75.062219, -99.716370),
    "GibbsFreeEnergy_298K_au": (-0.510927, -37.861317, -54.598897, -75.079532, -99.733544),
}
# task: (qm9pack's column, factor to the target's unit), in Nash-MTL's order
TARGETS = {
    "mu": ("Dipole_debye", 1.0),
    "alpha": ("Polarizability_bohr3", 1.0),
    "homo": ("HOMO_au", HARTREE_EV),
    "lumo": ("LUMO_au", HARTREE_EV),
    "r2": ("R2_bohr2", 1.0),
    "zpve": ("ZPVE_au", HARTREE_EV),
    "u0": ("InternalEnergy_0K_au", HARTREE_EV),
    "u": ("InternalEnergy_298K_au", HARTREE_EV),
    "h": ("Enthalphy_298K_au", HARTREE_EV),
    "g": ("GibbsFreeEnergy_298K_au", HARTREE_EV),
    "cv": ("Heatcapacity_Cv_cal_mol_K", 1.0),
}
INSTALL = 'dataset=qm9 reads QM9 from the qm9pack package: pip install "mtltrain[qm9]"'


# The parsed tensors' layout and constants (radii, bond tolerance, atom references): raise it
# whenever the parsing changes, so that no cache of an earlier parser is read.
PARSED_FORMAT = 1


def bonded(xyz: Tensor, radius: Tensor, mask: Tensor) -> Tensor:
    """[..., atoms, atoms] 1 where two distinct real atoms lie within BOND_TOLERANCE × the sum
    of their covalent radii, else 0."""
    reach = BOND_TOLERANCE * (radius.unsqueeze(-1) + radius.unsqueeze(-2))
    pair = mask.unsqueeze(-1) * mask.unsqueeze(-2)
    near = (torch.cdist(xyz, xyz) <= reach).to(xyz.dtype) * pair
    return near * (1 - torch.eye(xyz.shape[-2], dtype=xyz.dtype, device=xyz.device))


def package_folder() -> Path:
    """The installed qm9pack's data folder (found without importing the package)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(INSTALL)
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def csv_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("qm9_part*.csv"))
    if not files:
        raise ConfigError(
            f"dataset.source={folder} is not allowed: it holds no qm9_part*.csv (qm9pack's files)"
        )
    return files


def read_molecules(files: Sequence[Path]) -> tuple[Tensor, Tensor]:
    """The molecules of qm9pack's CSV files: inputs [M, 29, 13] and the targets [M, 11] in
    their units (float64)."""
    try:
        import pandas as pd
    except ImportError as e:
        raise ConfigError(INSTALL) from e
    columns = ["N_atoms", "Elements", "XYZ_Ang", *sorted({c for c, _ in TARGETS.values()})]
    try:
        frames = [pd.read_csv(f, usecols=columns) for f in files]
        return molecules(pd.concat(frames, ignore_index=True))
    except (ValueError, KeyError, IndexError, TypeError) as e:  # pandas' parser errors too
        raise DataError(
            f"dataset.source={files[0].parent} is not allowed: its qm9_part*.csv files are not "
            f"qm9pack's ({type(e).__name__}: {first_line(e)}); give a folder of qm9pack's files "
            "or null (the installed package's)"
        ) from None


def molecules(df: Any) -> tuple[Tensor, Tensor]:
    """The inputs [M, 29, 13] and targets [M, 11] (float64) of qm9pack's rows `df` (a pandas
    DataFrame of its columns N_atoms, Elements, XYZ_Ang and the targets')."""
    counts = df["N_atoms"].to_numpy()
    letters = "".join(df["Elements"].str.replace(r"[^A-Z]", "", regex=True))
    element = np.array([ELEMENTS.index(c) for c in letters])
    text = ",".join(df["XYZ_Ang"].str.replace(r"[\[\]]", "", regex=True))
    xyz = np.array(text.split(","), dtype=np.float64).reshape(-1, 3)
    molecule = np.repeat(np.arange(len(df)), counts)
    slot = np.arange(len(element)) - np.repeat(np.cumsum(counts) - counts, counts)
    inputs = torch.zeros(len(df), MAX_ATOMS, COLUMNS)
    at = (torch.from_numpy(molecule), torch.from_numpy(slot))
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(element), len(ELEMENTS)).float()
    inputs[at[0], at[1], :5] = one_hot
    inputs[at[0], at[1], 5] = one_hot @ torch.tensor(ATOMIC_NUMBER, dtype=torch.float)
    inputs[at[0], at[1], RADIUS] = one_hot @ torch.tensor(COVALENT_RADIUS)
    inputs[at[0], at[1], XYZ] = torch.from_numpy(xyz).float()
    inputs[at[0], at[1], MASK] = 1.0
    for rows in torch.arange(len(df)).split(8192):  # bonds, a chunk at a time
        x = inputs[rows]
        bonds = bonded(x[..., XYZ], x[..., RADIUS], x[..., MASK])
        inputs[rows, :, 6] = (bonds @ x[..., :1]).squeeze(-1)  # bonded hydrogens
        inputs[rows, :, 7] = bonds.sum(-1)
    per_element = np.zeros((len(df), len(ELEMENTS)))
    np.add.at(per_element, molecule, np.eye(len(ELEMENTS))[element])
    targets = []
    for column, factor in TARGETS.values():
        value = df[column].to_numpy(np.float64)
        if column in ATOMREF:
            value = value - per_element @ np.array(ATOMREF[column])
        targets.append(value * factor)
    return inputs, torch.from_numpy(np.stack(targets, axis=1))


def load(folder: Path, root: Path) -> tuple[Tensor, Tensor]:
    """The molecules of `folder`'s CSV files, from the cache in `root`/QM9 where it has them
    (keyed by the files' names, sizes and times and by PARSED_FORMAT), else parsed and cached."""
    files = csv_files(folder)
    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha1(repr([PARSED_FORMAT, *stamp]).encode()).hexdigest()[:16]
    cache = root / "QM9" / f"qm9pack_{key}.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        return saved["inputs"], saved["targets"]
    inputs, targets = read_molecules(files)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.part")  # runs that parse at once: each its own
    torch.save({"inputs": inputs, "targets": targets}, partial)
    partial.replace(cache)
    return inputs, targets


def split_rows(n: int, n_train: int | None, n_val: int, n_test: int, seed: int) -> list[Tensor]:
    """Test, validation and training rows of `n` molecules as Nash-MTL splits them: one random
    order (seeded by `seed`), test first, then validation, the rest training (the first
    `n_train` of it where given)."""
    if n_val + n_test >= n:
        raise ConfigError(
            f"dataset.n_val={n_val} and dataset.n_test={n_test} are not allowed: together they "
            f"must leave training molecules of the {n}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    train = train if n_train is None else train[:n_train]
    if len(train) < 2:
        raise ConfigError(
            f"dataset.n_train={n_train} is not allowed: the targets are standardised by the "
            "training molecules' mean and standard deviation, which takes at least 2"
        )
    return [test, val, train]


@checked("dataset")
def build(
    losses: Mapping[str, Sequence[LossChoice]],
    tasks: Sequence[str] = tuple(TARGETS),
    root: str = "data",
    source: str | None = None,
    n_train: Count | None = None,
    n_val: Annotated[int, at_least(0)] = 10_000,
    n_test: Count = 10_000,
    split_seed: Seed = 0,
    metrics: Mapping[str, Sequence[MetricChoice]] | None = None,
) -> MultiTaskData:
    """The QM9 tasks `tasks`, targets standardised by the training split's mean and std (each
    task's metrics in the original units; Nash-MTL's code standardises by the whole data
    set's, test molecules included); `source`: a folder of qm9pack's CSV files (None: the
    installed package's)."""
    check_tasks(tasks, TARGETS)
    folder = package_folder() if source is None else Path(source)
    inputs, targets = load(folder, Path(root))
    test, val, train = split_rows(len(inputs), n_train, n_val, n_test, split_seed)
    column = [list(TARGETS).index(t) for t in tasks]
    y = targets[:, column]
    mean, std = y[train].mean(0), y[train].std(0)
    scaled = ((y - mean) / std).float()

    def split(rows: Tensor) -> Split:
        y_rows = scaled[rows]
        return Split(inputs[rows], {t: y_rows[:, k : k + 1] for k, t in enumerate(tasks)})

    specs = task_specs(tasks, dict.fromkeys(TARGETS, ("regression", 1)), losses, metrics)
    specs = tuple(dataclasses.replace(s, target_std=float(std[k])) for k, s in enumerate(specs))
    return MultiTaskData(specs, split(train), split(test), split(val) if n_val else None)
