"""A config checked by every stage that reads it: what the entry points (the Snakefile, the CLI,
the benchmarks) load.

The config stage checks its own keys (`bnstudy.config.load.parse_config`: the schema, datasets,
setups, variants, analyses, figures); the claim records, a later stage, check what a study's claims
ask of it (`bnstudy.claims.check`). Composing the two here keeps the stages' imports one way: the
config stage never reads the claims. Plain Python (no torch, no scipy): Snakemake plans with it.
"""

from __future__ import annotations

from pathlib import Path

from .claims import claims_by_kind
from .claims.check import check_claims
from .config import schema as config_schema
from .config.load import parse_config
from .errors import ConfigError

__all__ = ["ConfigError", "load_config", "load_schema"]


def load_schema() -> dict:
    """The config schema with the claim kinds (read on every call: a kind `register`ed later is in
    the next one)."""
    schema = config_schema.load_schema()
    schema["definitions"]["claim_kind"]["enum"] = sorted(claims_by_kind())
    return schema


def load_config(config: dict | str | Path) -> dict:
    """A validated, defaulted copy of a config dict (or YAML file), with every cross-key check:
    the config's own, then its claims'."""
    schema = load_schema()
    config = parse_config(config, schema)
    check_claims(config, schema)
    return config
