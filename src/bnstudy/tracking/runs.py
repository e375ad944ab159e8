"""What a run looks like in MLflow, shared by the live tracker and `bnstudy track`: its name,
params and tags (from the run spec), its outcome, finding a project run by its `bnstudy.run` tag,
and topping a run up with what the store lacks of it (`top_up`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ..config.spec import RunSpec



# Each run is tagged `study` = the studies it serves, comma-separated, and `study.<name>` = "true"
# per study: a run shared by two studies is in both groups when the runs table is grouped (or
# filtered: tags.`study.<name>` = 'true') by one study's tag.
STUDY_TAG_PREFIX = "study."


# ----------------------------------------------------------------------------------------------
# what a run looks like in MLflow (shared by the live tracker and `bnstudy track`)


def git_commit(path: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def run_name(spec: RunSpec) -> str:
    """The default display name (`bnstudy train --name` overrides it)."""
    return f"{spec.setup} {spec.norm.variant} lr={spec.optim.lr:g} seed={spec.seed}"


def run_params(spec: RunSpec) -> dict[str, str]:
    return {k[:250]: v[:6000] for k, v in flatten(spec.to_dict()).items()}


def run_tags(spec: RunSpec, run_dir: Path, studies, execution: str) -> dict[str, str]:
    return {
        "variant": spec.norm.variant, "lr": f"{spec.optim.lr:g}",
        "seed": str(spec.seed), "setup": spec.setup, "dataset": spec.dataset.name,
        "study": ",".join(studies), "bnstudy.run": spec.run,
        "bnstudy.execution": execution,
        "git_commit": git_commit(Path(__file__).parent),
        "checkpoint_dir": str((Path(run_dir) / "checkpoints").resolve()),
        **study_tags(studies),
    }


def study_tags(studies) -> dict[str, str]:
    """One tag per study the run serves (`study.<name>` = "true"; see STUDY_TAG_PREFIX)."""
    return {f"{STUDY_TAG_PREFIX}{study}": "true" for study in studies}


def outcome_tags(status: str, summary: dict) -> dict[str, str]:
    return {"status": status, "diverged_step": str(summary.get("diverged_step"))}


def final_metrics(summary: dict) -> dict[str, float]:
    return {f"final_{k}": float(v) for k, v in summary["final"].items() if v is not None}


def find_runs(client, experiment_id: str, bnstudy_run: str | None = None) -> dict[str, list]:
    """bnstudy run id (tag bnstudy.run) -> MLflow runs carrying it, oldest first (one run's, or
    every run's of the experiment)."""
    flt = f"tags.`bnstudy.run` = '{bnstudy_run}'" if bnstudy_run else ""
    out: dict[str, list] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], flt, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        for run in page:
            if run.data.tags.get("bnstudy.run"):
                out.setdefault(run.data.tags["bnstudy.run"], []).append(run)
        token = page.token
        if not token:
            return out


def points_in_store(client, run) -> set[tuple[str, int]]:
    """(key, step) of every metric point of an MLflow run: one history read per key."""
    seen = set()
    for key in run.data.metrics:
        seen.update((key, m.step) for m in client.get_metric_history(run.info.run_id, key))
    return seen


def top_up(client, run, params: dict, tags: dict, outcome: dict,
           points: dict[tuple[str, int], float], stamp: int) -> tuple[int, list[tuple[str, int]]]:
    """Send what the MLflow `run` lacks: params and `tags` it does not have, `outcome` tags whose
    value differs, metric points whose (key, step) it does not hold, timestamped `stamp`. Returns
    (the number of writes, the (key, step) of the points sent).

    Safe to repeat, also after a request that timed out and may still land: MLflow's SQL store
    keeps one point per (key, step, value, timestamp), so the same point sent twice with the same
    `stamp` (the run's end) is stored once."""
    from mlflow.entities import Metric, Param, RunTag

    run_id, writes = run.info.run_id, 0
    missing_params = [Param(k, v) for k, v in params.items() if k not in run.data.params]
    missing_tags = {k: v for k, v in tags.items() if k not in run.data.tags}
    missing_tags.update({k: v for k, v in outcome.items() if run.data.tags.get(k) != v})
    if missing_params or missing_tags:
        client.log_batch(run_id, params=missing_params,
                         tags=[RunTag(k, v) for k, v in missing_tags.items()])
        writes += 1
    held = points_in_store(client, run) if points else set()
    fresh = [Metric(k, v, stamp, step) for (k, step), v in sorted(points.items()) if (k, step) not in held]
    for i in range(0, len(fresh), 1000):
        client.log_batch(run_id, metrics=fresh[i:i + 1000])
        writes += 1
    return writes, [(m.key, m.step) for m in fresh]
