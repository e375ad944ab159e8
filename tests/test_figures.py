"""Every registered figure renders from fixture tables; captions are usable by the report."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_tables import STUDIES, Outcome, default_outcome, make_tables  # noqa: E402

from bnstudy import figures  # noqa: E402
from bnstudy.figures import FIGURES, draw  # noqa: E402

MIN_BYTES = 5 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CASES = [(study, figure) for study, names in FIGURES.items() for figure in names]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Study tables for every study in the registry (built once for the module)."""
    root = tmp_path_factory.mktemp("fixtures")
    return {study: make_tables(root, study) for study in FIGURES}


def _assert_rendered(png: Path) -> None:
    pdf = png.with_suffix(".pdf")
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert png.stat().st_size > MIN_BYTES and pdf.stat().st_size > MIN_BYTES
    assert not list(png.parent.glob(".*")), "temporary files left behind"


def test_registry_covers_every_study_with_captions():
    assert set(FIGURES) == set(STUDIES)
    for study, names in FIGURES.items():
        assert names, study
        for name, caption in names.items():
            assert len(caption) > 150, (study, name)
            assert "\n\n" not in caption and "{{" not in caption and "{%" not in caption
            assert "Fig" in caption or "claim" in caption or "Theorem" in caption, (study, name)


def test_captions_are_valid_restructuredtext():
    """Snakemake renders captions as reST: a stray '|' or '_' would break the report."""
    docutils_core = pytest.importorskip("docutils.core")
    report_dir = Path(__file__).parents[1] / "workflow" / "report"
    texts = {f"{s}/{f}": c for s, names in FIGURES.items() for f, c in names.items()}
    texts |= {path.name: path.read_text() for path in report_dir.glob("*.rst") if path.name != "figure.rst"}
    assert (report_dir / "figure.rst").read_text().strip() == "{{ snakemake.params.caption }}"
    for name, text in texts.items():
        warnings = io.StringIO()
        docutils_core.publish_doctree(text, settings_overrides={"warning_stream": warnings, "report_level": 1})
        assert warnings.getvalue() == "", (name, warnings.getvalue())


@pytest.mark.parametrize("study, figure", CASES, ids=[f"{s}-{f}" for s, f in CASES])
def test_figure_renders_from_fixture_tables(tables, tmp_path, study, figure):
    out = tmp_path / study / f"{figure}.png"
    draw(study, figure, tables[study], STUDIES[study], out)
    _assert_rendered(out)


def test_diverged_runs_are_counted_in_the_legend(tables):
    """performance's fixture has a diverged standard run: the legend must say so."""
    runs = pd.read_csv(tables["performance"] / "runs.csv")
    assert (runs["status"] == "diverged").sum() == 1
    ctx = figures._Context("performance", STUDIES["performance"], figures._Tables(tables["performance"]))
    fig = figures.accuracy_curves(ctx, splits=("train", "test"))
    labels = [text.get_text() for legend in fig.legends for text in legend.get_texts()]
    figures.plt.close(fig)
    assert "standard (1/4 runs diverged)" in labels and "diverged run" in labels


@pytest.mark.parametrize("study", ["performance", "landscape", "claim_learning_rate"])
def test_variant_that_diverges_at_once_still_renders(tmp_path, study):
    """Every batchnorm run diverging at step 0 leaves one point or none per curve: every figure of
    the study must still draw (as 'no data' where nothing is left), never crash."""
    def outcome(variant, lr, seed, grid):
        return Outcome(diverged_step=0) if variant == "batchnorm" else default_outcome(variant, lr, seed, grid)

    tables_dir = make_tables(tmp_path, study, STUDIES[study], outcome=outcome)
    for figure in FIGURES[study]:
        draw(study, figure, tables_dir, STUDIES[study], tmp_path / f"{figure}.png")
        _assert_rendered(tmp_path / f"{figure}.png")


def test_unknown_figure_is_a_clear_error(tables, tmp_path):
    with pytest.raises(KeyError, match="no figure 'nope' for study 'ics'"):
        draw("ics", "nope", tables["ics"], STUDIES["ics"], tmp_path / "x.png")


def test_table_readers_never_import_torch():
    code = ("import sys, bnstudy.figures, bnstudy.claims, bnstudy.stats, bnstudy.aggregate; "
            "sys.exit('torch' in sys.modules)")
    src = Path(figures.__file__).parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr or "torch was imported"
