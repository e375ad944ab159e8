"""Small specs and datasets for unit tests (no Snakemake, no files beyond tmp_path)."""

from __future__ import annotations

import copy
from pathlib import Path

from bnstudy.config import load_config, plan
from bnstudy.data import prepare

REPO = Path(__file__).resolve().parents[1]


def smoke_config(tmp_path: Path, **studies_override) -> dict:
    """config/smoke.yaml with results under tmp_path and tracking off."""
    import yaml

    raw = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    raw["results"] = str(tmp_path / "results")
    raw["tracking"]["enabled"] = False
    raw["studies"].update(studies_override)
    return load_config(raw)


def prepared_spec(tmp_path: Path, run_prefix: str, config: dict | None = None, **optim) -> dict:
    """The spec of the first smoke run whose id starts with `run_prefix`, its dataset prepared."""
    config = config or smoke_config(tmp_path)
    p = plan(config)
    spec = copy.deepcopy(next(s for r, s in p.runs.items() if r.startswith(run_prefix)))
    spec["optim"].update(optim)
    path = Path(spec["dataset"]["path"])
    if not path.exists():
        name = spec["dataset"]["name"]
        prepare(config["datasets"][name], name, path)
    return spec
