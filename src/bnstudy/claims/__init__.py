"""Study tables -> the verdict rows of the claims table (`claims.csv`, `claims.md`).

Takes each study's tables folder and its config; gives one row per claim, measure and part of
training with its effect, interval, test and verdict. Reads tables only; never imports torch.

- `record`: what a claim kind is (`Claim`, its `Row`s) and the registry of kinds;
- `kinds/`: the claim kinds, one module per family (accuracy, ICS, landscape, noise, Hessian,
  normalisers, scale invariance);
- `measures`, `windows`: what the families' measures share, and the parts of training;
- `verdict`: per-seed effects -> verdict (t interval, exact sign-flip test, band);
- `table`, `markdown`: the orchestration and the CSV/Markdown writers.

This module imports only the records (no scipy): the config check reads them while the DAG is
planned. The statistics load with `verdict` and `table`.
"""

from .record import INCONCLUSIVE, NOT_SUPPORTED, REPORTED, SUPPORTED, VERDICTS, Claim, Row, claims_by_kind, get, register
from ..config.claim_rules import ClaimRules

__all__ = ["INCONCLUSIVE", "NOT_SUPPORTED", "REPORTED", "SUPPORTED", "VERDICTS", "Claim", "ClaimRules", "Row", "claims_by_kind", "get",
           "register"]
