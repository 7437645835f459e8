"""The speed settings change nothing beyond floating-point noise (bf16: beyond bf16's)."""

import platform

import pytest
import torch
from conftest import make_config

from mtltrain.build import build_job
from mtltrain.loop._job_step import PerJobStep
from mtltrain.loop._runtime import keep_host_memory, optimizer_factory

PLAIN = [
    "trainer.channels_last=false",
    "trainer.fused_optimizer=false",
    "trainer.keep_host_memory=false",
]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def loss_curve(overrides, device="cpu"):
    """Total loss of every step of the first epoch, and the final parameters."""
    job = build_job(make_config([*overrides, f"trainer.device={device}"]))
    split = job.train_split.shuffled(job.generator)
    step = PerJobStep(job).train_step
    curve = [step(b).total.item() for b in split.batches(job.batch_size)]
    params = [p.detach().flatten().cpu() for p in job.model.parameters()]
    return torch.tensor(curve), torch.cat(params)


MNIST = ["dataset=mnist_mtl", "dataset.download=false", "trainer.batch_size=16",
         "trainer.optimizer.lr=1e-3"]  # fmt: skip


@pytest.mark.parametrize("data", ["two_slope", "mnist", "mnist mgda", "mnist mgda_ub"])
def test_fast_path_and_plain_path_give_the_same_loss_curve(mnist_root, data):
    """Also for the gradient-based strategies, whose engine writes gradients of its own (in
    the channels-last layout a fused optimizer expects); seg has two loss terms on one head."""
    if data == "two_slope":
        base = ["dataset.n_train=96"]
    else:
        strategy = data.split()[1] if " " in data else "uncertainty"
        base = [*MNIST, f"dataset.root={mnist_root}", f"weighting={strategy}"]
        base.append("dataset.tasks=[cls3,recon,seg]")
    fast, fast_params = loss_curve(base)
    plain, plain_params = loss_curve([*base, *PLAIN])
    assert len(set(fast.tolist())) > 1  # the loss moves
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_params, plain_params, rtol=1e-3, atol=1e-5)


def test_bf16_mixed_precision_stays_close(mnist_root):
    base = [*MNIST, f"dataset.root={mnist_root}"]
    fp32, _ = loss_curve(base)
    bf16, _ = loss_curve([*base, "trainer.precision=bf16"])
    torch.testing.assert_close(bf16, fp32, rtol=0.03, atol=0.0)
    assert not torch.equal(bf16, fp32)  # it did run in bf16


@pytest.mark.slow
def test_compiled_model_gives_the_same_loss_curve():
    eager, _ = loss_curve(["dataset.n_train=96"])
    compiled, _ = loss_curve(["dataset.n_train=96", "trainer.compile=default"])
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_optimizer_gets_fused_or_foreach_when_it_takes_them():
    params = [torch.nn.Parameter(torch.zeros(3))]
    adam = optimizer_factory(torch.optim.Adam, fused=True)(params=params, lr=0.1)
    rmsprop = optimizer_factory(torch.optim.RMSprop, fused=True)(params=params, lr=0.1)
    lbfgs = optimizer_factory(torch.optim.LBFGS, fused=True)(params=params)
    assert adam.defaults["fused"] is True
    assert rmsprop.defaults["foreach"] is True
    assert "fused" not in lbfgs.defaults and "foreach" not in lbfgs.defaults
    plain = optimizer_factory(torch.optim.Adam, fused=False)(params=params)
    assert not plain.defaults["fused"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_host_memory_setting_is_accepted_by_glibc():
    assert keep_host_memory(True) and keep_host_memory(False)


def test_images_go_channels_last(mnist_root):
    job = build_job(make_config([*MNIST, f"dataset.root={mnist_root}"]))
    data = job.data
    assert data.train.inputs.is_contiguous(memory_format=torch.channels_last)
    assert data.train.targets["recon"] is data.train.inputs
    conv = job.model.encoder[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)


@CUDA
@pytest.mark.cuda
def test_cuda_runs_match_the_cpu():
    cpu, _ = loss_curve(["dataset.n_train=96"])
    gpu, _ = loss_curve(["dataset.n_train=96"], device="cuda")
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-4)


@CUDA
@pytest.mark.cuda
def test_cuda_bf16_and_compile_run(mnist_root):
    base = [*MNIST, f"dataset.root={mnist_root}"]
    fp32, _ = loss_curve(base, device="cuda")
    bf16, _ = loss_curve([*base, "trainer.precision=bf16"], device="cuda")
    graphs, _ = loss_curve([*base, "trainer.compile=reduce-overhead"], device="cuda")
    torch.testing.assert_close(bf16, fp32, rtol=0.03, atol=0.0)
    torch.testing.assert_close(graphs, fp32, rtol=1e-3, atol=1e-4)
