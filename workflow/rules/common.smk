# Helpers shared by the rules: the validated config, the run plan, and the functions that turn
# them into rule inputs and params. Logic about *what* to run lives in bnstudy.config.plan.
import json
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # works without `pip install -e .` too

from bnstudy.config import ConfigError, load_config, plan
from bnstudy.figures import FIGURES
from bnstudy.tracking import EXECUTION_ENV

try:
    _validated = load_config(config)
except ConfigError as err:
    raise WorkflowError(str(err))
config.clear()
config.update(_validated)

PLAN = plan(config)
RESULTS = config["results"]
# one id per pipeline execution, inherited by every job (locally and through sbatch's
# environment export), so MLflow can group one execution's runs
os.environ.setdefault(EXECUTION_ENV, uuid.uuid4().hex[:12])
# Jobs import the package from this checkout (also in conda envs and on cluster nodes), and run
# `python` = the interpreter that runs Snakemake (a venv works without being activated), unless a
# conda env (--sdm conda) puts its own interpreter first on PATH.
_src = str(Path(workflow.basedir) / "src")
os.environ.update(PYTHONPATH=_src)
if not any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method):
    os.environ.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))

TRACKING = {**config["tracking"], "results": RESULTS}


wildcard_constraints:
    run="[A-Za-z0-9_.+-]+",
    study="[a-z0-9_]+",
    dataset="[A-Za-z0-9_-]+",
    analysis="ics|landscape|curvature",
    figure="[a-z0-9_]+",


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def dataset_config(wildcards):
    return as_json(config["datasets"][wildcards.dataset])


def run_spec(wildcards):
    return as_json(PLAN.runs[wildcards.run])


def run_dataset(wildcards):
    return PLAN.runs[wildcards.run]["dataset"]["path"]


def run_studies(wildcards):
    return ",".join(s for s, runs in PLAN.study_runs.items() if wildcards.run in runs)


def tracking_marker(wildcards=None):
    return [f"{RESULTS}/tracking/ready.json"] if TRACKING["enabled"] else []


def analysis_settings(wildcards):
    return as_json(PLAN.study_analyses[wildcards.study][wildcards.analysis])


def study_config(wildcards):
    return as_json(config["studies"][wildcards.study])


def study_summaries(wildcards):
    return [f"{RESULTS}/runs/{run}/summary.json" for run in PLAN.study_runs[wildcards.study]]


def study_analysis_tables(wildcards):
    return [
        f"{RESULTS}/analysis/{wildcards.study}/{analysis}/{run}.csv"
        for analysis in PLAN.study_analyses[wildcards.study]
        for run in PLAN.study_runs[wildcards.study]
    ]


def tables_root(wildcards, input):
    """results/tables, from a study's runs.csv (results/tables/<study>/runs.csv)."""
    return str(Path(input[0]).parent.parent)


def figure_caption(wildcards):
    return FIGURES[wildcards.study][wildcards.figure]


def figure_files():
    return [
        f"{RESULTS}/figures/{study}/{figure}.png"
        for study in PLAN.study_runs
        for figure in FIGURES.get(study, {})
    ]


def all_outputs():
    return figure_files() + [
        f"{RESULTS}/claims.csv",
        f"{RESULTS}/claims.md",
        f"{RESULTS}/tracking/figures.json",
    ]


def parent_of_input(wildcards, input):
    """The folder of a rule's first input (a run folder, a study's tables folder)."""
    return str(Path(input[0]).parent)


def parent_of_output(wildcards, output):
    return str(Path(output[0]).parent)
