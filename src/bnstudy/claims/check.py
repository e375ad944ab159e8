"""What a study's claims ask of it, checked at parse time: the analyses their tables come from,
the design their test needs (learning rates, a grid, an activation) and seeds enough for every
row to reach a decision. A study that cannot decide its claims stops before hours of training.

The claim records' half of the config check (`bnstudy.config.load` is the config stage's half;
`bnstudy.configure.load_config` runs both). Every error names the config key, as the config's own.
"""

from __future__ import annotations

from ..config.claim_rules import ClaimRules
from ..config.load import check_reads
from ..config.plan import setup_for
from ..errors import ConfigError
from .record import get as claim


def check_claims(config: dict, schema: dict | None = None) -> None:
    """Every enabled study's claims against the parsed config (`bnstudy.config.load.parse_config`)."""
    for name, cfg in config["studies"].items():
        if not cfg["enabled"]:
            continue
        for i, kind in enumerate(cfg["claims"]):
            check_reads(name, cfg, f"claims.{i}", kind, claim(kind).study_tables())
        for i, kind in enumerate(cfg["claims"]):
            problem = claim(kind).design_problem(cfg, setup_for(config, name, schema))
            if problem:
                raise ConfigError(f"config key studies.{name}.claims.{i}: {kind!r} is not allowed; {problem}")
        check_decidable(name, cfg)


def check_decidable(name: str, cfg: dict) -> None:
    """Every row of every claim the study lists can reach a verdict with its seeds (one line per
    row that cannot), unless `claim_rules.allow_undecidable` says the study is a demo or a smoke test."""
    rules = ClaimRules().overridden(cfg.get("claim_rules"))
    if rules.allow_undecidable:
        return
    n = len(cfg["seeds"])
    lines = [f"config key studies.{name}.seeds: {n} seeds cannot decide claim {kind}, row {row.name} ({row.test}):"
             f" it needs at least {need} seeds" + (f" (an exact test over n seeds cannot go below p = 1/2^n; alpha "
             f"{rules.alpha:g})" if row.exact else " (claim_rules.t_interval_seeds)")
             for kind in cfg["claims"] for row, need in claim(kind).undecidable_rows(n, rules)]
    lines = list(dict.fromkeys(lines))  # a row in several windows is one line
    if lines:
        raise ConfigError("\n".join(lines + [f"  give the study more seeds, or set studies.{name}.claim_rules."
                                             f"allow_undecidable: true to run it anyway (its rows may then "
                                             f"stay inconclusive whatever the data, and claims.md says so)"]))
