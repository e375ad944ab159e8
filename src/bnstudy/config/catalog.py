"""The extension points of a study, one record each: analysis kinds and figure kinds (claim kinds
are records in `bnstudy.claims.kinds`).

Studies are config: a study names a setup, its variants, learning rates and seeds, configures the
analyses it needs (one block per analysis kind), and lists the figure kinds and claims it produces.
Everything the workflow must know about a kind before any job runs is its record here, so the
Snakefile and the config checks plan with this module alone (no torch, no matplotlib):

- an analysis kind: its module (`bnstudy.analysis.<module>.compute`), its config block (the JSON
  schema of its settings, with defaults) and its table's columns. A new analysis is its module,
  its record here and a figure kind that shows it;
- a figure kind: the run tables and analysis tables it reads and the setup key a study must vary
  for it; its code is a `Drawer` (data function and plot) in `bnstudy.figures.draw.DRAWERS` and its
  caption `workflow/report/figures/<kind>.rst`. Code outside the package adds one with
  `bnstudy.figures.draw.register` (both records at once).
The tests check that every record has its code and caption.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# analyses of a run's checkpoints


@dataclass(frozen=True)
class AnalysisKind:
    """One checkpoint analysis: `compute(origin, settings) -> rows` in `bnstudy.analysis.<module>`
    (rows without `step`, which the analysis job adds), a table with `columns` per run, and the
    study config block `settings` (JSON-schema properties, beyond the settings every analysis
    has: steps, batch_size, batches, seed, noise, dtype)."""

    module: str
    columns: tuple[str, ...]
    settings: Mapping[str, dict] = field(default_factory=dict)


# which statistics normalisers use in an analysis that offers the choice (recorded in its table)
BN_MODE = {"type": "string", "enum": ["batch", "running"], "default": "batch",
           "description": "batch: the batch's statistics (training mode: the loss SGD descends); running: "
                          "the checkpoint's running statistics (eval mode, as PyHessian and loss-landscape use)"}
# the same choice for the Hessian analyses, which may also take both modes (["batch", "running"]):
# their rows in each (Ghorbani et al. 2019: BN's missing outliers return with whole-data statistics)
BN_MODES = {"anyOf": [{"type": "string", "enum": ["batch", "running"]},
                      {"type": "array", "items": {"type": "string", "enum": ["batch", "running"]},
                       "minItems": 1, "uniqueItems": True}],
            "default": "batch",
            "description": BN_MODE["description"] + "; a list of both gives the rows of each"}

ANALYSES: dict[str, AnalysisKind] = {
    # Definition 2.1 (Santurkar et al. 2018, Fig. 3)
    "ics": AnalysisKind(
        module="ics",
        columns=("step", "layer", "l2_diff", "cosine", "grad_norm"),),
    # section 3.2 (Figs. 4, 10): loss, gradient change and beta along the gradient
    "landscape": AnalysisKind(
        module="landscape",
        columns=("step", "direction", "eta", "eta_rel", "loss", "grad_diff", "beta"),
        settings={
            "eta_min": {"type": "number", "exclusiveMinimum": 0, "default": 0.5},
            "eta_max": {"type": "number", "exclusiveMinimum": 0, "default": 4.0},
            "points": {"type": "integer", "minimum": 2, "default": 8},
            "relative": {"type": "boolean", "default": True,
                         "description": "eta = value x lr (the paper's ranges)"},
            "random_directions": {"type": "integer", "minimum": 0, "default": 0},
        }),
    # section 4 (Theorem 4.2): curvature along the gradient, the Hessian's extreme eigenvalues
    "curvature": AnalysisKind(
        module="curvature",
        columns=("step", "grad_quadratic", "top_eigenvalue", "top_residual", "bottom_eigenvalue",
                 "bottom_residual", "products", "converged"),
        settings={
            "tol": {"type": "number", "exclusiveMinimum": 0, "default": 1.0e-3,
                    "description": "Lanczos (ARPACK) relative tolerance of each extreme eigenvalue"},
            "max_products": {"type": "integer", "minimum": 2, "default": 200,
                             "description": "Hessian-vector products each eigenvalue search may take"},
        }),
    # Ghorbani et al. 2019; Cohen et al. 2021: the extreme eigenvalues, gradient share, trace
    "spectrum": AnalysisKind(
        module="spectrum",
        columns=("step", "bn_mode", "rank", "eigenvalue", "residual", "converged", "gradient_share",
                 "trace", "trace_se", "products", "samples"),
        settings={
            "top_k": {"type": "integer", "minimum": 1, "default": 20,
                      "description": "largest eigenvalues (and the gradient share in their span); Ghorbani "
                                     "et al. expect about C outliers for C classes: 2C shows their gap"},
            "smallest": {"type": "boolean", "default": True, "description": "also the smallest eigenvalue"},
            "trace_probes": {"type": "integer", "minimum": 0, "default": 10,
                             "description": "Hutchinson probes for the trace; 0 = no trace"},
            "tol": {"type": "number", "exclusiveMinimum": 0, "default": 1.0e-3,
                    "description": "Lanczos (ARPACK) relative tolerance; a row is converged if its "
                                   "residual ||H v - lambda v|| / |lambda| <= tol"},
            "max_products": {"type": "integer", "minimum": 2, "default": 300},
            "bn_mode": BN_MODES,
        }),
    # Ghorbani et al. 2019: the spectral density by stochastic Lanczos quadrature
    "density": AnalysisKind(
        module="density",
        columns=("step", "bn_mode", "start", "node", "weight", "n_params", "samples"),
        settings={
            "lanczos_steps": {"type": "integer", "minimum": 2, "default": 80,
                              "description": "Lanczos steps per start (the reference: 80)"},
            "starts": {"type": "integer", "minimum": 1, "default": 10,
                       "description": "random start vectors (the reference: 10)"},
            "bn_mode": BN_MODES,
        }),
    # Lubana et al. 2021: per-layer similarity of samples, rank, gradient norm
    "activations": AnalysisKind(
        module="activations",
        columns=("step", "bn_mode", "layer", "cosine_similarity", "stable_rank", "grad_norm", "activation_var",
                 "weight_grad_cos", "unexplained_cos"),
        settings={"bn_mode": BN_MODE}),
    # Li et al. 2018: the loss on a plane of two filter-normalised random directions
    "surface": AnalysisKind(
        module="surface",
        columns=("step", "bn_mode", "x", "y", "loss", "accuracy"),
        settings={
            "points": {"type": "integer", "minimum": 3, "default": 21,
                       "description": "grid points per axis (odd: the checkpoint itself is on the grid; the reference: 51)"},
            "span": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                     "description": "the grid covers [-span, span]^2 in units of the filter-normalised directions"},
            "bn_mode": BN_MODE,
        }),
    # Cohen et al. 2021: the sharpness (the largest Hessian eigenvalue) alone, cheap enough for
    # every checkpoint; samples = training samples the loss averages over (batch_size x batches)
    "sharpness": AnalysisKind(
        module="sharpness",
        columns=("step", "bn_mode", "sharpness", "residual", "converged", "products", "samples"),
        settings={
            "tol": {"type": "number", "exclusiveMinimum": 0, "default": 1.0e-3,
                    "description": "Lanczos (ARPACK) relative residual tolerance of the largest eigenvalue "
                                   "(the eigenvalue's own error is of order its square over the gap)"},
            "max_products": {"type": "integer", "minimum": 22, "default": 40,
                             "description": "Hessian-vector products per checkpoint, the residual check "
                                            "included (typically 22: ARPACK's 20 Lanczos vectors take 21 "
                                            "before its first answer); an unconverged search gives NaN"},
            "bn_mode": BN_MODE,
        }),
}


# ---------------------------------------------------------------------------------------------
# figures


@dataclass(frozen=True)
class FigureKind:
    """What a figure kind reads besides runs.csv (run tables, analysis tables) and the setup key, if
    any, that its study must vary (its x axis)."""

    tables: tuple[str, ...] = ()
    analyses: tuple[str, ...] = ()   # keys of ANALYSES: the study must configure each
    axis: str | None = None
    # the claims split this figure's measure into an early and a late window: mark the boundary
    windows: bool = False
    # the table whose Lanczos searches the legend counts (unconverged points marked in the data)
    eigen_table: str | None = None


FIGURE_KINDS: dict[str, FigureKind] = {
    # the paper's: accuracies and losses over steps, activation distributions, ICS, the landscape
    "accuracy": FigureKind(("eval",)),            # train (training mode) and test (eval mode) accuracy
    "train_accuracy": FigureKind(("eval",)),      # train accuracy, training mode vs eval mode
    "test_accuracy": FigureKind(("eval",)),       # test accuracy over steps
    # the same, one line per kind of training in one panel (Frankle et al.'s comparison: full,
    # BN's gamma and beta only, as many random other weights)
    "test_accuracy_by_train_only": FigureKind(("eval",), axis="optim.train_only"),
    "train_loss": FigureKind(("train",)),         # training loss over steps (the DLN)
    "distributions": FigureKind(("units",)),      # single units' activation percentiles over steps
    "unit_input": FigureKind(("units",)),         # one last-layer unit (Ioffe & Szegedy Fig. 1b-c)
    "moment_changes": FigureKind(("layers",)),    # per-unit |mu_t+1 - mu_t|, |var_t+1 - var_t|
    "ics": FigureKind(analyses=("ics",), windows=True),              # Definition 2.1
    "landscape": FigureKind(analyses=("landscape",), windows=True),  # loss range, predictiveness, beta
    # g^T H g / |g|^2 and the top Hessian eigenvalue
    "curvature": FigureKind(analyses=("curvature",), eigen_table="curvature"),
    # final values against a run setting
    "accuracy_vs_lr": FigureKind(),               # final test accuracy against the learning rate
    "accuracy_vs_init_scale": FigureKind(axis="model.init_scale"),
    "accuracy_vs_dropout": FigureKind(axis="model.dropout"),
    "generalisation_gap": FigureKind(),           # final train - test accuracy against dropout / lr
    # beyond the paper
    # lambda_max, outliers, trace, lambda_min
    "hessian_spectrum": FigureKind(analyses=("spectrum",), windows=True, eigen_table="spectrum"),
    "spectral_density": FigureKind(analyses=("density",)),        # SLQ density per checkpoint
    "edge_of_stability": FigureKind(("train",), ("sharpness",)),  # loss, sharpness, lr x sharpness vs 2
    "loss_surface": FigureKind(analyses=("surface",)),            # 2-D surfaces and the basin radius
    "layer_measures": FigureKind(analyses=("activations",)),      # Lubana et al.'s measures against depth
    # the first layer's gradient norm against GroupNorm's group size (Lubana et al.)
    "gradient_vs_group_size": FigureKind(analyses=("activations",), axis="norm.group_size"),
    "activation_vs_lr": FigureKind(analyses=("activations",)),    # last layer's variance vs lr (Bjorck et al.)
    "weight_norm": FigureKind(("layers",)),       # ||w||^2 beside lr^2 sum ||g||^2, effective lr (Arora et al.)
}


def figure_tables(kind: str) -> tuple[str, ...]:
    """Every study table figure `kind` reads: runs.csv, its run tables, the analyses it shows."""
    record = FIGURE_KINDS[kind]
    return ("runs",) + record.tables + record.analyses
