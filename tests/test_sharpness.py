"""The sharpness analysis (bnstudy.analysis.sharpness): Cohen et al. 2021's largest Hessian
eigenvalue, against the exact float64 Hessian of tiny networks, within its product budget; and
through the analysis job on an `optim.loss: mse` run, whose loss the Hessian must be of."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from bnstudy.analysis import sharpness
from bnstudy.analysis.functional import Objective, Origin, origin_state
from bnstudy.analysis.run import AnalysisJob, analyze
from bnstudy.data.batches import analysis_batches
from bnstudy.train.checkpoint import checkpoint_path, save_checkpoint
from bnstudy.configure import load_config
from bnstudy.data.datasets import load_prepared, prepare
from bnstudy.errors import ConfigError
from bnstudy.models.networks import build_model
from bnstudy.config.plan import plan
from bnstudy.files import ANALYSIS_TABLES

from test_analysis_math import (BNMLP, flat_hessian, half_squared_error,
                               float64)  # noqa: F401  (float64: the autouse fixture, every tensor float64)

# the catalog's defaults (test_defaults_are_the_catalogs): what a study's `sharpness: {}` gets
DEFAULTS = {"tol": 1e-3, "max_products": 40, "seed": 0, "bn_mode": "batch"}


@pytest.fixture
def bn_mlp():
    """A wider BatchNorm MLP than test_analysis_math's (242 parameters, so that ARPACK's 20 Lanczos
    vectors span a small part of the space) in training mode, its objective on one batch of 32
    and its parameters."""
    gen = torch.Generator().manual_seed(11)
    model = BNMLP(gen, width=8).train()
    data = [(torch.randn(32, 3, generator=gen), torch.randn(32, 2, generator=gen))]
    params, buffers = origin_state(model)
    return Objective(model, buffers, half_squared_error, data), params


def sharpness_row(obj, params, **settings) -> dict:
    (row,) = sharpness.compute(Origin(obj, params, [], None, {"lr": 0.1}), dict(DEFAULTS, **settings))
    return row


def test_defaults_are_the_catalogs():
    from bnstudy.config.catalog import ANALYSES

    record = ANALYSES["sharpness"]
    assert {k: v["default"] for k, v in record.settings.items()} == {
        k: DEFAULTS[k] for k in ("tol", "max_products", "bn_mode")}
    assert record.columns == ("step", "bn_mode", "sharpness", "residual", "converged", "products", "samples")


def test_sharpness_is_the_largest_eigenvalue_of_the_dense_hessian(bn_mlp):
    """At the default settings: within the tolerance of the exact float64 Hessian's largest
    eigenvalue, converged, at most max_products products (the residual check included)."""
    obj, params = bn_mlp
    h, _ = flat_hessian(obj, params)
    exact = torch.linalg.eigvalsh(h)
    assert h.shape[0] == 242 and exact[0] < 0 < exact[-1]
    row = sharpness_row(obj, params)
    assert row["converged"] is True and row["residual"] <= DEFAULTS["tol"]
    assert row["sharpness"] == pytest.approx(exact[-1].item(), rel=DEFAULTS["tol"])
    assert row["products"] <= DEFAULTS["max_products"]
    assert row["samples"] == 32 and row["bn_mode"] == "batch"
    tight = sharpness_row(obj, params, tol=1e-10, max_products=200)
    assert tight["sharpness"] == pytest.approx(exact[-1].item(), abs=1e-8) and tight["products"] <= 200


@pytest.mark.parametrize("max_products", [22, 30, 40])
def test_the_budget_holds_and_an_unconverged_search_says_so(bn_mlp, max_products):
    """A tolerance too tight for the smaller budgets (22 and 30 run out here): never more products
    than max_products, and a search that ran out says converged false with sharpness NaN rather
    than an unconverged guess."""
    obj, params = bn_mlp
    row = sharpness_row(obj, params, tol=1e-15, max_products=max_products)
    assert row["products"] <= max_products
    if not row["converged"]:
        assert math.isnan(row["sharpness"])


def test_sharpness_is_the_mse_loss_through_the_analysis_job(tmp_path):
    """A study's `sharpness: {}` block on an optim.loss: mse run: the job writes the table with the
    catalog's columns, and the sharpness is the largest eigenvalue of the dense Hessian of Cohen
    et al.'s square loss 1/2 ||f(x) - onehot(y)||^2 (mean over the analysis batch), computed here
    without models.loss_fn, of the network in training mode (batch statistics)."""
    config = load_config({
        "results": str(tmp_path / "results"),
        "tracking": {"enabled": False},
        "datasets": {"tiny": {"source": "synthetic", "n_train": 48, "n_test": 12, "image_size": 8,
                              "channels": 1, "classes": 3}},
        "setups": {"mlp": {"dataset": "tiny", "model": {"arch": "mlp", "hidden": [3, 3]},
                           "optim": {"steps": 4, "batch_size": 16, "loss": "mse"}}},
        "studies": {"eos": {"setup": "mlp", "variants": ["batchnorm"], "lrs": [0.1], "seeds": [0],
                            "sharpness": {"batch_size": 24, "dtype": "float64"}}},
    })
    p = plan(config)
    (spec,) = p.runs.values()
    settings = p.analysis_settings[p.study_analyses["eos"]["sharpness"]]
    assert {k: settings[k] for k in ("tol", "max_products", "bn_mode")} == {
        k: DEFAULTS[k] for k in ("tol", "max_products", "bn_mode")}
    prepare(config["datasets"]["tiny"], "tiny", spec.dataset.path)
    model = build_model(spec)
    run_dir = tmp_path / spec.run
    path = checkpoint_path(run_dir, 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=spec.optim.lr)
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 0,
                           "spec": spec.to_dict()})
    (run_dir / "summary.json").write_text(json.dumps({"run": spec.run, "checkpoints": [{"step": 0, "path": str(path)}]}))

    (table,) = analyze([AnalysisJob("sharpness", "t", settings)], run_dir, tmp_path / "out")
    rows = pd.read_csv(table)
    assert list(rows.columns) == ANALYSIS_TABLES["sharpness"] and len(rows) == 1
    row = rows.iloc[0]
    assert row["step"] == 0 and row["samples"] == 24 and bool(row["converged"])
    assert row["products"] <= settings["max_products"]

    (x, y), = analysis_batches(load_prepared(spec.dataset.path), 24, 1, settings["seed"], "cpu")
    net = build_model(spec, noise=False).double().train()
    params, buffers = origin_state(net)
    target = torch.nn.functional.one_hot(y, 3).double()

    def square_loss(out, _):
        return 0.5 * (out - target).pow(2).sum(dim=1).mean()

    h, _ = flat_hessian(Objective(net, buffers, square_loss, [(x.double(), y)]), params)
    assert row["sharpness"] == pytest.approx(torch.linalg.eigvalsh(h)[-1].item(), rel=settings["tol"])


def test_a_budget_below_arpacks_first_answer_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"studies\.eos\.sharpness\.max_products"):
        load_config({
            "results": str(tmp_path / "results"),
            "datasets": {"tiny": {"source": "synthetic", "n_train": 48, "n_test": 12, "image_size": 8,
                                  "channels": 1, "classes": 3}},
            "setups": {"mlp": {"dataset": "tiny", "model": {"arch": "mlp"}, "optim": {"steps": 4}}},
            "studies": {"eos": {"setup": "mlp", "variants": ["batchnorm"], "lrs": [0.1], "seeds": [0],
                                "sharpness": {"max_products": 21}}},
        })
