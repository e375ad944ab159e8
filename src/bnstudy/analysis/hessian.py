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

from .functional import Objective, Params, dot


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


class Budget(Exception):
    """The product budget of one eigenvalue search is spent."""


class Flat:
    """Parameter dicts <-> flat float64 vectors (torch, on the parameters' device), in the order
    of `hessian.names`: the spectral methods work on flat vectors, the products on dicts."""

    def __init__(self, hessian: Hessian):
        self.hessian = hessian
        like = hessian.gradient
        self.shapes = [(k, like[k].shape, like[k].numel(), like[k].dtype) for k in hessian.names]
        self.size = sum(n for _, _, n, _ in self.shapes)
        self.device = like[hessian.names[0]].device

    def flatten(self, params: Params) -> torch.Tensor:
        return torch.cat([params[k].reshape(-1).to(torch.float64) for k, _, _, _ in self.shapes])

    def unflatten(self, vector: torch.Tensor) -> Params:
        out, offset = {}, 0
        for k, shape, n, dtype in self.shapes:
            out[k] = vector[offset:offset + n].view(shape).to(dtype)
            offset += n
        return out

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """H v for a flat float64 vector (the product in the model's dtype)."""
        return self.flatten(self.hessian(self.unflatten(vector.to(self.device))))

    def draw(self, seed: int, rademacher: bool = False) -> torch.Tensor:
        """A random flat vector from `seed`, drawn in float64 on the CPU (the same on any device)."""
        gen = torch.Generator().manual_seed(seed)
        v = torch.randn(self.size, generator=gen, dtype=torch.float64)
        return (torch.sign(v) if rademacher else v).to(self.device)


def extreme_eigenpairs(hessian: Hessian, k: int, which: str, tol: float, budget: int, seed: int) -> dict:
    """The `k` largest ("LA") or smallest ("SA") eigenvalues of H by Lanczos (ARPACK's implicitly
    restarted Lanczos, `scipy.sparse.linalg.eigsh`, on a LinearOperator of Hessian-vector
    products), from a seeded start vector.

    Returns {values, residuals, vectors, products, converged}, values sorted from the extreme
    inwards; residual_i = ||H v_i - value_i v_i|| / |value_i| for the returned unit eigenvectors (k
    more products); converged = ARPACK met `tol` within `budget` products. A search that ran out
    returns the eigenvalues that had converged, NaN for the rest.
    """
    import numpy as np
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    flat = Flat(hessian)
    before = hessian.products

    def matvec(vector):
        if hessian.products - before >= budget:
            raise Budget
        x = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float64).reshape(-1))
        return flat.matvec(x).cpu().numpy()

    operator = LinearOperator((flat.size, flat.size), matvec=matvec, dtype=np.float64)
    ncv = min(flat.size, max(2 * k + 1, 20))
    values, vectors, converged = np.array([]), np.zeros((flat.size, 0)), False
    try:
        values, vectors = eigsh(operator, k=k, which=which, v0=flat.draw(seed).cpu().numpy(), tol=tol,
                                ncv=ncv, maxiter=max(1, budget // ncv))
        converged = True
    except ArpackNoConvergence as err:
        values, vectors = err.eigenvalues, err.eigenvectors
    except Budget:
        pass
    products = hessian.products - before
    order = np.argsort(-values if which == "LA" else values)
    values, vectors = values[order], vectors[:, order]
    out_values, residuals, unit_vectors = [], [], []
    for i in range(k):
        if i < len(values):
            v = torch.from_numpy(vectors[:, i] / np.linalg.norm(vectors[:, i])).to(flat.device)
            hv = flat.matvec(v)
            out_values.append(float(values[i]))
            residuals.append(float(torch.linalg.vector_norm(hv - values[i] * v)) / max(abs(float(values[i])), 1e-30))
            unit_vectors.append(v)
        else:
            out_values.append(float("nan"))
            residuals.append(float("nan"))
    return {"values": out_values, "residuals": residuals, "vectors": unit_vectors, "products": products,
            "converged": converged}


def extreme_eigenvalue(hessian: Hessian, which: str, tol: float, budget: int, seed: int) -> dict:
    """{value, residual, products, converged} of the largest ("LA") or smallest ("SA") eigenvalue."""
    found = extreme_eigenpairs(hessian, 1, which, tol, budget, seed)
    return {"value": found["values"][0], "residual": found["residuals"][0], "products": found["products"],
            "converged": found["converged"]}


def hutchinson_trace(hessian: Hessian, probes: int, seed: int) -> tuple[float, float]:
    """tr(H) by Hutchinson's estimator, E[z^T H z] with Rademacher z (Yao et al., PyHessian): the
    mean over `probes` seeded probes and its standard error."""
    flat = Flat(hessian)
    samples = []
    for i in range(probes):
        z = flat.draw(seed * 1_000_003 + i, rademacher=True)
        samples.append(float(z @ flat.matvec(z)))
    values = torch.tensor(samples, dtype=torch.float64)
    error = float(values.std(unbiased=True) / probes ** 0.5) if probes > 1 else float("nan")
    return float(values.mean()), error


def lanczos(hessian: Hessian, steps: int, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` Lanczos steps from `start` in float64 with full reorthogonalisation (every new
    vector made orthogonal to all earlier ones, twice: in finite precision plain Lanczos loses
    orthogonality and repeats eigenvalues). Returns the tridiagonal matrix's diagonal (alphas) and
    off-diagonal (betas); it stops early if the Krylov space is exhausted."""
    flat = Flat(hessian)
    v = start / torch.linalg.vector_norm(start)
    basis = [v]
    alphas, betas = [], []
    for j in range(steps):
        w = flat.matvec(basis[-1])
        alpha = float(w @ basis[-1])
        alphas.append(alpha)
        stacked = torch.stack(basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        beta = float(torch.linalg.vector_norm(w))
        if j == steps - 1 or beta < 1e-10 * max(abs(alpha), 1.0):
            break
        betas.append(beta)
        basis.append(w / beta)
    return torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas, dtype=torch.float64)


def slq(hessian: Hessian, steps: int, starts: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019; PyHessian): for each of
    `starts` seeded Gaussian start vectors, `steps` Lanczos steps; the eigenvalues of the
    tridiagonal matrix are the quadrature nodes and the squared first components of its
    eigenvectors their weights (they sum to 1). The spectral density is the average over starts
    of sum_i weight_i delta(x - node_i), smoothed downstream; n * sum_i weight_i node_i estimates
    tr(H) / n * n, i.e. the trace."""
    out = []
    for i in range(starts):
        alphas, betas = lanczos(hessian, steps, Flat(hessian).draw(seed * 7919 + i))
        tridiagonal = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
        nodes, vectors = torch.linalg.eigh(tridiagonal)
        out.append((nodes, vectors[0] ** 2))
    return out


def gradient_share(gradient: Params, vectors: list[torch.Tensor], flat: "Flat") -> list[float]:
    """The share of ||g||^2 in the span of the first 1, 2, ... of the (orthonormal) `vectors`
    (Ghorbani et al.'s measure of gradient concentration in the top eigenspace)."""
    g = flat.flatten(gradient)
    total = float(g @ g)
    shares, acc = [], 0.0
    for v in vectors:
        acc += float(v @ g) ** 2
        shares.append(acc / total if total > 0 else float("nan"))
    return shares
