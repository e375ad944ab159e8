"""Arora, Li & Lyu 2019: a weight followed by BN is scale-invariant, so its gradient is orthogonal
to it and, under plain SGD, its norm grows by exactly lr^2 ||g||^2 each step."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...tables import derived
from ...files import TableError
from ...tables.view import StudyView
from ..measures import by_condition
from ..record import SUPPORTED, Claim, Row
from ...config.claim_rules import ClaimRules


def _identity_rows(data: StudyView, variant: str, column: str) -> pd.DataFrame:
    """The activations analysis's eps-identity columns of `variant`, batch statistics (the check
    needs the gradient in float64 to resolve it: float32's BN backward leaves ~1e-4 in layer 1)."""
    table = data.table("activations")
    table = table[(table["variant"] == variant) & (table["bn_mode"] == "batch")].dropna(subset=[column])
    if table.empty and variant == "batchnorm":
        raise TableError(f"no {column} in the activations table: rerun the activations analysis (the column came "
                         f"with the eps identity)")
    return table


def log_largest_cosine(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """Per run: log10 of the largest |cos(w, g)| over its analysed checkpoints, layers and filters."""
    largest = _identity_rows(data, variant, "weight_grad_cos").groupby("run")["weight_grad_cos"].max()
    return by_condition(np.log10(largest.clip(lower=1e-300)), data)


def log_unexplained_cosine(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """Per run: log10 of the largest part of |cos(w, g)| that BN's eps does not explain (w . g =
    eps/(v + eps) gamma dL/dgamma per channel), over its analysed checkpoints, layers and filters."""
    largest = _identity_rows(data, variant, "unexplained_cos").groupby("run")["unexplained_cos"].max()
    return by_condition(np.log10(largest.clip(lower=1e-300)), data)


def log_norm_prediction_error(data: StudyView, variant: str, rules: ClaimRules) -> pd.Series:
    """Per run: log10 of the largest relative gap between ||w_t||^2 and its scale-invariance
    prediction ||w_0||^2 + lr^2 sum_{s<t} ||g_s||^2 (needs every step recorded: log.layers_every 1)."""
    layers = data.table("layers")
    layers = layers[layers["variant"] == variant].dropna(subset=["weight_norm"])
    if layers.empty or layers.groupby(["run", "layer"])["step"].diff().dropna().gt(1).any():
        raise TableError("the scale-invariance prediction needs every step recorded: set log.layers_every: 1")
    weights = derived.weight_norms(layers)
    gap = ((weights["w_sq"] - weights["w_sq_predicted"]).abs() / weights["w_sq"]).groupby(weights["run"]).max()
    return by_condition(np.log10(gap.clip(lower=1e-30)), data)


def _minus_three(rules: ClaimRules) -> float:
    return -3.0


CLAIMS = (
    Claim(
        "scale_invariance", "BN makes its layers' weights scale-invariant", "Arora 2019",
        "Arora, Li & Lyu 2019: with BN, w . grad L = 0, so under plain SGD ||w_t+1||^2 = ||w_t||^2 +"
        " lr^2 ||g_t||^2 and the effective learning rate lr / ||w||^2 falls by itself",
        (Row("eps_identity", "log10 of the largest |w . g - eps/(v + eps) gamma dL/dgamma| / (||w|| ||g||) over"
             " the analysed checkpoints, layers and filters (activations analysis, first batch, in its dtype:"
             " float64 resolves it): the part of cos(w, g) that BN's eps does not explain; batchnorm's value"
             " per seed; holds below log10 claim_rules.unexplained_cosine", log_unexplained_cosine, "below",
             threshold=lambda rules: float(np.log10(rules.unexplained_cosine)), unit="value", variant="batchnorm"),
         Row("cosine", "log10 of the largest |cos(w, g)| over the analysed checkpoints, layers and filters, batchnorm"
             " (a measurement:"
             " its size is set by BN's eps, which the eps_identity row tests)", log_largest_cosine, "below",
             threshold=_minus_three, unit="value", variant="batchnorm", reported=True),
         Row("norm_identity", "log10 of the largest relative gap between ||w_t||^2 and ||w_0||^2 + lr^2"
             " sum ||g_s||^2; batchnorm's value per seed; holds below -3", log_norm_prediction_error, "below",
             threshold=_minus_three, unit="value", variant="batchnorm"),
         Row("standard_cosine", "the same largest |cos(w, g)| of the standard network (a control: no scale"
             " invariance without a normaliser)", log_largest_cosine, "below",
             threshold=_minus_three, unit="value", variant="standard", reported=True),
         Row("standard_norm_identity", "the same largest relative gap of the norm identity, standard network (a"
             " control: without a normaliser ||w||^2 need not follow it)", log_norm_prediction_error, "below",
             threshold=_minus_three, unit="value", variant="standard", reported=True)),
        findings=(("Arora 2019", SUPPORTED),), paired=False, must_train="batchnorm", tables=("layers", "activations")),
)
