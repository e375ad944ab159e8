"""Per-run tables and analysis tables -> tidy per-study tables (``results/tables/{study}/``).

Every downstream consumer (figures, claims) wants one long table per kind with each row labelled
by the things it is grouped by: run, variant, lr, seed, status and the study's grid columns. This
module does that labelling once, so figures and claims never open run folders or spec files.

Reads CSV and JSON only (no torch). Inputs are checked against the contracts in `bnstudy.files`;
a missing or malformed input raises `TableError` naming the file. Diverged runs are kept: their
status says so and their tables stop where training stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ..config.spec import lookup, setting
from ..files import (
    ANALYSIS_TABLES, LABEL_COLUMNS, RUN_TABLES, RUNS_COLUMNS, FINAL_METRICS, TableError, grid_columns,
    read_json, read_table, required_columns, write_csv,
)


def lookup_dotted(spec: Mapping, dotted: str, source: Path):
    """The value at ``a.b.c`` inside ``spec``; a missing key raises TableError naming ``source``."""
    try:
        return lookup(spec, dotted)
    except KeyError:
        raise TableError(f"{source}: no value at {dotted!r}") from None


def _as_float(value) -> float:
    """JSON null / NaN / numbers -> float (NaN for null), so diverged finals stay numeric columns."""
    return math.nan if value is None else float(value)


def run_labels(run_dir: Path, grid: Mapping[str, str]) -> tuple[dict, dict, dict]:
    """(labels, spec, summary) of a run folder: the labels every row of the run gets."""
    spec_path, summary_path = run_dir / "spec.json", run_dir / "summary.json"
    spec, summary = read_json(spec_path), read_json(summary_path)
    for mapping, keys, path in ((spec, ["run", "seed", "norm", "optim"], spec_path),
                                (summary, ["run", "status", "steps_done"], summary_path)):
        missing = [key for key in keys if key not in mapping]
        if missing:
            raise TableError(f"{path}: missing keys {missing}")
    if summary["run"] != lookup(spec, "run"):
        raise TableError(f"{summary_path}: run {summary['run']!r} does not match spec run {lookup(spec, 'run')!r}")
    if summary["status"] not in ("completed", "diverged"):
        raise TableError(f"{summary_path}: unknown status {summary['status']!r}")
    labels = {"run": lookup(spec, "run"), "variant": lookup_dotted(spec, "norm.variant", spec_path),
              "lr": float(lookup_dotted(spec, "optim.lr", spec_path)), "seed": int(lookup(spec, "seed")),
              "status": summary["status"]}
    for dotted, column in grid.items():
        try:
            labels[column] = setting(spec, dotted)
        except KeyError:
            raise TableError(f"{spec_path}: no value at {dotted!r}") from None
    return labels, spec, summary


def runs_row(labels: dict, spec: dict, summary: dict, summary_path: Path) -> dict:
    """One runs.csv row: labels plus the final metrics and run bookkeeping from summary.json."""
    final = summary.get("final") or {}
    if not isinstance(final, Mapping):
        raise TableError(f"{summary_path}: 'final' must be an object or null")
    row = dict(labels)
    row["setup"] = spec.get("setup")
    row["task"] = (spec.get("dataset") or {}).get("task")
    for name in FINAL_METRICS:
        row[f"final_{name}"] = _as_float(final.get(name))
    row["steps"] = int(lookup(spec, "optim").get("steps", summary["steps_done"]))
    row["steps_done"] = int(summary["steps_done"])
    diverged_step = summary.get("diverged_step")
    row["diverged_step"] = None if diverged_step is None else int(diverged_step)
    row["wall_seconds"] = _as_float(summary.get("wall_seconds"))
    model = spec.get("model") or {}
    row["arch"], row["depth"] = model.get("arch"), model.get("depth")  # to name the layers in figures
    return row


def labelled(frame: pd.DataFrame, labels: dict) -> pd.DataFrame:
    """``frame`` with the label columns in front (works on empty frames too)."""
    label_frame = pd.DataFrame({name: [value] * len(frame) for name, value in labels.items()},
                               index=frame.index)
    return pd.concat([label_frame, frame], axis=1)


def concat_tables(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """Concatenate per-run frames; with no rows at all keep the header (``columns``)."""
    non_empty = [frame for frame in frames if len(frame)]
    if not non_empty:
        return pd.DataFrame(columns=columns)
    return pd.concat(non_empty, ignore_index=True)[columns]


def _runs(run_dirs: list[Path], study: str, grid: Mapping[str, str]):
    seen: set[str] = set()
    for run_dir in sorted(Path(d) for d in run_dirs):
        labels, spec, summary = run_labels(run_dir, grid)
        if labels["run"] in seen:
            raise ValueError(f"study {study}: run {labels['run']} listed twice ({run_dir})")
        seen.add(labels["run"])
        yield run_dir, labels, spec, summary


def aggregate(study: str, study_cfg: dict, run_dirs: list[Path], analyses: Mapping[str, str],
              analysis_root: Path, out_dir: Path) -> list[Path]:
    """Write the study's tables into `out_dir` (results/tables/{study}/): runs.csv, the run tables
    (train, eval, layers, units) and one table per analysis the study configures, every row
    labelled. `analyses` maps an analysis to the hash of the study's settings for it; its per-run
    tables are `analysis_root/<run>/<analysis>-<hash>.csv`.
    """
    out_dir = Path(out_dir)
    grid = grid_columns(study_cfg)
    label_columns = LABEL_COLUMNS + list(grid.values())
    unknown = sorted(set(analyses) - set(ANALYSIS_TABLES))
    if unknown:
        raise ValueError(f"study {study}: unknown analyses {unknown}; known: {', '.join(ANALYSIS_TABLES)}")
    rows = []
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in [*RUN_TABLES, *analyses]}
    for run_dir, labels, spec, summary in _runs(run_dirs, study, grid):
        rows.append(runs_row(labels, spec, summary, run_dir / "summary.json"))
        for name, columns in RUN_TABLES.items():
            table = read_table(run_dir / f"{name}.csv", required_columns(name, columns)).reindex(columns=columns)
            frames[name].append(labelled(table, labels))
        for name, digest in analyses.items():
            table = Path(analysis_root) / labels["run"] / f"{name}-{digest}.csv"
            frames[name].append(labelled(read_table(table, ANALYSIS_TABLES[name]), labels))
    # a grid over model.depth labels runs by the column runs.csv has anyway: one column, not two
    runs = pd.DataFrame(rows, columns=label_columns + [c for c in RUNS_COLUMNS if c not in label_columns])
    runs["diverged_step"] = runs["diverged_step"].astype("Int64")
    written = [write_csv(out_dir / "runs.csv", runs)]
    for name, parts in frames.items():
        columns = RUN_TABLES.get(name) or ANALYSIS_TABLES[name]
        written.append(write_csv(out_dir / f"{name}.csv", concat_tables(parts, label_columns + columns)))
    return written
