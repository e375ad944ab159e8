"""Studies are config, and the DAG matches what it claims: a new study is one config edit, an
analysis shared by two studies is computed once, and every file a rule reads or writes is
declared, so deleting one folder or forcing one rule reruns exactly what depends on it."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers import job_counts, scheduled_jobs, smoke_raw, write_yaml

from bnstudy.configure import load_config
from bnstudy.config.plan import plan

from helpers import REPO, run_snakemake

pytestmark = pytest.mark.e2e

NEW_STUDY = {"my_new_study": {"setup": "vgg", "variants": ["standard", "batchnorm"], "lrs": [0.05],
                              "seeds": [0], "figures": ["accuracy"]}}
# the smoke landscape study again under another name, with the same analysis settings
TWIN = {"landscape_twin": {**smoke_raw()["studies"]["landscape"], "claims": []}}


def dry_run(workdir: Path, *args: str):
    configs = [a for a in args if a.endswith(".yaml")]
    rest = [a for a in args if a not in configs]
    proc = run_snakemake(workdir, *configs, "-n", *rest)
    out = proc.stdout + proc.stderr
    return job_counts(out), scheduled_jobs(out)


def test_a_new_study_is_one_config_edit(smoke_copy, tmp_path):
    extra = write_yaml(tmp_path / "new_study.yaml", {"studies": NEW_STUDY})
    counts, jobs = dry_run(smoke_copy, str(extra))
    assert ("figures", {"study": "my_new_study"}) in jobs, jobs
    assert counts.get("train") == 2 and counts.get("aggregate") == 1, counts
    run_snakemake(smoke_copy, str(extra), "--cores", "2")
    png = smoke_copy / "results" / "figures" / "my_new_study" / "accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = pd.read_csv(smoke_copy / "results" / "tables" / "my_new_study" / "runs.csv")
    assert set(runs["lr"]) == {0.05} and set(runs["variant"]) == {"standard", "batchnorm"}


def test_an_analysis_shared_by_two_studies_is_computed_once(tmp_path):
    raw = smoke_raw()   # results: "results", as the dry run below sees it from tmp_path (run ids hash it)
    raw["studies"].update(TWIN)
    p = plan(load_config(raw))
    assert p.study_analyses["landscape_twin"] == p.study_analyses["landscape"]
    runs = p.study_runs["landscape"]
    assert all(p.run_analyses(run).count(("landscape", p.study_analyses["landscape"]["landscape"])) == 1
               for run in runs)

    extra = write_yaml(tmp_path / "twin.yaml", {"studies": TWIN})
    counts, jobs = dry_run(tmp_path, str(extra))
    analysed = sorted(w["run"] for rule, w in jobs if rule == "analyze")
    assert analysed == sorted(p.analysed_runs()) and set(runs) <= set(analysed), analysed
    studies = {w["study"] for rule, w in jobs if rule == "aggregate"}
    assert {"landscape", "landscape_twin"} <= studies


def test_a_deleted_table_folder_is_rebuilt_by_its_own_rule_alone(smoke_copy):
    """A study's tables folder is a declared output: naming it plans exactly its aggregation,
    nothing upstream; its figures are its declared downstream."""
    import shutil

    folder = smoke_copy / "results" / "tables" / "landscape"
    shutil.rmtree(folder)
    counts, jobs = dry_run(smoke_copy, str(folder.relative_to(smoke_copy)))
    assert jobs == [("aggregate", {"study": "landscape"})], jobs
    # forcing the figures that read it: those figures, and what collects figures
    counts, jobs = dry_run(smoke_copy, "--forcerun", "results/figures/landscape")
    assert sorted(rule for rule, _ in jobs) == ["aggregate", "all", "claims", "figures", "track"], jobs
    assert ("figures", {"study": "landscape"}) in jobs


def test_forcerun_figures_redraws_without_aggregating(smoke_copy):
    counts, jobs = dry_run(smoke_copy, "--forcerun", "figures")
    assert "aggregate" not in counts and "train" not in counts and "analyze" not in counts, counts
    drawn = {s for s, cfg in smoke_raw()["studies"].items() if cfg.get("figures")}
    assert {w["study"] for rule, w in jobs if rule == "figures"} == drawn


def test_every_file_in_results_is_a_declared_output(smoke_dag):
    """No rule writes a table, figure or analysis that no rule declares (Snakemake's summary
    lists every output it knows: a file, or the folder a rule declares as its output)."""
    proc = run_snakemake(smoke_dag, "--summary")
    declared = {line.split("\t")[0] for line in proc.stdout.splitlines() if "\t" in line}
    results = smoke_dag / "results"
    written = [p.relative_to(smoke_dag) for folder in ("tables", "analysis", "figures", "runs", "data")
               for p in (results / folder).rglob("*") if p.is_file() and "checkpoints" not in p.parts]
    undeclared = [str(p) for p in written if not {str(p), *map(str, p.parents)} & declared]
    assert written and not undeclared, undeclared


def test_the_snakemake_process_plans_without_torch_or_plotting():
    """Parsing the DAG imports the config, the catalog and the claim records, never torch, plotting,
    MLflow or scipy. (pandas is allowed: Snakemake itself imports it, and the claim records' measures
    are pandas code.)"""
    import subprocess

    code = ("import sys, runpy; sys.path.insert(0, 'src'); "
            "import bnstudy.configure, bnstudy.config.plan, bnstudy.config.catalog, bnstudy.claims, "
            "bnstudy.tracking.context; "
            "bnstudy.config.plan.plan(bnstudy.configure.load_config('config/paper.yaml')); "
            "loaded = [m for m in ('torch', 'matplotlib', 'seaborn', 'mlflow', 'scipy') if m in sys.modules]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
