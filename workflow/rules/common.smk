# Helpers shared by the rules: the validated config, the plan, and the functions that turn them
# into rule inputs and params. What to run is decided in bnstudy.plan; the analysis, figure and
# claim kinds (and the tables each reads) in bnstudy.catalog. Nothing here imports torch or
# matplotlib: parsing the DAG stays fast.
import json
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # works without `pip install -e .` too

from bnstudy.config import ConfigError, load_config
from bnstudy.plan import plan
from bnstudy.tracking import EXECUTION_ENV

try:
    _validated = load_config(config)
except ConfigError as err:
    raise WorkflowError(str(err))
config.clear()
config.update(_validated)

PLAN = plan(config)
RESULTS = config["results"]
STUDIES = {name: cfg for name, cfg in config["studies"].items() if name in PLAN.study_runs}
# one id per pipeline execution, inherited by every job (locally and through sbatch's
# environment export), so MLflow can group one execution's runs
os.environ.setdefault(EXECUTION_ENV, uuid.uuid4().hex[:12])
# Jobs import the package from this checkout (also in conda envs and on cluster nodes), and run
# `python` = the interpreter that runs Snakemake (a venv works without being activated), unless a
# conda env (--sdm conda) puts its own interpreter first on PATH.
os.environ.update(PYTHONPATH=str(Path(workflow.basedir) / "src"))
if not any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method):
    os.environ.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))

TRACKING = {**config["tracking"], "results": RESULTS}
CAPTIONS = Path(workflow.basedir) / "workflow" / "report" / "figures"


wildcard_constraints:
    run="[A-Za-z0-9_.+-]+",
    study="[a-z][a-z0-9_]*",
    dataset="[A-Za-z0-9_-]+",


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


# -- data and training


def dataset_config(wildcards):
    return as_json(config["datasets"][wildcards.dataset])


def run_folder(wildcards):
    return f"{RESULTS}/runs/{wildcards.run}"


def run_spec(wildcards):
    return PLAN.runs[wildcards.run].to_json()


def run_dataset(wildcards):
    return PLAN.runs[wildcards.run].dataset.path


def run_studies(wildcards):
    return ",".join(s for s, runs in PLAN.study_runs.items() if wildcards.run in runs)


def run_name(wildcards):
    return PLAN.names[wildcards.run]


def tracking_marker(wildcards=None):
    """Live tracking: the store and experiment exist before any training job logs to them."""
    return [f"{RESULTS}/tracking/ready.json"] if TRACKING["enabled"] and TRACKING["live"] else []


# -- analyses: one job per run computes every table some study needs of it


def analysis_folder(run):
    return f"{RESULTS}/analysis/{run}"


def analysis_jobs(wildcards):
    """The tables of the run's analysis job: each (analysis, settings hash) with its settings."""
    return as_json([{"analysis": analysis, "digest": digest, "settings": PLAN.analysis_settings[digest]}
                    for analysis, digest in PLAN.run_analyses(wildcards.run)])


# -- study tables


def tables_folder(study):
    return f"{RESULTS}/tables/{study}"


def study_config(wildcards):
    return as_json(STUDIES[wildcards.study])


def study_summaries(wildcards):
    return [f"{RESULTS}/runs/{run}/summary.json" for run in PLAN.study_runs[wildcards.study]]


def study_run_tables(wildcards):
    """The per-run files aggregation reads besides summary.json."""
    names = ("spec.json", "train.csv", "eval.csv", "layers.csv", "units.csv")
    return [f"{RESULTS}/runs/{run}/{name}" for run in PLAN.study_runs[wildcards.study] for name in names]


def study_analysis_folders(wildcards):
    """The analysis folders of the study's runs, if the study configures an analysis."""
    if not PLAN.study_analyses[wildcards.study]:
        return []
    return [analysis_folder(run) for run in PLAN.study_runs[wildcards.study]]


def study_analyses(wildcards):
    """ANALYSIS=HASH of each analysis the study configures: its tables are <analysis>-<hash>.csv."""
    return " ".join(f"{a}={d}" for a, d in sorted(PLAN.study_analyses[wildcards.study].items()))


# -- figures and claims


def figure_kinds(wildcards):
    return " ".join(STUDIES[wildcards.study]["figures"])


def figure_captions(wildcards):
    """Per figure kind: the study's description, then what the kind plots
    (workflow/report/figures/<kind>.rst). The report shows each figure with its own."""
    description = STUDIES[wildcards.study]["description"].strip()
    captions = {}
    for kind in STUDIES[wildcards.study]["figures"]:
        text = (CAPTIONS / f"{kind}.rst").read_text().strip()
        captions[kind] = f"{description}\n\n{text}" if description else text
    return captions


def figures_folder(study):
    return f"{RESULTS}/figures/{study}"


def claim_folders():
    return {study: tables_folder(study) for study, cfg in STUDIES.items() if cfg["claims"]}


def claim_table_args():
    return " ".join(f"{study}={folder}" for study, folder in claim_folders().items())


def all_figures():
    return [figures_folder(study) for study, cfg in STUDIES.items() if cfg["figures"]]


def all_outputs():
    outputs = [tables_folder(study) for study in STUDIES] + all_figures()
    outputs += [f"{RESULTS}/claims.csv", f"{RESULTS}/claims.md"]
    if TRACKING["enabled"]:
        outputs.append(f"{RESULTS}/tracking/track.json")
    return outputs
