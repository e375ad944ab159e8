"""Per-run tables -> tidy per-study tables (``results/tables/{study}/``).

Every downstream consumer (figures, claims) wants one long table per kind with each row labelled
by the things it is grouped by: run, variant, lr, seed, status and the study's grid columns. This
module does that labelling once, so figures and claims never open run directories or spec files.

Reads CSV and JSON only (no torch). Inputs are validated against the contracts in
docs/architecture.md; a missing or malformed input raises :class:`TableError` naming the file,
because a silently dropped run would bias every mean downstream. Diverged runs are kept: their
status says so and their tables stop where training stopped. Outputs are written atomically
(temporary file + ``os.replace``), so an interrupted job never leaves a half-written table that a
later rule would take for complete.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from .atomic import atomic_write  # noqa: F401  (re-exported for figures and claims)

LABEL_COLUMNS = ["run", "variant", "lr", "seed", "status"]

RUN_TABLE_COLUMNS: dict[str, list[str]] = {
    "train": ["step", "loss", "accuracy"],
    "eval": ["step", "split", "loss", "accuracy"],
    "layers": [
        "step", "layer", "mean", "var", "p05", "p15", "p50", "p85", "p95", "weight_grad_norm",
        "output_grad_norm", "gamma_over_sigma", "unit_p15", "unit_p50", "unit_p85",
    ],
}

ANALYSIS_COLUMNS: dict[str, list[str]] = {
    "ics": ["step", "layer", "l2_diff", "cosine", "grad_norm"],
    "landscape": ["step", "direction", "eta", "eta_rel", "loss", "grad_diff", "beta"],
    "curvature": ["step", "grad_quadratic", "top_eigenvalue"],
}

FINAL_METRICS = ["train_loss", "train_accuracy", "test_loss", "test_accuracy"]
RUNS_COLUMNS_AFTER_GRID = (
    ["setup", "task"] + [f"final_{name}" for name in FINAL_METRICS]
    + ["steps_done", "diverged_step", "wall_seconds"]
)


class TableError(ValueError):
    """An input file is missing or does not follow the contract; the message names the file."""


# ---------------------------------------------------------------------------------------------
# atomic writes (bnstudy.atomic; figures.py and claims.py import them from here too)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` as CSV atomically (header kept even when empty)."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_text(text: str, path: Path) -> Path:
    """Write ``text`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# reading with errors that name the file


def read_json(path: Path) -> dict:
    """Parse a JSON object; missing or malformed files raise TableError naming the file."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise TableError(f"{path}: file is missing") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TableError(f"{path}: malformed JSON ({error})") from error
    if not isinstance(content, dict):
        raise TableError(f"{path}: expected a JSON object, got {type(content).__name__}")
    return content


def read_table(path: Path, required_columns: Iterable[str]) -> pd.DataFrame:
    """Read a CSV and check it has ``required_columns``; a header-only file is a valid empty table."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: file is missing")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise TableError(f"{path}: malformed CSV ({error})") from error
    missing = [column for column in required_columns if column not in frame.columns]
    if missing:
        raise TableError(f"{path}: missing columns {missing}")
    return frame


def require_keys(mapping: Mapping, keys: Iterable[str], source: Path) -> None:
    """Raise TableError naming ``source`` if any of ``keys`` is absent."""
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise TableError(f"{source}: missing keys {missing}")


# ---------------------------------------------------------------------------------------------
# labels


def grid_columns(study_cfg: Mapping) -> dict[str, str]:
    """Dotted config key -> table column name (its last component), e.g. model.init_scale -> init_scale."""
    columns = {dotted: dotted.split(".")[-1] for dotted in (study_cfg.get("grid") or {})}
    clashes = sorted(set(columns.values()) & set(LABEL_COLUMNS))
    if clashes or len(set(columns.values())) != len(columns):
        raise ValueError(f"grid keys {list(columns)} give clashing column names {clashes or columns}")
    return columns


def lookup_dotted(spec: Mapping, dotted: str, source: Path):
    """The value at ``a.b.c`` inside ``spec``; a missing key raises TableError naming ``source``."""
    node = spec
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise TableError(f"{source}: no value at {dotted!r}")
        node = node[part]
    return node


def _as_float(value) -> float:
    """JSON null / NaN / numbers -> float (NaN for null), so diverged finals stay numeric columns."""
    return math.nan if value is None else float(value)


def run_labels(spec: dict, summary: dict, grid: Mapping[str, str], spec_path: Path,
               summary_path: Path) -> dict:
    """The labels every row of this run gets: run, variant, lr, seed, status and grid values."""
    require_keys(spec, ["run", "seed", "norm", "optim"], spec_path)
    require_keys(summary, ["run", "status", "steps_done"], summary_path)
    if summary["run"] != spec["run"]:
        raise TableError(f"{summary_path}: run {summary['run']!r} does not match spec run {spec['run']!r}")
    if summary["status"] not in ("completed", "diverged"):
        raise TableError(f"{summary_path}: unknown status {summary['status']!r}")
    labels = {
        "run": spec["run"],
        "variant": lookup_dotted(spec, "norm.variant", spec_path),
        "lr": float(lookup_dotted(spec, "optim.lr", spec_path)),
        "seed": int(spec["seed"]),
        "status": summary["status"],
    }
    for dotted, column in grid.items():
        labels[column] = lookup_dotted(spec, dotted, spec_path)
    return labels


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
    row["steps_done"] = int(summary["steps_done"])
    diverged_step = summary.get("diverged_step")
    row["diverged_step"] = None if diverged_step is None else int(diverged_step)
    row["wall_seconds"] = _as_float(summary.get("wall_seconds"))
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
        extras = [c for frame in frames for c in frame.columns if c not in columns]
        return pd.DataFrame(columns=columns + list(dict.fromkeys(extras)))
    return pd.concat(non_empty, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# the stage


def aggregate(study: str, study_cfg: dict, run_dirs: list[Path],
              analysis_dirs: dict[str, Path] | None, out_dir: Path) -> list[Path]:
    """Concatenate the runs of ``study`` into labelled tables under ``out_dir``.

    ``run_dirs`` are ``results/runs/{run}`` directories; ``analysis_dirs`` maps an analysis name
    (ics, landscape, curvature) to ``results/analysis/{study}/{analysis}``, which must hold
    ``{run}.csv`` for every run. Writes runs.csv, train.csv, eval.csv, layers.csv and one
    ``{analysis}.csv`` per analysis; returns the written paths in that order.
    """
    grid = grid_columns(study_cfg)
    label_columns = LABEL_COLUMNS + list(grid.values())
    analysis_dirs = dict(sorted((analysis_dirs or {}).items()))
    unknown = sorted(set(analysis_dirs) - set(ANALYSIS_COLUMNS))
    if unknown:
        raise ValueError(f"study {study}: unknown analyses {unknown}")

    run_rows: list[dict] = []
    tables: dict[str, list[pd.DataFrame]] = {name: [] for name in [*RUN_TABLE_COLUMNS, *analysis_dirs]}
    seen: set[str] = set()
    for run_dir in sorted(Path(d) for d in run_dirs):
        spec_path, summary_path = run_dir / "spec.json", run_dir / "summary.json"
        spec, summary = read_json(spec_path), read_json(summary_path)
        labels = run_labels(spec, summary, grid, spec_path, summary_path)
        if labels["run"] in seen:
            raise ValueError(f"study {study}: run {labels['run']} listed twice ({run_dir})")
        seen.add(labels["run"])
        run_rows.append(runs_row(labels, spec, summary, summary_path))
        for name, columns in RUN_TABLE_COLUMNS.items():
            tables[name].append(labelled(read_table(run_dir / f"{name}.csv", columns), labels))
        for name, directory in analysis_dirs.items():
            table = read_table(Path(directory) / f"{labels['run']}.csv", ANALYSIS_COLUMNS[name])
            tables[name].append(labelled(table, labels))

    out_dir = Path(out_dir)
    runs = pd.DataFrame(run_rows, columns=label_columns + RUNS_COLUMNS_AFTER_GRID)
    runs["diverged_step"] = runs["diverged_step"].astype("Int64")
    written = [write_csv(runs, out_dir / "runs.csv")]
    for name, frames in tables.items():
        columns = label_columns + {**RUN_TABLE_COLUMNS, **ANALYSIS_COLUMNS}[name]
        written.append(write_csv(concat_tables(frames, columns), out_dir / f"{name}.csv"))
    return written
