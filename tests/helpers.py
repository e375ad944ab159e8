"""What the tests share: the repository's paths, Snakemake on a tiny config, small run specs, and
readers of what a DAG leaves behind (tables, summaries, the MLflow store, Snakemake's output).

pytest puts tests/ and tests/harness/ on sys.path (pyproject's `pythonpath`), so a test imports
`from helpers import ...` and the harness modules directly.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from bnstudy.configure import load_config
from bnstudy.data.datasets import prepare
from bnstudy.config.plan import plan
from bnstudy.config.spec import RunSpec

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def run_snakemake(workdir: Path, *args: str, configfile: str = "config/smoke.yaml",
                  check: bool = True, env: dict | None = None, timeout: int = 900):
    """Run the project's Snakefile with `workdir` as working directory (results land there)."""
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / configfile), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


def smoke_config(tmp_path: Path, **studies_override) -> dict:
    """config/smoke.yaml validated, with results under tmp_path and tracking off."""
    raw = smoke_raw()
    raw["results"] = str(tmp_path / "results")
    raw["tracking"]["enabled"] = False
    raw["studies"].update(studies_override)
    return load_config(raw)


def prepared_spec(tmp_path: Path, run_prefix: str, config: dict | None = None, **optim) -> RunSpec:
    """The spec of the first smoke run whose id starts with `run_prefix` (its optim settings
    changed by `optim`), its dataset prepared."""
    config = config or smoke_config(tmp_path)
    p = plan(config)
    spec = next(s for r, s in p.runs.items() if r.startswith(run_prefix))
    spec = dataclasses.replace(spec, optim=dataclasses.replace(spec.optim, **optim))
    if not Path(spec.dataset.path).exists():
        prepare(config["datasets"][spec.dataset.name], spec.dataset.name, spec.dataset.path)
    return spec


def toy_spec(run: str, updates: dict | None = None) -> RunSpec:
    """A run spec that nothing trains (for the tracking tests): the first smoke run's, with id
    `run` and dotted keys replaced by `updates`, e.g. {"optim.lr": 0.1}."""
    spec = next(iter(plan(load_config({**smoke_raw(), "tracking": {"enabled": False}})).runs.values()))
    return spec.updated({"run": run, **(updates or {})})


def changed(spec: RunSpec, updates: dict) -> RunSpec:
    """`spec` with dotted keys replaced, e.g. {"model.dropout": 0.2, "checkpoints": [0, 10]}."""
    return spec.updated(updates)


def write_yaml(path: Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def smoke_raw(results: Path | None = None) -> dict:
    """config/smoke.yaml as written (no defaults filled in); with `results`, writing there with
    tracking off."""
    raw = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    if results is not None:
        raw["results"], raw["tracking"]["enabled"] = str(results), False
    return raw


def import_file(path: Path, name: str | None = None):
    """Import the Python file at `path` as a module (code outside the package, e.g. an extension
    a test writes, or a benchmark script)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name or Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def only_studies(*keep: str) -> dict:
    """A config override (a second --configfile) that disables every smoke study but `keep`."""
    studies = set(smoke_raw()["studies"])
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


def assert_default_key_trains_as_absent(spec, block: str, key: str, default, folder: Path) -> None:
    """A spec stored without an added key (a checkpoint of an earlier version) and one holding it at
    its default train to the same final metrics and the same train, eval and layers tables."""
    import pandas as pd

    from bnstudy.config.spec import RunSpec
    from bnstudy.train.loop import train

    stored = spec.to_dict()
    old = RunSpec.from_dict(stored)
    stored[block][key] = default
    new = RunSpec.from_dict(stored)
    a = train(old, folder / "old", log=lambda message: None)
    b = train(new, folder / "new", log=lambda message: None)
    assert a["status"] == b["status"] == "completed" and a["final"] == b["final"]
    for table in ("train", "eval", "layers"):
        pd.testing.assert_frame_equal(pd.read_csv(folder / "old" / f"{table}.csv"),
                                      pd.read_csv(folder / "new" / f"{table}.csv"))
