"""Small helpers shared by the integration tests (test_mlflow, test_slurm, test_reruns,
test_browser). Import with `sys.path.insert(0, <tests/harness>)`; conftest.py stays untouched."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def write_yaml(path: Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def smoke_config() -> dict:
    return yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


def only_studies(*keep: str) -> dict:
    """A config override (a second --configfile) that disables every smoke study but `keep`."""
    studies = set(smoke_config()["studies"])
    unknown = set(keep) - studies
    assert not unknown, f"no such studies: {unknown}"
    return {"studies": {s: {"enabled": s in keep} for s in sorted(studies)}}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def finite(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def summaries(workdir: Path) -> dict[str, dict]:
    """run id -> summary.json of every finished run in a working directory."""
    return {p.parent.name: json.loads(p.read_text())
            for p in sorted((Path(workdir) / "results" / "runs").glob("*/summary.json"))}


def sqlite_uri(workdir: Path) -> str:
    return f"sqlite:///{(Path(workdir) / 'results' / 'mlflow.db').resolve()}"


def mlflow_training_runs(uri: str, experiment: str) -> dict[str, list]:
    """bnstudy run id (tag bnstudy.run) -> MLflow runs with that tag, in one experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} in {uri}"
    out: dict[str, list] = {}
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        for run in page:
            tag = run.data.tags.get("bnstudy.run")
            if tag:
                out.setdefault(tag, []).append(run)
        token = page.token
        if not token:
            return out


def metric_points(uri: str, run_id: str, key: str) -> list:
    from mlflow.tracking import MlflowClient

    return list(MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def job_counts(snakemake_output: str) -> dict[str, int]:
    """The 'Job stats' table Snakemake prints (dry run or real): rule -> job count."""
    counts: dict[str, int] = {}
    in_table = False
    for line in snakemake_output.splitlines():
        if re.match(r"^job\s+count\s*$", line.strip()):
            in_table = True
            continue
        if in_table:
            m = re.match(r"^(\S+)\s+(\d+)\s*$", line.strip())
            if line.strip().startswith("---"):
                continue
            if not m:
                if counts:
                    break
                continue
            if m.group(1) == "total":
                counts["total"] = int(m.group(2))
                break
            counts[m.group(1)] = int(m.group(2))
    return counts


def scheduled_jobs(snakemake_output: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job block (`rule X:` ... `wildcards: a=b, c=d`) in the output."""
    jobs, current = [], None
    for line in snakemake_output.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):\s*$", line.strip())
        if m:
            current = (m.group(1), {})
            jobs.append(current)
            continue
        m = re.match(r"^wildcards: (.*)$", line.strip())
        if m and current is not None:
            current[1].update(dict(kv.split("=", 1) for kv in m.group(1).split(", ")))
    return jobs
