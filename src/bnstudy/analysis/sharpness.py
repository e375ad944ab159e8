"""The sharpness of the training loss at a checkpoint: the largest eigenvalue of its Hessian, as
Cohen, Kaur, Li, Kolter & Talwalkar 2021 ("Gradient Descent on Neural Networks Typically Occurs at
the Edge of Stability", arXiv 2103.00065) measure it to compare with 2/lr.

Only that one number, so that it is cheap enough for every checkpoint of a run that saves every
10-20 steps (Cohen et al. measure every 50-100 steps; the `spectrum` kind adds the top-k, the
trace and the gradient share at several times the cost):

- one `hessian.Hessian` (its products by double backward, the HVP every curvature measure here
  shares) of the analysis loss: the mean over `batches` fixed batches of `batch_size` training
  samples (`samples` in the table), normalisers in training mode on each batch's statistics
  (`bn_mode: batch`, as Cohen et al. keep BatchNorm networks) or on the checkpoint's running
  statistics (`running`). Full-batch gradient descent on a small
  training set is matched by `batch_size: null, batches: 1` (the whole training set as one batch,
  the very loss GD descends); Cohen et al.'s fixed sub-batches by batch_size = their sub-batch
  size and batches = n_train / batch_size (`batches.analysis_batches` takes consecutive slices of
  one permutation, so these cover the training set once).
- Lanczos on Hessian-vector products, as Cohen et al. do (scipy's `eigsh`, ARPACK's implicitly
  restarted Lanczos, via `hessian.extreme_eigenpairs`), for the largest algebraic eigenvalue ("LA":
  near initialisation the eigenvalue of largest magnitude can be a negative one, which a power
  iteration would return). They run eigsh to machine precision; a relative residual tolerance of
  1e-3 suffices here, because an eigenvalue's error is of order the residual squared over the gap
  to the next one. With its 20 Lanczos vectors (`extreme_eigenpairs`' ncv) ARPACK answers after
  21 products when the top eigenvalue stands out, as it does in trained networks; one more
  product checks the residual: 22 per checkpoint. `max_products` caps the total (residual
  included), so a point never costs more; a search that could not meet `tol` within it reports
  sharpness NaN (ARPACK keeps no unconverged estimate) and converged false.
"""

from __future__ import annotations

from .functional import Origin
from .hessian import Hessian, extreme_eigenpairs

# the product that checks the residual of the returned eigenvector, counted in max_products
RESIDUAL_PRODUCTS = 1


def compute(origin: Origin, settings: dict) -> list[dict]:
    """One row {bn_mode, sharpness, residual, converged, products, samples}; samples is the number
    of training samples the loss averages over (batch_size x batches, `Hessian.samples`).

    settings: tol (ARPACK's relative residual tolerance), max_products (Hessian-vector products
    at this checkpoint, the residual check included), seed (the Lanczos start vector), bn_mode
    (recorded; `analysis.run` built the objective with it).
    """
    hessian = Hessian(origin.objective, origin.params)
    top = extreme_eigenpairs(hessian, 1, "LA", settings["tol"], settings["max_products"] - RESIDUAL_PRODUCTS,
                             settings["seed"])
    return [{"bn_mode": settings["bn_mode"], "sharpness": top["values"][0], "residual": top["residuals"][0],
             "converged": top["converged"], "products": hessian.products,
             "samples": hessian.samples}]
