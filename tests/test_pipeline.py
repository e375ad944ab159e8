"""The whole DAG end to end on config/smoke.yaml, the report, planning and linting."""

import json
import zipfile

import pandas as pd
import pytest

from bnstudy.configure import load_config
from bnstudy.config.plan import plan

from helpers import REPO, job_counts, run_snakemake

pytestmark = pytest.mark.e2e


def test_smoke_dag_produces_every_output(smoke_dag):
    results = smoke_dag / "results"
    cfg = load_config(REPO / "config" / "smoke.yaml")
    p = plan(cfg)
    for run in p.runs:
        summary = json.loads((results / "runs" / run / "summary.json").read_text())
        assert summary["status"] in ("completed", "diverged") and summary["mlflow_run_id"]
    for run in p.runs:  # one analysis folder per analysed run, holding exactly its tables
        wanted = {f"{analysis}-{digest}.csv" for analysis, digest in p.run_analyses(run)}
        folder = results / "analysis" / run
        assert {t.name for t in folder.glob("*.csv")} == wanted if wanted else not folder.exists(), run
        assert all(len(pd.read_csv(folder / name)) > 0 for name in wanted)
    for study in p.study_runs:
        assert len(pd.read_csv(results / "tables" / study / "runs.csv")) == len(p.study_runs[study])
        for analysis in p.study_analyses[study]:
            assert set(pd.read_csv(results / "tables" / study / f"{analysis}.csv")["run"]) == set(p.study_runs[study])
        for figure in cfg["studies"][study]["figures"]:
            png = results / "figures" / study / f"{figure}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert png.with_suffix(".pdf").stat().st_size > 5000
    # smoke trains at lr 1000 on purpose: the diverged run is a result that flows on
    lr_runs = pd.read_csv(results / "tables" / "claim_learning_rate" / "runs.csv")
    assert (lr_runs["status"] == "diverged").any() and (lr_runs["status"] == "completed").any()
    claims = pd.read_csv(results / "claims.csv")
    # every claim a study lists gives its rows (one per measure and window), and nothing else does
    listed = {(s, kind) for s in p.study_runs for kind in cfg["studies"][s]["claims"]}
    assert set(zip(claims["study"], claims["key"].str.split(".").str[0])) == listed
    assert set(claims["verdict"]) <= {"supported", "not supported", "inconclusive"}
    assert (results / "claims.md").read_text().startswith("#")
    for rule in ("train", "analyze", "aggregate", "figures"):
        assert list((results / "logs" / rule).rglob("*.log")) and list((results / "benchmarks" / rule).rglob("*.tsv"))


def test_one_job_per_run_per_study_and_per_stage(smoke_dag):
    """Fewer, larger jobs: one training job per run, one analysis job per analysed run (all its
    tables), one aggregation and one figures job per study, one claims and one track job."""
    p = plan(load_config(REPO / "config" / "smoke.yaml"))
    proc = run_snakemake(smoke_dag, "-n", "--forceall", "--cores", "1")
    counts = job_counts(proc.stdout + proc.stderr)
    with_figures = [s for s, runs in p.study_runs.items() if load_config(REPO / "config" / "smoke.yaml")[
        "studies"][s]["figures"]]
    assert counts["train"] == len(p.runs)
    assert counts["analyze"] == len(p.analysed_runs()) < sum(len(p.run_analyses(r)) for r in p.runs)
    assert counts["aggregate"] == len(p.study_runs) and counts["figures"] == len(with_figures)
    assert counts["claims"] == counts["track"] == 1


def test_rerun_does_nothing_when_up_to_date(smoke_dag):
    proc = run_snakemake(smoke_dag, "-n", "--cores", "1")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_report_shows_every_figure_with_its_own_caption_and_the_claims(smoke_dag):
    run_snakemake(smoke_dag, "--report", "report.zip")
    archive = zipfile.ZipFile(smoke_dag / "report.zip")
    names = archive.namelist()
    pngs = [n for n in names if n.endswith(".png")]
    cfg = load_config(REPO / "config" / "smoke.yaml")
    expected = sum(len(cfg["studies"][s]["figures"]) for s in plan(cfg).study_runs)
    assert len(pngs) == expected
    assert any(n.endswith("claims.csv") for n in names)
    # each figure of a study's folder gets its kind's caption (workflow/report/figures/<kind>.rst)
    page = "\n".join(archive.read(n).decode("utf-8", "replace") for n in names
                     if n.endswith((".html", ".js", ".json")))
    landscape = (REPO / "workflow" / "report" / "figures" / "landscape.rst").read_text().split()
    curvature = (REPO / "workflow" / "report" / "figures" / "curvature.rst").read_text().split()
    assert " ".join(landscape[:8]) in " ".join(page.split()) and " ".join(curvature[:8]) in " ".join(page.split())


def test_bad_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("studies:\n  performance:\n    lrs: [fast]\n")
    proc = run_snakemake(tmp_path, "--cores", "1", "--configfile", str(bad), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "studies.performance.lrs.0" in out and "'fast' is not of type 'number'" in out
    assert not (tmp_path / "results").exists()


def test_both_configs_plan(tmp_path):
    """Snakemake plans the shipped configs into the jobs bnstudy.config.plan says, one per run, analysed
    run and study (how fast: benchmarks/dag_overhead.py prints `snakemake -n` on paper.yaml)."""
    for configfile in ("config/config.yaml", "config/paper.yaml"):
        p = plan(load_config(REPO / configfile))
        proc = run_snakemake(tmp_path, "-n", configfile=configfile)
        counts = job_counts(proc.stdout + proc.stderr)
        assert counts["train"] == len(p.runs) and counts["analyze"] == len(p.analysed_runs()), configfile
        assert counts["aggregate"] == len(p.study_runs), configfile


def test_lint_is_clean(tmp_path):
    proc = run_snakemake(tmp_path, "--lint", check=False)
    out = proc.stdout + proc.stderr
    assert "Congratulations" in out or "no lints" in out.lower(), out[-3000:]
