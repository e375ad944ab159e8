"""The whole DAG end to end on config/smoke.yaml, the report, planning and linting."""

import json

import pandas as pd

from bnstudy.config import load_config, plan

from conftest import REPO, run_snakemake


def test_smoke_dag_produces_every_output(smoke_dag):
    results = smoke_dag / "results"
    cfg = load_config(REPO / "config" / "smoke.yaml")
    p = plan(cfg)
    for run in p.runs:
        summary = json.loads((results / "runs" / run / "summary.json").read_text())
        assert summary["status"] in ("completed", "diverged") and summary["mlflow_run_id"]
    for run, analysis, digest in p.analysis_jobs():
        table = pd.read_csv(results / "analysis" / run / f"{analysis}-{digest}.csv")
        assert len(table) > 0
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
    assert len(claims) == sum(len(cfg["studies"][s]["claims"]) for s in p.study_runs)
    assert set(claims["verdict"]) <= {"supported", "not supported", "inconclusive"}
    assert (results / "claims.md").read_text().startswith("#")
    for rule in ("train", "analyze", "aggregate", "figure"):
        assert list((results / "logs" / rule).rglob("*.log")) and list((results / "benchmarks" / rule).rglob("*.tsv"))


def test_the_dags_jobs_ran_as_forks_of_one_server(smoke_dag):
    """runtime.fork_server (on by default): one server per execution, started and stopped by the
    Snakefile's hooks; the jobs after its start-up are its children (the first few may run cold)."""
    log = (smoke_dag / "results" / "logs" / "fork_server.log").read_text()
    jobs = len(list((smoke_dag / "results" / "benchmarks").rglob("*.tsv")))
    served = log.count("): ")
    assert "serving " in log and "stopped after" in log and "refused" not in log
    # (a slow machine may run more of the first jobs cold while the server imports)
    assert jobs // 2 <= served <= jobs, (served, jobs)
    assert "): train" in log and "): analyze" in log and "): figure" in log


def test_rerun_does_nothing_when_up_to_date(smoke_dag):
    proc = run_snakemake(smoke_dag, "-n", "--cores", "1")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_report_shows_every_figure_and_the_claims(smoke_dag):
    run_snakemake(smoke_dag, "--report", "report.zip")
    import zipfile
    names = zipfile.ZipFile(smoke_dag / "report.zip").namelist()
    pngs = [n for n in names if n.endswith(".png")]
    cfg = load_config(REPO / "config" / "smoke.yaml")
    expected = sum(len(cfg["studies"][s]["figures"]) for s in plan(cfg).study_runs)
    assert len(pngs) >= expected
    assert any(n.endswith("claims.csv") for n in names)


def test_bad_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("studies:\n  performance:\n    lrs: [fast]\n")
    proc = run_snakemake(tmp_path, "--cores", "1", "--configfile", str(bad), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "studies.performance.lrs.0" in out and "'fast' is not of type 'number'" in out
    assert not (tmp_path / "results").exists()


def test_both_configs_plan(tmp_path):
    """(How fast: benchmarks/dag_overhead.py prints `snakemake -n` on paper.yaml.)"""
    for configfile, minimum in (("config/config.yaml", 100), ("config/paper.yaml", 200)):
        proc = run_snakemake(tmp_path, "-n", "--quiet", "rules", configfile=configfile)
        jobs = sum(int(line.split()[-1]) for line in proc.stdout.splitlines()
                   if line.strip() and line.split()[0] in {"train", "analyze", "figure", "aggregate",
                                                           "aggregate_analysis"})
        assert jobs >= minimum, proc.stdout


def test_lint_is_clean(tmp_path):
    proc = run_snakemake(tmp_path, "--lint", check=False)
    out = proc.stdout + proc.stderr
    assert "Congratulations" in out or "no lints" in out.lower(), out[-3000:]
