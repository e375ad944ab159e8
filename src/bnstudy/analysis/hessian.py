"""The Hessian of the analysis loss at a checkpoint, as Hessian-vector products: the one operator
every curvature and spectral measure shares.

H v is computed by double backward (Pearlmutter's trick, as PyHessian and loss-landscape do): one
forward and backward with `create_graph=True` builds the gradient g as a differentiable function
of the weights, then each H v is one more backward through that retained graph, with no new
forward. With BatchNorm in training mode this is the exact Hessian of the loss SGD descends (batch
statistics are functions of the weights and are differentiated through); it agrees with finite
differences to ~1e-8 in float64 (tests/test_analysis_math.py). The checkpoint's running statistics
are never touched: `functional.Objective` clones the buffers for every forward.

L is `functional.Objective`'s loss (the mean over the analysis batches); with several batches the
graph of all of them is kept, so memory grows with `batches`.
"""

from __future__ import annotations

import torch

from .functional import Objective, Params, dot, norm


class Hessian:
    """H at `params` as an operator on parameter dicts: `hessian(v)` is H v.

    Building it costs one forward and backward (create_graph); each product one double backward.
    `gradient` is g at `params` (detached); `products` counts the products taken.
    """

    def __init__(self, objective: Objective, params: Params):
        self.names = list(params)
        self._leaves = [params[k].detach().requires_grad_(True) for k in self.names]
        point = dict(zip(self.names, self._leaves))
        n = len(objective.batches)
        loss = sum(objective.batch_loss(point, b) for b in range(n)) / n
        g = torch.autograd.grad(loss, self._leaves, create_graph=True, allow_unused=True)
        self._g = [torch.zeros_like(leaf) if gi is None else gi for leaf, gi in zip(self._leaves, g)]
        self.gradient: Params = {k: gi.detach() for k, gi in zip(self.names, self._g)}
        self.products = 0

    def __call__(self, v: Params) -> Params:
        """H v (a new dict; v is not written)."""
        self.products += 1
        hv = torch.autograd.grad(self._g, self._leaves, grad_outputs=[v[k] for k in self.names],
                                 retain_graph=True, allow_unused=True)
        return {k: torch.zeros_like(v[k]) if h is None else h.detach() for k, h in zip(self.names, hv)}

    def quadratic_form(self, v: Params) -> float:
        """v^T H v / ||v||^2: the curvature along v (NaN for v = 0)."""
        v_sq = dot(v, v)
        return dot(v, self(v)) / v_sq if v_sq > 0 else float("nan")


def random_unit(params: Params, seed: int) -> Params:
    """A Gaussian direction of norm 1, drawn in float64 on the CPU from `seed` and cast, so every
    device and dtype starts from the same vector."""
    gen = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
         for k, p in params.items()}
    scale = norm(v)
    return {k: t / scale for k, t in v.items()}


class Budget(Exception):
    """The product budget of one eigenvalue search is spent."""


def as_operator(hessian: Hessian, budget: int):
    """H as a scipy LinearOperator on flat float64 vectors (the order of `hessian.names`); the
    products are taken in the model's dtype and device. Raises Budget after `budget` products."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator

    like = hessian.gradient
    shapes = [(k, like[k].shape, like[k].numel()) for k in hessian.names]
    size = sum(n for _, _, n in shapes)
    start = hessian.products

    def unflatten(vector) -> Params:
        flat = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float64).reshape(-1))
        out, offset = {}, 0
        for k, shape, n in shapes:
            out[k] = flat[offset:offset + n].view(shape).to(like[k].device, like[k].dtype)
            offset += n
        return out

    def matvec(vector):
        if hessian.products - start >= budget:
            raise Budget
        hv = hessian(unflatten(vector))
        return torch.cat([hv[k].reshape(-1).double().cpu() for k, _, _ in shapes]).numpy()

    return LinearOperator((size, size), matvec=matvec, dtype=np.float64), unflatten


def extreme_eigenvalue(hessian: Hessian, which: str, tol: float, budget: int, seed: int) -> dict:
    """The largest ("LA") or smallest ("SA") eigenvalue of H by Lanczos (ARPACK's implicitly
    restarted Lanczos, `scipy.sparse.linalg.eigsh`), from a seeded start vector.

    Returns {value, residual, products, converged}: residual = ||H v - value v|| / |value| for the
    returned unit eigenvector v (one more product); converged = ARPACK met `tol` within `budget`
    products. An unconverged search returns its best Ritz value (NaN if it had none yet).
    """
    import numpy as np
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    operator, unflatten = as_operator(hessian, budget)
    v0 = np.random.default_rng(seed).standard_normal(operator.shape[0])
    ncv = min(operator.shape[0], 20)
    before = hessian.products
    value, vector, converged = float("nan"), None, False
    try:
        values, vectors = eigsh(operator, k=1, which=which, v0=v0, tol=tol, ncv=ncv,
                                maxiter=max(1, budget // ncv))
        value, vector, converged = float(values[0]), vectors[:, 0], True
    except ArpackNoConvergence as err:
        if len(err.eigenvalues):
            value, vector = float(err.eigenvalues[0]), err.eigenvectors[:, 0]
    except Budget:
        pass
    products = hessian.products - before
    residual = float("nan")
    if vector is not None:
        v = unflatten(vector / np.linalg.norm(vector))
        hv = hessian(v)
        residual = norm({k: hv[k].double() - value * v[k].double() for k in v}) / max(abs(value), 1e-30)
    return {"value": value, "residual": residual, "products": products, "converged": converged}
