"""The verdict rule on constructed data: supported, not supported, each kind of inconclusive, and
tests that respect the measure (exact sign-flip tests for grid measures and zero-width intervals)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from synthetic_tables import STUDIES, Outcome, default_outcome, make_tables

from bnstudy.config.catalog import ANALYSES
from bnstudy.claims import INCONCLUSIVE, NOT_SUPPORTED, REPORTED, SUPPORTED, ClaimRules, claims_by_kind
from bnstudy.claims.table import COLUMNS, claims
from bnstudy.claims.verdict import decide
from bnstudy.config.variants import VARIANTS
from bnstudy.tables.stats import mean_ci, paired_differences, sign_flip_p, t_quantile

FAST = ClaimRules(min_steps=100)  # the fixtures train for 200 steps


def verdict_rows(tmp_path, study, outcome, rules=FAST, **cfg_overrides) -> pd.DataFrame:
    """Build ``study``'s tables from ``outcome``, run claims(), return the study's rows by key
    (<claim kind>.<measure>.<window>)."""
    cfg = {**STUDIES[study], **cfg_overrides}
    tables = make_tables(tmp_path, study, cfg, outcome=outcome)
    table = claims({study: cfg}, {study: tables["runs"].parent}, tmp_path / "claims.csv", tmp_path / "claims.md", rules)
    return table.set_index("key")


def verdict_row(tmp_path, study, outcome, rules=FAST, **cfg_overrides) -> pd.Series:
    """The first row (a claim's first measure over training, or at the end of training)."""
    rows = verdict_rows(tmp_path, study, outcome, rules, **cfg_overrides)
    return rows.iloc[0]


def by_variant(**outcomes: Outcome):
    return lambda variant, lr, seed, grid: outcomes[variant]


# ---------------------------------------------------------------------------------------------
# stats


def test_t_quantile_and_mean_ci_use_scipy():
    assert t_quantile(1) == pytest.approx(12.7062, abs=1e-4) and t_quantile(29) == pytest.approx(2.0452, abs=1e-4)
    interval = mean_ci([1.0, 2.0, 3.0, np.nan])
    assert interval.n == 3 and interval.mean == 2.0
    assert interval.high - 2.0 == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    one = mean_ci([5.0])
    assert one.n == 1 and math.isnan(one.low) and math.isnan(one.high)
    treated = pd.Series([3.0, 5.0, 9.0], index=pd.Index([0, 1, 2], name="seed"))
    reference = pd.Series([1.0, np.inf], index=pd.Index([0, 1], name="seed"))
    assert paired_differences(treated, reference).to_dict() == {0: 2.0}


def test_zero_width_interval_is_not_an_interval():
    """Seeds that agree exactly give no spread: no interval is reported as evidence."""
    degenerate = mean_ci([1.4, 1.4])
    assert degenerate.mean == pytest.approx(1.4) and math.isnan(degenerate.low) and math.isnan(degenerate.high)


def test_sign_flip_p_is_exact():
    assert sign_flip_p([1.0, 1.0]) == pytest.approx(0.25)             # 1 / 2^2
    assert sign_flip_p([1.0] * 5) == pytest.approx(1 / 32)
    assert sign_flip_p([1.0, -1.0, 1.0]) == pytest.approx(0.5)
    assert sign_flip_p([-1.0, -2.0], alternative="less") == pytest.approx(0.25)
    assert sign_flip_p([0.3, 0.3], threshold=0.3) == pytest.approx(1.0)  # on the threshold: no sign


# ---------------------------------------------------------------------------------------------
# the rule itself


@pytest.mark.parametrize("effects, threshold, holds, discrete, expected", [
    ([0.2, 0.3, 0.4], 0.0, "above", False, SUPPORTED),
    ([-0.2, -0.3, -0.4], 0.0, "above", False, NOT_SUPPORTED),
    ([-0.5, 0.0, 0.1], 0.0, "above", False, INCONCLUSIVE),        # straddles
    ([-0.2, -0.3, -0.4], 0.0, "below", False, SUPPORTED),
    ([-0.035, -0.03, -0.025], -0.05, "above", False, SUPPORTED),  # non-inferiority margin
    ([0.3], 0.0, "above", False, INCONCLUSIVE),                   # one seed
    ([1.4, 1.4], 0.0, "above", False, INCONCLUSIVE),              # zero width, 2 seeds: p = 0.25
    ([1.4, 1.4], 0.0, "above", True, INCONCLUSIVE),               # a grid measure, 2 seeds
    ([1.0] * 5, 0.0, "above", True, SUPPORTED),                   # 5 seeds agree: p = 1/32
    ([0.0] * 5, 0.0, "above", True, NOT_SUPPORTED),               # 5 seeds, no effect at all
    ([-1.0] * 5, 0.0, "above", True, NOT_SUPPORTED),              # 5 seeds the other way
    ([1.0, 1.0, 1.0, 1.0, -1.0], 0.0, "above", True, INCONCLUSIVE),  # p = 6/32
])
def test_decide(effects, threshold, holds, discrete, expected):
    assert decide(effects, threshold, holds, discrete, FAST)["verdict"] == expected


def test_degenerate_two_seed_effect_is_inconclusive_with_the_reason():
    """The old rule called [+1.40, +1.40] from 2 seeds 'supported'."""
    out = decide([1.4, 1.4], 0.0, "above", True, FAST)
    assert out["verdict"] == INCONCLUSIVE and math.isnan(out["ci_low"])
    assert "0.25" in out["reason"] and "2 seeds" in out["reason"]


def test_blockers_override_a_clear_interval():
    out = decide([1.0, 2.0, 1.5], 0.0, "above", False, FAST, ["runs too short"])
    assert (out["verdict"], out["reason"]) == (INCONCLUSIVE, "runs too short")


# ---------------------------------------------------------------------------------------------
# claims() end to end on constructed tables


def test_every_claim_record_names_known_variants_tables_and_distinct_rows():
    """A claim is one record: its variants exist, the tables it reads are run or analysis tables,
    its rows' keys are distinct and each row's side of the threshold is one the verdict rule knows."""
    run_tables = {"runs", "train", "eval", "units", "layers"}
    for kind, claim in claims_by_kind().items():
        assert claim.kind == kind
        assert set(claim.variants) <= set(VARIANTS), kind
        assert set(claim.study_tables()) <= run_tables | set(ANALYSES), kind
        keys = [(row.name, row.window) for row in claim.rows]
        assert len(keys) == len(set(keys)), kind
        assert all(row.holds in ("above", "below", "within") and callable(row.metric) for row in claim.rows), kind
        assert all(row.variant in (None, *claim.variants) for row in claim.rows), kind


def test_a_registered_claim_kind_is_in_the_next_schema_and_a_duplicate_is_refused():
    """Code outside the package adds a kind with `register`; the schema's enum is not cached past it."""
    import dataclasses

    from bnstudy.claims import record
    from bnstudy.configure import load_schema

    base = claims_by_kind()["bn_trains_better"]
    extra = dataclasses.replace(base, kind="test_only_kind")
    record.register(extra)
    try:
        assert "test_only_kind" in load_schema()["definitions"]["claim_kind"]["enum"]
        with pytest.raises(ValueError, match="registered twice"):
            record.register(dataclasses.replace(base, kind="test_only_kind", claim="another"))
    finally:
        record._REGISTRY.pop("test_only_kind")
    assert "test_only_kind" not in load_schema()["definitions"]["claim_kind"]["enum"]


def test_bn_with_larger_ics_means_not_supported(tmp_path):
    """The 2018 finding: BN's ICS is not lower, so 'BN reduces ICS' is not supported."""
    rows = verdict_rows(tmp_path, "ics", by_variant(standard=Outcome(ics_l2=1.0, ics_cos=0.9),
                                                    batchnorm=Outcome(ics_l2=3.0, ics_cos=0.5)))
    row = rows.loc["reduces_ics.relative.early"]
    assert row["verdict"] == NOT_SUPPORTED and row["test"] == "t interval"
    assert row["effect"] == pytest.approx(math.log10(3.0), abs=0.05) and row["n_seeds"] == 3
    assert row["ci_low"] > 0 and row["window"] == "early (steps > 0 to 20% of training)"
    assert rows.loc["reduces_ics.relative.late", "verdict"] == NOT_SUPPORTED
    angle = rows.loc["reduces_ics.angle.early"]  # 1 - cos: 0.5 vs 0.1
    assert angle["verdict"] == NOT_SUPPORTED and angle["effect"] == pytest.approx(0.4, abs=0.02)
    assert (row["unit"], angle["unit"]) == ("log10 ratio", "difference")
    # the 2015 paper claims it, the 2018 paper finds it does not: the verdict sides with 2018
    assert row["agreement"] == angle["agreement"] == "disagrees with 2015; agrees with 2018"
    at_init = rows.loc["reduces_ics.relative.initialisation"]  # a measurement, compared with no paper
    assert (at_init["verdict"], at_init["agreement"]) == ("reported", "")


def test_relative_ics_verdict_does_not_follow_the_gradient_scale(tmp_path):
    """BN's gradients 100x larger, its relative ICS 3x smaller: the raw ||G - G'|| would be ~33x
    larger for BN (and 'not supported'); the claim's scale-free measure says BN reduces it. Only
    the gradient scale changes between the two runs of the test, and the verdict does not."""
    smaller = by_variant(standard=Outcome(ics_l2=0.3), batchnorm=Outcome(ics_l2=0.1))
    scaled = by_variant(standard=Outcome(ics_l2=0.3), batchnorm=Outcome(ics_l2=0.1, grad_scale=100.0))
    plain = verdict_rows(tmp_path / "a", "ics", smaller).loc["reduces_ics.relative.early"]
    rescaled = verdict_rows(tmp_path / "b", "ics", scaled).loc["reduces_ics.relative.early"]
    assert plain["verdict"] == rescaled["verdict"] == SUPPORTED
    assert rescaled["effect"] == pytest.approx(plain["effect"], abs=0.05)
    ics = pd.read_csv(tmp_path / "b" / "tables" / "ics" / "ics.csv")
    raw = ics.groupby("variant")["l2_diff"].apply(lambda v: np.log10(v).mean())
    assert raw["batchnorm"] - raw["standard"] > 1  # what the raw measure would have compared


def test_initialisation_is_reported_apart_from_training(tmp_path):
    """At step 0 BN's relative ICS and beta are 10x its training values: the at-initialisation
    rows say so as measurements (`reported`), the early and late rows are not moved by it."""
    outcome = by_variant(standard=Outcome(ics_l2=0.3, beta=100.0),
                         batchnorm=Outcome(ics_l2=0.1, beta=5.0, init_factor=100.0))
    rows = verdict_rows(tmp_path, "ics", outcome)
    assert rows.loc["reduces_ics.relative.early", "verdict"] == SUPPORTED
    at_init = rows.loc["reduces_ics.relative.initialisation"]
    assert at_init["window"] == "step 0" and at_init["verdict"] == "reported" and "at step 0" in at_init["measure"]
    assert at_init["effect"] == pytest.approx(math.log10(10 / 0.3), abs=0.1) and at_init["ci_low"] > 0
    landscape = verdict_rows(tmp_path / "l", "landscape", outcome)
    for quantity in ("loss_range", "grad_change", "beta"):
        for window in ("early", "late"):
            assert landscape.loc[f"smoother_landscape.{quantity}.{window}", "verdict"] == SUPPORTED, quantity
    assert landscape.loc["smoother_landscape.beta.initialisation", "effect"] > 0


def test_an_order_that_flips_during_training_is_two_verdicts_not_a_cancellation(tmp_path):
    """BN's beta 40x larger in the first fifth of training and 20x smaller after it (Fig. 4's
    early/late question): a mean over all checkpoints would be near zero; the early row says not
    supported, the late row supported."""
    outcome = by_variant(standard=Outcome(beta=100.0), batchnorm=Outcome(beta=5.0, early_factor=800.0))
    rows = verdict_rows(tmp_path, "landscape", outcome)
    early, late = rows.loc["smoother_landscape.beta.early"], rows.loc["smoother_landscape.beta.late"]
    assert early["verdict"] == NOT_SUPPORTED and early["effect"] == pytest.approx(math.log10(40), abs=0.1)
    assert late["verdict"] == SUPPORTED and late["effect"] == pytest.approx(math.log10(0.05), abs=0.1)
    shorter = verdict_rows(tmp_path / "w", "landscape", outcome, claim_rules={"early_fraction": 0.5})
    assert shorter.loc["smoother_landscape.beta.early", "window"] == "early (steps > 0 to 50% of training)"


def test_the_window_mean_weighs_steps_by_time_not_by_checkpoint_count():
    """Checkpoints at 10, 20, 30 and 1000: a mean by count gives (1+1+1+9)/4 = 3; by time the
    value 1 holds over 20 steps and the rise to 9 over 970, so the trapezoid mean is ~4.9."""
    from bnstudy.claims.windows import time_mean

    values = pd.Series([1.0, 1.0, 1.0, 9.0], index=[10, 20, 30, 1000])
    expected = (1.0 * 20 + (1.0 + 9.0) / 2 * 970) / 990
    assert time_mean(values) == pytest.approx(expected) and abs(time_mean(values) - 3.0) > 1
    assert time_mean(pd.Series([7.0], index=[50])) == 7.0


def test_bn_with_smaller_ics_means_supported_also_for_the_dln(tmp_path):
    row = verdict_row(tmp_path, "ics_dln", by_variant(standard=Outcome(ics_l2=1.0), batchnorm=Outcome(ics_l2=0.1)))
    assert row["verdict"] == SUPPORTED and row["effect"] == pytest.approx(-1.0, abs=0.05)


def test_seeds_that_disagree_give_a_straddling_ci(tmp_path):
    betas = {0: (10.0, 100.0), 1: (100.0, 10.0), 2: (30.0, 30.0)}  # seed -> (batchnorm, standard)

    def outcome(variant, lr, seed, grid):
        return Outcome(beta=betas[seed][variant == "standard"])

    row = verdict_row(tmp_path, "landscape", outcome)
    assert row["verdict"] == INCONCLUSIVE and "straddles" in row["reason"]
    assert row["ci_low"] < 0 < row["ci_high"]


def test_smoother_bn_landscape_is_supported_on_all_three_quantities(tmp_path):
    # the fixture's random-direction rows are 1e6 larger: only direction == gradient may count
    rows = verdict_rows(tmp_path, "landscape", by_variant(standard=Outcome(beta=100.0), batchnorm=Outcome(beta=5.0)))
    assert list(rows.index[:3]) == ["smoother_landscape.loss_range.early",
                                    "smoother_landscape.grad_change.early", "smoother_landscape.beta.early"]
    assert (rows["verdict"][~rows.index.str.endswith(".initialisation")] == SUPPORTED).all()
    assert rows.loc["smoother_landscape.beta.early", "effect"] == pytest.approx(math.log10(5 / 100), abs=0.1)
    assert rows.loc["smoother_landscape.grad_change.early", "effect"] == pytest.approx(math.log10(5 / 100), abs=0.1)


def test_one_seed_is_inconclusive(tmp_path):
    row = verdict_row(tmp_path, "landscape", by_variant(standard=Outcome(beta=100.0), batchnorm=Outcome(beta=5.0)),
                      seeds=[0])
    assert row["verdict"] == INCONCLUSIVE and row["n_seeds"] == 1 and "< 2" in row["reason"]
    assert row.name == "smoother_landscape.loss_range.early"
    assert row["effect"] < 0  # the effect is still reported
    short = (tmp_path / "claims.md").read_text().split("## Detail")[0]
    line = next(x for x in short.splitlines() if "| landscape |" in x and "loss range" in x and "early" in x)
    assert line.rstrip(" |").endswith("1 paired seed(s) < 2: no test possible")  # why, in the short table


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


def test_disabled_study_gives_no_rows_and_missing_tables_are_inconclusive(tmp_path):
    cfg = {**STUDIES["noisy_bn"], "enabled": False}
    table = claims({"noisy_bn": cfg}, {}, tmp_path / "c.csv", tmp_path / "c.md", FAST)
    assert table.empty
    table = claims({"ics": STUDIES["ics"]}, {}, tmp_path / "c.csv", tmp_path / "c.md", FAST)
    row = table.iloc[0]
    assert row["verdict"] == INCONCLUSIVE and "no tables folder given for study ics" in row["reason"]


def test_standard_diverging_at_high_lr_supports_higher_learning_rates_with_enough_seeds(tmp_path):
    """A grid measure: every seed agrees (one decade higher for BN). With 3 seeds the exact test
    cannot reach 0.05 (smallest p = 1/8): inconclusive; with 5 seeds it is supported."""
    def outcome(variant, lr, seed, grid):
        diverged = 50 if variant == "standard" and lr >= 1.0 else None
        return Outcome(0.9, 0.8, diverged)

    row = verdict_row(tmp_path / "a", "claim_learning_rate", outcome)
    assert row["verdict"] == INCONCLUSIVE and row["effect"] == pytest.approx(1.0)
    assert row["test"] == "sign-flip" and row["p_value"] == pytest.approx(0.125) and "0.125" in row["reason"]
    row = verdict_row(tmp_path / "b", "claim_learning_rate", outcome, seeds=[0, 1, 2, 3, 4])
    assert row["verdict"] == SUPPORTED and row["p_value"] == pytest.approx(1 / 32)


def test_grid_too_narrow_for_the_learning_rate_claim(tmp_path):
    row = verdict_row(tmp_path, "claim_learning_rate", lambda *_: Outcome(0.9, 0.8))
    assert row["verdict"] == INCONCLUSIVE and "too narrow" in row["reason"]


def test_initialisation_compares_each_variant_at_its_best_lr(tmp_path):
    """Standard is insensitive to the scale only at lr 0.5, BN at both: at its own best lr each
    is flat, so no BN advantage (one shared lr 0.1 would have shown a spurious one)."""
    def outcome(variant, lr, seed, grid):
        scale = grid["model.init_scale"]
        if variant == "batchnorm":
            return Outcome(0.9, 0.8 - 0.01 * seed)
        accuracy = 0.82 - 0.01 * seed if lr == 0.5 else (0.8 if scale == 1.0 else 0.4)
        return Outcome(0.9, accuracy)

    row = verdict_row(tmp_path, "claim_initialisation", outcome)
    assert row["effect"] == pytest.approx(0.0, abs=1e-9)
    assert row["verdict"] != SUPPORTED

    def sensitive(variant, lr, seed, grid):
        scale = grid["model.init_scale"]
        accuracy = 0.8 if variant == "batchnorm" or scale == 1.0 else 0.5 - 0.01 * seed
        return Outcome(0.9, accuracy)

    row = verdict_row(tmp_path / "b", "claim_initialisation", sensitive)
    assert row["verdict"] == SUPPORTED and row["effect"] == pytest.approx(-0.31, abs=0.011)


def test_regularisation_uses_the_dropout_grid(tmp_path):
    """Dropout lifts standard's test accuracy by 0.1 and BN's by nothing: BN needs it less."""
    def outcome(variant, lr, seed, grid):
        dropout = grid["model.dropout"]
        if variant == "batchnorm":
            return Outcome(0.95, 0.85 + 0.001 * seed)
        return Outcome(0.95, (0.75 if dropout == 0 else 0.85 - 0.01 * seed))

    rows = verdict_rows(tmp_path, "claim_regularisation", outcome)
    gain = rows.loc["regularisation.dropout_gain.final"]
    assert gain["verdict"] == SUPPORTED and gain["effect"] == pytest.approx(-0.09, abs=0.011)
    gap = rows.loc["generalisation_gap.gap.final"]  # at dropout 0: BN 0.95 - 0.85 vs standard 0.95 - 0.75
    assert gap["effect"] == pytest.approx(-0.1, abs=0.01)


def test_sigmoid_compares_each_variant_at_its_best_lr(tmp_path):
    def outcome(variant, lr, seed, grid):
        if variant == "standard":
            return Outcome(0.9, 0.7 - 0.01 * seed if lr == 0.5 else 0.3)
        return Outcome(0.9, 0.72 - 0.005 * seed if lr == 0.1 else 0.5)

    row = verdict_row(tmp_path, "claim_sigmoid", outcome)
    assert row["effect"] == pytest.approx(0.02 + 0.005, abs=0.01)  # 0.72 vs 0.70 at their best lrs


def test_mnist_steps_to_reach_the_standard_accuracy(tmp_path):
    """BN rises 4x faster to a higher accuracy: it reaches standard's final accuracy at step 50,
    standard at its end (a measure on the evaluation grid: exact test; 3 seeds cannot reach 0.05)."""
    def outcome(variant, lr, seed, grid):
        return Outcome(0.9, 0.85, rate=20.0) if variant == "batchnorm" else Outcome(0.9, 0.8, rate=5.0)

    row = verdict_row(tmp_path, "mnist_2015", outcome)
    assert row["effect"] == pytest.approx(math.log10(50 / 200), abs=0.13) and row["test"] == "sign-flip"
    assert row["verdict"] == INCONCLUSIVE and row["p_value"] == pytest.approx(0.125)
    row = verdict_row(tmp_path / "b", "mnist_2015", outcome, seeds=[0, 1, 2, 3, 4])
    assert row["verdict"] == SUPPORTED


@pytest.mark.parametrize("noisy_accuracy, expected", [(0.94, SUPPORTED), (0.6, NOT_SUPPORTED)])
def test_noisy_bn_non_inferiority_uses_the_training_mode_accuracy(tmp_path, noisy_accuracy, expected):
    """The eval-mode train accuracy of noisy BN is a different network (noise off, running
    statistics gathered under noise): here it is 0.3, but the claim reads the training mode."""
    def outcome(variant, lr, seed, grid):
        if variant == "noisy_batchnorm":
            return Outcome(0.3, 0.8, train_batches_accuracy=noisy_accuracy - 0.002 * seed)
        return default_outcome(variant, lr, seed, grid)

    row = verdict_rows(tmp_path, "noisy_bn", outcome).loc["noisy_bn_trains.accuracy.final"]
    assert row["verdict"] == expected


@pytest.mark.parametrize("noise_accuracy, expected", [(0.12, SUPPORTED), (0.37, NOT_SUPPORTED)])
def test_noise_stops_the_standard_network_against_chance(tmp_path, noise_accuracy, expected):
    """standard + noise's own training-mode accuracy against chance + margin (0.15 here): at 12%
    it did not train (the paper's sentence), at 37% it did (the claim is not supported)."""
    def outcome(variant, lr, seed, grid):
        if variant == "standard_noise":
            return Outcome(0.1, 0.1, train_batches_accuracy=noise_accuracy + 0.005 * seed)
        return default_outcome(variant, lr, seed, grid)

    row = verdict_rows(tmp_path, "noisy_bn", outcome).loc["noise_stops_training.accuracy.final"]
    assert row["verdict"] == expected and row["effect"] == pytest.approx(noise_accuracy + 0.005, abs=1e-3)
    assert "standard_noise's value per seed" in row["rule"] and "below 0.15" in row["rule"]


def test_outputs_open_with_the_short_table(tmp_path):
    verdict_row(tmp_path, "ics", default_outcome)
    table = pd.read_csv(tmp_path / "claims.csv")
    assert list(table.columns) == COLUMNS and len(table) == 6  # 2 measures x (early, late, initialisation)
    assert table["rule"].str.contains("supported if").all() and table["paper"].str.len().gt(20).all()
    markdown = (tmp_path / "claims.md").read_text()
    short, detail = markdown.split("## Detail")
    assert "| claim | study | measure | window | effect [95% CI] | paired seeds | verdict | why inconclusive |" in short
    assert "| BN reduces internal covariate shift (2015) | ics | log10 \\|\\|G - G'\\|\\| / \\|\\|G\\|\\|" in short
    assert "| early (steps > 0 to 20% of training) |" in short and "| step 0 |" in short and "not supported" in short
    tested, measured = short.split("## Measurements")
    assert "| step 0 |" not in tested and "| reported |" in measured and "| reported |" not in tested
    assert "| key | claim | source | study | measure |" in detail


def test_missing_variants_are_inconclusive(tmp_path):
    row = verdict_row(tmp_path, "ics", default_outcome, variants=["standard"])
    assert row["verdict"] == INCONCLUSIVE and row["reason"].startswith("no batchnorm runs")


def test_usable_bar_is_set_by_a_mean_over_seeds_not_one_lucky_run(tmp_path):
    """One lucky run (0.99 where its seeds reach 0.8) would lift a bar taken from the single best
    run to 0.545 and make BN's 0.5 at lr 1.0 unusable; the mean over seeds (0.863) puts it at
    0.48, so BN's lr 1.0 counts. claims.md shows the verdict at usable fractions 0.4-0.6."""
    from bnstudy.claims.kinds.accuracy import usable_bar
    from bnstudy.tables.view import StudyView
    from bnstudy.files import StudyTables

    def outcome(variant, lr, seed, grid):
        if variant == "batchnorm":
            accuracy = {0.01: 0.99 if seed == 0 else 0.8, 0.1: 0.8, 1.0: 0.5}[lr]
        else:
            accuracy = 0.8 if lr < 1.0 else 0.1
        return Outcome(0.9, accuracy, None if accuracy > 0.1 else 50)

    cfg = {**STUDIES["claim_learning_rate"], "seeds": [0, 1, 2, 3, 4]}
    paths = make_tables(tmp_path, "claim_learning_rate", cfg, outcome=outcome)
    data = StudyView(StudyTables(paths, cfg))
    best_mean = (0.99 + 4 * 0.8) / 5
    assert usable_bar(data, FAST) == pytest.approx(0.1 + 0.5 * (best_mean - 0.1))
    rows = verdict_rows(tmp_path / "v", "claim_learning_rate", outcome, seeds=[0, 1, 2, 3, 4])
    row = rows.loc["higher_learning_rates.usable_lr.final"]
    assert row["verdict"] == SUPPORTED and row["effect"] == pytest.approx(1.0)  # 1.0 vs 0.1
    markdown = (tmp_path / "v" / "claims.md").read_text()
    section = markdown.split("## The learning-rate verdict at other usable fractions")[1].split("## Detail")[0]
    assert [line.split("|")[2].strip() for line in section.splitlines() if line.startswith("| claim_")] \
        == ["0.4", "0.5", "0.6"]
    assert "| claim_learning_rate | 0.6 | 0 | 1 | 5 | not supported |" in section  # BN's 0.5 < 0.55


def test_hessian_outliers_without_bn_is_supported_when_its_outliers_and_share_are_larger(tmp_path):
    """The outlier group (9 eigenvalues over a bulk, found by the largest gap among the top 20) is
    separated 10x less with BN and holds less of the gradient (both supported); with running
    statistics BN's outliers return (Ghorbani et al.), its own value per seed above 0."""
    outcome = by_variant(standard=Outcome(sharpness=50.0, share=0.8),
                         batchnorm=Outcome(sharpness=5.0, share=0.2, running_sharpness=40.0))
    rows = verdict_rows(tmp_path, "hessian_spectrum", outcome)
    gap = rows.loc["hessian_outliers.outlier_gap.early"]
    assert gap["verdict"] == SUPPORTED and gap["effect"] == pytest.approx(-1.0, abs=0.05)
    share = rows.loc["hessian_outliers.gradient_share.late"]
    assert share["verdict"] == SUPPORTED and share["unit"] == "share" and share["effect"] == pytest.approx(-0.6, abs=0.05)
    assert share["agreement"] == "agrees with Ghorbani 2019"
    back = rows.loc["hessian_outliers.outliers_return.late"]
    assert back["verdict"] == SUPPORTED and back["effect"] == pytest.approx(math.log10(8), abs=0.05)
    assert "batchnorm's value per seed" in back["rule"]
    assert rows.loc["hessian_outliers.outlier_gap.initialisation", "verdict"] == "reported"


def test_the_outlier_group_is_found_by_its_gap_and_unconverged_eigenvalues_end_the_list():
    from bnstudy.tables.derived import outlier_groups

    def spectrum(values, converged=None):
        converged = converged or [True] * len(values)
        return pd.DataFrame({"run": "r", "variant": "standard", "lr": 0.1, "seed": 0, "status": "completed",
                             "step": 10, "bn_mode": "batch", "rank": range(1, len(values) + 1), "eigenvalue": values,
                             "converged": converged, "gradient_share": np.linspace(0.1, 0.9, len(values))})

    three = outlier_groups(spectrum([90.0, 80.0, 70.0, 2.0, 1.9, 1.8, 1.7]), classes=10).iloc[0]
    assert (three["members"], three["gap"], three["searched"]) == (3, 35.0, 7)
    # the group has at most C - 1 members: with 3 classes the best gap among the first 2 is taken
    capped = outlier_groups(spectrum([90.0, 50.0, 45.0, 2.0, 1.9]), classes=3).iloc[0]
    assert capped["members"] == 1 and capped["gap"] == pytest.approx(90 / 50)
    # an unconverged third eigenvalue ends the list: the gap at 3 is not known
    cut = outlier_groups(spectrum([90.0, 80.0, 70.0, 2.0, 1.9], [True, True, False, True, True]), classes=10).iloc[0]
    assert cut["searched"] == 2 and cut["members"] == 1


@pytest.mark.parametrize("level, expected", [(2.2, SUPPORTED), (5.0, NOT_SUPPORTED)])
def test_edge_of_stability_places_lr_times_sharpness_in_its_band(tmp_path, level, expected):
    """lr x sharpness rises from 1 by 0.05 a step and settles at `level`: the median over the window
    from its first crossing of 2 lies in [1.8, 2.6] for 2.2 (Cohen et al.'s finding), not for 5.0.
    BN, starting above 2/lr, has no crossing by sharpening: its row is a measurement."""
    outcome = by_variant(standard=Outcome(eos_level=level), batchnorm=Outcome(eos_level=3.5, eos_start=3.5))
    rows = verdict_rows(tmp_path, "edge_of_stability", outcome)
    standard = rows.loc["edge_of_stability.standard_ratio.final"]
    assert standard["verdict"] == expected and 2.0 <= standard["effect"] <= level * 1.02
    assert "within [1.8, 2.6]" in standard["rule"]
    bn = rows.loc["edge_of_stability.batchnorm_ratio.final"]
    assert bn["verdict"] == "reported" and "starts with lr x sharpness >= 2" in bn["reason"]
    assert bn["agreement"] == ""


def test_the_eos_window_runs_from_the_crossing_to_the_fitted_loss():
    from bnstudy.tables.derived import eos_window

    steps = np.arange(0, 110, 10)
    sharpness = pd.DataFrame({"run": "r", "variant": "standard", "lr": 0.1, "seed": 0, "status": "completed",
                              "step": steps, "sharpness": [5, 10, 15, 25, 21, 19, 24, 20, 5, 3, 2],
                              "converged": [True] * 10 + [False]})
    train = pd.DataFrame({"run": "r", "variant": "standard", "step": np.arange(0, 101), "loss": np.linspace(1.0, 0.0, 101)})
    frame = eos_window(sharpness, train, loss_fraction=0.25)
    inside = frame[frame["in_window"]]
    # crossing at step 20 (0.1 x 15 < 2, 0.1 x 25 >= 2 at step 30); the loss falls below 0.25 at step 76
    assert list(inside["step"]) == [30, 40, 50, 60, 70] and frame["crossing"].iloc[0] == 30
    assert not frame["starts_above"].any() and 100 not in set(frame["step"])  # unconverged: left out
    above = eos_window(sharpness.assign(sharpness=sharpness["sharpness"] + 20), train, 0.25)
    assert above["starts_above"].all() and not above["in_window"].any()


def test_wider_basin_is_a_measurement_of_the_radius_at_an_absolute_rise(tmp_path):
    """The radius is where the loss rises basin_rise above the centre (interpolated on the grid);
    Li et al. state no finding for BN, so it is reported.
    A basin wider than the grid gives the grid's edge, and the reason says so."""
    outcome = by_variant(standard=Outcome(basin=0.3), batchnorm=Outcome(basin=0.7))
    row = verdict_rows(tmp_path, "landscape_2d", outcome).loc["wider_basin.radius.final"]
    assert row["verdict"] == "reported" and row["agreement"] == "" and row["ci_low"] > 0
    wide = by_variant(standard=Outcome(basin=0.3), batchnorm=Outcome(basin=10.0))
    capped = verdict_rows(tmp_path / "w", "landscape_2d", wide).loc["wider_basin.radius.final"]
    assert capped["verdict"] == "reported" and "reached the grid's edge" in capped["reason"]


def test_group_size_gradients_is_a_slope_per_doubling(tmp_path):
    """Gradient norms ~ group_size^-1/2 give a slope of log10(2) / -2 = -0.15 per doubling
    (supported); gradients that grow with the group give +0.15 (not supported)."""
    rows = verdict_rows(tmp_path / "a", "group_size", default_outcome)
    row = rows.loc["group_size_gradients.slope.at_init"]
    assert row["verdict"] == SUPPORTED and row["effect"] == pytest.approx(-0.1505, abs=0.01)
    assert row["window"] == "at initialisation"  # its own time, not the end of training
    # the rank correlation is -1 for every seed: its exact test over 3 seeds cannot reach p <= 0.05
    rank = rows.loc["group_size_gradients.rank_correlation.at_init"]
    assert rank["effect"] == pytest.approx(-1.0) and rank["verdict"] == INCONCLUSIVE
    assert rank["p_value"] == pytest.approx(0.125) and rank["test"] == "sign-flip"
    growing = lambda variant, lr, seed, grid: Outcome(first_grad=grid["norm.group_size"] ** 0.5)  # noqa: E731
    row = verdict_rows(tmp_path / "b", "group_size", growing).loc["group_size_gradients.slope.at_init"]
    assert row["verdict"] == NOT_SUPPORTED and row["effect"] == pytest.approx(0.1505, abs=0.01)
    # a measure at initialisation: short runs that never leave chance still give the verdict
    untrained = lambda variant, lr, seed, grid: Outcome(  # noqa: E731
        first_grad=grid["norm.group_size"] ** -0.5, train_accuracy=0.1, test_accuracy=0.1, final_loss=2.3)
    row = verdict_rows(tmp_path / "c", "group_size", untrained).loc["group_size_gradients.slope.at_init"]
    assert row["verdict"] == SUPPORTED and "never training" not in row["rule"]


def test_scale_invariance_checks_the_cosine_and_the_norm_identity(tmp_path):
    """BN's weights obey ||w_t||^2 = ||w_0||^2 + lr^2 sum ||g||^2 and w . g = eps/(v + eps) gamma
    dL/dgamma (both supported); the cosine itself is a measurement (BN's eps sets it), the standard
    network's cosine and norm gap are controls beside it."""
    rows = verdict_rows(tmp_path, "scale_invariance", default_outcome)
    cosine, identity = rows.loc["scale_invariance.cosine.final"], rows.loc["scale_invariance.norm_identity.final"]
    assert cosine["verdict"] == "reported" and cosine["effect"] == pytest.approx(-6.0, abs=0.5)
    eps = rows.loc["scale_invariance.eps_identity.final"]  # the float64 check of the activations analysis
    assert eps["verdict"] == SUPPORTED and eps["effect"] == pytest.approx(-14.0, abs=0.5) and "below -4" in eps["rule"]
    assert identity["verdict"] == SUPPORTED and identity["effect"] < -10
    control = rows.loc["scale_invariance.standard_cosine.final"]  # a control: measured, not judged
    assert control["verdict"] == "reported" and control["ci_low"] > -3
    identity_control = rows.loc["scale_invariance.standard_norm_identity.final"]
    assert identity_control["verdict"] == "reported" and identity_control["effect"] > identity["effect"] + 3


def test_scale_invariance_refuses_a_sparse_layer_record(tmp_path):
    """The identity sums every step's gradient: a study logging layers every 20 steps cannot test it."""
    rows = verdict_rows(tmp_path, "scale_invariance", default_outcome, overrides={})
    identity = rows.loc["scale_invariance.norm_identity.final"]
    assert identity["verdict"] == INCONCLUSIVE and "layers_every: 1" in identity["reason"]


def test_smoother_than_none_gives_each_normaliser_its_own_rows(tmp_path):
    """One set of rows (three landscape quantities over training, and at initialisation apart) per
    variant against the standard network, each labelled by its variant; a normaliser as rough as
    the standard network is not supported while the others are."""
    rough = lambda variant, lr, seed, grid: (  # noqa: E731
        default_outcome("standard", 0.1, 0, {}) if variant == "weightnorm" else default_outcome(variant, lr, seed, grid))
    rows = verdict_rows(tmp_path, "normalisers", rough)
    ours = rows[rows.index.str.startswith("smoother_than_none.")]
    assert len(ours) == 5 * 3 * 3 and set(ours.index.str.split(".").str[-1]) == {"early", "late", "initialisation"}
    ours = ours[~ours.index.str.endswith(".initialisation")]
    verdicts = ours.groupby(ours.index.str.split(".").str[1])["verdict"].agg(set)
    assert all(verdicts[v] == {SUPPORTED} for v in ("batchnorm", "layernorm", "groupnorm", "instancenorm"))
    assert SUPPORTED not in verdicts["weightnorm"]
    assert ours.loc["smoother_than_none.weightnorm.beta.early", "claim"].startswith("weightnorm: ")


def test_the_basin_radius_is_where_the_loss_rises_by_an_absolute_amount():
    """Centre 0.2, loss rising linearly by 1 per unit: a rise of 0.1 is reached at 0.1 on each
    half-axis, whatever the centre (a factor of 2 would give 0.2 here, 1.0 for a centre of 1)."""
    from bnstudy.tables.derived import basin_radii

    grid = np.linspace(-1, 1, 5)
    rows = [{"run": "r", "variant": "standard", "lr": 0.1, "seed": 0, "status": "completed", "step": 5,
             "x": x, "y": y, "loss": 0.2 + abs(x) + abs(y)} for x in grid for y in grid]
    radii = basin_radii(pd.DataFrame(rows), rise=0.1)
    assert radii["radius"].iloc[0] == pytest.approx(0.1) and not radii["capped"].iloc[0]
    assert basin_radii(pd.DataFrame(rows), rise=5.0)["capped"].iloc[0]  # never reached: the edge, flagged


VGG_LAYERS = {11: 8, 16: 13, 19: 16}


def test_gradient_explosion_and_rank_collapse_over_depth(tmp_path):
    """BN's first-layer gradient grows 10^0.1 per layer of depth, the standard network's not at all
    (Yang et al.: supported); the standard network's last-layer rank falls 10^-0.05 per layer while
    BN's holds (Daneshmand et al.: both rows supported). The fixture's per-run noise moves the
    slopes by ~0.01, hence the tolerances."""
    def outcome(variant, lr, seed, grid):
        layers = VGG_LAYERS[grid["model.depth"]]
        if variant == "batchnorm":
            return Outcome(layers=layers, first_grad=10 ** (0.1 * layers), last_rank=5.0)
        return Outcome(layers=layers, first_grad=1.0, last_rank=10 ** (-0.05 * layers))

    rows = verdict_rows(tmp_path, "depth_at_init", outcome)
    slope = rows.loc["gradient_explosion.slope.at_init"]
    assert slope["verdict"] == SUPPORTED and slope["effect"] == pytest.approx(0.1, abs=0.01)
    assert slope["agreement"] == "agrees with Yang 2019"
    # BN's own slope is the test; against the standard network (whose slope its initialisation
    # sets) a measurement
    versus = rows.loc["gradient_explosion.vs_standard.at_init"]
    assert versus["verdict"] == "reported" and versus["effect"] == pytest.approx(0.1, abs=0.01)
    falls = rows.loc["rank_collapse.standard_slope.at_init"]
    assert falls["verdict"] == SUPPORTED and falls["effect"] == pytest.approx(-0.05, abs=0.02)
    kept = rows.loc["rank_collapse.batchnorm_vs_standard.at_init"]
    assert kept["verdict"] == SUPPORTED and kept["effect"] == pytest.approx(0.05, abs=0.02)
    # through the layers of the deepest network (16): the fixture's first layer has rank 10, so the
    # standard network's last/first is 10^-0.8 / 10, BN's 5 / 10
    through = rows.loc["rank_collapse.standard_through_layers.at_init"]
    assert through["verdict"] == SUPPORTED and through["effect"] == pytest.approx(-1.8, abs=0.1)
    kept = rows.loc["rank_collapse.batchnorm_vs_standard_through_layers.at_init"]
    assert kept["verdict"] == SUPPORTED and kept["effect"] == pytest.approx(1.5, abs=0.1)

    # BN's gradient shrinking with depth, and its rank falling further through the layers than the
    # standard network's: not supported, whatever the fixture's noise
    def shrinking(variant, lr, seed, grid):
        layers = VGG_LAYERS[grid["model.depth"]]
        return Outcome(layers=layers, first_grad=10 ** (-0.1 * layers) if variant == "batchnorm" else 1.0,
                       last_rank=0.01 if variant == "batchnorm" else 1.0)

    flat = verdict_rows(tmp_path / "flat", "depth_at_init", shrinking)
    assert flat.loc["gradient_explosion.slope.at_init", "verdict"] == NOT_SUPPORTED
    assert flat.loc["rank_collapse.batchnorm_vs_standard_through_layers.at_init", "verdict"] == NOT_SUPPORTED


def test_the_depth_claims_read_an_mlp_grid_over_hidden_layers(tmp_path):
    """Yang et al.'s own setting, MLPs of 8-64 layers (grid over model.hidden_layers): BN's gradient
    growing by ReLU-BN's theoretical factor sqrt(pi / (pi - 1)) per layer against a flat standard
    network gives that slope, supported; the claim refuses a study without a depth grid, naming
    both keys it accepts."""
    from bnstudy.claims import get as claim

    rate = 0.5 * np.log10(np.pi / (np.pi - 1))

    def outcome(variant, lr, seed, grid):
        layers = grid["model.hidden_layers"]
        return Outcome(layers=layers, first_grad=10 ** (rate * layers) if variant == "batchnorm" else 1.0,
                       last_rank=3.0 if variant == "batchnorm" else 10 ** (-0.01 * layers))

    rows = verdict_rows(tmp_path, "depth_at_init_mlp", outcome)
    slope = rows.loc["gradient_explosion.slope.at_init"]
    assert slope["verdict"] == SUPPORTED and slope["effect"] == pytest.approx(rate, abs=0.01)
    study = {"variants": ["standard", "batchnorm"], "lrs": [0.1], "grid": {}}
    problem = claim("gradient_explosion").design_problem(study, {"model": {"activation": "relu"}})
    assert "model.depth or model.hidden_layers" in problem
    study["grid"] = {"model.hidden_layers": [8, 64]}
    assert claim("gradient_explosion").design_problem(study, {"model": {"activation": "relu"}}) is None


def test_benefit_is_the_lr_compares_bn_at_the_standard_networks_best_lr(tmp_path):
    """BN at its own best lr (1.0) leads by 10 points, at the standard network's best (0.1) by 2:
    the advantage shrinks by 8 (Bjorck et al.: supported); the standard network's last-layer
    activations grow as lr^2 (slope 2: supported)."""
    bn = {0.01: 0.5, 0.03: 0.6, 0.1: 0.72, 0.3: 0.76, 1.0: 0.8}
    standard = {0.01: 0.55, 0.03: 0.62, 0.1: 0.7, 0.3: 0.65, 1.0: 0.1}

    def outcome(variant, lr, seed, grid):
        accuracy = (bn if variant == "batchnorm" else standard)[lr]
        return Outcome(test_accuracy=accuracy, activation_var=lr ** 2 if variant == "standard" else 1.0)

    rows = verdict_rows(tmp_path, "matched_lr", outcome, seeds=[0, 1, 2, 3, 4])  # noiseless: an exact test
    advantage = rows.loc["benefit_is_the_lr.advantage.final"]
    assert advantage["verdict"] == SUPPORTED and advantage["effect"] == pytest.approx(-0.08, abs=0.01)
    activations = rows.loc["benefit_is_the_lr.standard_activations.final"]
    assert activations["verdict"] == SUPPORTED and activations["effect"] == pytest.approx(2.0, abs=0.1)


def test_benefit_is_the_lr_is_a_measurement_when_both_best_lrs_coincide(tmp_path):
    """The real CPU run's case: both variants peak at lr 0.1, BN 14 points ahead there. The
    advantage at the matched lr is then BN's advantage at its own best by construction (zero in
    every seed): the row says so and gives BN's lead, as a measurement, not a verdict."""
    bn = {0.01: 0.5, 0.03: 0.6, 0.1: 0.8, 0.3: 0.7, 1.0: 0.1}
    standard = {0.01: 0.45, 0.03: 0.55, 0.1: 0.66, 0.3: 0.5, 1.0: 0.1}

    def outcome(variant, lr, seed, grid):
        return Outcome(test_accuracy=(bn if variant == "batchnorm" else standard)[lr])

    advantage = verdict_rows(tmp_path, "matched_lr", outcome, seeds=[0, 1, 2, 3, 4]).loc[
        "benefit_is_the_lr.advantage.final"]
    assert advantage["verdict"] == REPORTED and advantage["effect"] == pytest.approx(0.0, abs=0.005)
    assert "best learning rate on the grid is standard's (0.1" in advantage["reason"]
    assert "+0.14" in advantage["reason"]
