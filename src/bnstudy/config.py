"""Config: validation against the JSON schema (with defaults), and the expansion of studies into runs.

A *setup* is a (dataset, model, training) recipe; a *study* names a setup, the variants, learning
rates and seeds it needs, optional `overrides` of the setup and an optional `grid` over more setup
keys. `plan()` turns the studies into runs. A run's id ends in a hash of its resolved spec, so a
run that several studies need is trained once and shared, and changing one study's settings
creates new runs for that study only.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from .norms import VARIANTS

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
ANALYSES = ("ics", "landscape", "curvature")


class ConfigError(ValueError):
    """Invalid config; the message names the key, what was wrong and what is allowed."""


def load_schema() -> dict:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    # the variant names live in one place, bnstudy.norms.VARIANTS; the schema takes them from there
    schema["definitions"]["variant"]["enum"] = list(VARIANTS)
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
    return f"config key {where}: {message}"


def validate(instance: dict, schema: dict | None = None, root: str = "") -> dict:
    """Validate in place (filling defaults); raise ConfigError listing every problem."""
    schema = schema or load_schema()
    errors = sorted(_Validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(_describe(e, root) for e in errors))
    return instance


def load_config(config: dict | str | Path) -> dict:
    """A validated, defaulted copy of a config dict (or YAML file), with cross-key checks."""
    if not isinstance(config, dict):
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        config = yaml.safe_load(path.read_text()) or {}
    config = copy.deepcopy(config)
    schema = load_schema()
    validate(config, schema)
    for name, study in config["studies"].items():
        if study["enabled"]:
            setup_for(config, name, schema)  # overrides and grid keys must make a valid setup
    return config


# ----------------------------------------------------------------------------------------------
# studies -> runs


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def get_dotted(d: dict, key: str):
    for part in key.split("."):
        d = d[part]
    return d


def set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        d = d[part]
    d[parts[-1]] = value


def setup_for(config: dict, study: str, schema: dict | None = None) -> dict:
    """The study's setup with its overrides merged, validated as a setup."""
    schema = schema or load_schema()
    cfg = config["studies"][study]
    if cfg["setup"] not in config["setups"]:
        raise ConfigError(f"config key studies.{study}.setup: {cfg['setup']!r} is not a setup; "
                          f"defined setups: {', '.join(config['setups'])}")
    setup = deep_merge(config["setups"][cfg["setup"]], cfg["overrides"])
    setup_schema = {**schema["definitions"]["setup"], "definitions": schema["definitions"]}
    validate(setup, setup_schema, root=f"studies.{study}.overrides")
    for key, values in cfg["grid"].items():
        try:
            get_dotted(setup, key)
        except (KeyError, TypeError):
            raise ConfigError(f"config key studies.{study}.grid.{key}: no such setup key; grid keys "
                              f"are dotted paths into the setup such as model.init_scale") from None
        for value in values:
            trial = copy.deepcopy(setup)
            set_dotted(trial, key, value)
            validate(trial, setup_schema, root=f"studies.{study}.grid.{key}={value!r}")
    if setup["dataset"] not in config["datasets"]:
        raise ConfigError(f"config key setups.{cfg['setup']}.dataset: {setup['dataset']!r} is not "
                          f"a dataset; defined datasets: {', '.join(config['datasets'])}")
    return setup


def checkpoint_steps(schedule: dict, steps: int) -> list[int]:
    """Dense early (every `dense_every` up to `dense_until`), then every `every`; always 0 and the end."""
    dense = range(0, min(schedule["dense_until"], steps) + 1, schedule["dense_every"])
    sparse = range(0, steps + 1, schedule["every"])
    return sorted(set(dense) | set(sparse) | {0, steps})


def dataset_info(name: str, cfg: dict, results: str) -> dict:
    """What a run needs to know of its dataset before it is prepared."""
    info = {"name": name, "path": f"{results}/data/{name}.pt"}
    if cfg["source"] == "gaussian":
        return {**info, "task": "regression", "dim": cfg["dim"], "classes": 0}
    channels = 1 if cfg["source"] == "mnist" else cfg["channels"]
    size = 28 if cfg["source"] == "mnist" else (32 if cfg["source"] == "cifar10" else cfg["image_size"])
    return {**info, "task": "classification", "shape": [channels, size, size], "classes": cfg["classes"]}


def run_spec(config: dict, setup_name: str, setup: dict, variant: str, lr: float, seed: int) -> dict:
    results = config["results"]
    spec = {
        "setup": setup_name,
        "seed": seed,
        "dataset": dataset_info(setup["dataset"], config["datasets"][setup["dataset"]], results),
        "model": setup["model"],
        "norm": {"variant": variant, **setup["norm"]},
        "optim": {"lr": lr, **setup["optim"]},
        "augment": setup["augment"],
        "checkpoints": checkpoint_steps(setup["checkpoints"], setup["optim"]["steps"]),
        "log": setup["log"],
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    spec["run"] = f"{setup_name}-{variant}-lr{lr:g}-s{seed}-{digest}"
    spec["runtime"] = config["runtime"]  # not hashed: where a run trains does not change what it is
    return spec


@dataclass
class Plan:
    """Every run the enabled studies need, and which runs and analyses each study uses."""

    runs: dict[str, dict] = field(default_factory=dict)
    study_runs: dict[str, list[str]] = field(default_factory=dict)
    study_analyses: dict[str, dict[str, dict]] = field(default_factory=dict)
    datasets: dict[str, dict] = field(default_factory=dict)


def plan(config: dict) -> Plan:
    """Expand every enabled study into run specs; identical specs collapse into one run."""
    out = Plan()
    for study, cfg in config["studies"].items():
        if not cfg["enabled"]:
            continue
        setup = setup_for(config, study)
        keys = list(cfg["grid"])
        ids = []
        for values in itertools.product(*cfg["grid"].values()):
            point = copy.deepcopy(setup)
            for key, value in zip(keys, values):
                set_dotted(point, key, value)
            for variant, lr, seed in itertools.product(cfg["variants"], cfg["lrs"], cfg["seeds"]):
                spec = run_spec(config, cfg["setup"], point, variant, lr, seed)
                out.runs.setdefault(spec["run"], spec)
                ids.append(spec["run"])
        out.study_runs[study] = list(dict.fromkeys(ids))
        out.study_analyses[study] = {a: cfg[a] for a in ANALYSES if a in cfg}
        out.datasets[setup["dataset"]] = config["datasets"][setup["dataset"]]
    return out


def run_labels(spec: dict, grid_keys: list[str] = ()) -> dict:
    """The columns that identify a run in the study tables."""
    labels = {"variant": spec["norm"]["variant"], "lr": spec["optim"]["lr"], "seed": spec["seed"]}
    for key in grid_keys:
        labels[key.split(".")[-1]] = get_dotted(spec_as_setup(spec), key)
    return labels


def spec_as_setup(spec: dict) -> dict:
    """A run spec seen through setup keys, so grid keys (dotted setup paths) resolve in it."""
    return {"dataset": spec["dataset"]["name"], "model": spec["model"], "norm": spec["norm"],
            "optim": spec["optim"], "augment": spec["augment"], "log": spec["log"]}
