"""The Hessian of the analysis loss at a checkpoint, as Hessian-vector products: the one operator
every curvature and spectral measure shares.

H v is computed by double backward (Pearlmutter's trick, as PyHessian and loss-landscape do): one
forward and backward with `create_graph=True` builds the gradient g as a differentiable function
of the weights, then each H v is one more backward through that graph (retained for a single
batch, rebuilt per product for several: see below). With BatchNorm in training mode this is the
exact Hessian of the loss SGD descends (batch statistics are functions of the weights and are
differentiated through); it agrees with finite differences to ~1e-8 in float64
(tests/test_analysis_math.py). The checkpoint's running statistics
are never touched: `functional.Objective` clones the buffers for every forward.

L is `functional.Objective`'s loss: the mean over the analysis batches, i.e. the loss on
`objective.samples` = batch_size x batches training samples (Ghorbani et al. 2019, section 4 here,
take the Hessian of the loss on a stated sample, not of one mini-batch). Its Hessian is the mean of
the per-batch Hessians, so H v is the mean of per-batch products and never needs more than one
batch's graph:
- one batch: its graph is built once and kept, each product is one double backward (as before);
- several batches, on an accelerator or above KEEP_GRAPHS_SAMPLES samples: each product runs, batch
  by batch, a forward, a backward with create_graph and the double backward, then frees that
  batch's graph. Memory is that of one batch whatever the number of batches (paper scale on a GPU);
- several batches on a CPU, up to KEEP_GRAPHS_SAMPLES samples: every batch's graph is built once
  and kept in host memory, each product is a double backward per batch. The products are bit for
  bit those of the rebuilding path (the same operations in the same order); measured on the CPU
  config's VGG-11 x0.25 at 512 samples (4 batches), a product took 4.63 s against 6.35 s
  (x1.37; the double backward is most of it, about 7 training steps' forward and backward).
The gradient (`Hessian.gradient`) is that of the same L: the mean over the same batches.
"""

from __future__ import annotations

import torch

from .functional import Objective, Params, dot

# the most samples whose graphs a CPU Hessian keeps between products (a few hundred MB for the
# CPU configs' networks at this size; paper-scale spectra run on an accelerator, batch by batch)
KEEP_GRAPHS_SAMPLES = 1024


class Hessian:
    """H at `params` as an operator on parameter dicts: `hessian(v)` is H v.

    `gradient` is g at `params` (detached), `samples` the number of training samples L averages
    over, `products` counts the products taken. With one batch, building it costs one forward and
    backward (create_graph) and each product one double backward; with several, on a CPU up to
    KEEP_GRAPHS_SAMPLES samples, the same per batch (every graph kept); otherwise building it costs
    one gradient pass and each product a forward, backward and double backward per batch (memory
    of one batch; see the module docstring).
    """

    def __init__(self, objective: Objective, params: Params):
        self.objective = objective
        self.names = list(params)
        self.samples = objective.samples
        self.products = 0
        self._params = {k: params[k].detach() for k in self.names}
        self._graphs: list | None = None   # (leaves, g) per batch, when kept between products
        n = len(objective.batches)
        on_cpu = all(x.device.type == "cpu" for x, _ in objective.batches)
        if n == 1 or (on_cpu and self.samples <= KEEP_GRAPHS_SAMPLES):
            self._graphs = [self._differentiable_gradient(b) for b in range(n)]
        if n == 1:
            self.gradient: Params = {k: gi.detach() for k, gi in zip(self.names, self._graphs[0][1])}
        else:
            # the mean of the per-batch gradients, one batch's graph at a time (whether or not the
            # graphs are kept: the same numbers either way)
            _, self.gradient = objective.value_and_grad(self._params)

    def _differentiable_gradient(self, index: int) -> tuple[list, list]:
        """(leaves, g) for batch `index`: g = d(L_b / B)/dW as a differentiable function of fresh
        leaves (create_graph), so that a backward through g gives this batch's share of H v."""
        n = len(self.objective.batches)
        leaves = [self._params[k].detach().requires_grad_(True) for k in self.names]
        point = dict(zip(self.names, leaves))
        loss = self.objective.batch_loss(point, index) / n
        g = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        return leaves, [torch.zeros_like(leaf) if gi is None else gi for leaf, gi in zip(leaves, g)]

    @staticmethod
    def _backward(leaves: list, g: list, v: list, retain: bool) -> list:
        """d(g . v)/dW: the double backward. Entries of g that do not depend on W (a parameter
        entering L linearly with a constant coefficient, or not at all) contribute nothing."""
        pairs = [(gi, vi) for gi, vi in zip(g, v) if gi.requires_grad]
        if not pairs:
            return [torch.zeros_like(leaf) for leaf in leaves]
        hv = torch.autograd.grad([gi for gi, _ in pairs], leaves, grad_outputs=[vi for _, vi in pairs],
                                 retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(leaf) if h is None else h.detach() for leaf, h in zip(leaves, hv)]

    def __call__(self, v: Params) -> Params:
        """H v (a new dict; v is not written)."""
        self.products += 1
        vs = [v[k] for k in self.names]
        if self._graphs is not None:
            hv = None
            for leaves, g in self._graphs:
                part = self._backward(leaves, g, vs, retain=True)
                hv = part if hv is None else [a + c for a, c in zip(hv, part)]
        else:
            hv = None
            for b in range(len(self.objective.batches)):
                leaves, g = self._differentiable_gradient(b)
                part = self._backward(leaves, g, vs, retain=False)  # frees batch b's graph
                hv = part if hv is None else [a + c for a, c in zip(hv, part)]
        return dict(zip(self.names, hv))

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

    Returns {values, residuals, pair_converged, vectors, products, converged}, values sorted from
    the extreme inwards; residual_i = ||H v_i - value_i v_i|| / |value_i| for the returned unit
    eigenvectors (k more products); pair_converged_i = residual_i <= tol, ARPACK's own criterion
    checked on each pair (a search can meet it for its first pairs and not for the last ones, or
    stop with only some of them); converged = ARPACK met `tol` for all k within `budget` products.
    A search that ran out returns the eigenvalues that had converged, NaN for the rest.
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
    return {"values": out_values, "residuals": residuals, "pair_converged": [r <= tol for r in residuals],
            "vectors": unit_vectors, "products": products, "converged": converged}


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


def gradient_share(gradient: Params, vectors: list[torch.Tensor], flat: Flat) -> list[float]:
    """The share of ||g||^2 in the span of the first 1, 2, ... of the (orthonormal) `vectors`
    (Ghorbani et al.'s measure of gradient concentration in the top eigenspace)."""
    g = flat.flatten(gradient)
    total = float(g @ g)
    shares, acc = [], 0.0
    for v in vectors:
        acc += float(v @ g) ** 2
        shares.append(acc / total if total > 0 else float("nan"))
    return shares
