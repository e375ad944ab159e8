"""The verdict rule on constructed data: supported, not supported, and each kind of inconclusive."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_tables import STUDIES, Outcome, default_outcome, make_tables  # noqa: E402

from bnstudy.claims import (  # noqa: E402
    CLAIMS, COLUMNS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, ClaimRules, claims, decide,
)
from bnstudy.stats import mean_ci, paired_differences, t_quantile_975  # noqa: E402

FAST = ClaimRules(min_steps=100)  # the fixtures train for 200 steps
THREE_SEEDS = {"seeds": [0, 1, 2]}


def verdict_row(tmp_path, study, outcome, rules=FAST, studies_cfg=None, **cfg_overrides) -> pd.Series:
    """Build ``study``'s tables from ``outcome``, run claims(), return that study's row."""
    cfg = {**STUDIES[study], **cfg_overrides}
    make_tables(tmp_path, study, cfg, outcome=outcome)
    table = claims(tmp_path / "tables", studies_cfg or {study: cfg}, tmp_path / "claims.csv",
                   tmp_path / "claims.md", rules)
    return table.set_index("study").loc[study]


def by_variant(**outcomes: Outcome):
    return lambda variant, lr, seed, grid: outcomes[variant]


# ---------------------------------------------------------------------------------------------
# stats


def test_t_table_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [1, 2, 3, 7, 29, 30, 35, 50, 100, 500, 10_000]:
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3), df


def test_mean_ci_and_pairing():
    interval = mean_ci([1.0, 2.0, 3.0, np.nan])
    assert interval.n == 3 and interval.mean == 2.0
    assert interval.high - 2.0 == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    one = mean_ci([5.0])
    assert one.n == 1 and math.isnan(one.low) and math.isnan(one.high)
    treated = pd.Series([3.0, 5.0, 9.0], index=pd.Index([0, 1, 2], name="seed"))
    reference = pd.Series([1.0, np.inf], index=pd.Index([0, 1], name="seed"))
    assert paired_differences(treated, reference).to_dict() == {0: 2.0}


# ---------------------------------------------------------------------------------------------
# the rule itself


@pytest.mark.parametrize("low, high, n, threshold, holds, expected", [
    (0.1, 0.5, 3, 0.0, "above", SUPPORTED),
    (-0.5, -0.1, 3, 0.0, "above", NOT_SUPPORTED),
    (-0.5, 0.0, 3, 0.0, "above", NOT_SUPPORTED),     # touching the threshold is no support
    (-0.1, 0.5, 3, 0.0, "above", INCONCLUSIVE),      # straddles
    (-0.5, -0.1, 3, 0.0, "below", SUPPORTED),
    (0.0, 0.0, 3, 0.0, "below", NOT_SUPPORTED),      # exactly no effect
    (-0.04, 0.0, 3, -0.05, "above", SUPPORTED),      # non-inferiority margin
    (0.1, 0.5, 1, 0.0, "above", INCONCLUSIVE),       # one seed
])
def test_decide(low, high, n, threshold, holds, expected):
    assert decide(low, high, n, threshold, holds)[0] == expected


def test_blockers_override_a_clear_interval():
    verdict, reason = decide(1.0, 2.0, 5, 0.0, "above", ["runs too short"])
    assert (verdict, reason) == (INCONCLUSIVE, "runs too short")


# ---------------------------------------------------------------------------------------------
# claims() end to end on constructed tables


def test_bn_with_larger_ics_means_not_supported(tmp_path):
    """The 2018 finding: BN's ICS is not lower, so 'BN reduces ICS' is not supported."""
    row = verdict_row(tmp_path, "ics", by_variant(standard=Outcome(ics_l2=1.0), batchnorm=Outcome(ics_l2=3.0)),
                      **THREE_SEEDS)
    assert row["verdict"] == NOT_SUPPORTED
    assert row["effect"] == pytest.approx(math.log10(3.0), abs=0.05) and row["n_seeds"] == 3
    assert row["ci_low"] > 0


def test_bn_with_smaller_ics_means_supported_also_for_the_dln(tmp_path):
    row = verdict_row(tmp_path, "ics_dln", by_variant(standard=Outcome(ics_l2=1.0), batchnorm=Outcome(ics_l2=0.1)),
                      **THREE_SEEDS)
    assert row["verdict"] == SUPPORTED and row["effect"] == pytest.approx(-1.0, abs=0.05)


def test_seeds_that_disagree_give_a_straddling_ci(tmp_path):
    betas = {0: (10.0, 100.0), 1: (100.0, 10.0), 2: (30.0, 30.0)}  # seed -> (batchnorm, standard)

    def outcome(variant, lr, seed, grid):
        return Outcome(beta=betas[seed][variant == "standard"])

    row = verdict_row(tmp_path, "landscape", outcome, **THREE_SEEDS)
    assert row["verdict"] == INCONCLUSIVE and "straddles" in row["reason"]
    assert row["ci_low"] < 0 < row["ci_high"]


def test_smoother_bn_landscape_is_supported(tmp_path):
    # the fixture's random-direction rows are 1e6 larger: only direction == gradient may count
    row = verdict_row(tmp_path, "landscape", by_variant(standard=Outcome(beta=100.0), batchnorm=Outcome(beta=5.0)))
    assert row["verdict"] == SUPPORTED and row["effect"] == pytest.approx(math.log10(5 / 100), abs=0.1)


def test_one_seed_is_inconclusive(tmp_path):
    row = verdict_row(tmp_path, "landscape", by_variant(standard=Outcome(beta=100.0), batchnorm=Outcome(beta=5.0)),
                      seeds=[0])
    assert row["verdict"] == INCONCLUSIVE and row["n_seeds"] == 1 and "< 2" in row["reason"]
    assert row["effect"] < 0  # the effect is still reported


def test_short_runs_are_inconclusive(tmp_path):
    row = verdict_row(tmp_path, "landscape", by_variant(standard=Outcome(beta=100.0), batchnorm=Outcome(beta=5.0)),
                      rules=ClaimRules(min_steps=1000))
    assert row["verdict"] == INCONCLUSIVE and "too short" in row["reason"]


def test_baseline_at_chance_is_inconclusive(tmp_path):
    stuck = Outcome(train_accuracy=0.11, test_accuracy=0.1)
    row = verdict_row(tmp_path, "claim_sigmoid", by_variant(standard=stuck, batchnorm=stuck))
    assert row["verdict"] == INCONCLUSIVE and "never leaves chance" in row["reason"]


def test_regression_baseline_that_never_lowers_its_loss_is_inconclusive(tmp_path):
    flat = Outcome(ics_l2=1.0, final_loss=2.6)
    row = verdict_row(tmp_path, "ics_dln", by_variant(standard=flat, batchnorm=Outcome(ics_l2=0.1)))
    assert row["verdict"] == INCONCLUSIVE and "training loss" in row["reason"]


def test_disabled_or_missing_study_is_inconclusive(tmp_path):
    cfg = {**STUDIES["noisy_bn"], "enabled": False}
    row = verdict_row(tmp_path, "noisy_bn", default_outcome, studies_cfg={"noisy_bn": cfg})
    assert row["verdict"] == INCONCLUSIVE and "disabled" in row["reason"]
    table = pd.read_csv(tmp_path / "claims.csv")
    assert (table["verdict"] == INCONCLUSIVE).all()  # every other study is not configured


def test_standard_diverging_at_high_lr_supports_higher_learning_rates(tmp_path):
    def outcome(variant, lr, seed, grid):
        diverged = 50 if variant == "standard" and lr >= 1.0 else None
        return Outcome(0.9, 0.8, diverged)

    row = verdict_row(tmp_path, "claim_learning_rate", outcome)
    assert row["verdict"] == SUPPORTED and row["effect"] == pytest.approx(1.0)  # one decade higher


def test_grid_too_narrow_for_the_learning_rate_claim(tmp_path):
    row = verdict_row(tmp_path, "claim_learning_rate", lambda *_: Outcome(0.9, 0.8))
    assert row["verdict"] == INCONCLUSIVE and "too narrow" in row["reason"]


def test_initialisation_sensitivity(tmp_path):
    def outcome(variant, lr, seed, grid):
        scale = grid["model.init_scale"]
        accuracy = 0.8 if variant == "batchnorm" or scale == 1.0 else 0.5 - 0.01 * seed
        return Outcome(0.9, accuracy)

    row = verdict_row(tmp_path, "claim_initialisation", outcome)
    assert row["verdict"] == SUPPORTED and row["effect"] == pytest.approx(-0.305)


def test_regularisation_reads_the_lowest_dropout(tmp_path):
    def outcome(variant, lr, seed, grid):
        if grid["model.dropout"] > 0:  # at dropout > 0 BN looks worse: must be ignored
            return Outcome(0.9, 0.5 if variant == "batchnorm" else 0.85)
        return Outcome(0.95, 0.85 if variant == "batchnorm" else 0.75)

    row = verdict_row(tmp_path, "claim_regularisation", outcome)
    assert row["verdict"] == SUPPORTED and row["effect"] == pytest.approx(-0.1)


@pytest.mark.parametrize("noisy_accuracy, expected", [(0.94, SUPPORTED), (0.6, NOT_SUPPORTED)])
def test_noisy_bn_non_inferiority(tmp_path, noisy_accuracy, expected):
    def outcome(variant, lr, seed, grid):
        if variant == "noisy_batchnorm":
            return Outcome(noisy_accuracy - 0.002 * seed, 0.8)
        return default_outcome(variant, lr, seed, grid)

    row = verdict_row(tmp_path, "noisy_bn", outcome)
    assert row["verdict"] == expected


def test_outputs(tmp_path):
    verdict_row(tmp_path, "ics", default_outcome)
    table = pd.read_csv(tmp_path / "claims.csv")
    assert list(table.columns) == COLUMNS and len(table) == len(CLAIMS)
    assert set(table["source"].astype(str)) == {"2015", "2018"}
    assert table["rule"].str.contains("supported if").all() and table["paper"].str.len().gt(20).all()
    markdown = (tmp_path / "claims.md").read_text()
    assert markdown.count("\n| ") == len(CLAIMS) + 2  # header, separator, one line per claim
    assert "BN reduces internal covariate shift" in markdown


def test_missing_tables_and_missing_variants_are_inconclusive(tmp_path):
    cfg = STUDIES["ics"]
    table = claims(tmp_path / "nothing", {"ics": cfg}, tmp_path / "c.csv", tmp_path / "c.md", FAST)
    row = table.set_index("study").loc["ics"]
    assert row["verdict"] == INCONCLUSIVE and "runs.csv" in row["reason"] and "missing" in row["reason"]

    only_standard = {**cfg, "variants": ["standard"]}
    row = verdict_row(tmp_path, "ics", default_outcome, studies_cfg={"ics": cfg}, **only_standard)
    assert row["verdict"] == INCONCLUSIVE and row["reason"].startswith("no batchnorm runs")
