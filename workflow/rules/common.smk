# Helpers shared by the rules: the validated config, the plan, and the functions that turn them
# into rule inputs and params. What to run is decided in bnstudy.config.plan; the analysis, figure and
# claim kinds (and the tables each reads) in bnstudy.config.catalog. Nothing here imports torch or
# matplotlib: parsing the DAG stays fast.
import json
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # works without `pip install -e .` too

from bnstudy.configure import ConfigError, load_config
from bnstudy.config.plan import plan, short_hash
from bnstudy.summary import on_error, on_success, unknown_target
from bnstudy.tracking.context import CONTEXT_ENV, EXECUTION_ENV, context_path, write_context

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
# where the training jobs find the tracking settings and their runs' labels (written by the
# Snakefile's onstart; bnstudy.tracking.context says why this is not an input)
TRACKING_CONTEXT = context_path(RESULTS)
os.environ[CONTEXT_ENV] = str(TRACKING_CONTEXT)
CAPTIONS = Path(workflow.basedir) / "workflow" / "report" / "figures"
# the config files as the user gave them (none: the Snakefile's default), for the messages that
# tell them what to type
CONFIGFILES = [str(path) for path in workflow.overwrite_configfiles or ()]


wildcard_constraints:
    run="[A-Za-z0-9_.+-]+",
    study="[a-z][a-z0-9_]*",
    dataset="[A-Za-z0-9_-]+",
    source="[0-9a-f]{8}",


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


# -- targets this config does not make
#
# A target typed by hand can name a run, study or dataset of another config (or none). The input
# functions below look the name up first and stop with one line saying which config lacks it and
# what to pass. SystemExit, because Snakemake wraps any other exception an input function raises
# in an InputFunctionException with a traceback (a bare KeyError, for a mistyped run id).


def known_run(wildcards):
    if wildcards.run not in PLAN.runs:
        raise SystemExit(unknown_target("run", wildcards.run, CONFIGFILES))
    return PLAN.runs[wildcards.run]


def known_study(wildcards, needs_figures=False):
    if wildcards.study not in STUDIES or needs_figures and not STUDIES[wildcards.study]["figures"]:
        known = [s for s, cfg in STUDIES.items() if cfg["figures"] or not needs_figures]
        kind = "study with figures" if needs_figures else "study"
        raise SystemExit(unknown_target(kind, wildcards.study, CONFIGFILES, known))
    return STUDIES[wildcards.study]


# -- data and training


def dataset_config(wildcards):
    if wildcards.dataset not in config["datasets"]:
        raise SystemExit(unknown_target("dataset", wildcards.dataset, CONFIGFILES, list(config["datasets"])))
    return as_json(config["datasets"][wildcards.dataset])


def source_hash(dataset):
    """A short hash of a dataset's config: its source (the incoming file of rule prepare_data)."""
    return short_hash(config["datasets"][dataset])


def incoming_dataset(wildcards):
    """The preparation of the dataset's configured source that rule install_data puts in place."""
    dataset_config(wildcards)  # an unknown dataset: one line
    stem = f"{RESULTS}/data/incoming/{wildcards.dataset}-{source_hash(wildcards.dataset)}"
    return {"data": f"{stem}.pt", "record": f"{stem}.json"}


def dataset_source_config(wildcards):
    """The config prepare_data gets: the dataset's, if the hash in the file name is its hash."""
    config_json = dataset_config(wildcards)
    if wildcards.source != source_hash(wildcards.dataset):
        raise SystemExit(f"bnstudy: {RESULTS}/data/incoming/{wildcards.dataset}-{wildcards.source}.pt is "
                         f"a preparation of another source of {wildcards.dataset}; this config's is "
                         f"{source_hash(wildcards.dataset)} (name results/data/{wildcards.dataset}.pt)")
    return config_json


def run_spec(wildcards):
    return known_run(wildcards).to_json()


def run_dataset(wildcards):
    return known_run(wildcards).dataset.path


def run_labels():
    """What MLflow shows of each run besides its spec: its display name and the studies using it."""
    return {run: {"name": PLAN.names[run], "studies": [s for s, runs in PLAN.study_runs.items() if run in runs]}
            for run in PLAN.runs}


def tracking_marker(wildcards=None):
    """Live tracking: the store and experiment exist before any training job logs to them."""
    return [f"{RESULTS}/tracking/ready.json"] if TRACKING["enabled"] and TRACKING["live"] else []


# -- analyses: one job per run computes every table some study needs of it


def analysis_folder(run):
    return f"{RESULTS}/analysis/{run}"


def analysed_run_spec(wildcards):
    """The spec.json of a run that some study analyses (the analysis job reads it)."""
    if not PLAN.run_analyses(known_run(wildcards).run):
        raise SystemExit(unknown_target("analysed run", wildcards.run, CONFIGFILES))
    return f"{RESULTS}/runs/{wildcards.run}/spec.json"


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
    known_study(wildcards)
    return [f"{RESULTS}/runs/{run}/summary.json" for run in PLAN.study_runs[wildcards.study]]


def study_run_tables(wildcards):
    """The per-run files aggregation reads besides summary.json."""
    names = ("spec.json", "train.csv", "eval.csv", "layers.csv", "units.csv")
    known_study(wildcards)
    return [f"{RESULTS}/runs/{run}/{name}" for run in PLAN.study_runs[wildcards.study] for name in names]


def study_analysis_folders(wildcards):
    """The analysis folders of the study's runs, if the study configures an analysis."""
    known_study(wildcards)
    if not PLAN.study_analyses[wildcards.study]:
        return []
    return [analysis_folder(run) for run in PLAN.study_runs[wildcards.study]]


def study_analyses(wildcards):
    """ANALYSIS=HASH of each analysis the study configures: its tables are <analysis>-<hash>.csv."""
    return " ".join(f"{a}={d}" for a, d in sorted(PLAN.study_analyses[wildcards.study].items()))


# -- figures and claims


def study_tables(wildcards):
    """The tables folder the study's figures are drawn from (a study that lists figures)."""
    known_study(wildcards, needs_figures=True)
    return tables_folder(wildcards.study)


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


def claim_studies():
    """The configs of the studies that list claims: all the claims job reads of the config (a
    study added without claims changes no verdict, so it must not rerun the job)."""
    return {study: cfg for study, cfg in STUDIES.items() if cfg["claims"]}


def claim_table_args():
    return " ".join(f"{study}={folder}" for study, folder in claim_folders().items())


def all_figures():
    return [figures_folder(study) for study, cfg in STUDIES.items() if cfg["figures"]]


def dataset_records():
    """results/data/<name>.json of each dataset a run uses: what it was prepared from. Asked for
    by rule all so that a folder prepared before the records existed gets them (an output no job
    asks for is never made, and Snakemake checks params only of jobs whose outputs all exist)."""
    return sorted({f"{RESULTS}/data/{spec.dataset.name}.json" for spec in PLAN.runs.values()})


def all_outputs():
    outputs = [tables_folder(study) for study in STUDIES] + all_figures() + dataset_records()
    outputs += [f"{RESULTS}/claims.csv", f"{RESULTS}/claims.md"]
    if TRACKING["enabled"]:
        outputs.append(f"{RESULTS}/tracking/track.json")
    return outputs
