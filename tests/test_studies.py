"""Studies are config, and the DAG matches what it claims: a new study is one config edit, an
analysis shared by two studies is computed once, and every table a rule reads or writes is
declared, so deleting one table or forcing one rule reruns exactly what depends on it."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent / "harness"))
from testlib import job_counts, scheduled_jobs, smoke_config, write_yaml  # noqa: E402

from bnstudy.config import load_config, plan  # noqa: E402

from conftest import REPO, run_snakemake  # noqa: E402

NEW_STUDY = {"my_new_study": {"setup": "vgg", "variants": ["standard", "batchnorm"], "lrs": [0.05],
                              "seeds": [0], "figures": ["accuracy"]}}
# the smoke landscape study again under another name, with the same analysis settings
TWIN = {"landscape_twin": {**smoke_config()["studies"]["landscape"], "claims": []}}


def dry_run(workdir: Path, *args: str):
    configs = [a for a in args if a.endswith(".yaml")]
    rest = [a for a in args if a not in configs]
    proc = run_snakemake(workdir, *configs, "-n", *rest)
    out = proc.stdout + proc.stderr
    return job_counts(out), scheduled_jobs(out)


def test_a_new_study_is_one_config_edit(smoke_copy, tmp_path):
    extra = write_yaml(tmp_path / "new_study.yaml", {"studies": NEW_STUDY})
    counts, jobs = dry_run(smoke_copy, str(extra))
    assert ("figure", {"study": "my_new_study", "kind": "accuracy"}) in jobs, jobs
    assert counts.get("train") == 2 and counts.get("aggregate") == 1, counts
    run_snakemake(smoke_copy, str(extra), "--cores", "2")
    png = smoke_copy / "results" / "figures" / "my_new_study" / "accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = pd.read_csv(smoke_copy / "results" / "tables" / "my_new_study" / "runs.csv")
    assert set(runs["lr"]) == {0.05} and set(runs["variant"]) == {"standard", "batchnorm"}


def test_an_analysis_shared_by_two_studies_is_computed_once(tmp_path):
    raw = smoke_config()
    raw["results"] = str(tmp_path / "results")
    raw["studies"].update(TWIN)
    p = plan(load_config(raw))
    assert p.study_analyses["landscape_twin"] == p.study_analyses["landscape"]
    assert len([job for job in p.analysis_jobs() if job[1] == "landscape"]) == 2  # 2 runs, not 4

    extra = write_yaml(tmp_path / "twin.yaml", {"studies": TWIN})
    counts, jobs = dry_run(tmp_path, str(extra))
    landscape_jobs = [w for rule, w in jobs if rule == "analyze" and w["analysis"] == "landscape"]
    assert len(landscape_jobs) == 2, landscape_jobs
    studies = {w["study"] for rule, w in jobs if rule == "aggregate_analysis" and w["analysis"] == "landscape"}
    assert studies == {"landscape", "landscape_twin"}


def test_a_deleted_table_is_rebuilt_by_its_own_rule_alone(smoke_copy):
    """The table is a declared output: naming it plans exactly its aggregation, nothing upstream;
    the figures that read it are its declared downstream."""
    table = smoke_copy / "results" / "tables" / "landscape" / "landscape.csv"
    table.unlink()
    counts, jobs = dry_run(smoke_copy, str(table.relative_to(smoke_copy)))
    assert jobs == [("aggregate_analysis", {"study": "landscape", "analysis": "landscape"})], jobs
    # forcing the figure that reads it: the table, that figure, and what collects figures/tables
    figure = "results/figures/landscape/landscape.png"
    counts, jobs = dry_run(smoke_copy, "--forcerun", figure)
    assert sorted(rule for rule, _ in jobs) == ["aggregate_analysis", "all", "claims", "figure", "track"], jobs
    assert ("figure", {"study": "landscape", "kind": "landscape"}) in jobs


def test_forcerun_one_figure_kind_redraws_only_it(smoke_copy):
    counts, jobs = dry_run(smoke_copy, "--forcerun", "aggregate_analysis")
    assert "aggregate" not in counts and "train" not in counts and "analyze" not in counts, counts
    analysed = {s for s, cfg in smoke_config()["studies"].items()
                if any(a in cfg for a in ("ics", "landscape", "curvature"))}
    assert {w["study"] for rule, w in jobs if rule == "aggregate_analysis"} == analysed


def test_every_file_in_results_is_a_declared_output(smoke_dag):
    """No rule writes a table, figure or analysis that no rule declares (Snakemake's summary
    lists every output file it knows)."""
    proc = run_snakemake(smoke_dag, "--summary")
    declared = {line.split("\t")[0] for line in proc.stdout.splitlines() if "\t" in line}
    results = smoke_dag / "results"
    written = [p for folder in ("tables", "analysis", "figures") for p in (results / folder).rglob("*")
               if p.is_file()]
    undeclared = [str(p.relative_to(smoke_dag)) for p in written if str(p.relative_to(smoke_dag)) not in declared]
    assert written and not undeclared, undeclared


def test_the_snakemake_process_plans_without_torch_or_plotting():
    """Parsing the DAG imports the config and the catalog, never torch or matplotlib."""
    import subprocess

    code = ("import sys, runpy; sys.path.insert(0, 'src'); "
            "import bnstudy.config, bnstudy.catalog, bnstudy.tracking; "
            "bnstudy.config.plan(bnstudy.config.load_config('config/paper.yaml')); "
            "loaded = [m for m in ('torch', 'matplotlib', 'seaborn', 'mlflow', 'pandas') if m in sys.modules]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + proc.stdout
