"""The claims table as Markdown: a short table a reader scans, then every column in detail."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _effect_text(row) -> str:
    if not np.isfinite(row["effect"]):
        return ""
    text = f"{row['effect']:+.3g}"
    if np.isfinite(row["ci_low"]):
        return f"{text} [{row['ci_low']:+.3g}, {row['ci_high']:+.3g}]"
    if np.isfinite(row["p_value"]):
        return f"{text} (exact p = {row['p_value']:.3g})"
    return text


def to_markdown(table: pd.DataFrame, sensitivity: pd.DataFrame | None = None) -> str:
    """The claims table as GitHub Markdown: the short table first, the full detail below it."""
    header = ("# Claims\n\n"
              "Effect = treated minus reference variant, paired by seed (log10 ratio where the measure"
              " is a ratio; a claim about one variant gives its own value), with its 95% t interval over"
              " seeds, or the p-value of an exact sign-flip test over seeds for measures on a grid. The"
              " window is the part of training a row measures: the checkpoint analyses' verdicts are"
              " over training with initialisation left out, their value at initialisation is a row of its"
              " own. The rule and the reason for each verdict are in the detail table below.\n\n")
    short = ["| claim | study | measure | window | effect [95% CI] | seeds | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    short += [f"| {_cell(r['claim'])} ({r['source']}) | {r['study']} | {_cell(short_measure(r['measure']))} |"
              f" {r['window']} | {_effect_text(r)} | {r['n_seeds']} | {r['verdict']} |" for _, r in table.iterrows()]
    detail = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    detail += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    text = header + "\n".join(short) + "\n"
    if sensitivity is not None and len(sensitivity):
        text += ("\n## The learning-rate verdict at other usable fractions\n\nA learning rate is usable when"
                 " its run reaches chance + fraction x (best mean - chance) test accuracy; the verdict"
                 " above uses the configured fraction.\n\n| study | usable fraction | effect (log10 lr) |"
                 " exact p | seeds | verdict |\n| --- | --- | --- | --- | --- | --- |\n")
        text += "".join(f"| {r.study} | {r.usable_fraction:g} | {_cell(r.effect)} | {_cell(r.p_value)} |"
                        f" {r.n_seeds} | {r.verdict} |\n" for r in sensitivity.itertuples(index=False))
    return text + "\n## Detail\n\n" + "\n".join(detail) + "\n"


def short_measure(measure: str) -> str:
    """The measure's name, up to its first ';' (the detail table has all of it)."""
    return measure.split(";")[0]
