"""dataset=qm9 on tiny CSV files of qm9pack's format, its MAE in the original units, and the
message-passing network (dense edge network == per-edge, padding, permutations)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from mtltrain.data import qm9
from mtltrain.data.base import Split
from mtltrain.errors import ConfigError, DataError
from mtltrain.losses import MeanLogVar
from mtltrain.metrics import TaskMetrics
from mtltrain.models.mpnn import EdgeConv, MPNNEncoder, edge_features, gru_step, lstm_step
from mtltrain.tasks import TaskSpec

HEADER = [
    "XYZ_file",
    "Index",
    "SMILES",
    "InChi",
    "N_atoms",
    "Stoichiometry",
    "Elements",
    "XYZ_Ang",
    "Mulliken_pop",
    "Harmonic_Freq_cmi",
    "RotA_GHz",
    "RotB_GHz",
    "RotC_GHz",
    "Dipole_debye",
    "Polarizability_bohr3",
    "HOMO_au",
    "LUMO_au",
    "HOMO_LUMO_gap_au",
    "R2_bohr2",
    "ZPVE_au",
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
]
# methane, as qm9pack's first row has it
METHANE = {
    "Elements": "['C','H','H','H','H']",
    "XYZ_Ang": "[[-0.0126981359,1.0858041578,0.0080009958],[0.002150416,-0.0060313176,"
    "0.0019761204],[1.0117308433,1.4637511618,0.0002765748],[-0.540815069,1.4475266138,"
    "-0.8766437152],[-0.5238136345,1.4379326443,0.9063972942]]",
    "Dipole_debye": "0.", "Polarizability_bohr3": "13.21", "HOMO_au": "-0.3877",
    "LUMO_au": "0.1171", "R2_bohr2": "35.3641", "ZPVE_au": "0.044749",
    "InternalEnergy_0K_au": "-40.47893", "InternalEnergy_298K_au": "-40.476062",
    "Enthalphy_298K_au": "-40.475117", "GibbsFreeEnergy_298K_au": "-40.498597",
    "Heatcapacity_Cv_cal_mol_K": "6.469",
}  # fmt: skip


def molecule(i: int, rng: torch.Generator) -> dict[str, str]:
    """Methane (i = 0) or a random molecule of 2–6 atoms, its properties random."""
    if i == 0:
        row = dict(METHANE)
    else:
        n = 2 + i % 5
        elements = [qm9.ELEMENTS[int(k)] for k in torch.randint(0, 5, (n,), generator=rng)]
        xyz = (torch.randn(n, 3, generator=rng) * 1.5).tolist()
        row = {"Elements": str(elements).replace(" ", ""), "XYZ_Ang": json.dumps(xyz)}
        for column, _ in qm9.TARGETS.values():
            row[column] = f"{float(torch.randn((), generator=rng)) - 40:.6f}"
    row["N_atoms"] = str(row["Elements"].count("'") // 2)
    return {c: row.get(c, "0") for c in HEADER} | {"XYZ_file": f"dsgdb9nsd_{i + 1:06d}.xyz"}


def write_qm9(folder: Path, n: int = 24) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = torch.Generator().manual_seed(0)
    with (folder / "qm9_part1.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, HEADER, quoting=csv.QUOTE_NONNUMERIC)
        writer.writeheader()
        writer.writerows(molecule(i, rng) for i in range(n))
    return folder


def test_molecules_parse_into_padded_tensors_with_pyg_units(tmp_path):
    inputs, targets = qm9.load(write_qm9(tmp_path / "csv"), tmp_path / "root")
    assert inputs.shape == (24, qm9.MAX_ATOMS, qm9.COLUMNS) and targets.shape == (24, 11)
    ch4 = inputs[0]
    assert ch4[:, qm9.MASK].tolist() == [1.0] * 5 + [0.0] * 24
    assert ch4[:5, :6].tolist() == [[0, 1, 0, 0, 0, 6]] + [[1, 0, 0, 0, 0, 1]] * 4
    assert ch4[:5, 6:8].tolist() == [[4, 4]] + [[0, 1]] * 4  # bonded H, bonded atoms
    assert ch4[5:].abs().sum() == 0
    reference = (-37.846772 + 4 * -0.500273) * qm9.HARTREE_EV  # QM9's atomref, Hartree
    assert targets[0, 6].item() == pytest.approx(-40.47893 * qm9.HARTREE_EV - reference)
    # PyG's U0_atom of methane: gdb9.sdf.csv's u0_atom (kcal/mol) × its KCALMOL2EV
    assert targets[0, 6].item() == pytest.approx(-395.999594 * 0.04336414, abs=1e-5)
    assert targets[0, 2].item() == pytest.approx(-0.3877 * qm9.HARTREE_EV)  # HOMO, eV
    assert targets[0, 10].item() == pytest.approx(6.469)  # c_v as given
    cached = list((tmp_path / "root" / "QM9").glob("*.pt"))
    assert len(cached) == 1
    again = qm9.load(tmp_path / "csv", tmp_path / "root")  # from the cache
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)


def test_the_split_is_standardised_by_the_training_mean_and_std(tmp_path):
    folder = write_qm9(tmp_path / "csv")
    data = qm9.build({t: ["mse"] for t in qm9.TARGETS}, tasks=["homo", "cv"], root=str(tmp_path),
                     source=str(folder), n_val=4, n_test=5, split_seed=3)  # fmt: skip
    assert (len(data.train), len(data.validation), len(data.test)) == (15, 4, 5)
    _, targets = qm9.load(folder, tmp_path)
    test, _, train = qm9.split_rows(24, None, 4, 5, 3)
    homo = targets[:, 2]
    std = homo[train].std()
    assert data.tasks[0].target_std == pytest.approx(std.item())
    expected = (homo[test] - homo[train].mean()) / std
    assert torch.allclose(data.test.targets["homo"][:, 0].double(), expected, atol=1e-6)
    assert [t.name for t in data.tasks] == ["homo", "cv"]


def test_mae_in_the_original_units_against_a_hand_computation():
    task = TaskSpec("homo", "regression", 1, ("mse",), target_std=2.0)
    metrics = TaskMetrics([task])
    out = torch.tensor([[0.5], [-1.0], [2.0]])
    y = torch.tensor([[0.0], [1.0], [2.5]])
    metrics.update({"homo": out}, Split(out, {"homo": y}))
    scores = metrics.compute()
    assert scores["homo/mae"] == pytest.approx(2.0 * (0.5 + 2.0 + 0.5) / 3)
    assert scores["homo/rmse"] == pytest.approx(2.0 * math.sqrt((0.25 + 4 + 0.25) / 3))
    assert list(scores) == ["homo/mae", "homo/rmse", "homo/mse"]  # mae: the main metric


def test_a_heteroscedastic_heads_nll_and_rmse_are_in_the_original_units():
    """y = 2·z (std 2): rmse doubles, and the density of y is that of z over 2: nll + log 2."""
    task = TaskSpec("homo", "regression", 1, ("gaussian_nll",), True, target_std=2.0)
    metrics = TaskMetrics([task])
    out = MeanLogVar(torch.tensor([[0.5], [-1.0]]), torch.tensor([[0.0], [math.log(4.0)]]))
    y = torch.tensor([[0.0], [1.0]])
    metrics.update({"homo": out}, Split(y, {"homo": y}))
    scores = metrics.compute()
    nll = [0.5 * (math.log(2 * math.pi) + 0.25), 0.5 * (math.log(8 * math.pi) + 1.0)]
    assert scores["homo/nll"] == pytest.approx(sum(nll) / 2 + math.log(2.0))
    assert scores["homo/rmse"] == pytest.approx(2.0 * math.sqrt((0.25 + 4) / 2))


def random_molecules(n_atoms: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(n_atoms), qm9.MAX_ATOMS, qm9.COLUMNS)
    for b, n in enumerate(n_atoms):
        element = torch.randint(0, 5, (n,), generator=g)
        x[b, torch.arange(n), element] = 1.0
        x[b, :n, 5:8] = torch.rand(n, 3, generator=g) * 4
        x[b, :n, qm9.RADIUS] = torch.tensor(qm9.COVALENT_RADIUS)[element]
        x[b, :n, qm9.XYZ] = torch.randn(n, 3, generator=g)
        x[b, :n, qm9.MASK] = 1.0
    return x


def per_edge(conv: EdgeConv, h: torch.Tensor, e: torch.Tensor, edges: torch.Tensor):
    """EdgeConv's output with Θ(e_ij) made for every pair: root(h_i) + mean over edges j of
    Θ(e_ij)ᵀh_j."""
    theta = conv.theta(conv.edge_net(e)).unflatten(-1, (conv.dim, conv.dim))
    messages = torch.einsum("bjc,bijck->bijk", h, theta) * edges.unsqueeze(-1)
    degree = edges.sum(-1, keepdim=True).clamp_min(1)
    return conv.root(h) + messages.sum(2) / degree


def test_the_dense_edge_network_equals_the_per_edge_one():
    torch.manual_seed(0)
    conv = EdgeConv(dim=5, edge_hidden=7).double()
    x = random_molecules([4, 6]).double()
    e, edges = edge_features(x)
    h = torch.randn(2, qm9.MAX_ATOMS, 5, dtype=torch.float64)
    fast = conv(h, conv.edge_net(e) * edges.unsqueeze(-1), edges)
    assert torch.allclose(fast, per_edge(conv, h, e, edges), atol=1e-10)


def test_the_written_out_recurrent_cells_are_torchs():
    torch.manual_seed(0)
    gru, lstm = torch.nn.GRUCell(3, 4), torch.nn.LSTMCell(3, 4)
    x, h, c = torch.randn(5, 3), torch.randn(5, 4), torch.randn(5, 4)
    assert torch.allclose(gru_step(gru, x, h), gru(x, h), atol=1e-6)
    for mine, torchs in zip(lstm_step(lstm, x, (h, c)), lstm(x, (h, c)), strict=True):
        assert torch.allclose(mine, torchs, atol=1e-6)


def test_the_encoder_ignores_padding_and_the_order_of_atoms():
    torch.manual_seed(0)
    encoder = MPNNEncoder(dim=6, edge_hidden=5).double().eval()
    x = random_molecules([5, 3]).double()
    z = encoder(x)
    garbage = x.clone()
    garbage[0, 5:, : qm9.MASK] = torch.randn(qm9.MAX_ATOMS - 5, qm9.MASK, dtype=torch.float64)
    assert torch.allclose(encoder(garbage), z, atol=1e-10)  # padding rows are not read
    permuted = x.clone()
    permuted[0, :5] = x[0, torch.tensor([3, 0, 4, 1, 2])]
    assert torch.allclose(encoder(permuted), z, atol=1e-10)
    assert not torch.allclose(z[0], z[1])  # and it does read the molecule


def test_a_short_qm9_run_reports_every_target_in_its_units(tmp_path):
    folder = write_qm9(tmp_path / "csv")
    done = run_cli(
        ["dataset=qm9", f"dataset.source={folder}", f"dataset.root={tmp_path}", "dataset.n_val=4",
         "dataset.n_test=4", "model.encoder.dim=8", "model.encoder.edge_hidden=8",
         "trainer.epochs=1", "trainer.batch_size=8", "weighting=fixed", "logger=[]",
         "trainer.progress=false", f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for task in qm9.TARGETS:
        assert results["metrics"][f"test/{task}/mae"] >= 0
        assert f"validation/{task}/mae" in results["metrics"]


def test_without_qm9pack_one_line_says_what_to_install(tmp_path, monkeypatch):
    find_spec = qm9.importlib.util.find_spec
    monkeypatch.setattr(
        qm9.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "qm9pack" else find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match=r'pip install "mtltrain\[qm9\]"'):
        qm9.build({"mu": ["mse"]}, tasks=["mu"], root=str(tmp_path))
    with pytest.raises(ConfigError, match=r"dataset.source=.* holds no qm9_part\*.csv"):
        qm9.build({"mu": ["mse"]}, tasks=["mu"], root=str(tmp_path), source=str(tmp_path))
    done = run_cli(["dataset=qm9", f"dataset.root={tmp_path}", "trainer.epochs=1",
                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip() == f"mtltrain: error: {qm9.INSTALL}"  # one line, no traceback


def test_csv_files_that_are_not_qm9packs_are_one_line_naming_the_folder(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "qm9_part1.csv").write_text("a,b\n1,2\n")
    with pytest.raises(
        DataError, match=r"dataset.source=.*csv is not allowed: .* not qm9pack"
    ) as e:
        qm9.build({"mu": ["mse"]}, tasks=["mu"], root=str(tmp_path), source=str(folder))
    assert "\n" not in str(e.value)
    write_qm9(folder)  # qm9pack's columns, but an atom no element letter names
    text = (folder / "qm9_part1.csv").read_text().replace("'C'", "'Q'", 1)
    (folder / "qm9_part1.csv").write_text(text)
    with pytest.raises(DataError, match="not qm9pack's"):
        qm9.build({"mu": ["mse"]}, tasks=["mu"], root=str(tmp_path), source=str(folder))
