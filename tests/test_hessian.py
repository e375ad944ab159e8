"""The Hessian module (bnstudy.analysis.hessian) and the analyses beyond the paper that use it,
against exact answers on tiny float64 networks: Lanczos eigenvalues against the dense Hessian's
eigvalsh, stochastic Lanczos quadrature's weights and moments, Hutchinson's trace, the gradient
share, gradient descent at the edge of stability on a quadratic, and the 2-D surface's
filter-normalised directions."""

from __future__ import annotations

import math

import pytest
import torch

from bnstudy.analysis import density, spectrum, surface
from bnstudy.analysis.functional import Objective, Origin, origin_state
from bnstudy.analysis.hessian import Flat, Hessian, extreme_eigenpairs, hutchinson_trace, slq

from test_analysis_math import (BNMLP, Quadratic, bn_setup, flat_hessian, half_squared_error,
                               float64)  # noqa: F401  (float64: the autouse fixture, every tensor float64)


@pytest.fixture
def bn():
    """A BatchNorm MLP in training mode, its objective, parameters and dense Hessian."""
    gen = torch.Generator().manual_seed(7)
    model, obj, params = bn_setup(gen)
    h, _ = flat_hessian(obj, params)
    return obj, params, h


def origin(obj, params):
    return Origin(obj, params, [], None, {"lr": 0.1})


def test_lanczos_finds_the_k_largest_and_the_smallest_eigenvalues(bn):
    obj, params, h = bn
    exact = torch.linalg.eigvalsh(h)
    hessian = Hessian(obj, params)
    top = extreme_eigenpairs(hessian, 3, "LA", tol=1e-12, budget=2000, seed=0)
    bottom = extreme_eigenpairs(hessian, 1, "SA", tol=1e-12, budget=2000, seed=0)
    assert top["converged"] and bottom["converged"]
    assert top["values"] == pytest.approx(exact.flip(0)[:3].tolist(), abs=1e-8)
    assert bottom["values"][0] == pytest.approx(exact[0].item(), abs=1e-8)
    assert max(top["residuals"]) < 1e-6
    rows = spectrum.compute(origin(obj, params), {"top_k": 3, "smallest": True, "trace_probes": 0, "tol": 1e-12,
                                                  "max_products": 2000, "seed": 0, "bn_mode": "batch"})
    assert [r["rank"] for r in rows] == [1, 2, 3, -1]
    assert [r["eigenvalue"] for r in rows] == pytest.approx(exact.flip(0)[:3].tolist() + [exact[0].item()], abs=1e-8)


def test_gradient_share_is_the_gradients_weight_in_the_top_eigenvectors(bn):
    obj, params, h = bn
    values, vectors = torch.linalg.eigh(h)
    _, g = obj.value_and_grad(params)
    gf = torch.cat([g[k].reshape(-1) for k in params])
    expected = [float((vectors[:, -k:].T @ gf).pow(2).sum() / gf.pow(2).sum()) for k in (1, 2, 3)]
    rows = spectrum.compute(origin(obj, params), {"top_k": 3, "smallest": False, "trace_probes": 0, "tol": 1e-12,
                                                  "max_products": 2000, "seed": 1, "bn_mode": "batch"})
    assert [r["gradient_share"] for r in rows] == pytest.approx(expected, abs=1e-8)
    assert 0 < expected[0] < expected[2] <= 1


def test_hutchinson_is_within_three_standard_errors_of_the_trace(bn):
    obj, params, h = bn
    trace, error = hutchinson_trace(Hessian(obj, params), probes=200, seed=3)
    exact = float(torch.trace(h))
    assert error > 0 and abs(trace - exact) < 3 * error
    assert abs(trace - exact) > 0  # a stochastic estimate, not the exact trace by accident


def test_slq_weights_sum_to_one_and_its_moments_give_the_trace(bn):
    """Per start: the weights sum to 1 and sum(weight * node) is the start's Rayleigh quotient
    exactly (Lanczos reproduces the first moment); n x the mean over starts estimates tr(H)."""
    obj, params, h = bn
    hessian = Hessian(obj, params)
    n = sum(p.numel() for p in params.values())
    quadratures = slq(hessian, steps=30, starts=40, seed=0)
    flat = Flat(hessian)
    moments = []
    for i, (nodes, weights) in enumerate(quadratures):
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-10)
        v = flat.draw(0 * 7919 + i)
        rayleigh = float(v @ (h @ v) / (v @ v))
        assert float((weights * nodes).sum()) == pytest.approx(rayleigh, abs=1e-9)
        moments.append(n * float((weights * nodes).sum()))
    estimate = sum(moments) / len(moments)
    spread = torch.tensor(moments).std().item() / math.sqrt(len(moments))
    assert abs(estimate - float(torch.trace(h))) < 3 * spread
    # with as many steps as parameters the nodes of a start are the spectrum the start can see
    nodes, _ = slq(hessian, steps=n, starts=1, seed=5)[0]
    exact = torch.linalg.eigvalsh(h)
    assert nodes.max().item() == pytest.approx(exact.max().item(), abs=1e-8)
    assert nodes.min().item() == pytest.approx(exact.min().item(), abs=1e-8)
    rows = density.compute(origin(obj, params), {"lanczos_steps": 10, "starts": 2, "seed": 0, "bn_mode": "batch"})
    assert len(rows) == 20 and {r["n_params"] for r in rows} == {n}


def test_running_statistics_mode_is_another_function_with_another_hessian():
    """bn_mode running: the network in eval mode on the checkpoint's running statistics (what
    PyHessian uses); its Hessian differs from the batch-statistics one of the same weights."""
    gen = torch.Generator().manual_seed(11)
    model = BNMLP(gen).train()
    data = [(torch.randn(16, 3, generator=gen), torch.randn(16, 2, generator=gen))]
    for _ in range(20):  # running statistics that differ from the batch's
        model(torch.randn(16, 3, generator=gen) * 2 + 1)
    params, buffers = origin_state(model.eval())
    running = Objective(model, buffers, half_squared_error, data, statistics="running")
    top_running = extreme_eigenpairs(Hessian(running, params), 1, "LA", 1e-12, 2000, 0)["values"][0]
    params, buffers = origin_state(model.train())
    batch = Objective(model, buffers, half_squared_error, data)
    top_batch = extreme_eigenpairs(Hessian(batch, params), 1, "LA", 1e-12, 2000, 0)["values"][0]
    assert abs(top_running - top_batch) > 1e-3 * abs(top_batch)
    with pytest.raises(ValueError, match="eval mode"):
        Objective(model.train(), buffers, half_squared_error, data, statistics="running")


@pytest.mark.parametrize("factor, diverges", [(0.98, False), (1.02, True)])
def test_gradient_descent_on_a_quadratic_diverges_exactly_above_two_over_the_sharpness(factor, diverges):
    """The edge of stability's threshold: on L = 0.5 w^T A w, the Lanczos sharpness equals A's
    top eigenvalue, and gradient descent with lr just below 2 / lambda_max converges, just above
    diverges (bnstudy's SGD, the optimiser the runs use)."""
    from bnstudy.train.sgd import SGD

    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen))
    eigs = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    a = q @ torch.diag(eigs) @ q.T
    model = Quadratic(torch.randn(6, generator=gen))
    params, buffers = origin_state(model)
    obj = Objective(model.train(), buffers, lambda w, _: 0.5 * w @ a @ w, [(torch.zeros(1), torch.zeros(1))])
    sharpness = extreme_eigenpairs(Hessian(obj, params), 1, "LA", 1e-12, 200, 0)["values"][0]
    assert sharpness == pytest.approx(5.0, abs=1e-10)
    lr = factor * 2 / sharpness
    optimiser = SGD(model.parameters(), lr=lr)
    for _ in range(800):
        optimiser.zero_grad()
        loss = 0.5 * model.w @ a @ model.w
        loss.backward()
        optimiser.step()
    final = float((0.5 * model.w @ a @ model.w).detach())
    assert (final > 1e3) == diverges and (final < 1e-3) != diverges


def test_surface_directions_are_filter_normalised_and_the_centre_is_the_checkpoint(bn):
    """Each filter of a direction has the norm of the matching weight filter (biases and
    normaliser parameters: zero), and the grid's centre is the checkpoint's loss exactly."""
    obj, params, _ = bn
    direction = surface.filter_normalised(params, seed=4)
    for name, p in params.items():
        d = direction[name]
        if p.dim() <= 1:
            assert torch.equal(d, torch.zeros_like(p)), name
        else:
            assert torch.allclose(torch.linalg.vector_norm(d, dim=1), torch.linalg.vector_norm(p, dim=1),
                                  rtol=1e-6, atol=0), name
    rows = surface.compute(origin(obj, params), {"points": 5, "span": 1.0, "seed": 4, "bn_mode": "batch"})
    assert len(rows) == 25 and {r["x"] for r in rows} == {-1.0, -0.5, 0.0, 0.5, 1.0}
    (centre,) = [r for r in rows if r["x"] == 0 and r["y"] == 0]
    assert centre["loss"] == obj.value(params)
    assert len({r["loss"] for r in rows}) == 25  # every other point is elsewhere


@pytest.mark.parametrize("points", [5, 11, 13, 51])
def test_surface_grid_holds_the_centre_exactly(points):
    """The basin radius is measured from the point at (0, 0): linspace(-1, 1, 13) puts it at 5.6e-17."""
    coords = surface.grid(points, 1.0)
    assert coords[points // 2] == 0.0 and coords[0] == -1.0 and coords[-1] == 1.0
    assert coords == [-c for c in reversed(coords)]


def test_basin_radius_found_where_the_centre_is_stored_a_rounding_off_zero():
    """Tables written with the centre at ~1e-17 still give a radius: the loss rises by 1 a quarter out."""
    import pandas as pd

    from bnstudy.tables.derived import basin_radii

    coords = [-1.0, -0.5, 5.551115123125783e-17, 0.5, 1.0]
    rows = [{"run": "r", "variant": "batchnorm", "lr": 0.1, "seed": 0, "status": "completed", "step": 0,
             "x": x, "y": y, "loss": 1.0 + 4.0 * max(abs(round(x, 12)), abs(round(y, 12)))}
            for x in coords for y in coords]
    radii = basin_radii(pd.DataFrame(rows), rise=1.0)
    assert len(radii) == 1 and radii["radius"].dtype == float
    assert radii["radius"].iloc[0] == pytest.approx(0.25)
