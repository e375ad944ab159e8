"""`bnstudy track`: re-send to MLflow what its store is missing, from the results on disk.

The run folders are the truth (results/runs/<run>/spec.json, summary.json, train.csv, eval.csv),
plus the analysis tables (results/analysis/<run>/<analysis>-<hash>.csv) and the figures
(results/figures/<study>/*.png). For every finished run (one with a summary.json) this finds its
MLflow run by the tag `bnstudy.run` (the one summary.json names if there are several), creates it
if there is none, and sends only what is missing: params and tags absent from the run, metric
points whose (key, step) the store does not hold, the terminal status, analysis tables not yet
attached; and, given this execution's figures, a 'figures' run holding them. A second pass sends
nothing. Run folders are never written (they are the training jobs' outputs: rewriting one would
make Snakemake redo what reads it); what a pass did is its report (`results/tracking/track.json`
when the workflow's `track` rule runs it). mlflow is reached through bnstudy.tracking only.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

from .tables import eval_metric


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _finite(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def expected_points(run_dir: Path, spec: dict, final: dict[str, float]) -> dict[tuple[str, int], float]:
    """(key, step) -> value of every metric point the live tracker logs for this run (`final`:
    the final_* metrics, logged at step 0)."""
    regression = spec["dataset"].get("task") == "regression"
    points: dict[tuple[str, int], float] = {}
    for row in _read_rows(run_dir / "train.csv"):
        step, loss = int(row["step"]), _finite(row["loss"])
        if loss is None:
            continue  # the diverged step: the tracker logs no point for it
        points[("train_loss", step)] = loss
        accuracy = _finite(row.get("accuracy"))
        if not regression and accuracy is not None:
            points[("train_accuracy", step)] = accuracy
    for row in _read_rows(run_dir / "eval.csv"):
        step = int(row["step"])
        for name in ("loss", "accuracy"):
            value = _finite(row.get(name))
            if value is not None:
                points[(eval_metric(row["split"], name), step)] = value
    for key, value in final.items():
        points[(key, 0)] = value
    return points


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
        for row in _read_rows(table):
            out.setdefault(row["run"], []).append(table.parent.name)
    return out


class Syncer:
    def __init__(self, results: Path, uri: str, experiment: str, artifact_root=None, log=None):
        from . import tracking

        self.t = tracking
        self.results, self.uri, self.experiment = Path(results), uri, experiment
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        tracking.fast_fail_http()
        tracking.quiet_mlflow_after_import()
        self.Metric, self.Param, self.RunTag = tracking.entities()
        self.client, created = tracking.open_store(uri, experiment, artifact_root)
        if created is not None:
            self.log(f"bnstudy track: created the MLflow store {uri}")
        self.experiment_id = created or tracking.experiment_id(self.client, uri, experiment, artifact_root)
        self.report = {"checked": 0, "repaired": 0, "points": 0, "artifacts": 0, "failed": [],
                       "runs": [], "figures_run": None}

    def call(self, fn, *args, **kwargs):
        return self.t._retry(fn, *args, **kwargs)

    def run(self, figures: list[Path] = (), execution: str = "manual", record: dict | None = None) -> dict:
        tracked = self.t.find_runs(self.client, self.experiment_id)
        tables = analysis_tables(self.results)
        studies = studies_from_tables(self.results)
        for summary_path in sorted(self.results.glob("runs/*/summary.json")):
            run_dir = summary_path.parent
            self.report["checked"] += 1
            try:
                sent = self.sync_run(run_dir, tracked, tables.get(run_dir.name, []),
                                     studies.get(run_dir.name, []))
            except Exception as err:
                self.report["failed"].append(f"{run_dir.name}: {self.t.describe(err)}")
                continue
            self.report["repaired"] += bool(sent)
        try:
            self.sync_figures(list(figures), execution, record or {})
        except Exception as err:
            self.report["failed"].append(f"figures: {self.t.describe(err)}")
        return self.report

    def sync_run(self, run_dir: Path, tracked: dict, tables: list, studies: list[str]) -> int:
        """Send what the store lacks of one run; returns how many writes that took besides
        attaching analysis tables (0: the run was complete)."""
        spec = json.loads((run_dir / "spec.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        state = summary.get("tracking") or {}
        writes = 0
        candidates = tracked.get(spec["run"], [])
        run = next((r for r in candidates if r.info.run_id == summary.get("mlflow_run_id")),
                   candidates[-1] if candidates else None)
        tags = self.t.run_tags(spec, run_dir, state.get("studies") or studies,
                               state.get("execution") or os.environ.get(self.t.EXECUTION_ENV, "manual"))
        if state.get("git_commit"):
            tags["git_commit"] = state["git_commit"]
        outcome = self.t.outcome_tags(summary["status"], summary)
        if run is None:
            created = self.call(self.client.create_run, self.experiment_id,
                                run_name=self.t.run_name(spec), tags={"bnstudy.run": spec["run"]})
            run = self.call(self.client.get_run, created.info.run_id)
            writes += 1
        run_id = run.info.run_id
        have_params, have_tags = run.data.params, run.data.tags

        params = [self.Param(k, v) for k, v in self.t.run_params(spec).items() if k not in have_params]
        for i in range(0, len(params), 100):
            self.call(self.client.log_batch, run_id, params=params[i:i + 100])
            writes += 1
        missing_tags = {k: v for k, v in tags.items() if k not in have_tags}
        missing_tags.update({k: v for k, v in outcome.items() if have_tags.get(k) != v})
        if missing_tags:
            self.call(self.client.log_batch, run_id,
                      tags=[self.RunTag(k, v) for k, v in missing_tags.items()])
            writes += 1

        wanted = expected_points(run_dir, spec, self.t.final_metrics(summary))
        seen = set()
        for key in sorted({k for k, _ in wanted} & set(run.data.metrics)):
            seen.update((key, m.step) for m in self.call(self.client.get_metric_history, run_id, key))
        stamp = self.t.now_ms()
        fresh = [self.Metric(k, v, stamp, step) for (k, step), v in sorted(wanted.items())
                 if (k, step) not in seen]
        for i in range(0, len(fresh), 1000):
            self.call(self.client.log_batch, run_id, metrics=fresh[i:i + 1000])
            writes += 1
        self.report["points"] += len(fresh)

        folder = "analysis"
        listed = {Path(a.path).name for a in self.call(self.client.list_artifacts, run_id, folder)} if tables else set()
        for table in tables:  # attached here in any case (analysis jobs never import mlflow)
            if table.name not in listed:
                self.call(self.client.log_artifact, run_id, str(table), artifact_path=folder)
                self.report["artifacts"] += 1

        if run.info.status != "FINISHED":
            self.call(self.client.set_terminated, run_id, status="FINISHED")
            writes += 1

        if writes:
            self.report["runs"].append(spec["run"])
        return writes

    def sync_figures(self, figures: list[Path], execution: str, record: dict) -> None:
        """One 'figures' run per pipeline execution holds its figures; the last pass's `record`
        (track.json) says whether this execution's run exists already (then nothing is sent)."""
        if not figures:
            return
        if record.get("figures_run") and record.get("execution") == execution:
            try:
                self.call(self.client.get_run, record["figures_run"])
                self.report["figures_run"] = record["figures_run"]
                return
            except Exception as err:
                if not self.t.is_not_found(err):
                    raise
        self.report["figures_run"] = self.t.log_figures(self.client, self.experiment_id, figures, execution)
        self.report["artifacts"] += len(figures)


def sync(results: Path, uri: str, experiment: str, artifact_root=None, log=None, figures=(),
         execution: str = "manual", record: dict | None = None) -> dict:
    """Re-send what the store lacks; returns {checked, repaired, runs, points, artifacts,
    figures_run, failed}."""
    return Syncer(results, uri, experiment, artifact_root, log).run(figures, execution, record)
