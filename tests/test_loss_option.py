"""`optim.loss`: Cohen et al. 2021's square loss (mse) beside the default cross-entropy, the one loss
that training, evaluation and the checkpoint analyses share (`models.loss_fn`).

A tiny MLP on 8x8 synthetic images trains in about a second; the checks are against values
computed here by hand or with torch's own cross-entropy, not through `loss_fn`.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from helpers import assert_default_key_trains_as_absent

from bnstudy.data.batches import BatchSampler, InputTransform
from bnstudy.configure import load_config
from bnstudy.data.datasets import load_prepared, prepare
from bnstudy.errors import ConfigError
from bnstudy.models.networks import build_model, loss_fn
from bnstudy.config.plan import plan
from bnstudy.config.spec import RunSpec
from bnstudy.train.loop import train

CLASSES = 3


def quiet(msg):
    pass


def make_config(results, mlp_optim: dict | None = None, dln_optim: dict | None = None) -> dict:
    """A classification setup (mlp) and a regression one (dln), each with `*_optim` merged into
    its optim block (nothing merged = the key absent, as in every config before optim.loss)."""
    return load_config({
        "results": str(results),
        "tracking": {"enabled": False},
        "datasets": {
            "tiny": {"source": "synthetic", "n_train": 48, "n_test": 12, "image_size": 8, "channels": 1,
                     "classes": CLASSES},
            "gauss": {"source": "gaussian", "n_train": 32, "n_test": 8, "dim": 4},
        },
        "setups": {
            "mlp": {"dataset": "tiny", "model": {"arch": "mlp", "hidden": [6, 6]},
                    "optim": {"steps": 4, "batch_size": 16, **(mlp_optim or {})},
                    "checkpoints": {"dense_until": 4, "dense_every": 2, "every": 4},
                    "log": {"eval_every": 2, "layers_every": 2, "eval_samples": 24, "units": 2}},
            "dln": {"dataset": "gauss", "model": {"arch": "dln", "depth": 3},
                    "optim": {"steps": 4, "batch_size": None, **(dln_optim or {})}},
        },
        "studies": {
            "mlp": {"setup": "mlp", "variants": ["batchnorm"], "lrs": [0.1], "seeds": [0]},
            "dln": {"setup": "dln", "variants": ["batchnorm"], "lrs": [1e-3], "seeds": [0]},
        },
    })


def run_of(config: dict, arch: str) -> RunSpec:
    """The study's one run, its dataset prepared."""
    spec = next(s for s in plan(config).runs.values() if s.model.arch == arch)
    prepare(config["datasets"][spec.dataset.name], spec.dataset.name, spec.dataset.path)
    return spec


def half_square(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cohen et al.'s square loss written out: 1/2 sum_c (f_c - [c = y])^2, mean over samples."""
    target = torch.zeros_like(out)
    target[torch.arange(len(y)), y] = 1.0
    return 0.5 * ((out - target) ** 2).sum(dim=1).mean()


def test_mse_is_cohens_half_square_loss_on_one_hot_targets(tmp_path):
    """Two samples, three classes, by hand: sample 1 misses by (1, 1, 0), sample 2 by
    (0.5, -1, 2): 1/2 (1 + 1) = 1 and 1/2 (0.25 + 1 + 4) = 2.625; mean 1.8125, sum 3.625."""
    spec = run_of(make_config(tmp_path, {"loss": "mse"}), "mlp")
    assert spec.optim.loss == "mse" and spec.optim.loss_reduction == "mean"
    out = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    y = torch.tensor([1, 2])
    assert loss_fn(spec)(out, y).item() == pytest.approx(1.8125, rel=1e-7)
    summed = spec.updated({"optim.loss_reduction": "sum"})
    assert loss_fn(summed)(out, y).item() == pytest.approx(3.625, rel=1e-7)
    # differentiable in float64 too (the analyses' dtype for exact Hessians)
    out64 = out.double().requires_grad_(True)
    loss_fn(spec)(out64, y).backward()
    assert torch.allclose(out64.grad, (out64.detach() - torch.eye(3, dtype=torch.float64)[y]) / 2)


@pytest.mark.parametrize("value", ["bogus", "MSE", 1])
def test_an_unknown_loss_is_a_config_error_naming_the_key(tmp_path, value):
    with pytest.raises(ConfigError, match=r"setups\.mlp\.optim\.loss") as err:
        make_config(tmp_path, {"loss": value})
    assert "cross_entropy" in str(err.value) and "mse" in str(err.value)


def test_cross_entropy_default_keeps_run_ids_and_training_numbers(tmp_path):
    """Runs planned before optim.loss existed keep their ids, and the spec JSON (checkpoints,
    spec.json) holds no loss key; the loss is torch's cross-entropy bit for bit, and a run whose
    spec says cross_entropy explicitly trains to the very numbers of one whose spec lacks it."""
    absent = run_of(make_config(tmp_path / "a"), "mlp")
    explicit = run_of(make_config(tmp_path / "a", {"loss": "cross_entropy"}), "mlp")
    assert explicit.run == absent.run and explicit.to_dict() == absent.to_dict()
    assert "loss" not in absent.to_dict()["optim"] and absent.optim.loss == "cross_entropy"

    out, y = torch.randn(5, CLASSES, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1])
    assert torch.equal(loss_fn(absent)(out, y), torch.nn.functional.cross_entropy(out, y))

    # what a checkpoint of an earlier version holds (no optim.loss) trains as the key at its default
    assert_default_key_trains_as_absent(absent, "optim", "loss", "cross_entropy", tmp_path)


def test_mse_is_the_loss_training_and_evaluation_use(tmp_path):
    """With optim.loss: mse the run is another run (its own id), the training-mode loss of step 0
    is the square loss of the initial network on batch 0, and the evaluation's loss at step 0 is
    the square loss of the initial network in eval mode; accuracy stays the argmax."""
    ce = run_of(make_config(tmp_path), "mlp")
    spec = run_of(make_config(tmp_path, {"loss": "mse"}), "mlp")
    assert spec.run != ce.run and spec.to_dict()["optim"]["loss"] == "mse"
    train(spec, tmp_path / "run", log=quiet)

    data = load_prepared(spec.dataset.path)
    transform = InputTransform(data.meta, torch.device("cpu"))
    idx = BatchSampler(data.train_x.shape[0], spec.optim.batch_size, spec.seed).indices(0)
    x, y = transform(data.train_x[:spec.log.eval_samples]), data.train_y[:spec.log.eval_samples]
    with torch.no_grad():  # two fresh networks: a training-mode forward moves the running statistics
        first = half_square(build_model(spec).train()(transform(data.train_x[idx])), data.train_y[idx]).item()
        out = build_model(spec).eval()(x)
    rows = pd.read_csv(tmp_path / "run" / "train.csv")
    assert rows.loc[rows.step == 0, "loss"].item() == pytest.approx(first, rel=1e-5)
    evals = pd.read_csv(tmp_path / "run" / "eval.csv")
    at_init = evals[(evals.step == 0) & (evals.split == "train")].iloc[0]
    assert at_init["loss"] == pytest.approx(half_square(out, y).item(), rel=1e-5)
    assert at_init["accuracy"] == pytest.approx((out.argmax(1) == y).float().mean().item())


def test_a_regression_task_keeps_its_squared_error_and_ignores_the_key(tmp_path):
    """The DLN's loss is its own summed squared error whatever optim.loss says: the key is left
    out of its spec, so its run (id and numbers) is the run without the key."""
    plain = run_of(make_config(tmp_path), "dln")
    with_mse = run_of(make_config(tmp_path, dln_optim={"loss": "mse"}), "dln")
    assert with_mse.run == plain.run and "loss" not in with_mse.to_dict()["optim"]
    out, target = torch.tensor([[1.0, 2.0], [0.0, -1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert loss_fn(with_mse)(out, target).item() == pytest.approx(1 + 4 + 1 + 4)
