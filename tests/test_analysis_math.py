"""The mathematics of the analyses (ICS, landscape, curvature) on tiny hand-made networks.

Each test checks a value that can be derived by hand or with an independent torch routine, so a
wrong sign, a wrong layer or a mutated buffer shows up as a number. Float64 throughout: the checks
are of the mathematics, not of float32 rounding. Runs in seconds on a CPU.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from bnstudy.analysis import curvature, ics, landscape
from bnstudy.analysis.functional import Objective, Origin, origin_state, sgd_step


def ics_rows(obj, params, groups, state, optim):
    return ics.compute(Origin(obj, params, groups, state, optim), {})


def landscape_rows(obj, params, lr, settings):
    return landscape.compute(Origin(obj, params, [], None, {"lr": lr}), settings)


def curvature_row(obj, params, settings):
    (row,) = curvature.compute(Origin(obj, params, [], None, {"lr": 0.1}), settings)
    return row


@pytest.fixture(autouse=True)
def float64():
    """Every tensor of these tests is float64 (restored afterwards: no leak into other tests)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# ------------------------------------------------------------------------------------------------
# tiny models that follow the model contract (layer_groups)


class Linear2(nn.Module):
    """out = W2 (W1 x + b1): two linear layers; layer 1 = (W1, b1), layer 2 = W2."""

    def __init__(self, gen):
        super().__init__()
        self.l1 = nn.Linear(3, 4)
        self.l2 = nn.Linear(4, 2, bias=False)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen)

    def forward(self, x):
        return self.l2(self.l1(x))

    def layer_groups(self):
        return [["l1.weight", "l1.bias"], ["l2.weight"]]


class BNMLP(nn.Module):
    """Three normalised layers (linear -> BatchNorm -> tanh) and a linear output layer."""

    def __init__(self, gen, width=5):
        super().__init__()
        dims = [3, width, width, width]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(b) for b in dims[1:])
        self.out = nn.Linear(width, 2)
        for p in self.parameters():
            p.data = 0.7 * torch.randn(p.shape, generator=gen)

    def forward(self, x):
        for layer, norm in zip(self.layers, self.norms):
            x = torch.tanh(norm(layer(x)))
        return self.out(x)

    def layer_groups(self):
        return [[f"layers.{i}.weight", f"layers.{i}.bias", f"norms.{i}.weight", f"norms.{i}.bias"]
                for i in range(3)]


class Quadratic(nn.Module):
    """A 'model' whose output is its weight vector: with loss 0.5 w^T A w, L is an exact quadratic."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return self.w


def half_squared_error(out, y):
    return 0.5 * (out - y).pow(2).sum(dim=1).mean()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed"


def bn_setup(gen, batches=1):
    model = BNMLP(gen).train()
    data = [(torch.randn(16, 3, generator=gen), torch.randn(16, 2, generator=gen))
            for _ in range(batches)]
    params, buffers = origin_state(model)
    return model, Objective(model, buffers, half_squared_error, data), params


LANDSCAPE = {"eta_min": 0.5, "eta_max": 4.0, "points": 5, "relative": True,
             "random_directions": 0, "seed": 0}


# ------------------------------------------------------------------------------------------------
# SGD update


def test_sgd_step_matches_torch_sgd(gen):
    """sgd_step reproduces torch.optim.SGD's update: momentum buffers, weight decay, dampening,
    nesterov and per-group hyper-parameters, reading the optimizer's state dict."""
    model, obj, _ = bn_setup(gen)
    # Two groups, in model.parameters() order (the optimizer's parameter ids are positions in
    # that order; docs/architecture.md fixes SGD(model.parameters(), ...)).
    everything = list(model.parameters())
    first, rest = everything[:3], everything[3:]
    opt = torch.optim.SGD([{"params": first, "lr": 0.05, "nesterov": True, "momentum": 0.9},
                           {"params": rest, "lr": 0.1, "dampening": 0.3}],
                          momentum=0.8, weight_decay=1e-2)
    for _ in range(2):  # two real steps, so the momentum buffers exist and are not trivial
        params, _ = origin_state(model)
        _, grads = obj.value_and_grad(params)
        state = copy.deepcopy(opt.state_dict())
        expected = sgd_step(params, grads, state, fallback={})
        for n, p in model.named_parameters():
            p.grad = grads[n].clone()
        opt.step()
        for n, p in model.named_parameters():
            assert torch.equal(expected[n], p.detach()), n  # bit-identical to a real step


# ------------------------------------------------------------------------------------------------
# ICS (Definition 2.1)


def test_ics_matches_hand_derivation(gen):
    """Two linear layers, plain SGD with weight decay: G' of layer 2 from the closed-form
    gradients after W1 and b1 take their step."""
    model = Linear2(gen).train()
    x, y = torch.randn(6, 3, generator=gen), torch.randn(6, 2, generator=gen)
    lr, wd = 0.1, 0.01
    params, buffers = origin_state(model)
    rows = ics_rows(Objective(model, buffers, half_squared_error, [(x, y)]), params,
               model.layer_groups(), None, {"lr": lr, "momentum": 0.0, "weight_decay": wd})

    n = x.shape[0]
    w1, b1, w2 = params["l1.weight"], params["l1.bias"], params["l2.weight"]

    def grads(w1, b1):
        h = x @ w1.T + b1
        r = (h @ w2.T - y) / n  # dL/dout
        dh = r @ w2
        return r.T @ h, dh.T @ x, dh.sum(0)  # dW2, dW1, db1

    g2, g1w, g1b = grads(w1, b1)
    g2_after, _, _ = grads(w1 - lr * (g1w + wd * w1), b1 - lr * (g1b + wd * b1))
    l2 = torch.linalg.norm(g2 - g2_after).item()
    cos = (torch.sum(g2 * g2_after) / (g2.norm() * g2_after.norm())).item()

    assert [r["layer"] for r in rows] == [1, 2]
    assert rows[0]["l2_diff"] == 0 and rows[0]["cosine"] == pytest.approx(1, abs=1e-12)
    assert rows[0]["grad_norm"] == pytest.approx(g1w.norm().item(), rel=1e-12)
    assert rows[1]["grad_norm"] == pytest.approx(g2.norm().item(), rel=1e-12)
    assert rows[1]["l2_diff"] == pytest.approx(l2, rel=1e-10)
    assert rows[1]["cosine"] == pytest.approx(cos, rel=1e-12)
    assert l2 > 1e-3  # the check is not vacuous


def test_ics_uses_momentum_buffer(gen):
    """With momentum the earlier layers move by lr * (m * buf + grad): a buffer pointing the other
    way can cancel the step exactly, and then layer 2 sees no shift."""
    model = Linear2(gen).train()
    x, y = torch.randn(6, 3, generator=gen), torch.randn(6, 2, generator=gen)
    params, buffers = origin_state(model)
    obj = Objective(model, buffers, half_squared_error, [(x, y)])
    _, g = obj.value_and_grad(params)
    m = 0.5
    names = list(params)
    # buf = -grad/m  =>  buf' = m * buf + grad = 0: no update at all
    state = {"state": {i: {"momentum_buffer": -g[n] / m} for i, n in enumerate(names)},
             "param_groups": [{"lr": 0.3, "momentum": m, "weight_decay": 0.0, "dampening": 0.0,
                               "nesterov": False, "params": list(range(len(names)))}]}
    rows = ics_rows(obj, params, model.layer_groups(), state, {})
    assert rows[1]["l2_diff"] == pytest.approx(0, abs=1e-14)
    plain = ics_rows(obj, params, model.layer_groups(), None, {"lr": 0.3})
    assert plain[1]["l2_diff"] > 1e-3


def test_ics_zero_when_earlier_layers_do_not_move(gen):
    """Layer 1 never shifts; a layer whose earlier layers all have lr 0 does not either, while
    the layer after a moving one does (so the test would catch a wrong layer mapping)."""
    model, obj, params = bn_setup(gen)
    before = snapshot(model)
    groups = model.layer_groups()
    names = list(params)
    index = {n: i for i, n in enumerate(names)}
    state = {"state": {},
             "param_groups": [
                 {"lr": 0.0, "momentum": 0.0, "weight_decay": 0.0,
                  "params": [index[n] for n in groups[0]]},
                 {"lr": 0.5, "momentum": 0.0, "weight_decay": 0.0,
                  "params": [index[n] for n in names if n not in groups[0]]}]}
    rows = ics_rows(obj, params, groups, state, {})
    assert [r["layer"] for r in rows] == [1, 2, 3]
    assert rows[0]["l2_diff"] == 0
    assert rows[1]["l2_diff"] == pytest.approx(0, abs=1e-12)
    assert rows[1]["cosine"] == pytest.approx(1, abs=1e-12)
    assert rows[2]["l2_diff"] > 1e-4 and rows[2]["cosine"] < 1
    assert_unchanged(model, before)


# ------------------------------------------------------------------------------------------------
# landscape (section 3.2) and curvature (section 4) on an exact quadratic


@pytest.fixture
def quadratic(gen):
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen))
    eigs = torch.tensor([4.0, 2.5, 1.0, 0.5, 0.1])
    a = q @ torch.diag(eigs) @ q.T
    model = Quadratic(torch.randn(5, generator=gen)).train()
    params, buffers = origin_state(model)
    obj = Objective(model, buffers, lambda w, _: 0.5 * w @ a @ w, [(torch.zeros(1), torch.zeros(1))])
    return obj, params, a, eigs


def test_landscape_on_quadratic(quadratic):
    """For L = 0.5 w^T A w: g = A w, L(w - eta g) is exact, ||g - g(w - eta g)|| = eta ||A g||, so
    beta = ||A g|| / ||g|| at every eta (and that is the effective beta-smoothness)."""
    obj, params, a, _ = quadratic
    w = params["w"]
    g = a @ w
    lr = 0.2
    rows = landscape_rows(obj, params, lr, LANDSCAPE)
    assert [r["eta_rel"] for r in rows] == pytest.approx([0.5, 1.375, 2.25, 3.125, 4.0])
    expected_beta = (torch.linalg.norm(a @ g) / torch.linalg.norm(g)).item()
    for r in rows:
        assert r["direction"] == "gradient"
        assert r["eta"] == pytest.approx(r["eta_rel"] * lr, rel=1e-15)
        v = w - r["eta"] * g
        assert r["loss"] == pytest.approx((0.5 * v @ a @ v).item(), rel=1e-12)
        assert r["grad_diff"] == pytest.approx(r["eta"] * torch.linalg.norm(a @ g).item(), rel=1e-10)
        assert r["beta"] == pytest.approx(expected_beta, rel=1e-10)
    assert max(r["beta"] for r in rows) == pytest.approx(expected_beta, rel=1e-10)


def test_curvature_on_quadratic(quadratic):
    """g^T H g / ||g||^2 with H = A exactly, and the largest and smallest eigenvalues of A."""
    obj, params, a, eigs = quadratic
    g = a @ params["w"]
    out = curvature_row(obj, params, {"max_products": 200, "tol": 1e-12, "seed": 0})
    assert out["grad_quadratic"] == pytest.approx((g @ a @ g / (g @ g)).item(), rel=1e-12)
    assert out["top_eigenvalue"] == pytest.approx(eigs.max().item(), rel=1e-9)
    assert out["bottom_eigenvalue"] == pytest.approx(eigs.min().item(), rel=1e-9)
    assert out["converged"] and out["top_residual"] < 1e-8 and out["bottom_residual"] < 1e-8


def test_curvature_reports_an_unconverged_search(quadratic):
    """Too few products for the tolerance: the values are estimates, and the row says so."""
    obj, params, _, _ = quadratic
    out = curvature_row(obj, params, {"max_products": 2, "tol": 1e-14, "seed": 0})
    assert out["converged"] is False and out["products"] <= 2 * 2 + 2 + 1


def test_random_directions_have_gradient_norm_and_are_seeded(quadratic):
    obj, params, _, _ = quadratic
    settings = dict(LANDSCAPE, random_directions=2, seed=7)
    rows = landscape_rows(obj, params, 0.2, settings)
    assert [r["direction"] for r in rows] == ["gradient"] * 5 + ["random1"] * 5 + ["random2"] * 5
    assert rows == landscape_rows(obj, params, 0.2, settings)  # deterministic
    other = landscape_rows(obj, params, 0.2, dict(settings, seed=8))
    assert rows[5]["loss"] != other[5]["loss"]  # the seed matters


# ------------------------------------------------------------------------------------------------
# on a BatchNorm network in training mode


def flat_hessian(obj, params):
    """Dense Hessian of the objective via torch.autograd.functional.hessian (independent path)."""
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    x, y = obj.batches[0]

    def f(flat):
        parts = dict(zip(names, (t.view(s) for t, s in zip(flat.split(sizes), shapes))))
        buffers = {k: v.clone() for k, v in obj.buffers.items()}
        return obj.loss_fn(functional_call(obj.model, (parts, buffers), (x,)), y)

    flat = torch.cat([params[n].reshape(-1) for n in names])
    return torch.autograd.functional.hessian(f, flat), flat


def test_curvature_matches_dense_hessian_on_bn_mlp(gen):
    """On a float64 BatchNorm network in training mode: the curvature along the gradient and the
    largest and smallest Hessian eigenvalues (Lanczos) against the dense Hessian's eigvalsh, to
    1e-8, the buffers untouched. The smallest is negative here: a search for the eigenvalue of
    largest magnitude would have returned the wrong end of the spectrum."""
    model, obj, params = bn_setup(gen)
    before = snapshot(model)
    h, _ = flat_hessian(obj, params)
    _, g = obj.value_and_grad(params)
    gf = torch.cat([g[n].reshape(-1) for n in params])
    eigs = torch.linalg.eigvalsh(h)
    assert eigs.min() < 0 < eigs.max()

    out = curvature_row(obj, params, {"max_products": 2000, "tol": 1e-12, "seed": 0})
    assert out["grad_quadratic"] == pytest.approx((gf @ h @ gf / (gf @ gf)).item(), rel=1e-9)
    assert out["top_eigenvalue"] == pytest.approx(eigs.max().item(), abs=1e-8)
    assert out["bottom_eigenvalue"] == pytest.approx(eigs.min().item(), abs=1e-8)
    assert out["converged"] and out["top_residual"] < 1e-6
    assert_unchanged(model, before)


def test_hessian_vector_product_matches_torch_func(gen):
    """The shared operator (bnstudy.analysis.hessian.Hessian, double backward) against torch.func's
    forward-over-reverse product jvp(grad(L)) of the same loss (BatchNorm buffers passed as
    copies), and against finite differences of the gradient. (torch.func.hessian itself, i.e.
    jacfwd(jacrev), comes out wrong and asymmetric on this BatchNorm network under vmap in torch
    2.14: the per-vector jvp is the independent reference.)"""
    from torch.func import grad, jvp

    from bnstudy.analysis.hessian import Hessian

    model, obj, params = bn_setup(gen)
    x, y = obj.batches[0]

    def loss(point):
        buffers = {k: v.clone() for k, v in obj.buffers.items()}
        return obj.loss_fn(functional_call(obj.model, (point, buffers), (x,)), y)

    v = {k: torch.randn(p.shape, generator=gen) for k, p in params.items()}
    hv = Hessian(obj, params)(v)
    _, expected = jvp(grad(loss), (dict(params),), (v,))
    eps = 1e-5
    _, g_plus = obj.value_and_grad({k: params[k] + eps * v[k] for k in params})
    _, g_minus = obj.value_and_grad({k: params[k] - eps * v[k] for k in params})
    for k in params:
        assert torch.allclose(hv[k], expected[k], rtol=1e-10, atol=1e-12), k
        assert torch.allclose(hv[k], (g_plus[k] - g_minus[k]) / (2 * eps), atol=1e-6), k


def test_eta_zero_reproduces_checkpoint_loss(gen):
    """At eta = 0 the probe point is the checkpoint: same loss, zero gradient difference."""
    model, obj, params = bn_setup(gen, batches=2)
    before = snapshot(model)
    rows = landscape_rows(obj, params, 0.1, dict(LANDSCAPE, eta_min=0.0, points=3, random_directions=1))
    ref = copy.deepcopy(model)  # an independent plain forward (it updates ref's running stats)
    x_loss = 0.5 * sum(half_squared_error(ref(x), y).item() for x, y in obj.batches)
    for r in rows:
        if r["eta"] == 0:
            assert r["loss"] == pytest.approx(obj.value(params), abs=1e-14)
            assert r["loss"] == pytest.approx(x_loss, rel=1e-12)
            assert r["grad_diff"] == 0 and math.isnan(r["beta"])
    assert_unchanged(model, before)


def test_nothing_is_mutated(gen):
    """Parameters, buffers (BN running stats, num_batches_tracked) and the origin dict are
    bit-identical after every analysis."""
    model, obj, params = bn_setup(gen)
    before = snapshot(model)
    origin = {k: v.clone() for k, v in params.items()}
    ics_rows(obj, params, model.layer_groups(), None, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3})
    landscape_rows(obj, params, 0.1, dict(LANDSCAPE, random_directions=1))
    curvature_row(obj, params, {"max_products": 10, "tol": 1e-3, "seed": 0})
    assert_unchanged(model, before)
    assert all(torch.equal(origin[k], params[k]) for k in params)
    assert model.training and all(m.training for m in model.modules())


def test_objective_refuses_eval_mode(gen):
    model = BNMLP(gen).eval()
    _, buffers = origin_state(model)
    with pytest.raises(ValueError, match="training mode"):
        Objective(model, buffers, half_squared_error, [(torch.zeros(4, 3), torch.zeros(4, 2))])


class Jitter(nn.Module):
    """A random module in the style of bnstudy's noise and dropout: draws from `self.generator`."""

    def __init__(self):
        super().__init__()
        self.generator = None

    def forward(self, x):
        return x + torch.rand(x.shape, generator=self.generator)


def test_active_noise_is_seeded_per_forward_without_global_rng(gen):
    """Active random modules see the same draw at every probe point (common random numbers),
    from a seeded generator: torch's global RNG is neither used nor advanced, and the module's
    own generator attribute is restored."""
    model = nn.Sequential(nn.Linear(3, 2), Jitter()).train()
    params, buffers = origin_state(model)
    data = [(torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen))]
    rng = torch.random.get_rng_state()
    a = Objective(model, buffers, half_squared_error, data, noise_seed=3).value(params)
    b = Objective(model, buffers, half_squared_error, data, noise_seed=3).value(params)
    c = Objective(model, buffers, half_squared_error, data, noise_seed=4).value(params)
    assert a == b and a != c
    assert torch.equal(rng, torch.random.get_rng_state())
    assert model[1].generator is None
