"""`bnstudy track`: re-send to MLflow what its store is missing, from the results on disk.

The run folders are the truth (results/runs/<run>/spec.json, summary.json, train.csv, eval.csv),
plus the analysis tables (results/analysis/<run>/<analysis>-<hash>.csv) and the figures
(results/figures/<study>/*.png). For every finished run (one with a summary.json) this finds its
MLflow run by the tag `bnstudy.run` (the one summary.json names if there are several), creates it
if there is none (named as summary.json says, with the run's real start time), and sends only
what is missing: params and tags absent from the run, metric points whose (key, step) the store
does not hold, the terminal status (with the run's real end time), analysis tables not yet
attached; and, given this execution's figures, a 'figures' run holding them. A second pass sends
nothing. Run folders are never written (they are the training jobs' outputs: rewriting one would
make Snakemake redo what reads it); what a pass did is its report (`results/tracking/track.json`
when the workflow's `track` rule runs it). mlflow is reached through the store's client (`store.connect`) only, with
its HTTP retries on (`context.BULK_SETTINGS`).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from . import context, runs, store
from ..config.spec import RunSpec
from ..files import expected_points


def analysis_tables(results: Path) -> dict[str, list[Path]]:
    """run id -> its analysis tables, results/analysis/<run>/<analysis>-<settings hash>.csv."""
    out: dict[str, list] = {}
    for table in sorted(results.glob("analysis/*/*.csv")):
        out.setdefault(table.parent.name, []).append(table)
    return out


def studies_from_tables(results: Path) -> dict[str, list[str]]:
    """run id -> the studies whose aggregated runs.csv lists it (for runs trained before the
    tracking state recorded its studies)."""
    out: dict[str, list[str]] = {}
    for table in sorted(results.glob("tables/*/runs.csv")):
        with open(table, newline="") as fh:
            for row in csv.DictReader(fh):
                out.setdefault(row["run"], []).append(table.parent.name)
    return out


def runs_page(uri: str, experiment_id: str) -> str:
    """The MLflow UI's page of the experiment's runs table, in its model training view (MLflow
    3.17's UI opens an experiment in its GenAI view, whatever the experiment's kind tag, unless
    the address asks for `workflowType=machine_learning`). A full address for a tracking server;
    for a SQLite store, the part after the address of the `mlflow ui` serving it."""
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return f"{uri.rstrip('/')}/{page}" if uri.startswith(("http://", "https://")) else page


def sync(results: Path, uri: str, experiment: str, artifact_root=None, log=None, figures=(),
         execution: str = "manual", record: dict | None = None) -> dict:
    """Re-send what the store lacks; returns {checked, repaired, runs, points, artifacts,
    figures_run, failed, experiment_id, ui_page (see `runs_page`)}."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = Path(results)
    client, exp, created = store.connect(uri, experiment, artifact_root)
    if created:
        log(f"bnstudy track: created the MLflow store {uri}")
    report = {"checked": 0, "repaired": 0, "points": 0, "artifacts": 0, "failed": [],
              "runs": [], "figures_run": None, "experiment_id": exp, "ui_page": runs_page(uri, exp)}
    tracked = runs.find_runs(client, exp)
    tables = analysis_tables(results)
    studies = studies_from_tables(results)
    for summary_path in sorted(results.glob("runs/*/summary.json")):
        run_dir = summary_path.parent
        report["checked"] += 1
        try:
            writes = sync_run(client, exp, run_dir, tracked, tables.get(run_dir.name, []),
                              studies.get(run_dir.name, []), report)
        except Exception as err:
            report["failed"].append(f"{run_dir.name}: {context.describe(err)}")
            continue
        report["repaired"] += bool(writes)
    if figures:
        try:
            sync_figures(client, exp, [Path(f) for f in figures], execution, record or {}, report)
        except Exception as err:
            report["failed"].append(f"figures: {context.describe(err)}")
    return report


def sync_run(client, exp: str, run_dir: Path, tracked: dict, tables: list, studies: list[str],
             report: dict) -> int:
    """Send what the store lacks of one run; returns how many writes that took besides
    attaching analysis tables (0: the run was complete)."""
    spec = RunSpec.from_json((run_dir / "spec.json").read_text(), str(run_dir / "spec.json"))
    summary = json.loads((run_dir / "summary.json").read_text())
    state = summary.get("tracking") or {}
    name = summary.get("name") or runs.run_name(spec)
    writes = 0
    candidates = tracked.get(spec.run, [])
    run = next((r for r in candidates if r.info.run_id == summary.get("mlflow_run_id")),
               candidates[-1] if candidates else None)
    if run is None:
        created = client.create_run(exp, start_time=summary.get("started_ms"), run_name=name,
                                    tags={"bnstudy.run": spec.run})
        run = client.get_run(created.info.run_id)
        writes += 1
    elif run.info.run_name != name:  # e.g. named before names carried a run's grid values
        client.update_run(run.info.run_id, name=name)
        writes += 1
    run_id = run.info.run_id
    # the studies the job was trained for, and those whose tables list the run since (a study
    # added later that shares it): `study` is brought up to date, `study.<name>` tags added
    studies = list(dict.fromkeys([*(state.get("studies") or []), *studies]))
    tags = runs.run_tags(spec, run_dir, studies,
                             state.get("execution") or os.environ.get(context.EXECUTION_ENV, "manual"))
    if state.get("git_commit"):
        tags["git_commit"] = state["git_commit"]
    wanted = expected_points(run_dir, spec, runs.final_metrics(summary))
    current = {**runs.outcome_tags(summary["status"], summary), "study": tags["study"]}
    top_writes, sent = runs.top_up(client, run, runs.run_params(spec), tags, current, wanted,
                                       summary.get("ended_ms") or context.now_ms())
    writes += top_writes
    report["points"] += len(sent)

    folder = "analysis"
    listed = {Path(a.path).name for a in client.list_artifacts(run_id, folder)} if tables else set()
    for table in tables:  # attached here in any case (analysis jobs never import mlflow)
        if table.name not in listed:
            client.log_artifact(run_id, str(table), artifact_path=folder)
            report["artifacts"] += 1

    if run.info.status != "FINISHED":
        client.set_terminated(run_id, status="FINISHED", end_time=summary.get("ended_ms"))
        writes += 1
    if writes:
        report["runs"].append(spec.run)
    return writes


def sync_figures(client, exp: str, figures: list[Path], execution: str, record: dict,
                 report: dict) -> None:
    """One 'figures' run per pipeline execution holds its figures (they belong to no single
    training run); the last pass's `record` (track.json) says whether this execution's run
    exists already (then nothing is sent)."""
    if record.get("figures_run") and record.get("execution") == execution:
        try:
            client.get_run(record["figures_run"])
            report["figures_run"] = record["figures_run"]
            return
        except Exception as err:
            if not context.is_not_found(err):
                raise
    run_id = client.create_run(exp, run_name=f"figures ({execution})",
                               tags={"bnstudy.figures": "true", "bnstudy.execution": execution}).info.run_id
    for figure in figures:
        client.log_artifact(run_id, str(figure), artifact_path=f"figures/{figure.parent.name}")
    client.set_terminated(run_id, status="FINISHED")
    report["figures_run"] = run_id
    report["artifacts"] += len(figures)
