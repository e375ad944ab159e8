"""The config's JSON schema (workflow/schemas/config.schema.yaml) and validation with defaults.

The schema ships with the package: `bnstudy/config/schemas/config.schema.yaml` is package data, so an
installed bnstudy (`pip install .`, not editable) validates configs from any working directory.
In the checkout that file is a symlink to workflow/schemas/config.schema.yaml, the one copy that
is edited (what the config files and the docs name); building a wheel or an sdist copies it in.

The schema is the contract of every config key: types, ranges, defaults, descriptions. Names that
live in code are filled in when it is loaded, so each lives in one place: the variant names
(`bnstudy.config.variants`), the figure kinds and each analysis kind's settings block
(`bnstudy.config.catalog`), the `claim_rules` block (`bnstudy.config.claim_rules`). The claim kinds
live in a later stage (`bnstudy.claims`): `bnstudy.configure.load_schema` adds them. Validation
fills in defaults (the snakemake idiom) and reports every problem at once, each naming its key.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

from .catalog import ANALYSES, FIGURE_KINDS
from .claim_rules import ClaimRules
from ..errors import ConfigError
from .variants import VARIANTS, normaliser_settings

# package data (in the checkout, a symlink to workflow/schemas/config.schema.yaml)
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
# libyaml's parser when PyYAML has it (the same documents, ~10x faster)
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_schema() -> dict:
    """The config schema (a fresh copy: callers may extend it). The figure kinds, variants and
    normalisers' own settings are filled in on every call, not cached: a kind `register`ed after
    the first load is in the next one. The claim kinds are not: `bnstudy.configure.load_schema`."""
    schema = copy.deepcopy(_parsed_schema())
    norm = schema["definitions"]["setup"]["properties"]["norm"]["properties"]
    for key, (_, setting) in normaliser_settings().items():   # a normaliser's own keys, from its record
        norm[key] = copy.deepcopy(setting)
    schema["definitions"]["figure_kind"]["enum"] = list(FIGURE_KINDS)
    schema["definitions"]["variant"]["enum"] = list(VARIANTS)
    return schema


@functools.cache
def _parsed_schema() -> dict:
    # parsed once per process: planning paper.yaml validates ~30 setups against it
    try:
        text = SCHEMA_PATH.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(
            f"the config schema {SCHEMA_PATH} is unreadable ({err.strerror or err}); it is package "
            f"data of bnstudy (in a checkout, a symlink to workflow/schemas/config.schema.yaml): "
            f"reinstall bnstudy, or restore the file") from None
    schema = yaml.load(text, Loader=YAML_LOADER)
    definitions = schema["definitions"]
    definitions["study"]["properties"]["claim_rules"] = ClaimRules.schema()
    schema["properties"]["claim_rules"] = {
        **ClaimRules.schema(), "default": {},
        "description": "overrides of the claims verdict rule's gates for every study (a study's own "
                       "claim_rules win over these; bnstudy.config.claim_rules.ClaimRules)"}
    common = definitions["analysis_common"]
    for name, record in ANALYSES.items():
        definitions["study"]["properties"][name] = {
            "type": "object", "additionalProperties": False,
            "description": f"the {name} analysis of this study's runs (bnstudy.analysis.{record.module})",
            "properties": {**copy.deepcopy(common), **copy.deepcopy(dict(record.settings))}}
    return schema


def _default_filling(validator_class):
    """A validator that also fills in `default`s of object properties (the snakemake idiom)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _default_filling(jsonschema.Draft7Validator)


def _describe(error: jsonschema.ValidationError, root: str) -> str:
    where = ".".join([root] + [str(p) for p in error.absolute_path]) if root else \
        ".".join(str(p) for p in error.absolute_path) or "(top level)"
    message = error.message
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        message += f"; allowed keys: {', '.join(allowed)}"
    elif "propertyNames" in error.schema_path:
        message += " (names are lower case letters, digits and _, starting with a letter)"
    return f"config key {where}: {message}"


def validate(instance: dict, schema: dict | None = None, root: str = "") -> dict:
    """Validate in place (filling defaults); raise ConfigError listing every problem."""
    schema = schema or load_schema()
    errors = sorted(_Validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(_describe(e, root) for e in errors))
    return instance


def setup_schema(schema: dict) -> dict:
    """The schema of one setup, standalone (a study's merged setup and grid points are checked
    against it)."""
    return {**schema["definitions"]["setup"], "definitions": schema["definitions"]}


def read_yaml(path: Path) -> dict:
    return yaml.load(Path(path).read_text(), Loader=YAML_LOADER) or {}
