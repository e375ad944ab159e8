"""The table layer: every CSV/JSON the stages exchange, its columns, and how it is read and written.

One place for the file contracts of docs/architecture.md, so training, analyses, aggregation,
figures and claims agree on them. No torch here (figures and claims import this module) and no
pandas at import time (training jobs write their tables through it without paying for pandas).

Writes are atomic (`bnstudy.atomic`): a killed job leaves the old file or the new one. Reads name
the file and what is wrong with it (`TableError`), because a silently dropped run would bias every
mean downstream.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from .atomic import atomic_write
from .config.catalog import ANALYSES
from .config.spec import RunSpec
from .errors import TableError  # noqa: F401  (raised here; defined without torch)

# ---------------------------------------------------------------------------------------------
# contracts

# per-run tables, written by training (results/runs/{run}/)
RUN_TABLES: dict[str, list[str]] = {
    # training mode, the network that is trained: mean over the `log.train_every` batches ending at `step`
    "train": ["step", "loss", "accuracy"],
    # split train/test: eval mode (running statistics, noise and dropout off) on `log.eval_samples`
    # samples (the final evaluation: `log.final_test_samples` test samples, default all); split
    # train_batches: training mode on the batches trained on since the last evaluation
    "eval": ["step", "split", "loss", "accuracy"],
    # one row per (step, normalised layer): gradient norms wrt the layer's weight and output, mean
    # |gamma_j| / sigma_j (BatchNorm layers), and the change of each unit's mean and variance of the
    # non-linearity's input between steps t and t+1, averaged over the layer's units
    # weight_norm: ||W_i|| of the layer's main weight; weight_grad_cos: the largest |cos(w, g)| over
    # its filters (0 for scale-invariant filters: Arora, Li & Lyu 2019); unexplained_cos: the largest
    # |w . g - eps/(v + eps) gamma dL/dgamma| / (||w|| ||g||) over a BatchNorm layer's filters (NaN elsewhere;
    # float32: the claim reads the float64 check of the activations analysis instead);
    # weight_grad_cos_p50: the median |cos(w, g)| over its filters
    "layers": ["step", "layer", "weight_grad_norm", "output_grad_norm", "gamma_over_sigma",
               "unit_mean_change", "unit_var_change", "weight_norm", "weight_grad_cos", "weight_grad_cos_p50",
               "unexplained_cos"],
    # one row per (step, layer, unit) for `log.units` fixed units: one unit's activations over the
    # batch (and spatial positions)
    "units": ["step", "layer", "unit", "mean", "var", "p05", "p15", "p50", "p85", "p95"],
}
EVAL_SPLITS = ("train", "test", "train_batches")
# columns added to a table after runs were first written: tables without them read as NaN there
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {"layers": ("weight_norm", "weight_grad_cos", "weight_grad_cos_p50",
                                                         "unexplained_cos"),
                                              "activations": ("weight_grad_cos", "unexplained_cos"),
                                              "runs": ("arch", "depth")}


def required_columns(name: str, columns) -> list[str]:
    """The columns a table `name` must have (its contract minus the columns added later)."""
    return [c for c in columns if c not in ADDED_COLUMNS.get(name, ())]


def eval_metric(split: str, metric: str) -> str:
    """The MLflow key of an eval.csv value: <split>_eval_<metric> for the eval-mode splits,
    train_batches_<metric> for the training-mode one (training and `bnstudy track` agree on it)."""
    return f"{split}_{metric}" if split == "train_batches" else f"{split}_eval_{metric}"

# checkpoint analyses (results/analysis/{run}/{analysis}-{settings hash}.csv): their records
ANALYSIS_TABLES: dict[str, list[str]] = {name: list(record.columns) for name, record in ANALYSES.items()}

# study tables (results/tables/{study}/): every row labelled with these, then the study's grid columns
LABEL_COLUMNS = ["run", "variant", "lr", "seed", "status"]
FINAL_METRICS = [f"{split}_{metric}" for split in EVAL_SPLITS for metric in ("loss", "accuracy")]
RUNS_COLUMNS = (["setup", "task"] + [f"final_{name}" for name in FINAL_METRICS]
                + ["steps", "steps_done", "diverged_step", "wall_seconds", "arch", "depth"])
STUDY_TABLES: dict[str, list[str]] = {"runs": RUNS_COLUMNS, **RUN_TABLES, **ANALYSIS_TABLES}


def study_tables(study_cfg: Mapping) -> list[str]:
    """The tables a study's aggregation writes (results/tables/{study}/<name>.csv): runs, the run
    tables, and one per analysis the study configures."""
    return ["runs", *RUN_TABLES, *(name for name in ANALYSIS_TABLES if name in study_cfg)]


# ---------------------------------------------------------------------------------------------
# writing


def _cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if value is None:
        return ""
    return str(value)


def write_csv(path: Path, table, columns: list[str] | None = None) -> Path:
    """Write `table` (a pandas DataFrame, or a list of dict rows) as CSV, atomically.

    Rows are written in `columns` order (default: the frame's columns / the first row's keys);
    a missing cell is NaN. The header is written even when there are no rows.
    """
    if hasattr(table, "to_csv"):
        frame = table if columns is None else table.reindex(columns=columns)
        return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    rows = list(table)
    columns = columns or (list(rows[0]) if rows else [])

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(columns)
            out.writerows([_cell(row.get(c, math.nan)) for c in columns] for row in rows)

    return atomic_write(path, write)


def write_json(path: Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# reading


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


def read_table(path: Path, required_columns: Iterable[str] = ()):
    """Read a CSV (pandas) and check its columns; a header-only file is a valid empty table."""
    import pandas as pd

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


def grid_columns(study_cfg: Mapping) -> dict[str, str]:
    """Dotted config key -> table column name (its last component), e.g. model.init_scale -> init_scale."""
    columns = {dotted: dotted.split(".")[-1] for dotted in (study_cfg.get("grid") or {})}
    clashes = sorted(set(columns.values()) & set(LABEL_COLUMNS))
    if clashes or len(set(columns.values())) != len(columns):
        raise ValueError(f"grid keys {list(columns)} give clashing column names {clashes or columns}")
    return columns


class StudyTables:
    """A study's tables, each read once and checked against its contract on first use.

    `paths` maps a table name (runs, a run table, an analysis) to its file; `in_folder` gives the
    tables a study's aggregation wrote into its folder (results/tables/{study}/).
    Infinite values (a diverging run's last loss) are read as NaN.
    """

    def __init__(self, paths: Mapping[str, Path], study_cfg: Mapping):
        self.paths = {name: Path(path) for name, path in paths.items()}
        self.study_cfg = study_cfg
        self.grid = list(grid_columns(study_cfg).values())
        self._cache: dict = {}

    def __contains__(self, name: str) -> bool:
        return name in self.paths

    def __getitem__(self, name: str):
        if name not in self._cache:
            if name not in self.paths:
                raise TableError(f"table {name!r} was not given (have: {', '.join(self.paths) or 'none'})")
            if name not in STUDY_TABLES:
                raise TableError(f"{self.paths[name]}: unknown table {name!r}")
            import numpy as np

            frame = read_table(self.paths[name], LABEL_COLUMNS + required_columns(name, STUDY_TABLES[name]))
            missing = [c for c in STUDY_TABLES[name] if c not in frame.columns]
            frame = frame.assign(**{c: np.nan for c in missing})
            self._cache[name] = frame.replace([np.inf, -np.inf], np.nan)
        return self._cache[name].copy()

    @property
    def runs(self):
        return self["runs"]

    @classmethod
    def in_folder(cls, folder: Path, study_cfg: Mapping, names) -> "StudyTables":
        """The tables `names` of a study's table folder."""
        return cls({name: Path(folder) / f"{name}.csv" for name in names}, study_cfg)

# ---------------------------------------------------------------------------------------------
# the metric points MLflow holds of a run (bnstudy.tracking.tracker and bnstudy.tracking.sync send them)


def _finite_cell(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _csv_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def expected_points(run_dir: Path, spec: RunSpec, final: dict[str, float]) -> dict[tuple[str, int], float]:
    """(key, step) -> value of every metric point MLflow holds of a run, from its train.csv and
    eval.csv (`final`: the final_* metrics, at step 0). Missing tables give no points."""
    regression = spec.dataset.task == "regression"
    points: dict[tuple[str, int], float] = {}
    for row in _csv_rows(run_dir / "train.csv"):
        step, loss = int(row["step"]), _finite_cell(row["loss"])
        if loss is None:
            continue  # the diverged step: training logs no point for it
        points[("train_loss", step)] = loss
        accuracy = _finite_cell(row.get("accuracy"))
        if not regression and accuracy is not None:
            points[("train_accuracy", step)] = accuracy
    for row in _csv_rows(run_dir / "eval.csv"):
        step = int(row["step"])
        for name in ("loss", "accuracy"):
            value = _finite_cell(row.get(name))
            if value is not None:
                points[(eval_metric(row["split"], name), step)] = value
    for key, value in final.items():
        points[(key, 0)] = value
    return points
