# Helpers shared by the rules: the validated config, the plan, and the functions that turn them
# into rule inputs and params. What to run is decided in bnstudy.config.plan; the figure and
# claim kinds (and the tables each reads) in bnstudy.catalog. Nothing here imports torch or
# matplotlib: parsing the DAG stays fast.
import json
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # works without `pip install -e .` too

from bnstudy.catalog import FIGURE_KINDS, claim_tables, figure_tables
from bnstudy.config import ANALYSES, ConfigError, load_config, plan
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
USES_CONDA = any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method)
if not USES_CONDA:
    os.environ.update(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))

TRACKING = {**config["tracking"], "results": RESULTS}
CAPTIONS = Path(workflow.basedir) / "workflow" / "report" / "figures"


wildcard_constraints:
    run="[A-Za-z0-9_.+-]+",
    study="[a-z][a-z0-9_]*",
    dataset="[A-Za-z0-9_-]+",
    analysis="|".join(ANALYSES),
    digest="[0-9a-f]{8}",
    kind="|".join(FIGURE_KINDS),


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


# -- data and training


def dataset_config(wildcards):
    return as_json(config["datasets"][wildcards.dataset])


def run_folder(wildcards):
    return f"{RESULTS}/runs/{wildcards.run}"


def run_spec(wildcards):
    return as_json(PLAN.runs[wildcards.run])


def run_dataset(wildcards):
    return PLAN.runs[wildcards.run]["dataset"]["path"]


def run_studies(wildcards):
    return ",".join(s for s, runs in PLAN.study_runs.items() if wildcards.run in runs)


def tracking_marker(wildcards=None):
    """Live tracking: the store and experiment exist before any training job logs to them."""
    return [f"{RESULTS}/tracking/ready.json"] if TRACKING["enabled"] and TRACKING["live"] else []


# -- analyses: one table per (run, analysis, settings hash), shared by every study that asks


def analysis_settings(wildcards):
    return as_json(PLAN.analysis_settings[wildcards.digest])


def analysis_table(run, analysis, digest):
    return f"{RESULTS}/analysis/{run}/{analysis}-{digest}.csv"


# -- study tables


def study_config(wildcards):
    return as_json(STUDIES[wildcards.study])


def study_summaries(wildcards):
    return [f"{RESULTS}/runs/{run}/summary.json" for run in PLAN.study_runs[wildcards.study]]


def study_run_tables(wildcards):
    """The per-run files aggregation reads besides summary.json."""
    names = ("spec.json", "train.csv", "eval.csv", "layers.csv", "units.csv")
    return [f"{RESULTS}/runs/{run}/{name}" for run in PLAN.study_runs[wildcards.study] for name in names]


def study_analysis_tables(wildcards):
    """The study's runs' tables of one analysis, in the order of study_summaries."""
    digest = PLAN.study_analyses[wildcards.study][wildcards.analysis]
    return [analysis_table(run, wildcards.analysis, digest) for run in PLAN.study_runs[wildcards.study]]


def study_table(study, name):
    return f"{RESULTS}/tables/{study}/{name}.csv"


# -- figures and claims: each declares exactly the tables it reads


def figure_inputs(wildcards):
    return {name: study_table(wildcards.study, name) for name in figure_tables(wildcards.kind)}


def figure_table_args(wildcards):
    return " ".join(f"{name}={path}" for name, path in figure_inputs(wildcards).items())


def figure_caption(wildcards):
    """The study's description, then what the figure kind plots (workflow/report/figures/<kind>.rst)."""
    text = (CAPTIONS / f"{wildcards.kind}.rst").read_text().strip()
    description = STUDIES[wildcards.study]["description"].strip()
    return f"{description}\n\n{text}" if description else text


def claim_inputs():
    return {f"{study}:{name}": study_table(study, name)
            for study, cfg in STUDIES.items() for kind in cfg["claims"] for name in claim_tables(kind)}


def claim_table_args():
    return " ".join(f"{key}={path}" for key, path in claim_inputs().items())


def figure_files():
    return [f"{RESULTS}/figures/{study}/{kind}.png" for study, cfg in STUDIES.items() for kind in cfg["figures"]]


def all_summaries():
    return [f"{RESULTS}/runs/{run}/summary.json" for run in PLAN.runs]


def all_analysis_tables():
    return [analysis_table(run, analysis, digest) for run, analysis, digest in sorted(PLAN.analysis_jobs())]


def all_outputs():
    outputs = figure_files() + [f"{RESULTS}/claims.csv", f"{RESULTS}/claims.md"]
    if TRACKING["enabled"]:
        outputs.append(f"{RESULTS}/tracking/track.json")
    return outputs


# -- the execution's fork server (bnstudy.forkserver): jobs start without importing torch

FORK_SERVER = []


def start_fork_server():
    """Local executions only: a cluster job runs on another node, a conda env (--sdm conda)
    runs another interpreter than the one that would serve it, and --touch runs no job."""
    if config["runtime"]["fork_server"] and workflow.local_exec and not USES_CONDA and not workflow.touch:
        from bnstudy.forkserver import start

        handle = start(Path(RESULTS) / "logs" / "fork_server.log")
        if handle:
            FORK_SERVER.append(handle)


def stop_fork_server():
    while FORK_SERVER:
        FORK_SERVER.pop().stop()
