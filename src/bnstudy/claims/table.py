"""Study tables -> the rows of the claims table (`claims.csv`, `claims.md`).

Each enabled study lists the claim kinds it tests (`claims:` in its config); each kind's record
(`bnstudy.claims.kinds`) gives its rows, and each row becomes one line: the measure over its part
of training, the per-seed effect, the verdict and why (`verdict.decide`). A study, table or run
that is missing or too short makes the row inconclusive with the reason, never an error: the
table always says what it could not decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ..files import StudyTables, TableError, write_csv, write_text
from ..tables.view import StudyView
from .markdown import to_markdown
from .measures import COMMON_CHECKS
from .record import MEASUREMENT, REPORTED, Claim, get
from ..config.claim_rules import ClaimRules
from .verdict import decide, seed_effects
from .windows import EARLY, INITIALISATION, LATE, window_label

COLUMNS = ["key", "claim", "source", "study", "measure", "window", "unit", "effect", "ci_low", "ci_high",
           "p_value", "test", "n_seeds", "paper", "verdict", "agreement", "rule", "reason"]


def evaluate(study: str, kind: str, study_cfg: Mapping, tables: Path | None, rules: ClaimRules) -> list[dict]:
    """The claims-table rows of claim `kind` as tested by `study`, from its tables folder (for a
    per-variant claim, its rows for every variant of the study against the reference)."""
    claim = get(kind)
    if not claim.per_variant:
        return _evaluate(claim, study, study_cfg, tables, rules)
    rows = []
    for variant in study_cfg.get("variants", []):
        if variant != claim.reference:
            rows += [{**row, "key": row["key"].replace(f"{kind}.", f"{kind}.{variant}.", 1),
                      "claim": f"{variant}: {claim.claim}"}
                     for row in _evaluate(claim.for_variant(variant), study, study_cfg, tables, rules)]
    return rows


def _blockers(data: StudyView, claim: Claim, rules: ClaimRules) -> list[str]:
    present = set(data.runs["variant"])
    missing = [f"no {v} runs in the study" for v in (claim.treated, claim.reference) if v not in present]
    return missing or [reason for check in (*COMMON_CHECKS, *claim.checks) if (reason := check(data, claim, rules))]


def _evaluate(claim: Claim, study: str, study_cfg: Mapping, tables: Path | None, rules: ClaimRules) -> list[dict]:
    rules = rules.overridden(study_cfg.get("claim_rules"))
    data = None
    try:
        if tables is None:
            raise TableError(f"no tables folder given for study {study}")
        data = StudyView(StudyTables.in_folder(tables, study_cfg, claim.study_tables()), study)
        blockers = _blockers(data, claim, rules)
    except TableError as error:
        blockers, data = [f"tables missing or malformed: {error}"], None
    out = []
    for row in claim.rows:
        effects = pd.Series(dtype=float)
        reasons = list(blockers)
        if data is not None and not blockers and row.variant and row.variant not in set(data.runs["variant"]):
            reasons = [f"no {row.variant} runs in the study"]
        if data is not None and not reasons:
            try:
                effects = seed_effects(data, claim, row, rules)
            except TableError as error:
                reasons = [f"tables missing or malformed: {error}"]
            if effects.empty and not reasons and row.window in (EARLY, LATE):
                reasons = [f"no analysed step in the {window_label(row.window, rules)} window: analyse more "
                           f"checkpoints there (setups.<setup>.checkpoints, the analysis block's steps)"]
        verdict = decide(effects, row.threshold(rules), row.holds, row.exact, rules, reasons)
        only = row.measured_only(data, rules) if data is not None and row.measured_only and not reasons else None
        if (claim.is_reported(row) or only) and not reasons:
            why = only or ("at step 0 the papers state no finding" if row.window == INITIALISATION
                           else f"{claim.source} states no finding for it")
            verdict.update(verdict=REPORTED, reason=MEASUREMENT + why)
        out.append({"key": f"{claim.kind}.{row.name}.{row.window}", "claim": claim.claim, "source": claim.source,
                    "study": study, "measure": row.measure, "window": window_label(row.window, rules),
                    "unit": row.unit, "paper": claim.paper, "rule": claim.rule(row, rules),
                    "agreement": "" if only else claim.agreement(row, verdict["verdict"]), **verdict})
    return out


def usable_fraction_sensitivity(studies_cfg: Mapping, tables: Mapping[str, Path], rules: ClaimRules,
                                fractions=(0.4, 0.5, 0.6)) -> pd.DataFrame:
    """The learning-rate verdicts again at other usable fractions (how much they hang on it)."""
    rows = []
    for study, cfg in studies_cfg.items():
        if not cfg.get("enabled", True) or "higher_learning_rates" not in cfg.get("claims", []):
            continue
        for fraction in fractions:
            overrides = {**(cfg.get("claim_rules") or {}), "usable_fraction": fraction}
            (row,) = evaluate(study, "higher_learning_rates", {**cfg, "claim_rules": overrides},
                              tables.get(study), rules)
            rows.append({"study": study, "usable_fraction": fraction, **{k: row[k] for k in
                         ("effect", "p_value", "n_seeds", "verdict")}})
    return pd.DataFrame(rows, columns=["study", "usable_fraction", "effect", "p_value", "n_seeds", "verdict"])


def claims(studies_cfg: Mapping, tables: Mapping[str, Path], out_csv: Path, out_md: Path,
           rules: ClaimRules | None = None) -> pd.DataFrame:
    """Evaluate every claim each enabled study lists, from its tables folder in ``tables``
    (study -> results/tables/<study>); write the CSV and Markdown tables."""
    rules = rules or ClaimRules()
    rows = [row for study, cfg in studies_cfg.items() if cfg.get("enabled", True)
            for kind in cfg.get("claims", []) for row in evaluate(study, kind, cfg, tables.get(study), rules)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_csv(out_csv, table)
    write_text(out_md, to_markdown(table, usable_fraction_sensitivity(studies_cfg, tables, rules),
                                   undecidable_studies(studies_cfg, rules)))
    return table


def undecidable_studies(studies_cfg: Mapping, rules: ClaimRules) -> dict[str, list[str]]:
    """Enabled studies that run with seeds some of their rows cannot decide (allowed by
    `claim_rules.allow_undecidable`), each with those rows' keys."""
    out = {}
    for study, cfg in studies_cfg.items():
        if not cfg.get("enabled", True):
            continue
        mine = rules.overridden(cfg.get("claim_rules"))
        n = len(cfg.get("seeds", []))
        rows = [f"{kind}.{row.name}" for kind in cfg.get("claims", [])
                for row, _ in get(kind).undecidable_rows(n, mine)]
        if rows:
            out[study] = list(dict.fromkeys(rows))
    return out
