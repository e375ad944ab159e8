"""The figure kinds and claim kinds a study can list in its config, and the tables each reads.

Studies are config: a study names a setup, its variants, learning rates and seeds, and lists the
figure kinds (`figures:`) and claims (`claims:`) it produces. This catalog is what the Snakefile
plans with, so it imports neither matplotlib nor torch; `bnstudy.figures` and `bnstudy.claims`
hold the code of each kind (a test checks that every kind here has one). A figure kind's caption
is the file `workflow/report/figures/<kind>.rst`.
"""

from __future__ import annotations

from dataclasses import dataclass

# figure kind -> the study tables it reads (besides runs.csv, which every figure reads)
FIGURE_KINDS: dict[str, tuple[str, ...]] = {
    "accuracy": ("eval",),                # train (training mode) and test (eval mode) accuracy over steps
    "train_accuracy": ("eval",),          # train accuracy, training mode vs eval mode
    "test_accuracy": ("eval",),           # test accuracy over steps
    "train_loss": ("train",),             # training loss over steps (the DLN)
    "distributions": ("units",),          # single units' activation percentiles over steps
    "unit_input": ("units",),             # one unit of the last layer (Ioffe & Szegedy Fig. 1b-c)
    "moment_changes": ("layers",),        # per-unit |mu_t+1 - mu_t|, |var_t+1 - var_t|
    "ics": ("ics",),                      # Definition 2.1
    "landscape": ("landscape",),          # loss range, gradient predictiveness, beta-smoothness
    "curvature": ("curvature",),          # g^T H g / |g|^2 and the top Hessian eigenvalue
    "accuracy_vs_lr": (),                 # final test accuracy against the learning rate
    "accuracy_vs_init_scale": (),         # final test accuracy against the init scale
    "accuracy_vs_dropout": (),            # final test accuracy against the dropout rate
    "generalisation_gap": (),             # final train - test accuracy against dropout / lr
}

@dataclass(frozen=True)
class ClaimNeeds:
    """What a claim kind reads and what its study must contain for the test to be fair."""

    tables: tuple[str, ...] = ()                        # study tables besides runs.csv
    variants: tuple[str, str] = ("batchnorm", "standard")  # (treated, reference)
    min_lrs: int = 1                                    # a learning-rate grid of at least this size
    grid: str | None = None                             # a setup key the study must vary
    activation: str | None = None                       # the setup's non-linearity


CLAIM_KINDS: dict[str, ClaimNeeds] = {
    "higher_learning_rates": ClaimNeeds(min_lrs=2),
    # each variant at its own best learning rate, per init scale
    "initialisation": ClaimNeeds(min_lrs=2, grid="model.init_scale"),
    "regularisation": ClaimNeeds(grid="model.dropout"),
    "generalisation_gap": ClaimNeeds(),
    "sigmoid": ClaimNeeds(min_lrs=2, activation="sigmoid"),
    "faster_training": ClaimNeeds(tables=("eval",)),
    "reduces_ics": ClaimNeeds(tables=("train", "ics")),
    "smoother_landscape": ClaimNeeds(tables=("train", "landscape")),
    "noisy_bn_trains": ClaimNeeds(variants=("noisy_batchnorm", "batchnorm")),
}


def claim_design_problem(kind: str, study: dict, setup: dict) -> str | None:
    """Why a study cannot test claim `kind` by design (None if it can): a config error."""
    needs = CLAIM_KINDS[kind]
    missing = [v for v in needs.variants if v not in study["variants"]]
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


def figure_tables(kind: str) -> tuple[str, ...]:
    return ("runs",) + FIGURE_KINDS[kind]


def claim_tables(kind: str) -> tuple[str, ...]:
    return ("runs",) + CLAIM_KINDS[kind].tables
