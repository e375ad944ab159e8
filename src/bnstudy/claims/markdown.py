"""The claims table as Markdown: a short table a reader scans, then every column in detail."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .record import INCONCLUSIVE, REPORTED


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


def _short(table: pd.DataFrame) -> str:
    """The table a reader scans: each row's verdict, and for an inconclusive one why (the rule and
    every reason are in the detail table). Seeds are the paired seeds the effect rests on (0: no
    value could be computed, the reason says why)."""
    rows = ["| claim | study | measure | window | effect [95% CI] | paired seeds | verdict | why inconclusive |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows += [f"| {_cell(r['claim'])} ({r['source']}) | {r['study']} | {_cell(short_measure(r['measure']))} |"
             f" {r['window']} | {_effect_text(r)} | {r['n_seeds']} | {r['verdict']} |"
             f" {_cell(r['reason']) if r['verdict'] == INCONCLUSIVE else ''} |" for _, r in table.iterrows()]
    return "\n".join(rows)


def undecidable_note(undecidable: dict[str, list[str]]) -> str:
    """What a reader must know first when some studies' seeds cannot decide their rows."""
    if not undecidable:
        return ""
    studies = "; ".join(f"{study} ({len(rows)} rows)" for study, rows in undecidable.items())
    return ("> **Seeds too few to decide.** This config lets some studies run with fewer seeds than their"
            " tests need (`claim_rules.allow_undecidable`): " + studies + ". With 2 seeds a 95% t interval"
            " has df = 1 (t = 12.7) and decides only an effect more than 9 standard deviations from its"
            " threshold; an exact test over n seeds cannot go below p = 1/2^n. Their inconclusive rows say"
            " nothing about the papers; rerun with more seeds (config/paper.yaml) for verdicts.\n\n")


def to_markdown(table: pd.DataFrame, sensitivity: pd.DataFrame | None = None,
                undecidable: dict[str, list[str]] | None = None) -> str:
    """The claims table as GitHub Markdown: a warning when seeds are too few to decide, the short
    table, then the full detail."""
    header = ("# Claims\n\n"
              "Effect = treated minus reference variant, paired by seed (log10 ratio where the measure"
              " is a ratio; a claim about one variant gives its own value), with its 95% t interval over"
              " seeds, or the p-value of an exact sign-flip test over seeds for measures on a grid. The"
              " window is the part of training a row measures: a checkpoint analysis gives an early and a"
              " late row (split at `claim_rules.early_fraction` of each run, each a time-weighted mean"
              " over its steps) and its value at step 0. Rows whose source states no finding (step 0, a"
              " control, a variant the source did not study) are measurements: they are listed apart,"
              " with the verdict `reported`. The rule and the reason for each row are in the detail"
              " table below.\n\n")
    tested = table[table["verdict"] != REPORTED]
    measured = table[table["verdict"] == REPORTED]
    text = header + undecidable_note(undecidable or {}) + "## Tested claims\n\n" + _short(tested) + "\n"
    if len(measured):
        text += "\n## Measurements (no finding in the source to test)\n\n" + _short(measured) + "\n"
    detail = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    detail += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    if sensitivity is not None and len(sensitivity):
        text += ("\n## The learning-rate verdict at other usable fractions\n\nA learning rate is usable when"
                 " its run reaches chance + fraction x (best mean - chance) test accuracy; the verdict"
                 " above uses the configured fraction.\n\n| study | usable fraction | effect (log10 lr) |"
                 " exact p | seeds | verdict |\n| --- | --- | --- | --- | --- | --- |\n")
        text += "".join(f"| {r.study} | {r.usable_fraction:g} | {_cell(r.effect)} | {_cell(r.p_value)} |"
                        f" {r.n_seeds} | {r.verdict} |\n" for r in sensitivity.itertuples(index=False))
    return text + "\n## Detail\n\n" + "\n".join(detail) + "\n"


def short_measure(measure: str) -> str:
    """The measure's name, up to its first ';' outside parentheses (the detail table has all of it)."""
    depth = 0
    for i, char in enumerate(measure):
        depth += (char == "(") - (char == ")")
        if char == ";" and depth == 0:
            return measure[:i]
    return measure
