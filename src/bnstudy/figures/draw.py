"""Study tables -> figures (PNG + PDF), one drawer per figure kind of `bnstudy.config.catalog`.

The workflow's figures job of a study calls ``draw_study``: every figure kind the study lists,
each from the study tables ``catalog.figure_tables(kind)`` names, into the study's figures folder.
Nothing here imports torch, so figures can be redrawn on a machine without the training stack.

Every kind is two layers: pandas functions in the frame modules (`frames`, `paper_frames`,
`beyond_frames`) that return what the panels plot (a tidy frame; ``figure_data`` gives it, the
tests assert on it), and the drawing code (`drawing`'s helpers, `curves`, `snapshots`), which only
draws such a frame. `DRAWERS` here pairs the two for each kind.

Conventions shared by every figure, so that they read alike:

* seeds are the experimental unit. A curve is the mean over the seeds that did not diverge, with
  its 95% Student-t band (`bnstudy.tables.stats.mean_ci`, the claims table's interval) at the steps where
  at least ``MIN_BAND_SEEDS`` seeds give a value. A variant with fewer completed seeds in a panel
  gets each seed's own line instead (a t band over 2 seeds is 12.7 standard errors wide). Bands are clipped to the measure's domain
  (accuracies to [0, 1]); on log axes mean and band are taken over log10 values (a geometric mean);
* activation distributions are of single units of one seed: Algorithm 1 draws its noise per unit
  and per step, and pooling units or averaging seeds would average that noise away;
* hue is the variant, with one fixed colour per variant across all figures;
* panel columns are the run conditions (lr and the study's grid values), so runs that differ in
  anything but the seed are never averaged together;
* a diverged run is drawn as its own dashed line up to its last finite point, marked there with
  an ``x`` and counted in the legend; a panel with nothing to draw says "no data".
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (backend first)
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..atomic import atomic_write  # noqa: E402
from ..config.catalog import ANALYSES, FIGURE_KINDS, FigureKind, figure_tables  # noqa: E402
from ..files import StudyTables, TableError  # noqa: E402
from .beyond_frames import (  # noqa: E402
    EOS_ROWS, SPECTRUM_ROWS, WEIGHT_ROWS, activation_vs_lr_data, density_data, eos_data, group_size_data,
    layer_measures_data, spectrum_data, surface_data, weight_norm_data,
)
from .curves import curves_figure, landscape_figure, units_figure  # noqa: E402
from .drawing import DPI, Styled  # noqa: E402
from .frames import Context, EVAL_MODE, Measure, SIGNED_UNIT, TRAIN_MODE, curves_data, hued  # noqa: E402
from .paper_frames import (  # noqa: E402
    ACCURACY_ROWS, CURVATURE_ROWS, ICS_ROWS, MOMENT_ROWS, TRAIN_LOSS_ROWS, FinalAxes, curvature_data, final_data,
    landscape_data, units_data,
)
from .snapshots import axis_figure, density_figure, final_figure, surface_figure  # noqa: E402


@dataclass(frozen=True)
class Drawer:
    """A figure kind: its title, what it plots (a tidy frame) and how it draws that frame. Any
    parameters of the two (a curves figure's measures, a final figure's axes) are bound here, so
    no frame or drawing function looks a kind up by its name."""

    title: str
    data: Callable[[Context], pd.DataFrame]
    plot: Callable[[Context, pd.DataFrame], plt.Figure]

    def __call__(self, ctx: Context) -> plt.Figure:
        return self.plot(ctx, self.data(ctx))


def curves(title: str, measures: Sequence[Measure], by_layer: bool = False,
           data: Callable[[Context], pd.DataFrame] | None = None) -> Drawer:
    """A curves figure: a row of panels per measure against the step (``data`` when the frame
    needs more than `curves_data`, e.g. reference lines)."""
    return Drawer(title, data or partial(curves_data, measures=measures, by_layer=by_layer),
                  partial(curves_figure, measures=measures))


def by_setting(key: str, drawer: Drawer) -> Drawer:
    """`drawer`'s figure with the study's grid setting `key` as the hue: one line per value in one
    panel instead of a panel per value (`frames.HuedTables`)."""
    return Drawer(f"{drawer.title}, one line per {key.split('.')[-1]}",
                  lambda ctx: drawer.data(hued(ctx, key)), lambda ctx, data: drawer.plot(hued(ctx, key), data))


def final(title: str, axes: FinalAxes) -> Drawer:
    """A final metric of each run (runs.csv) against a run setting."""
    return Drawer(title, partial(final_data, final=axes), partial(final_figure, final=axes))


def against(x_label: str, x: str = "layer", log_x: int | None = None) -> Callable[[Context, pd.DataFrame], plt.Figure]:
    """An `axis_figure` drawer: measures against layer index or a run setting."""
    return partial(axis_figure, xlabel=x_label, x=x, log_x=log_x)


def _unit_input(ctx: Context) -> pd.DataFrame:
    return units_data(ctx, last_layer_first_unit=True)


TEST_ACCURACY = f"final test accuracy\n({EVAL_MODE})"

DRAWERS: dict[str, Drawer] = {
    "accuracy": curves(f"train accuracy ({TRAIN_MODE}) and test accuracy ({EVAL_MODE})",
                       [ACCURACY_ROWS["train_batches"], ACCURACY_ROWS["test"]]),
    "train_accuracy": curves(f"train accuracy, {TRAIN_MODE} (top) and {EVAL_MODE} (bottom)",
                             [ACCURACY_ROWS["train_batches"], ACCURACY_ROWS["train"]]),
    "test_accuracy": curves(f"test accuracy ({EVAL_MODE})", [ACCURACY_ROWS["test"]]),
    "test_accuracy_by_train_only": by_setting("optim.train_only", curves(f"test accuracy ({EVAL_MODE})",
                                                                        [ACCURACY_ROWS["test"]])),
    "train_loss": curves("training loss", TRAIN_LOSS_ROWS),
    "distributions": Drawer("single units' activation distributions over steps", units_data, units_figure),
    "unit_input": Drawer("one last-hidden-layer unit's input to the non-linearity", _unit_input, units_figure),
    "moment_changes": curves("per-unit change of activation moments between successive steps", MOMENT_ROWS,
                             by_layer=True),
    "ics": curves("internal covariate shift (Definition 2.1)", ICS_ROWS, by_layer=True),
    "landscape": Drawer("loss landscape along the gradient", landscape_data, landscape_figure),
    "curvature": curves("curvature along the gradient and top Hessian eigenvalue", CURVATURE_ROWS,
                        data=curvature_data),
    "accuracy_vs_lr": final("final test accuracy against the learning rate",
                            FinalAxes(("lr",), TEST_ACCURACY, log_x=True)),
    "accuracy_vs_init_scale": final("final test accuracy against the initial weight scale",
                                    FinalAxes(("init_scale",), TEST_ACCURACY, log_x=True)),
    "accuracy_vs_dropout": final("final test accuracy against the dropout rate",
                                 FinalAxes(("dropout",), TEST_ACCURACY)),
    "generalisation_gap": final("generalisation gap (final train − test accuracy)",
                                FinalAxes(("dropout", "lr"), f"final train − test accuracy\n({EVAL_MODE})",
                                          which="gap", domain=SIGNED_UNIT)),
    "hessian_spectrum": curves("Hessian: extreme eigenvalues, trace, gradient share in the top eigenvectors",
                               SPECTRUM_ROWS, data=spectrum_data),
    "spectral_density": Drawer("Hessian spectral density (stochastic Lanczos quadrature)", density_data,
                               density_figure),
    "edge_of_stability": curves("full-batch gradient descent: loss and sharpness against 2/lr", EOS_ROWS,
                                data=eos_data),
    "loss_surface": Drawer("loss on a plane of two filter-normalised directions, and the basin radius",
                           surface_data, surface_figure),
    "layer_measures": Drawer("per-layer similarity of samples, rank, gradient norm and variance against depth",
                             layer_measures_data, against("layer (depth)")),
    "gradient_vs_group_size": Drawer("first-layer gradient norm against GroupNorm's group size",
                                     group_size_data, against("group size", x="group_size", log_x=2)),
    "activation_vs_lr": Drawer("last-layer activation variance in the first steps against the learning rate",
                               activation_vs_lr_data, against("learning rate", x="lr", log_x=10)),
    "weight_norm": curves("weight norms beside the scale-invariance prediction, effective learning rate",
                          WEIGHT_ROWS, data=weight_norm_data),
}


def register(name: str, kind: FigureKind, drawer: Drawer) -> None:
    """Add a figure kind: its record (what it reads, for planning) and its drawer (a module
    outside the package extends the project this way; its caption goes in
    workflow/report/figures/<name>.rst for the report)."""
    if name in FIGURE_KINDS or name in DRAWERS:
        raise ValueError(f"figure kind {name!r} is registered twice")
    unknown = [a for a in kind.analyses if a not in ANALYSES]
    if unknown:
        raise ValueError(f"figure kind {name!r} reads analyses {unknown} that no record defines; "
                         f"known: {sorted(ANALYSES)}")
    FIGURE_KINDS[name], DRAWERS[name] = kind, drawer


# ---------------------------------------------------------------------------------------------
# entry points


def context(kind: str, study: str, study_cfg: Mapping, tables: Mapping[str, Path]) -> Context:
    """A Context for ``kind``; an unknown kind or a missing table is an error naming what is wrong."""
    if kind not in DRAWERS:
        raise KeyError(f"no figure kind {kind!r}; known: {sorted(DRAWERS)}")
    missing = [name for name in figure_tables(kind) if name not in tables]
    if missing:
        raise TableError(f"figure {kind!r} of study {study!r} needs tables {missing} (given: {sorted(tables)})")
    return Styled(kind, study, study_cfg, StudyTables(tables, study_cfg))


def figure_data(kind: str, study: str, study_cfg: Mapping, tables: Mapping[str, Path]) -> pd.DataFrame:
    """The tidy frame figure ``kind`` draws: one row per plotted point, labelled by panel
    (``row``, ``column``), ``variant`` and, for curves, ``series`` and ``style``."""
    return DRAWERS[kind].data(context(kind, study, study_cfg, tables))


def render(kind: str, study: str, study_cfg: Mapping, tables: Mapping[str, Path]) -> plt.Figure:
    """The figure as a matplotlib Figure, not saved (the caller closes it)."""
    ctx = context(kind, study, study_cfg, tables)
    with sns.axes_style("whitegrid"), plt.rc_context({"axes.titlesize": 8, "font.size": 8}):
        fig = DRAWERS[kind](ctx)
        title = textwrap.fill(f"{study}: {DRAWERS[kind].title}", width=int(fig.get_figwidth() * 11))
        fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig: plt.Figure, out_png: Path) -> list[Path]:
    """Write ``out_png`` and the same-stem PDF atomically; metadata fixed so reruns are identical."""
    out_png = Path(out_png)
    written = []
    for path, metadata in ((out_png, {"Software": None}),
                           (out_png.with_suffix(".pdf"), {"CreationDate": None, "Producer": None})):
        written.append(atomic_write(path, lambda tmp, fmt=path.suffix[1:], meta=metadata:
                                    fig.savefig(tmp, format=fmt, dpi=DPI, metadata=meta)))
    return written


def draw(kind: str, study: str, study_cfg: Mapping, tables: Mapping[str, Path], out_png: Path) -> list[Path]:
    """Draw figure ``kind`` of ``study`` from ``tables`` (table name -> file, exactly
    `catalog.figure_tables(kind)`) to ``out_png`` and the same-stem PDF; returns both paths."""
    fig = render(kind, study, study_cfg, tables)
    try:
        return save_figure(fig, out_png)
    finally:
        plt.close(fig)


def draw_study(study: str, study_cfg: Mapping, tables: Path, kinds, out_dir: Path) -> list[Path]:
    """Draw each figure kind in `kinds` of `study` from its tables folder into
    `out_dir/<kind>.png` and `.pdf`; returns the files written."""
    written = []
    for kind in kinds:
        if kind not in DRAWERS:
            raise KeyError(f"no figure kind {kind!r}; known: {sorted(DRAWERS)}")
        paths = {name: Path(tables) / f"{name}.csv" for name in figure_tables(kind)}
        written += draw(kind, study, study_cfg, paths, Path(out_dir) / f"{kind}.png")
    return written
