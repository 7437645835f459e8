"""Every strategy with every architecture (conf/weighting/ × conf/architecture/, globbed: a new
config of either joins), on a tiny conv model whose stages downsample and then upsample
(1×8×8 inputs, three tasks): at every step the gradients are finite and the contributions sum
to the total, and a run stopped after two steps and resumed from its state ends bit-identical
to the run left alone (two more steps). Then what each architecture is: MTAN's attention
against a hand computation, cross-stitch's mixing and first values, their features and shared
parameters, the refusals.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import json

import pytest
import torch
from conftest import in_process, make_config, run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from test_stacked import SEEDS, check_against_alone
from torch import nn

from mtltrain import evaluate
from mtltrain.build import build_job
from mtltrain.config._compose import config_dir
from mtltrain.data.base import MultiTaskData, Split
from mtltrain.errors import ConfigError
from mtltrain.evaluate import load_exported
from mtltrain.evaluate._export import program_bytes
from mtltrain.loop._callbacks import Callback
from mtltrain.loop._trainer import train_alone
from mtltrain.models.base import stage_channels
from mtltrain.models.cross_stitch import CrossStitch, CrossStitchUnit
from mtltrain.models.mlp import MLP
from mtltrain.models.mtan import MTAN, Attention
from mtltrain.models.resnet import ResNetEncoder
from mtltrain.models.segnet import SegNet
from mtltrain.stacking import unstackable
from mtltrain.tasks import TaskSpec
from mtltrain.weighting.gradnorm import last_shared_layer

CONF = config_dir()
STRATEGIES = sorted(p.stem for p in (CONF / "weighting").glob("*.yaml"))
ARCHITECTURES = sorted(p.stem for p in (CONF / "architecture").glob("*.yaml"))
TASKS = (
    TaskSpec("a", "classification", 3, ("cross_entropy",)),
    TaskSpec("b", "regression", 1, ("mse",)),
    TaskSpec("c", "regression", 1, ("l1",)),
)


class TinyEncoder(nn.Sequential):
    """1×8×8 → 4×4×4 → 4×8×8: a stage that downsamples, then one that upsamples (`Staged`)."""

    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Upsample(scale_factor=2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        )  # fmt: skip

    def stages(self) -> list[nn.Module]:
        layers = list(self)
        return [nn.Sequential(*layers[:3]), nn.Sequential(*layers[3:])]


def tiny_data(seed: int = 0) -> MultiTaskData:
    """16 training and 8 test samples of 1×8×8 noise; targets drawn from the same seed."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        x = torch.randn(n, 1, 8, 8, generator=g)
        mean = x.mean((1, 2, 3))
        return Split(
            x,
            {
                "a": torch.randint(0, 3, (n,), generator=g),
                "b": mean[:, None] + 0.1 * torch.randn(n, 1, generator=g),
                "c": x[:, 0, 0, :1].abs(),
            },
        )

    return MultiTaskData(TASKS, split(16), split(8))


BASE = OmegaConf.create(
    {
        "dataset": {"_target_": f"{__name__}.tiny_data"},
        "model": {
            "_target_": "mtltrain.models.MultiTaskModel",
            "encoder": {"_target_": f"{__name__}.TinyEncoder"},
            "head": {
                "_target_": "mtltrain.models.mlp.MLP",
                "_partial_": True,
                "in_features": 256,
                "flatten": True,
            },
        },
    }
)


@pytest.fixture(scope="module")
def base_config():
    """A run's config composed once (4 steps: 16 samples in batches of 4, one epoch), with the
    tiny data set and model put in."""
    cfg = make_config(
        ["trainer.epochs=1", "trainer.batch_size=4", "trainer.deterministic=true",
         "trainer.threads=1", "trainer.eval_every=1", "logger=[]"]
    )  # fmt: skip
    with open_dict(cfg):
        cfg.dataset, cfg.model = BASE.dataset, BASE.model
    return cfg


@functools.cache
def group_node(group: str, option: str):
    """The node of conf/<group>/<option>.yaml as Hydra composes it (some options extend
    others), composed once."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config_name=f"{group}/{option}")[group]


def config(base, strategy: str, architecture: str):
    """`base` with weighting=<strategy> and architecture=<architecture>."""
    cfg = copy.deepcopy(base)
    with open_dict(cfg):
        cfg.weighting = copy.deepcopy(group_node("weighting", strategy))
        cfg.architecture = copy.deepcopy(group_node("architecture", architecture))
    return cfg


class Contract(Callback):
    """Before every update: finite gradients; contributions that sum to the total. After
    step `keep`: a copy of the job's state (saved to disk and loaded as checkpoints are:
    tests/test_strategy_contract.py)."""

    def __init__(self, keep: int) -> None:
        self.steps, self.keep, self.kept = 0, keep, None

    def on_step_end(self, job, step) -> None:
        if step.number == self.keep:
            self.kept = copy.deepcopy(job.state_dict())

    def allows_update(self, job, step) -> bool:
        assert torch.isfinite(step.parts).all() and torch.isfinite(step.total)
        torch.testing.assert_close(step.parts.sum(), step.total)
        for p in job.model.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
        self.steps += 1
        return True


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_trains_and_resumes_with_every_architecture(
    base_config, strategy, architecture
):
    """Four steps alone, checked at each; the state after two, restored into a fresh job that
    trains the other two, ends bit-identical (a stop by a signal, on the default model:
    tests/test_strategy_contract.py)."""
    cfg = config(base_config, strategy, architecture)
    contract = Contract(keep=2)
    alone = build_job(cfg, extra_callbacks=[contract])
    train_alone(alone)
    assert contract.steps == alone.step == 4
    resumed = build_job(cfg)
    resumed.load_state_dict(contract.kept)
    assert resumed.step == 2
    train_alone(resumed)
    state, again = alone.model.state_dict(), resumed.model.state_dict()
    assert list(state) == list(again)
    for name, value in state.items():
        assert torch.equal(value, again[name]), name
    assert alone.test_metrics == resumed.test_metrics


# -- what each architecture is ---------------------------------------------------------------


def head(out_features: int, in_features: int = 256) -> nn.Module:
    return MLP(in_features, out_features, flatten=True)


def test_mtan_attention_is_the_papers_formula():
    """t = ReLU(BN(conv3×3(a ⊙ s))), a = σ(BN(conv1×1(ReLU(BN(conv1×1([s; pool(t_prev)])))))),
    computed by hand from the module's weights (BN in eval mode: (x − μ)/√(σ² + ε)·γ + β)."""
    torch.manual_seed(0)
    attention = Attention(2, previous_channels=3).eval()
    for bn in (m for m in attention.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    s, previous = torch.randn(1, 2, 2, 2), torch.randn(1, 3, 4, 4)

    def bn(x, m):
        scale = m.weight / torch.sqrt(m.running_var + m.eps)
        return (x - m.running_mean[:, None, None]) * scale[:, None, None] + m.bias[:, None, None]

    def conv1x1(x, m):
        return torch.einsum("oi,nihw->nohw", m.weight[:, :, 0, 0], x) + m.bias[:, None, None]

    pooled = previous.reshape(1, 3, 2, 2, 2, 2).amax((3, 5))  # 2×2 max pooling by hand
    read = torch.cat([s, pooled], 1)
    c1, b1, _, c2, b2, _ = attention.mask
    a = torch.sigmoid(bn(conv1x1(torch.relu(bn(conv1x1(read, c1), b1)), c2), b2))
    conv, bn3, _ = attention.out
    expected = torch.relu(bn(nn.functional.conv2d(a * s, conv.weight, conv.bias, padding=1), bn3))
    torch.testing.assert_close(attention(s, previous), expected)


def test_mtan_features_are_the_shared_stage_outputs_and_only_the_backbone_is_shared():
    torch.manual_seed(0)
    encoder = TinyEncoder()
    model = MTAN(TASKS, encoder, head)
    x = torch.randn(2, 1, 8, 8)
    outputs, features = model(x)
    stage_outputs, h = [], x
    for stage in encoder.stages():
        h = stage(h)
        stage_outputs.append(h)
    assert [f.shape for f in features] == [(2, 4, 4, 4), (2, 4, 8, 8)]
    for f, expected in zip(features, stage_outputs, strict=True):
        torch.testing.assert_close(f, expected)
    assert {k: v.shape for k, v in outputs.items()} == {"a": (2, 3), "b": (2, 1), "c": (2, 1)}
    assert model.shared_parameters() == list(encoder.parameters())
    own = {id(p) for p in model.task_parameters("a")}
    assert own.isdisjoint(id(p) for p in model.shared_parameters())
    assert own.isdisjoint(id(p) for p in model.task_parameters("b"))
    shared = {id(p) for p in model.shared_parameters()}
    assert shared | {id(p) for t in TASKS for p in model.task_parameters(t.name)} == {
        id(p) for p in model.parameters()
    }
    # a task's output depends on its own attention, not another task's
    outputs["a"].sum().backward()
    assert all(p.grad is None for p in model.task_parameters("b"))
    assert last_shared_layer(model) is encoder[4].weight  # GradNorm: the backbone's last conv


@pytest.mark.parametrize("architecture", [MTAN, CrossStitch])
def test_features_are_a_cut_the_shared_gradient_flows_through(architecture):
    """A representation-level strategy's backward pass (the losses' gradients at the features,
    then from the features to the shared parameters) gives the shared parameters' gradient."""
    torch.manual_seed(0)
    model = architecture(TASKS, TinyEncoder(), head)
    outputs, features = model(torch.randn(2, 1, 8, 8))
    loss = sum(o.square().sum() for o in outputs.values())
    shared = model.shared_parameters()
    direct = torch.autograd.grad(loss, shared, retain_graph=True)
    at_features = torch.autograd.grad(loss, features, retain_graph=True)
    through = torch.autograd.grad(features, shared, at_features)
    for a, b in zip(direct, through, strict=True):
        torch.testing.assert_close(a, b)


def test_cross_stitch_mixes_columns_per_channel_from_0_9_and_0_1_split():
    unit = CrossStitchUnit(channels=2, columns=3)
    assert unit.alpha.shape == (2, 3, 3)
    first = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    torch.testing.assert_close(unit.alpha, first.expand(2, 3, 3))
    with torch.no_grad():
        unit.alpha.copy_(torch.randn(2, 3, 3))
    xs = [torch.randn(4, 2, 3, 3) for _ in range(3)]
    mixed = unit(xs)
    for i in range(3):
        for c in range(2):
            expected = sum(unit.alpha[c, i, k] * xs[k][:, c] for k in range(3))
            torch.testing.assert_close(mixed[i][:, c], expected)
    assert torch.equal(CrossStitchUnit(1, 1).alpha, torch.ones(1, 1, 1))


def test_cross_stitch_columns_are_fresh_copies_and_all_shared():
    torch.manual_seed(0)
    encoder = TinyEncoder()
    model = CrossStitch(TASKS, encoder, head)
    first, second, third = model.columns
    assert first is encoder
    assert not torch.equal(first[0].weight, second[0].weight)
    assert not torch.equal(second[0].weight, third[0].weight)
    x = torch.randn(2, 1, 8, 8)
    outputs, features = model(x)
    assert len(features) == 3 and all(f.shape == (2, 4, 8, 8) for f in features)
    torch.testing.assert_close(outputs["b"], model.heads["b"](features[1]))
    shared = model.shared_parameters()
    assert {id(p) for p in shared} == {
        id(p) for p in (*model.columns.parameters(), *model.units.parameters())
    }
    # every task's loss reaches every column
    outputs["c"].sum().backward()
    assert all(column[0].weight.grad.abs().sum() > 0 for column in model.columns)
    assert last_shared_layer(model) is model.units[-1].alpha


@pytest.mark.parametrize("architecture", [MTAN, CrossStitch])
def test_a_backbone_ending_in_a_pooling_stage_is_split_as_celebas_resnet(architecture):
    """ResNetEncoder's last stage (average pooling, flatten) has no layer that sets channels:
    it keeps those of the stage before, so MTAN and cross-stitch build on the CelebA model."""
    torch.manual_seed(0)
    binary = tuple(TaskSpec(n, "binary", 1, ("bce",)) for n in ("x", "y"))
    encoder = ResNetEncoder(width=4, blocks=(1, 1))
    model = architecture(binary, encoder, functools.partial(MLP, in_features=8))
    outputs, _ = model(torch.randn(2, 3, 8, 8))
    assert {name: out.shape for name, out in outputs.items()} == {"x": (2, 1), "y": (2, 1)}
    assert stage_channels(encoder.stages()) == [4, 4, 8, 8]


def test_copies_of_a_backbone_start_as_its_own_initialisation_draws_them():
    """Cross-stitch columns (and experts) of SegNet start Xavier-normal with zero bias, as the
    backbone does, not with PyTorch's default initialisation of each layer."""
    torch.manual_seed(0)
    first, twin = CrossStitch(TASKS[:2], SegNet((8,)), head).columns
    for a, b in zip(first.modules(), twin.modules(), strict=True):
        if isinstance(a, nn.Conv2d):
            assert not torch.equal(a.weight, b.weight) and not b.bias.any()
            xavier = (2 / (a.in_channels * 9 + a.out_channels * 9)) ** 0.5
            assert 0.7 * xavier < b.weight.std() < 1.3 * xavier


def test_an_architecture_refuses_a_model_without_an_encoder_in_one_line(tmp_path):
    result = run_cli(["architecture=mtan", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode != 0
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "MTAN" in line and "SeparateMLPs" in line and "model.encoder" in line
    assert not (tmp_path / "run").exists()


def test_an_architecture_refuses_an_encoder_without_stages(base_config):
    cfg = config(base_config, "equal", "mtan")
    with open_dict(cfg):
        cfg.model.encoder = {"_target_": "torch.nn.Flatten"}
    with pytest.raises(ConfigError, match="architecture mtan is not allowed with the encoder"):
        build_job(cfg)


def test_gradnorm_layer_names_a_shared_parameter(base_config):
    cfg = config(base_config, "gradnorm", "mtan")
    with open_dict(cfg):
        cfg.weighting.layer = "encoder.0.weight"
    job = build_job(cfg)
    assert job.strategy.layer[0] is job.model.encoder[0].weight
    cfg.weighting.layer = "heads.a.1.weight"
    with pytest.raises(ConfigError, match=r"weighting.layer=heads.a.1.weight is not allowed"):
        build_job(cfg)


def test_models_with_batch_norm_do_not_stack(base_config):
    jobs = [build_job(config(base_config, "equal", "mtan")) for _ in range(2)]
    assert "batch norm" in unstackable(jobs)


@pytest.mark.parametrize("architecture", [a for a in ARCHITECTURES if a != "hps"])
def test_an_export_rebuilds_the_architecture_from_its_config(base_config, tmp_path, architecture):
    """mtltrain-export's folder (config.yaml, tasks.json, weights) loads into the architecture
    the run trained: `load_exported` builds through `build.build_model`, as runs and eval do,
    with the input shape export.json records (the gates of the mixtures of experts read it)."""
    cfg = config(base_config, "equal", architecture)
    model = build_job(cfg).model
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    specs = [{**dataclasses.asdict(t), "losses": list(t.losses)} for t in TASKS]
    (tmp_path / "tasks.json").write_text(json.dumps(specs))
    (tmp_path / "export.json").write_text(json.dumps({"input_shape": ["batch", 1, 8, 8]}))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    loaded = load_exported(tmp_path)
    assert type(loaded) is type(model)
    x = torch.randn(3, 1, 8, 8)
    model.eval()
    want, got = model(x)[0], loaded(x)[0]
    for task in want:
        torch.testing.assert_close(got[task], want[task])


@pytest.mark.parametrize("architecture", ["mmoe", "dselect_k"])  # gates per sample (~1.5 s each)
def test_gated_architectures_export_a_program_for_any_batch_size(base_config, architecture):
    """mtltrain-export's torch.export program (batch dimension dynamic) takes the gated
    architectures and gives the model's outputs for a batch size other than the traced one."""
    model = build_job(config(base_config, "equal", architecture)).model.eval()
    program = torch.export.load(io.BytesIO(program_bytes(model, torch.randn(2, 1, 8, 8))))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        want = evaluate.flat_outputs(model(x)[0])
    got = program.module()(x)
    for name in want:
        torch.testing.assert_close(got[name], want[name])


@pytest.mark.slow
def test_an_architectures_run_evaluates_and_exports(tmp_path, mnist_root):
    """The CLI's run, mtltrain-eval and mtltrain-export of an MTAN model on MNIST."""
    args = ["dataset=mnist_mtl", f"dataset.root={mnist_root}", "dataset.download=false",
            "dataset.tasks=[cls3,cls10]", "architecture=mtan", "trainer.epochs=1",
            f"hydra.run.dir={tmp_path}/run"]  # fmt: skip
    assert run_cli(args, cwd=tmp_path).returncode == 0
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert results["choices"]["architecture"] == "mtan"
    assert in_process(evaluate.main, ["mtltrain-eval", str(run)], tmp_path).returncode == 0
    written = json.loads((run / "eval" / "test.json").read_text())["metrics"]
    reported = {k: v for k, v in results["metrics"].items() if k.startswith("test/")}
    assert written == pytest.approx(reported, rel=1e-6, abs=1e-9)
    assert in_process(evaluate.export_main, ["mtltrain-export", str(run), str(tmp_path / "out")],
                      tmp_path).returncode == 0  # fmt: skip
    assert isinstance(load_exported(tmp_path / "out"), MTAN)


@pytest.mark.slow
def test_cross_stitch_stacks_exactly(tmp_path, mnist_root, monkeypatch):
    """Stacked (vmapped) cross-stitch jobs end as they do alone (on a CPU conv models run alone
    for speed: stacked here to check it is exact). MTAN has batch norm: it runs alone."""
    monkeypatch.setattr("mtltrain.stacking._has_convolutions", lambda model: False)
    mnist = ["dataset=mnist_mtl", f"dataset.root={mnist_root}", "dataset.download=false"]
    common = [*mnist, "architecture=cross_stitch", "trainer.epochs=1", "dataset.tasks=[cls3,cls10]"]
    check_against_alone(tmp_path, common, SEEDS[:2])
