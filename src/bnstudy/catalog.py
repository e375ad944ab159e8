"""The extension points of a study, one record each: analysis kinds, figure kinds, claim kinds.

Studies are config: a study names a setup, its variants, learning rates and seeds, configures the
analyses it needs (one block per analysis kind), and lists the figure kinds and claims it produces.
Everything the workflow must know about a kind before any job runs is its record here, so the
Snakefile and the config checks plan with this module alone (no torch, no matplotlib):

- an analysis kind: its module (`bnstudy.analysis.<module>.compute`), its config block (the JSON
  schema of its settings, with defaults), its table's columns and the figure kinds that read the
  table. A new analysis is its module, its record here and the caption of the figure that shows it;
- a figure kind: the run tables it reads (the analysis tables come from the analysis records) and
  the setup key a study must vary for it; its code is a drawer in `bnstudy.figures.DRAWERS` and its
  caption `workflow/report/figures/<kind>.rst`;
- a claim kind: the variants it compares, the tables it reads and what its study must contain; its
  code is a `Claim` in `bnstudy.claims`.
The tests check that every record has its code and caption.
"""

from __future__ import annotations

import dataclasses
import math
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
    figures: tuple[str, ...]
    settings: Mapping[str, dict] = field(default_factory=dict)


# which statistics normalisers use in an analysis that offers the choice (recorded in its table)
BN_MODE = {"type": "string", "enum": ["batch", "running"], "default": "batch",
           "description": "batch: the batch's statistics (training mode: the loss SGD descends); running: "
                          "the checkpoint's running statistics (eval mode, as PyHessian and loss-landscape use)"}

ANALYSES: dict[str, AnalysisKind] = {
    # Definition 2.1 (Santurkar et al. 2018, Fig. 3)
    "ics": AnalysisKind(
        module="ics",
        columns=("step", "layer", "l2_diff", "cosine", "grad_norm"),
        figures=("ics",)),
    # section 3.2 (Figs. 4, 10): loss, gradient change and beta along the gradient
    "landscape": AnalysisKind(
        module="landscape",
        columns=("step", "direction", "eta", "eta_rel", "loss", "grad_diff", "beta"),
        figures=("landscape",),
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
        figures=("curvature",),
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
                 "trace", "trace_se", "products"),
        figures=("hessian_spectrum", "edge_of_stability"),
        settings={
            "top_k": {"type": "integer", "minimum": 1, "default": 5,
                      "description": "largest eigenvalues (and the gradient share in their span)"},
            "smallest": {"type": "boolean", "default": True, "description": "also the smallest eigenvalue"},
            "trace_probes": {"type": "integer", "minimum": 0, "default": 10,
                             "description": "Hutchinson probes for the trace; 0 = no trace"},
            "tol": {"type": "number", "exclusiveMinimum": 0, "default": 1.0e-3},
            "max_products": {"type": "integer", "minimum": 2, "default": 300},
            "bn_mode": BN_MODE,
        }),
    # Ghorbani et al. 2019: the spectral density by stochastic Lanczos quadrature
    "density": AnalysisKind(
        module="density",
        columns=("step", "bn_mode", "start", "node", "weight", "n_params"),
        figures=("spectral_density",),
        settings={
            "lanczos_steps": {"type": "integer", "minimum": 2, "default": 80,
                              "description": "Lanczos steps per start (the reference: 80)"},
            "starts": {"type": "integer", "minimum": 1, "default": 10,
                       "description": "random start vectors (the reference: 10)"},
            "bn_mode": BN_MODE,
        }),
    # Lubana et al. 2021: per-layer similarity of samples, rank, gradient norm
    "activations": AnalysisKind(
        module="activations",
        columns=("step", "bn_mode", "layer", "cosine_similarity", "stable_rank", "grad_norm", "activation_var"),
        figures=("layer_measures", "gradient_vs_group_size"),
        settings={"bn_mode": BN_MODE}),
    # Li et al. 2018: the loss on a plane of two filter-normalised random directions
    "surface": AnalysisKind(
        module="surface",
        columns=("step", "bn_mode", "x", "y", "loss", "accuracy"),
        figures=("loss_surface",),
        settings={
            "points": {"type": "integer", "minimum": 3, "default": 21,
                       "description": "grid points per axis (odd: the checkpoint itself is on the grid; the reference: 51)"},
            "span": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                     "description": "the grid covers [-span, span]^2 in units of the filter-normalised directions"},
            "bn_mode": BN_MODE,
        }),
}


# ---------------------------------------------------------------------------------------------
# figures


@dataclass(frozen=True)
class FigureKind:
    """What a figure kind reads besides runs.csv (run tables; analysis tables are named by the
    analysis records) and the setup key, if any, that its study must vary (its x axis)."""

    tables: tuple[str, ...] = ()
    axis: str | None = None


FIGURE_KINDS: dict[str, FigureKind] = {
    "accuracy": FigureKind(("eval",)),            # train (training mode) and test (eval mode) accuracy
    "train_accuracy": FigureKind(("eval",)),      # train accuracy, training mode vs eval mode
    "test_accuracy": FigureKind(("eval",)),       # test accuracy over steps
    "train_loss": FigureKind(("train",)),         # training loss over steps (the DLN)
    "distributions": FigureKind(("units",)),      # single units' activation percentiles over steps
    "unit_input": FigureKind(("units",)),         # one last-layer unit (Ioffe & Szegedy Fig. 1b-c)
    "moment_changes": FigureKind(("layers",)),    # per-unit |mu_t+1 - mu_t|, |var_t+1 - var_t|
    "ics": FigureKind(),                          # Definition 2.1
    "landscape": FigureKind(),                    # loss range, gradient predictiveness, beta
    "curvature": FigureKind(),                    # g^T H g / |g|^2 and the top Hessian eigenvalue
    "accuracy_vs_lr": FigureKind(),               # final test accuracy against the learning rate
    "accuracy_vs_init_scale": FigureKind(axis="model.init_scale"),
    "accuracy_vs_dropout": FigureKind(axis="model.dropout"),
    "generalisation_gap": FigureKind(),           # final train - test accuracy against dropout / lr
    "hessian_spectrum": FigureKind(),             # lambda_max, trace, gradient share, lambda_min (spectrum)
    "spectral_density": FigureKind(),             # SLQ density per checkpoint (density)
    "edge_of_stability": FigureKind(("train",)),  # loss and sharpness against 2/lr (spectrum)
    "loss_surface": FigureKind(),                 # 2-D surfaces and the basin radius (surface)
    "layer_measures": FigureKind(),               # Lubana et al.'s per-layer measures against depth (activations)
    "gradient_vs_group_size": FigureKind(axis="norm.group_size"),  # first-layer gradient norm (activations)
    "weight_norm": FigureKind(("layers",)),       # ||w||^2 beside lr^2 sum ||g||^2, effective lr (Arora et al.)
}


def figure_tables(kind: str) -> tuple[str, ...]:
    """Every study table figure `kind` reads: runs.csv, its run tables, the analyses it shows."""
    analyses = tuple(name for name, record in ANALYSES.items() if kind in record.figures)
    return ("runs",) + FIGURE_KINDS[kind].tables + analyses


# ---------------------------------------------------------------------------------------------
# claims


@dataclass(frozen=True)
class ClaimRules:
    """Gates and thresholds of the verdict rule (bnstudy.claims); per study overridable via
    `claim_rules` in the config."""

    min_steps: int = 1000            # shorter runs cannot speak to any claim
    chance_accuracy: float = 0.1     # CIFAR-10 and MNIST have 10 balanced classes
    chance_margin: float = 0.05      # "left chance" = accuracy above chance + margin
    min_loss_drop: float = 0.01      # regression: the loss must fall by this fraction to count as training
    usable_fraction: float = 0.5     # lr usable if accuracy >= chance + fraction * (best mean - chance)
    noninferiority_margin: float = 0.05  # "about as well": at most 5 accuracy points worse
    alpha: float = 0.05              # level of the exact sign-flip tests
    # the part of training the checkpoint-analysis claims average over: steps >= from_step. The
    # default leaves out only initialisation, whose values are reported in rows of their own
    from_step: int = 1
    # Ghorbani et al.'s outliers: the bulk of the spectral density ends where it leaves this mass
    # above it (its 1 - bulk_mass quantile); the outlier ratio is the largest eigenvalue over it
    bulk_mass: float = 0.05
    # Cohen et al.'s edge of stability: after the first crossing, lr x sharpness "hovers just above
    # 2"; the claim holds if the interval of its median lies in [eos_low, eos_high]
    eos_low: float = 1.8
    eos_high: float = 2.6
    # the config check refuses a claim its study's seeds can never decide; true lets such a study
    # run anyway (its rows then say inconclusive): for smoke tests of the pipeline
    allow_undecidable: bool = False

    def overridden(self, overrides: Mapping | None) -> "ClaimRules":
        unknown = set(overrides or {}) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown claim_rules keys {sorted(unknown)}")
        return dataclasses.replace(self, **dict(overrides or {}))


@dataclass(frozen=True)
class ClaimNeeds:
    """What a claim kind reads and what its study must contain for the test to be fair."""

    tables: tuple[str, ...] = ()                        # study tables besides runs.csv
    variants: tuple[str, str] = ("batchnorm", "standard")  # (treated, reference)
    min_lrs: int = 1                                    # a learning-rate grid of at least this size
    grid: str | None = None                             # a setup key the study must vary
    activation: str | None = None                       # the setup's non-linearity
    exact: bool = False                                 # a measure on a grid: exact sign-flip test
    per_variant: bool = False                           # one set of rows per variant against the reference


CLAIM_KINDS: dict[str, ClaimNeeds] = {
    "higher_learning_rates": ClaimNeeds(min_lrs=2, exact=True),
    # each variant at its own best learning rate, per init scale
    "initialisation": ClaimNeeds(min_lrs=2, grid="model.init_scale"),
    "regularisation": ClaimNeeds(grid="model.dropout"),
    "generalisation_gap": ClaimNeeds(),
    "sigmoid": ClaimNeeds(min_lrs=2, activation="sigmoid"),
    "faster_training": ClaimNeeds(tables=("eval",), exact=True),
    "reduces_ics": ClaimNeeds(tables=("train", "ics")),
    "smoother_landscape": ClaimNeeds(tables=("train", "landscape")),
    "noisy_bn_trains": ClaimNeeds(variants=("noisy_batchnorm", "batchnorm")),
    # the noise alone, on the network without a normaliser (the standard network must train)
    "noise_stops_training": ClaimNeeds(variants=("standard_noise", "standard")),
    "unit_noise_stops_training": ClaimNeeds(variants=("standard_unit_noise", "standard")),
    # the studies beyond the paper
    "hessian_outliers": ClaimNeeds(tables=("train", "spectrum", "density")),
    "edge_of_stability": ClaimNeeds(tables=("train", "spectrum"), variants=("standard", "batchnorm")),
    "wider_basin": ClaimNeeds(tables=("train", "surface")),
    "bn_trains_better": ClaimNeeds(min_lrs=1),
    # every other normaliser of the study against the standard network
    "smoother_than_none": ClaimNeeds(tables=("train", "landscape"), variants=("standard", "standard"),
                                     per_variant=True),
    "group_size_gradients": ClaimNeeds(tables=("activations",), variants=("groupnorm", "groupnorm"),
                                       grid="norm.group_size"),
    "scale_invariance": ClaimNeeds(tables=("layers",)),
}


def seeds_needed(kind: str, rules: ClaimRules) -> int:
    """The fewest seeds with which claim `kind` can reach a decision at all: an exact sign-flip
    test over n seeds cannot go below p = 1/2^n, so it needs 2^-n <= alpha; a t interval needs
    two seeds to have a spread."""
    if CLAIM_KINDS[kind].exact:
        return max(2, math.ceil(math.log2(1 / rules.alpha) - 1e-9))
    return 2


def claim_design_problem(kind: str, study: dict, setup: dict) -> str | None:
    """Why a study cannot test claim `kind` by design (None if it can): a config error."""
    needs = CLAIM_KINDS[kind]
    if needs.per_variant:
        others = [v for v in study["variants"] if v != needs.variants[1]]
        if needs.variants[1] not in study["variants"] or not others:
            return f"it compares each variant with {needs.variants[1]}: give the study {needs.variants[1]} and others"
    missing = [] if needs.per_variant else [v for v in needs.variants if v not in study["variants"]]
    if missing:
        return f"it compares {needs.variants[0]} with {needs.variants[1]}: add {missing} to the study's variants"
    if len(study["lrs"]) < needs.min_lrs:
        return (f"it compares each variant at its own best learning rate: give the study at least "
                f"{needs.min_lrs} lrs")
    if needs.grid and len(study["grid"].get(needs.grid, [])) < 2:
        return f"it compares runs over {needs.grid}: give the study grid: {{{needs.grid}: [two or more values]}}"
    if needs.grid == "model.dropout" and 0 not in study["grid"]["model.dropout"]:
        return "it measures what dropout adds: include 0 in grid model.dropout"
    if needs.activation and setup["model"]["activation"] != needs.activation:
        return f"it is about {needs.activation} networks: set model.activation: {needs.activation}"
    return None


def claim_tables(kind: str) -> tuple[str, ...]:
    return ("runs",) + CLAIM_KINDS[kind].tables

