"""The Hessian of the loss on a stated number of samples (several analysis batches), the spectrum and
density analyses in both normaliser modes, and the per-eigenvalue convergence flags (Ghorbani,
Krishnan & Xiao 2019; ../shared/PAPER.md section 4), on tiny float64 networks.

- Several batches: H v is the mean of per-batch products. Where the loss on the concatenated batches
  is the mean of the per-batch losses (no batch statistics: a network without BatchNorm, or a BN
  network on its running statistics) it must equal the product on the concatenation, and the
  gradient (for the gradient share) must be that of the same loss. That one batch's graph at a time
  is alive is a property of memory, not of numbers, and is not asserted here.
- bn_mode ["batch", "running"]: rows in each mode, each equal to what an origin built in that mode
  gives, with the live model untouched.
- converged per row is residual <= tol.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from bnstudy.analysis import density, spectrum
from bnstudy.analysis.functional import Objective, Origin, bn_modes, origin_state
from bnstudy.analysis.hessian import Flat, Hessian

from test_analysis_math import (BNMLP, assert_unchanged, bn_setup, float64, half_squared_error,  # noqa: F401
                                snapshot)  # float64: the autouse fixture, every tensor float64

SPECTRUM = {"top_k": 3, "smallest": True, "trace_probes": 2, "tol": 1e-10, "max_products": 2000, "seed": 0,
            "noise": False}


class TanhMLP(nn.Module):
    """A network without normaliser: its loss on a concatenation is the mean of the batch losses."""

    def __init__(self, gen):
        super().__init__()
        self.l1, self.l2 = nn.Linear(3, 6), nn.Linear(6, 2)
        for p in self.parameters():
            p.data = 0.8 * torch.randn(p.shape, generator=gen)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


def trained_looking_bn(gen):
    """A BN network whose running statistics differ from any batch's (as after training on data
    with another mean and scale), so the two modes are different functions."""
    model = BNMLP(gen).train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(16, 3, generator=gen) * 2 + 1)
    return model


def objectives(model, statistics, gen, batches=3, size=16):
    """(objective on `batches` batches, objective on their concatenation as one batch)."""
    data = [(torch.randn(size, 3, generator=gen), torch.randn(size, 2, generator=gen)) for _ in range(batches)]
    joined = [(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))]
    _, buffers = origin_state(model)
    return (Objective(model, buffers, half_squared_error, data, statistics=statistics),
            Objective(model, buffers, half_squared_error, joined, statistics=statistics))


def relative_error(a, b, flat):
    a, b = flat.flatten(a), flat.flatten(b)
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize("case", ["no normaliser", "bn running statistics"])
def test_mean_of_per_batch_products_is_the_product_on_the_concatenated_batches(case):
    gen = torch.Generator().manual_seed(3)
    if case == "no normaliser":
        model, statistics = TanhMLP(gen).train(), "batch"
    else:
        model, statistics = trained_looking_bn(gen).eval(), "running"
    before = snapshot(model)
    params, _ = origin_state(model)
    several, joined = objectives(model, statistics, gen)
    h_several, h_joined = Hessian(several, params), Hessian(joined, params)
    assert h_several.samples == h_joined.samples == 48
    flat = Flat(h_joined)
    for i in range(3):
        v = flat.unflatten(flat.draw(100 + i))
        assert relative_error(h_several(v), h_joined(v), flat) < 1e-8
        # not the product of one batch: the mean over all of them
        single = Hessian(Objective(model, several.buffers, half_squared_error, several.batches[:1],
                                   statistics=statistics), params)
        assert relative_error(single(v), h_joined(v), flat) > 1e-3
    assert relative_error(h_several.gradient, h_joined.gradient, flat) < 1e-8
    assert h_several.products == 3
    assert_unchanged(model, before)


def test_kept_graphs_give_the_products_of_rebuilt_ones_bit_for_bit(monkeypatch):
    """On a CPU a Hessian of a few batches keeps every batch's graph (one double backward per batch
    and product); above KEEP_GRAPHS_SAMPLES it rebuilds them per product. Same numbers, to the bit."""
    from bnstudy.analysis import hessian

    gen = torch.Generator().manual_seed(7)
    model = trained_looking_bn(gen).train()
    params, _ = origin_state(model)
    several, _ = objectives(model, "batch", gen)
    kept = Hessian(several, params)
    monkeypatch.setattr(hessian, "KEEP_GRAPHS_SAMPLES", 0)
    rebuilt = Hessian(several, params)
    assert kept._graphs is not None and len(kept._graphs) == len(several.batches) > 1
    assert rebuilt._graphs is None
    flat = Flat(kept)
    for i in range(2):
        v = flat.unflatten(flat.draw(200 + i))
        a, b = kept(v), rebuilt(v)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(kept.gradient[k], rebuilt.gradient[k]) for k in kept.gradient)


def test_spectrum_and_density_on_several_batches_are_those_of_their_mean_loss():
    """Eigenvalues, the gradient share (the gradient of the same loss) and the quadrature on three
    batches equal those on their concatenation; the tables say on how many samples."""
    gen = torch.Generator().manual_seed(5)
    model = TanhMLP(gen).train()
    params, _ = origin_state(model)
    several, joined = objectives(model, "batch", gen)
    settings = dict(SPECTRUM, bn_mode="batch")
    rows = spectrum.compute(Origin(several, params, [], None, {"lr": 0.1}), settings)
    expected = spectrum.compute(Origin(joined, params, [], None, {"lr": 0.1}), settings)
    assert {r["samples"] for r in rows} == {48}
    for key in ("eigenvalue", "gradient_share", "trace"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in expected], rel=1e-8, nan_ok=True), key
    quadrature = density.compute(Origin(several, params, [], None, {"lr": 0.1}),
                                 {"lanczos_steps": 6, "starts": 2, "seed": 1, "bn_mode": "batch"})
    reference = density.compute(Origin(joined, params, [], None, {"lr": 0.1}),
                                {"lanczos_steps": 6, "starts": 2, "seed": 1, "bn_mode": "batch"})
    assert {r["samples"] for r in quadrature} == {48}
    assert [r["node"] for r in quadrature] == pytest.approx([r["node"] for r in reference], rel=1e-8, abs=1e-10)


def running_origin(model, obj, params):
    """The origin run.prepare_model would build for bn_mode "running": an eval-mode model."""
    eval_model = copy.deepcopy(model).eval()
    return Origin(Objective(eval_model, obj.buffers, half_squared_error, obj.batches, statistics="running"),
                  params, [], None, {"lr": 0.1})


@pytest.mark.parametrize("first", ["batch", "running"])
def test_a_list_of_modes_gives_each_modes_rows_from_a_fresh_origin(first):
    """bn_mode [first, other]: the run builds the origin in the first mode (run.statistics), the
    analysis derives the other; each mode's rows are those of an origin built in that mode, the two
    differ (running statistics that are not the batch's), and the live model is untouched."""
    gen = torch.Generator().manual_seed(11)
    model = trained_looking_bn(gen)
    data = [(torch.randn(32, 3, generator=gen), torch.randn(32, 2, generator=gen))]
    params, buffers = origin_state(model)
    batch_origin = Origin(Objective(model, buffers, half_squared_error, data), params, [], None, {"lr": 0.1})
    by_mode = {"batch": batch_origin, "running": running_origin(model, batch_origin.objective, params)}
    modes = [first, "running" if first == "batch" else "batch"]
    live = by_mode[first].objective.model
    before, flags = snapshot(live), [m.training for m in live.modules()]

    rows = spectrum.compute(by_mode[first], dict(SPECTRUM, bn_mode=modes))
    assert [r["bn_mode"] for r in rows] == [modes[0]] * 4 + [modes[1]] * 4
    for mode in modes:
        alone = spectrum.compute(by_mode[mode], dict(SPECTRUM, bn_mode=mode))
        mine = [r for r in rows if r["bn_mode"] == mode]
        assert [r["rank"] for r in mine] == [1, 2, 3, -1]
        for key in ("eigenvalue", "gradient_share", "trace"):
            assert [r[key] for r in mine] == pytest.approx([r[key] for r in alone], rel=1e-10, nan_ok=True)
    top = {r["bn_mode"]: r["eigenvalue"] for r in rows if r["rank"] == 1}
    assert abs(top["batch"] - top["running"]) > 1e-2 * abs(top["batch"])

    quadrature = density.compute(by_mode[first], {"lanczos_steps": 5, "starts": 1, "seed": 0, "bn_mode": modes})
    nodes = {mode: [r["node"] for r in quadrature if r["bn_mode"] == mode] for mode in modes}
    assert len(nodes["batch"]) == len(nodes["running"]) == 5
    assert max(abs(a - b) for a, b in zip(sorted(nodes["batch"]), sorted(nodes["running"]))) > 1e-3
    assert {r["samples"] for r in quadrature} == {32}

    assert_unchanged(live, before)
    assert [m.training for m in live.modules()] == flags


def test_bn_mode_reads_a_string_or_a_list():
    assert bn_modes({}) == ["batch"]
    assert bn_modes({"bn_mode": "running"}) == ["running"]
    assert bn_modes({"bn_mode": ["running", "batch"]}) == ["running", "batch"]


def test_each_eigenvalue_row_is_converged_by_its_own_residual():
    """A search that runs out of products with 6 of its 8 eigenpairs found: those rows are
    converged (residual <= tol), the others not, where one flag for the call would say false for
    all; the smallest eigenvalue has its own search and flag."""
    _, obj, params = bn_setup(torch.Generator().manual_seed(7))
    rows = spectrum.compute(Origin(obj, params, [], None, {"lr": 0.1}),
                            dict(SPECTRUM, top_k=8, tol=1e-10, max_products=40, trace_probes=0, bn_mode="batch"))
    for row in rows:
        assert row["converged"] == (row["residual"] <= 1e-10), row
    flags = [r["converged"] for r in rows if r["rank"] >= 1]
    assert any(flags) and not all(flags)
    assert all(math.isnan(r["eigenvalue"]) for r in rows if r["rank"] >= 1 and not r["converged"])
    assert rows[-1]["rank"] == -1 and rows[-1]["converged"]


def test_the_analysis_job_writes_both_modes_and_the_sample_count(tmp_path_factory):
    """End to end through run.analyze on a tiny VGG checkpoint (tests/test_analysis_run's
    harness): bn_mode ["batch", "running"] and 2 batches of 16 give the rows of both modes, each
    with samples = 32, in the table's columns."""
    import pandas as pd

    from bnstudy.analysis.run import AnalysisJob, analyze
    from bnstudy.config.catalog import ANALYSES
    from bnstudy.config.plan import plan
    from test_analysis_run import make_config, settings_for, write_run

    root = tmp_path_factory.mktemp("modes")
    config = make_config(str(root / "results"))
    p = plan(config)
    spec = next(s for s in p.runs.values() if s.norm.variant == "batchnorm" and s.model.arch == "vgg")
    run_dir = write_run(spec, config, root)
    common = {k: v for k, v in settings_for(p, "vgg", "curvature").items() if k not in ("tol", "max_products")}
    settings = dict(common, steps=[1], batches=2, top_k=2, smallest=False, trace_probes=0, tol=1e-2,
                    max_products=60, bn_mode=["batch", "running"], dtype="float64")
    (table,) = analyze([AnalysisJob("spectrum", "modes", settings)], run_dir, root / "out")
    frame = pd.read_csv(table)
    assert list(frame.columns) == list(ANALYSES["spectrum"].columns)
    assert list(frame["bn_mode"]) == ["batch", "batch", "running", "running"]
    assert set(frame["samples"]) == {32} and frame["eigenvalue"].notna().all()
    top = frame[frame["rank"] == 1].set_index("bn_mode")["eigenvalue"]
    assert top["batch"] != top["running"]
