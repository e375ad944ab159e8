"""Figures: every catalog kind has a drawer and a caption, renders from the fixture tables, and
plots what its caption says (single units of one seed, bands inside the domain, seeds' own lines
with fewer than 3 seeds, unconverged eigenvalues flagged, training vs eval mode labelled)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synthetic_tables import STUDIES, Outcome, default_outcome, make_tables

from bnstudy.figures import frames, paper_frames
from bnstudy.figures import draw as figures
from bnstudy.config.catalog import FIGURE_KINDS, figure_tables
from bnstudy.files import STUDY_TABLES
from bnstudy.tables.stats import mean_ci

MIN_BYTES = 5 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPORT_DIR = Path(__file__).parents[1] / "workflow" / "report"
CAPTIONS = REPORT_DIR / "figures"
CASES = [(study, kind) for study, cfg in STUDIES.items() for kind in cfg["figures"]]
# each figure kind once, in the first fixture study that lists it: {study: [kinds]}
FIRST_STUDY = {kind: study for study, kind in reversed(CASES)}
KINDS_ONCE = {study: [k for k in STUDIES[study]["figures"] if FIRST_STUDY[k] == study]
              for study in dict.fromkeys(FIRST_STUDY.values())}


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Study tables (name -> file) for every fixture study, built once for the module."""
    root = tmp_path_factory.mktemp("fixtures")
    return {study: make_tables(root, study) for study in STUDIES}


def _given(tables: dict, kind: str) -> dict:
    """Exactly the tables the workflow hands a figure of ``kind``."""
    return {name: tables[name] for name in figure_tables(kind)}


def _assert_rendered(png: Path) -> None:
    pdf = png.with_suffix(".pdf")
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert png.stat().st_size > MIN_BYTES and pdf.stat().st_size > MIN_BYTES
    assert not [p for p in png.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"


def _drawn_axes(fig) -> list:
    """Draws the figure on its canvas (layout, ticks, scales: where drawing errors surface, without
    encoding a file) and returns the axes that hold any data artist; closes the figure."""
    try:
        fig.canvas.draw()
        return [ax for ax in fig.axes if ax.lines or ax.collections or ax.patches or ax.images]
    finally:
        figures.plt.close(fig)


def _render(kind: str, study: str, cfg: dict, tables: dict):
    return figures.render(kind, study, cfg, _given(tables, kind))


def _artists(fig, gid: str) -> list:
    return [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]


def _legend_texts(fig) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


# ---------------------------------------------------------------------------------------------
# registry and captions


def test_every_catalog_kind_has_a_drawer_and_a_caption_file():
    assert set(figures.DRAWERS) == set(FIGURE_KINDS)
    for kind in FIGURE_KINDS:
        assert (CAPTIONS / f"{kind}.rst").is_file(), f"no caption file for figure kind {kind!r}"
        assert set(figure_tables(kind)) <= set(STUDY_TABLES), kind
    assert {p.stem for p in CAPTIONS.glob("*.rst")} == set(FIGURE_KINDS), "caption file without a kind"


def test_fixture_studies_cover_every_kind():
    """So that the rendering tests below draw every kind at least once."""
    assert {kind for _, kind in CASES} == set(FIGURE_KINDS)


def test_a_study_draws_each_listed_kind_into_its_folder(tables, tmp_path):
    """The figures job of a study: every kind it lists, each from the tables folder, nothing else."""
    cfg = STUDIES["noisy_bn"]
    kinds = cfg["figures"][:2]  # two kinds suffice for the contract; every kind renders below
    folder = tables["noisy_bn"]["runs"].parent
    written = figures.draw_study("noisy_bn", cfg, folder, kinds, tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(f"{k}.{e}" for k in kinds for e in ("png", "pdf"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)
    for kind in kinds:
        _assert_rendered(tmp_path / "out" / f"{kind}.png")
    with pytest.raises(KeyError, match="no figure kind 'nonsense'"):
        figures.draw_study("noisy_bn", cfg, folder, ["nonsense"], tmp_path / "bad")


def test_captions_are_valid_restructuredtext():
    """Snakemake renders captions as reST: a stray '|' or '_' would break the report."""
    docutils_core = pytest.importorskip("docutils.core")
    texts = {path.relative_to(REPORT_DIR).as_posix(): path.read_text(encoding="utf-8")
             for path in sorted(REPORT_DIR.rglob("*.rst"))}
    texts = {name: text for name, text in texts.items() if "{{" not in text and "{%" not in text}
    assert {f"figures/{kind}.rst" for kind in FIGURE_KINDS} <= set(texts)
    for name, text in texts.items():
        warnings = io.StringIO()
        docutils_core.publish_doctree(text, settings_overrides={"warning_stream": warnings, "report_level": 1})
        assert warnings.getvalue() == "", (name, warnings.getvalue())


# ---------------------------------------------------------------------------------------------
# rendering


@pytest.mark.parametrize("study, kind", CASES, ids=[f"{s}-{k}" for s, k in CASES])
def test_figure_renders_from_fixture_tables(tables, study, kind):
    """Every kind in every study that lists it draws what its data function returns: one axes with
    data for every panel (row, column) whose frame holds a finite value, and every variant of the
    frame in the legend (files: the test above and the next)."""
    given = _given(tables[study], kind)
    data = figures.figure_data(kind, study, STUDIES[study], given)
    finite = np.zeros(len(data), dtype=bool)
    for column in ("y", "low", "high", "p50", "loss", "mean"):
        if column in data:
            finite |= np.isfinite(pd.to_numeric(data[column], errors="coerce")).to_numpy()
    panels = data[finite].groupby(["row", "column"]).ngroups
    fig = figures.render(kind, study, STUDIES[study], given)
    legend = _legend_texts(fig)
    assert len(_drawn_axes(fig)) == panels > 0, f"{study}/{kind}"
    variants = set(data.loc[finite, "variant"].dropna()) - {"2/lr"}
    assert all(any(label.startswith(v) for label in legend) for v in variants), (variants, legend)


def test_rerender_is_byte_identical(tables, tmp_path):
    """Fixed metadata: redrawing unchanged tables gives identical files (no spurious reruns)."""
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name / "accuracy.png"
        figures.draw("accuracy", "performance", STUDIES["performance"], _given(tables["performance"], "accuracy"),
                     out)
        outputs.append((out.read_bytes(), out.with_suffix(".pdf").read_bytes()))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("study", sorted(KINDS_ONCE))
def test_variant_diverging_at_step_0_still_renders(tmp_path, study):
    """Every batchnorm run diverging at step 0 leaves one point or none per curve: every figure
    kind must still draw ("no data" where nothing is left), never crash."""
    def outcome(variant, lr, seed, grid):
        return Outcome(diverged_step=0) if variant == "batchnorm" else default_outcome(variant, lr, seed, grid)

    paths = make_tables(tmp_path, study, STUDIES[study], outcome=outcome)
    for kind in KINDS_ONCE[study]:
        fig = figures.render(kind, study, STUDIES[study], _given(paths, kind))
        assert _drawn_axes(fig), f"{kind}: nothing drawn when one variant diverges at step 0"


def test_diverged_runs_are_counted_in_the_legend(tables):
    """performance's fixture has one diverged standard run (lr 0.5, seed 1)."""
    fig = _render("accuracy", "performance", STUDIES["performance"], tables["performance"])
    labels = _legend_texts(fig)
    figures.plt.close(fig)
    assert "standard (1/6 runs diverged)" in labels
    assert any(label.startswith("diverged run") for label in labels)


@pytest.mark.parametrize("kind, study", [("ics", "ics"), ("landscape", "landscape")])
def test_the_claims_windows_are_marked_where_the_claims_split_them(tables, kind, study):
    """The fixture runs 200 steps: the early window ends at 20% (step 40), at 50% with the study's
    own early_fraction; every panel marks it, and the legend says what the line is."""
    fig = _render(kind, study, STUDIES[study], tables[study])
    lines = _artists(fig, "early-window")
    assert lines and {line.get_xdata()[0] for line in lines} == {40.0}
    assert len(lines) == len(_drawn_axes(fig))
    assert any("early window ends" in label for label in _legend_texts(fig))
    figures.plt.close(fig)
    cfg = {**STUDIES[study], "claim_rules": {"early_fraction": 0.5}}
    fig = _render(kind, study, cfg, tables[study])
    assert {line.get_xdata()[0] for line in _artists(fig, "early-window")} == {100.0}
    figures.plt.close(fig)


def test_the_eos_figure_shows_every_point_of_lr_times_sharpness_against_2(tmp_path):
    """Every analysed point of every run is drawn in the lr x sharpness row, filled inside the
    claim's window (from the crossing of 2 by sharpening), hollow outside; 2 is drawn there."""
    from synthetic_tables import Outcome, make_tables

    study = "edge_of_stability"
    paths = make_tables(tmp_path, study, STUDIES[study], outcome=lambda v, lr, seed, grid: Outcome(eos_level=2.2))
    data = figures.figure_data(study, study, STUDIES[study], _given(paths, study))
    ratio = data[data["row"].str.startswith("lr × sharpness")]
    points = ratio[ratio["style"].isin(["points", "window-points"])]
    sharpness = pd.read_csv(paths["sharpness"])
    assert len(points) == len(sharpness)  # every analysed point, none averaged away
    inside = points[points["style"] == "window-points"]
    assert inside["y"].min() >= 2.0 * 0.98 and (points[points["style"] == "points"]["y"] < 2.0).all()
    assert set(ratio.loc[ratio["style"] == "reference", "y"]) == {2.0}
    fig = figures.render(study, study, STUDIES[study], _given(paths, study))
    assert _artists(fig, "window-points") and _artists(fig, "points")
    figures.plt.close(fig)


def test_the_spectrum_figure_has_a_column_per_bn_mode_and_the_outlier_rows(tables):
    data = figures.figure_data("hessian_spectrum", "hessian_spectrum", STUDIES["hessian_spectrum"],
                               _given(tables["hessian_spectrum"], "hessian_spectrum"))
    columns = set(data["column"].dropna())
    assert any("bn_mode = running" in c for c in columns) and any("bn_mode = batch" in c for c in columns)
    assert {"outlier group's separation\nλ_k / λ_k+1", "share of ‖g‖² in the\noutlier group's span"} <= set(data["row"])


def test_a_density_spike_is_drawn_at_its_peak_wherever_the_grid_falls(tables):
    """The density is the sum of Gaussians; sampled on a fixed grid, a spike narrower than the grid
    spacing would read high or low by where the grid falls. Every node of the panel is a grid point
    (besides >= 10,000 even ones), so each spike is sampled at its peak."""
    study = "hessian_spectrum"
    data = figures.figure_data("spectral_density", study, STUDIES[study], _given(tables[study], "spectral_density"))
    density = pd.read_csv(tables[study]["density"])
    for (row, column, variant), curve in data.dropna(subset=["x"]).groupby(["row", "column", "variant"]):
        assert len(curve) >= 10_000
        step = int(row.split()[1])
        nodes = density[(density["step"] == step) & (density["variant"] == variant)]
        assert set(np.round(nodes["node"], 9)) <= set(np.round(curve["x"], 9))


def test_unknown_kind_and_missing_table_are_clear_errors(tables):
    with pytest.raises(KeyError, match="no figure kind 'nope'"):
        figures.render("nope", "ics", STUDIES["ics"], tables["ics"])
    with pytest.raises(ValueError, match=r"needs tables \['ics'\]"):
        figures.render("ics", "ics", STUDIES["ics"], {"runs": tables["ics"]["runs"]})


# ---------------------------------------------------------------------------------------------
# what is plotted


def _median_jitter(frame: pd.DataFrame, by: list[str]) -> pd.Series:
    """Per variant: the mean absolute change of a unit's median between successive recorded steps."""
    ordered = frame.sort_values([*by, "step"])
    jumps = ordered.groupby(by)["p50"].diff().abs()
    return jumps.groupby(ordered["variant"]).mean()


def test_distributions_plot_single_units_of_one_seed(tables):
    """noisy_batchnorm's fixture units jump by U(-0.3, 0.3) per step, batchnorm's by N(0, 0.02):
    the plotted medians must keep that (>= 5x, and >= 0.15 absolute, which a mean over the 3
    seeds would not reach: it shrinks the jumps by sqrt(3))."""
    cfg = STUDIES["noisy_bn"]
    data = figures.figure_data("distributions", "noisy_bn", cfg, _given(tables["noisy_bn"], "distributions"))
    assert set(data["row"]) == {f"layer {layer}" for layer in cfg["layers"]}
    per_panel = data.groupby("column")
    assert (per_panel["seed"].nunique() == 1).all() and set(data["seed"]) == {min(cfg["seeds"])}
    assert (per_panel["unit"].nunique() == frames.MAX_UNITS).all()
    assert not data.duplicated(["column", "layer", "unit", "step"]).any(), "one row per unit and step"

    jitter = _median_jitter(data, ["variant", "layer", "unit"])
    assert jitter["noisy_batchnorm"] >= 5 * jitter["batchnorm"]
    assert jitter["noisy_batchnorm"] >= 0.15

    # the control: what averaging over seeds would have drawn fails the absolute bound
    units = pd.read_csv(tables["noisy_bn"]["units"])
    units = units[units["layer"].isin(cfg["layers"])]
    seed_mean = units.groupby(["variant", "layer", "unit", "step"], as_index=False)["p50"].mean()
    assert _median_jitter(seed_mean, ["variant", "layer", "unit"])["noisy_batchnorm"] < 0.15


def test_unit_input_is_one_unit_of_the_last_layer_and_one_seed(tables):
    data = figures.figure_data("unit_input", "mnist_2015", STUDIES["mnist_2015"],
                               _given(tables["mnist_2015"], "unit_input"))
    units = pd.read_csv(tables["mnist_2015"]["units"])
    assert set(data["layer"]) == {units["layer"].max()}
    assert set(data["unit"]) == {units["unit"].min()}
    assert data.groupby("column")["seed"].nunique().eq(1).all()
    assert set(data["variant"]) == set(STUDIES["mnist_2015"]["variants"])


def test_moment_changes_are_the_per_unit_columns_averaged_over_seeds(tables):
    """The plotted line is the geometric mean over seeds of layers.csv's unit_mean_change."""
    cfg = STUDIES["noisy_bn"]
    data = figures.figure_data("moment_changes", "noisy_bn", cfg, _given(tables["noisy_bn"], "moment_changes"))
    layers = pd.read_csv(tables["noisy_bn"]["layers"])
    point = data[(data["row"].str.contains("μ")) & (data["column"] == "layer 9 · lr = 0.1")
                 & (data["variant"] == "noisy_batchnorm") & (data["step"] == 40)]
    expected = layers[(layers["layer"] == 9) & (layers["variant"] == "noisy_batchnorm") & (layers["step"] == 40)]
    assert len(point) == 1 and len(expected) == len(cfg["seeds"])
    assert point["y"].iloc[0] == pytest.approx(np.exp(np.log(expected["unit_mean_change"]).mean()))
    assert set(data["scale"].dropna()) == {"log"}


def _extreme_accuracy(variant, lr, seed, grid):
    """Accuracies pinned at the domain's edges: an unclipped t band would leave [0, 1]."""
    level = 1.0 if variant == "batchnorm" else 0.0
    return Outcome(train_accuracy=level, test_accuracy=level, train_batches_accuracy=level, rate=50.0)


def test_accuracy_bands_never_leave_the_unit_interval(tmp_path):
    cfg = STUDIES["performance"]
    paths = make_tables(tmp_path, "performance", cfg, outcome=_extreme_accuracy)
    data = figures.figure_data("accuracy", "performance", cfg, _given(paths, "accuracy"))
    bands = data[data["style"] == "mean"].dropna(subset=["low", "high"])
    assert len(bands) and bands["low"].min() >= 0 and bands["high"].max() <= 1

    # the control: the raw t intervals do leave [0, 1] here, so clipping is what keeps them in
    evals = pd.read_csv(paths["eval"])
    raw = [mean_ci(group["accuracy"]) for _, group in evals.groupby(["variant", "lr", "split", "step"])]
    assert min(ci.low for ci in raw if ci.n >= 3) < 0 and max(ci.high for ci in raw if ci.n >= 3) > 1

    fig = figures.render("accuracy", "performance", cfg, _given(paths, "accuracy"))
    drawn = np.concatenate([path.vertices[:, 1] for band in _artists(fig, "band") for path in band.get_paths()])
    figures.plt.close(fig)
    assert drawn.min() >= 0 and drawn.max() <= 1


@pytest.mark.parametrize("seeds, band", [([0, 1], False), ([0, 1, 2], True)])
def test_seed_lines_below_three_seeds_band_from_three(tmp_path, seeds, band):
    cfg = {**STUDIES["noisy_bn"], "seeds": seeds}
    paths = make_tables(tmp_path, "noisy_bn", cfg)
    data = figures.figure_data("train_accuracy", "noisy_bn", cfg, _given(paths, "train_accuracy"))
    fig = figures.render("train_accuracy", "noisy_bn", cfg, _given(paths, "train_accuracy"))
    bands, seed_lines = _artists(fig, "band"), _artists(fig, "seed-line")
    legend = " ".join(_legend_texts(fig))
    figures.plt.close(fig)
    panels = 2 * len(cfg["variants"])  # two rows (training mode, eval mode), one lr
    if band:
        assert set(data["style"].dropna()) == {"mean"} and data["low"].notna().any()
        assert len(bands) == panels and not seed_lines and "95% t-interval" in legend
    else:
        assert set(data["style"].dropna()) == {"seed"} and data["low"].isna().all()
        assert not bands and len(seed_lines) == panels * len(seeds) and "one seed" in legend


def test_unconverged_eigenvalues_are_flagged(tmp_path, tables):
    cfg = STUDIES["curvature"]

    def outcome(variant, lr, seed, grid):
        return Outcome(converged=False) if variant == "batchnorm" else default_outcome(variant, lr, seed, grid)

    paths = make_tables(tmp_path, "curvature", cfg, outcome=outcome)
    curvature = pd.read_csv(paths["curvature"])
    unconverged = curvature[curvature["variant"] == "batchnorm"]
    data = figures.figure_data("curvature", "curvature", cfg, _given(paths, "curvature"))
    flagged = data[data["style"] == "unconverged"]
    # both eigenvalues of each unconverged checkpoint are flagged, on their own rows
    assert len(flagged) == 2 * len(unconverged) > 0 and set(flagged["variant"]) == {"batchnorm"}
    assert set(flagged["row"]) == set(paper_frames.EIGENVALUE_ROWS.values())

    fig = figures.render("curvature", "curvature", cfg, _given(paths, "curvature"))
    markers = sum(len(artist.get_offsets()) for artist in _artists(fig, "unconverged"))
    legend = _legend_texts(fig)
    figures.plt.close(fig)
    assert markers == 2 * len(unconverged)
    assert f"eigenvalues whose Lanczos search did not converge: {len(unconverged)} of {len(curvature)} checkpoints" \
        in legend

    fig = _render("curvature", "curvature", cfg, tables["curvature"])  # all converged: nothing flagged
    assert not _artists(fig, "unconverged")
    assert any("converged at all" in text for text in _legend_texts(fig))
    figures.plt.close(fig)


def test_training_mode_and_eval_mode_panels_are_labelled(tables):
    expected = {"accuracy": ["train accuracy\n(training mode)", "test accuracy\n(eval mode)"],
                "train_accuracy": ["train accuracy\n(training mode)", "train accuracy\n(eval mode)"],
                "test_accuracy": ["test accuracy\n(eval mode)"]}
    for kind, study in (("accuracy", "performance"), ("train_accuracy", "noisy_bn"), ("test_accuracy", "mnist_2015")):
        fig = _render(kind, study, STUDIES[study], tables[study])
        first_column = [ax.get_ylabel() for ax in fig.axes if ax.get_subplotspec().is_first_col()]
        title = " ".join(fig.get_suptitle().split())
        figures.plt.close(fig)
        assert first_column == expected[kind], kind
        if kind == "train_accuracy":
            assert "training mode (top)" in title and "eval mode (bottom)" in title

    data = figures.figure_data("accuracy", "performance", STUDIES["performance"],
                               _given(tables["performance"], "accuracy"))
    training_mode = data[data["row"] == expected["accuracy"][0]]
    assert len(training_mode) and training_mode["step"].min() > 0, "train_batches has no step-0 row"


def test_table_readers_never_import_torch():
    code = ("import sys, bnstudy.figures.draw, bnstudy.claims.table, bnstudy.tables.stats, bnstudy.tables.aggregate, "
            "bnstudy.files, bnstudy.config.catalog; sys.exit('torch' in sys.modules)")
    src = Path(figures.__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr or "torch was imported"


def test_ics_shows_the_scale_free_measure_beside_the_raw_one(tables):
    """Definition 2.1's ||G - G'|| next to ||G - G'|| / ||G|| (the claim's measure): the relative
    row is the per-step seed mean of the quotient, not of either part."""
    cfg = STUDIES["ics"]
    data = figures.figure_data("ics", "ics", cfg, _given(tables["ics"], "ics"))
    labels = list(dict.fromkeys(data["row"]))
    assert labels == [m.label for m in paper_frames.ICS_ROWS]
    relative = paper_frames.ICS_ROWS[1]
    assert relative.divide_by == "grad_norm" and "scale-free" in relative.label
    ics = pd.read_csv(tables["ics"]["ics"])
    cell = ics[(ics["variant"] == "batchnorm") & (ics["layer"] == cfg["layers"][0]) & (ics["lr"] == 0.1)]
    expected = (cell["l2_diff"] / cell["grad_norm"]).groupby(cell["step"]).apply(lambda v: 10 ** np.log10(v).mean())
    drawn = data[(data["row"] == relative.label) & (data["variant"] == "batchnorm") & (data["style"] == "mean")
                 & (data["column"] == f"layer {cfg['layers'][0]} · lr = 0.1")].set_index("step")["y"]
    assert np.allclose(drawn.sort_index().to_numpy(), expected.sort_index().to_numpy())


def test_range_bands_on_log_axes_are_geometric_means_over_seeds(tmp_path):
    """One seed's loss range 1e12 times the others' must not set the band (an arithmetic mean
    would put it at a third of that seed's value): the band is the geometric mean."""
    cfg = STUDIES["landscape"]

    def outcome(variant, lr, seed, grid):
        return Outcome(beta=1e24 if seed == 0 else 1.0)

    paths = make_tables(tmp_path, "landscape", cfg, outcome=outcome)
    data = figures.figure_data("landscape", "landscape", cfg, _given(paths, "landscape"))
    bands = data[(data["style"] == "range") & (data["variant"] == "batchnorm")]
    loss_band = bands[bands["column"] == paper_frames.LANDSCAPE_MEASURES[0][2]].set_index("step")
    assert (loss_band["scale"] == "log").all()
    table = pd.read_csv(paths["landscape"])
    along = table[(table["direction"] == "gradient") & (table["variant"] == "batchnorm")]
    highs = along.groupby(["step", "run"])["loss"].max()
    geometric = highs.groupby("step").apply(lambda v: 10 ** np.log10(v).mean())
    arithmetic = highs.groupby("step").mean()
    assert np.allclose(loss_band["high"].sort_index(), geometric.sort_index())
    assert (arithmetic > 100 * geometric).all()  # what the old band drew


def test_activation_vs_lr_shows_whose_activations_grow_with_the_rate(tmp_path):
    """Bjorck et al.'s picture: the standard network's last-layer variance growing as lr^2, BN's
    flat. The figure's means climb two decades per decade of lr for standard and stay level for BN
    (if the paper were wrong, both lines would lie flat), drawn on log axes against the lr."""
    def outcome(variant, lr, seed, grid):
        return Outcome(activation_var=lr ** 2 if variant == "standard" else 1.0)

    cfg = STUDIES["matched_lr"]
    paths = make_tables(tmp_path, "matched_lr", cfg, outcome=outcome)
    data = figures.figure_data("activation_vs_lr", "matched_lr", cfg, _given(paths, "activation_vs_lr"))
    means = data[data["style"] == "mean"]
    assert means["column"].nunique() > 1                  # one column per analysed step
    for (column, variant), line in means.groupby(["column", "variant"]):
        line = line.sort_values("lr")
        assert sorted(line["lr"]) == cfg["lrs"]
        slope = np.polyfit(np.log10(line["lr"].astype(float)), np.log10(line["y"].astype(float)), 1)[0]
        assert slope == pytest.approx(2.0 if variant == "standard" else 0.0, abs=0.15), (column, variant)
    fig = figures.render("activation_vs_lr", "matched_lr", cfg, _given(paths, "activation_vs_lr"))
    axes = _drawn_axes(fig)
    assert axes and all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in axes)


def test_a_figure_kind_is_one_record_added_from_a_module_outside_the_package(tmp_path):
    """A figure kind written in a module of its own: `register` puts its record and drawer in
    place; the next schema lists it, a study that lists it without the analysis it reads is
    refused naming the block to add, and with it the study plans and the figure draws the series
    its data function returns. A duplicate name is refused."""
    from helpers import import_file, smoke_raw

    from bnstudy.config.catalog import FIGURE_KINDS as KINDS
    from bnstudy.configure import load_config
    from bnstudy.configure import load_schema
    from bnstudy.errors import ConfigError

    module = tmp_path / "gradient_by_layer.py"
    module.write_text(
        "import matplotlib.pyplot as plt\n"
        "from bnstudy.config.catalog import FigureKind\n"
        "from bnstudy.figures.draw import Drawer, register\n\n"
        "def data(ctx):\n"
        "    table = ctx.tables['activations']\n"
        "    return table.groupby(['variant', 'layer'], as_index=False)['grad_norm'].mean()\n\n"
        "def plot(ctx, frame):\n"
        "    fig, ax = plt.subplots()\n"
        "    for variant, rows in frame.groupby('variant'):\n"
        "        ax.plot(rows['layer'], rows['grad_norm'], label=variant, gid='series')\n"
        "    return fig\n\n"
        "register('gradient_by_layer', FigureKind(analyses=('activations',)),\n"
        "         Drawer('gradient norm by layer', data, plot))\n")
    try:
        import_file(module)
        assert "gradient_by_layer" in load_schema()["definitions"]["figure_kind"]["enum"]
        with pytest.raises(ValueError, match="registered twice"):
            figures.register("gradient_by_layer", KINDS["gradient_by_layer"], figures.DRAWERS["gradient_by_layer"])

        raw = smoke_raw(tmp_path / "r")
        study = next(s for s in raw["studies"].values() if "activations" not in s)
        study["figures"] = ["gradient_by_layer"]
        with pytest.raises(ConfigError, match="gradient_by_layer.*add a `activations:` block"):
            load_config(raw)
        study["activations"] = {}
        load_config(raw)

        cfg = STUDIES["depth_at_init"]
        paths = make_tables(tmp_path / "tables", "depth_at_init", cfg)
        frame = figures.figure_data("gradient_by_layer", "depth_at_init", cfg, _given(paths, "gradient_by_layer"))
        fig = figures.render("gradient_by_layer", "depth_at_init", cfg, _given(paths, "gradient_by_layer"))
        lines = _artists(fig, "series")
        figures.plt.close(fig)
        assert sorted(line.get_label() for line in lines) == sorted(frame["variant"].unique())
        for line in lines:
            rows = frame[frame["variant"] == line.get_label()]
            assert list(line.get_ydata()) == list(rows["grad_norm"])
    finally:
        KINDS.pop("gradient_by_layer", None)
        figures.DRAWERS.pop("gradient_by_layer", None)
    assert "gradient_by_layer" not in load_schema()["definitions"]["figure_kind"]["enum"]
