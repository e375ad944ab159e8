"""Config: validation (JSON schema with defaults, then the checks a schema cannot express), and the
expansion of studies into runs and analyses.

A *setup* is a (dataset, model, training) recipe; a *study* names a setup, the variants, learning
rates and seeds it needs, optional `overrides` of the setup, an optional `grid` over more setup
keys, and the figures, claims and analyses it produces. `plan()` turns the studies into runs and
analysis jobs. A run's id ends in a hash of its resolved spec (and numeric precision), so a run
that several studies need is trained once; an analysis is keyed by (run, analysis, hash of its
settings), so two studies that ask for the same analysis of a shared run share its table.

Everything here is plain Python (no torch): the Snakemake process imports it to plan the DAG, and
every bad config stops before any job starts, naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from .architectures import VGG_CONFIGS, VGG_POOLS, normalised_layers
from .catalog import CLAIM_KINDS, FIGURE_KINDS, claim_design_problem, claim_tables, figure_tables
from .variants import VARIANTS
from .errors import ConfigError  # noqa: F401  (raised here; defined without torch)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
ANALYSES = ("ics", "landscape", "curvature")
# MLflow's tracking URI schemes (a plain path is a local file store)
TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")
# the training-set sizes of the torchvision sources (imagefolder: counted on disk)
SOURCE_SIZES = {"cifar10": (50000, 10000, 32, 3), "mnist": (60000, 10000, 28, 1)}
# libyaml's parser when PyYAML has it (the same documents, ~10x faster)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_schema() -> dict:
    """The config schema (a fresh copy: callers may extend it)."""
    return copy.deepcopy(_parsed_schema())


@functools.cache
def _parsed_schema() -> dict:
    # parsed once per process: planning paper.yaml validates ~30 setups against it, and PyYAML's
    # pure-Python parser took ~1 s of `snakemake -n` doing it per setup
    schema = yaml.load(SCHEMA_PATH.read_text(), Loader=_YAML_LOADER)
    # the names live in one place each; the schema takes its enums from there
    schema["definitions"]["variant"]["enum"] = list(VARIANTS)
    schema["definitions"]["figure_kind"]["enum"] = list(FIGURE_KINDS)
    schema["definitions"]["claim_kind"]["enum"] = list(CLAIM_KINDS)
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


def load_config(config: dict | str | Path) -> dict:
    """A validated, defaulted copy of a config dict (or YAML file), with every cross-key check."""
    if not isinstance(config, dict):
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        config = yaml.load(path.read_text(), Loader=_YAML_LOADER) or {}
    config = copy.deepcopy(config)
    check_finite(config)
    schema = load_schema()
    validate(config, schema)
    check_tracking(config["tracking"])
    for name in config["datasets"]:
        check_dataset(config, name)
    for name, study in config["studies"].items():
        if study["enabled"]:
            check_study(config, name, schema)
    return config


# ----------------------------------------------------------------------------------------------
# checks beyond the schema: each raises ConfigError naming the key, the value and what is allowed


def _bad(key: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"config key {key}: {value!r} is not allowed; {allowed}")


def check_finite(node, key: str = "") -> None:
    """No NaN or infinity anywhere (YAML's .nan/.inf pass a schema's `minimum`)."""
    if isinstance(node, dict):
        for k, v in node.items():
            check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_finite(v, f"{key}.{i}")
    elif isinstance(node, float) and not math.isfinite(node):
        raise _bad(key or "(top level)", node, "numbers must be finite")


def check_tracking(tracking: dict) -> None:
    uri = tracking["uri"]
    if uri is None or "://" not in uri and ":" not in uri:
        return  # default store, or a plain path (MLflow: local file store)
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in TRACKING_SCHEMES:
        raise _bad("tracking.uri", uri, f"MLflow URI schemes are {', '.join(TRACKING_SCHEMES)} "
                   f"(null = sqlite:///<results>/mlflow.db)")


def _prepared_path(config: dict, name: str) -> Path:
    return Path(config["results"]) / "data" / f"{name}.pt"


def _count_images(folder: Path) -> tuple[int, int]:
    """(class folders, image files) under an imagefolder split, counted with scandir (fast)."""
    classes = images = 0
    for entry in os.scandir(folder):
        if entry.is_dir():
            classes += 1
            images += sum(1 for f in os.scandir(entry.path)
                          if Path(f.name).suffix.lower() in IMAGE_SUFFIXES)
    return classes, images


def dataset_sizes(config: dict, name: str) -> tuple[int | None, int | None]:
    """(training, test) samples the prepared dataset will hold, where that is known at parse time."""
    cfg = config["datasets"][name]
    source = cfg["source"]
    if source in ("synthetic", "gaussian"):
        return cfg["n_train"], cfg["n_test"]
    if source in SOURCE_SIZES:
        total_train, total_test = SOURCE_SIZES[source][:2]
    else:
        root = Path(cfg["root"] or "")
        if not (root / "train").is_dir() or not (root / "test").is_dir():
            return cfg["n_train"], cfg["n_test"]
        total_train, total_test = _count_images(root / "train")[1], _count_images(root / "test")[1]
    pick = lambda n, total: total if n is None else min(n, total)  # noqa: E731
    return pick(cfg["n_train"], total_train), pick(cfg["n_test"], total_test)


def check_dataset(config: dict, name: str) -> None:
    """Sizes that must be given, sizes that exist, and paths that exist (unless already prepared)."""
    cfg, key = config["datasets"][name], f"datasets.{name}"
    source = cfg["source"]
    if source in ("synthetic", "gaussian"):
        for size in ("n_train", "n_test"):
            if cfg[size] is None:
                raise _bad(f"{key}.{size}", None, f"source {source} generates exactly this many samples: "
                           f"give a positive integer")
    if source in SOURCE_SIZES:
        total_train, total_test, size, channels = SOURCE_SIZES[source]
        for k, total in (("n_train", total_train), ("n_test", total_test)):
            if cfg[k] is not None and cfg[k] > total:
                raise _bad(f"{key}.{k}", cfg[k], f"{source} has {total} samples: use at most {total} or null")
        if "classes" in cfg and cfg["classes"] != 10:
            raise _bad(f"{key}.classes", cfg["classes"], f"{source} has 10 classes")
    if _prepared_path(config, name).is_file() or source in ("synthetic", "gaussian"):
        return  # the raw data is no longer needed (or never was)
    root = cfg["root"]
    if source == "imagefolder":
        folder = Path(root or "")
        if not root or not (folder / "train").is_dir() or not (folder / "test").is_dir():
            raise _bad(f"{key}.root", root, "imagefolder needs a folder holding train/<class>/ and "
                       "test/<class>/ image folders (e.g. the extracted CIFAR-10 JPEGs)")
        for split, n_key in (("train", "n_train"), ("test", "n_test")):
            classes, images = _count_images(folder / split)
            if classes != cfg["classes"]:
                raise _bad(f"{key}.classes", cfg["classes"], f"{folder / split} holds {classes} class "
                           f"folders: set classes: {classes}")
            if cfg[n_key] is not None and cfg[n_key] > images:
                raise _bad(f"{key}.{n_key}", cfg[n_key], f"{folder / split} holds {images} images")
    elif source in SOURCE_SIZES and not cfg["download"]:
        if not root or not Path(root).is_dir():
            raise _bad(f"{key}.root", root, f"with download: false, root must be an existing folder "
                       f"holding {source} (or set download: true where the network allows)")


def check_setup(config: dict, setup: dict, key: str) -> None:
    """Model/dataset agreement and every size that indexes something in the data."""
    model, optim = setup["model"], setup["optim"]
    data_key = f"datasets.{setup['dataset']}"
    data = config["datasets"][setup["dataset"]]
    regression = data["source"] == "gaussian"
    if model["arch"] == "dln" and not regression:
        raise _bad(f"{key}.model.arch", "dln", f"the deep linear network needs a gaussian dataset "
                   f"({data_key} is {data['source']})")
    if model["arch"] != "dln" and regression:
        raise _bad(f"{key}.model.arch", model["arch"], f"{data_key} is a gaussian regression dataset: "
                   f"use arch dln, or an image dataset")
    if model["arch"] == "vgg":
        if model["depth"] not in VGG_CONFIGS:
            raise _bad(f"{key}.model.depth", model["depth"],
                       f"VGG depths are {', '.join(map(str, VGG_CONFIGS))}")
        size = SOURCE_SIZES[data["source"]][2] if data["source"] in SOURCE_SIZES else data["image_size"]
        if size < 2 ** VGG_POOLS:
            raise _bad(f"{data_key}.image_size", size, f"the VGG pools {VGG_POOLS} times: images must be at "
                       f"least {2 ** VGG_POOLS} pixels wide (use arch mlp for smaller images)")
    n_train, _ = dataset_sizes(config, setup["dataset"])
    if optim["batch_size"] is not None and n_train is not None and optim["batch_size"] > n_train:
        raise _bad(f"{key}.optim.batch_size", optim["batch_size"],
                   f"{data_key} has {n_train} training samples: use at most {n_train}, or null (full batch)")


def check_study(config: dict, name: str, schema: dict | None = None) -> None:
    """The study's setup (merged overrides and every grid point) and what the study asks of it."""
    key = f"studies.{name}"
    cfg = config["studies"][name]
    for point, where in setups_of(config, name, schema):
        check_setup(config, point, where)
        layers = normalised_layers(point["model"])
        for i, layer in enumerate(cfg["layers"]):
            if layer > layers:
                raise _bad(f"{key}.layers.{i}", layer, f"the {point['model']['arch']} of this study has "
                           f"{layers} normalised layers (1..{layers})")
        saved = checkpoint_steps(point["checkpoints"], point["optim"]["steps"])
        n_train, _ = dataset_sizes(config, point["dataset"])
        for analysis in ANALYSES:
            if analysis not in cfg:
                continue
            settings = cfg[analysis]
            for i, step in enumerate(settings["steps"] or []):
                if step not in saved:
                    raise _bad(f"{key}.{analysis}.steps.{i}", step, f"analyses read checkpoints: the "
                               f"runs save steps {saved} (setups.<setup>.checkpoints)")
            if settings["batch_size"] is not None and n_train is not None and settings["batch_size"] > n_train:
                raise _bad(f"{key}.{analysis}.batch_size", settings["batch_size"],
                           f"the training set has {n_train} samples: use at most {n_train}, or null")
    if "landscape" in cfg and cfg["landscape"]["eta_min"] >= cfg["landscape"]["eta_max"]:
        raise _bad(f"{key}.landscape.eta_min", cfg["landscape"]["eta_min"],
                   f"it must be below eta_max ({cfg['landscape']['eta_max']!r})")
    tables = set(ANALYSES) & {a for a in ANALYSES if a in cfg}
    for field_, kinds, needs in (("figures", cfg["figures"], figure_tables),
                                 ("claims", cfg["claims"], claim_tables)):
        for i, kind in enumerate(kinds):
            missing = [t for t in needs(kind) if t in ANALYSES and t not in tables]
            if missing:
                raise _bad(f"{key}.{field_}.{i}", kind, f"it reads the {missing[0]} analysis: add a "
                           f"`{missing[0]}:` block to the study (e.g. {missing[0]}: {{}})")
    for i, kind in enumerate(cfg["figures"]):
        axis = {"accuracy_vs_init_scale": "model.init_scale", "accuracy_vs_dropout": "model.dropout"}.get(kind)
        if axis and len(cfg["grid"].get(axis, [])) < 2:
            raise _bad(f"{key}.figures.{i}", kind, f"it plots against {axis}: give the study "
                       f"grid: {{{axis}: [two or more values]}}")
    for i, kind in enumerate(cfg["claims"]):
        problem = claim_design_problem(kind, cfg, setup_for(config, name, schema))
        if problem:
            raise _bad(f"{key}.claims.{i}", kind, problem)


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
        raise _bad(f"studies.{study}.setup", cfg["setup"], f"defined setups: {', '.join(config['setups'])}")
    setup = deep_merge(config["setups"][cfg["setup"]], cfg["overrides"])
    setup_schema = {**schema["definitions"]["setup"], "definitions": schema["definitions"]}
    validate(setup, setup_schema, root=f"studies.{study}.overrides")
    if setup["dataset"] not in config["datasets"]:
        raise _bad(f"setups.{cfg['setup']}.dataset", setup["dataset"],
                   f"defined datasets: {', '.join(config['datasets'])}")
    return setup


def setups_of(config: dict, study: str, schema: dict | None = None) -> list[tuple[dict, str]]:
    """Every grid point of the study's setup, validated, with the config key that names it."""
    schema = schema or load_schema()
    setup = setup_for(config, study, schema)
    setup_schema = {**schema["definitions"]["setup"], "definitions": schema["definitions"]}
    grid = config["studies"][study]["grid"]
    for key in grid:
        try:
            get_dotted(setup, key)
        except (KeyError, TypeError):
            raise ConfigError(f"config key studies.{study}.grid.{key}: no such setup key; grid keys "
                              f"are dotted paths into the setup such as model.init_scale") from None
    points = []
    for values in itertools.product(*grid.values()):
        point = copy.deepcopy(setup)
        for key, value in zip(grid, values):
            set_dotted(point, key, value)
        where = " ".join(f"{k}={v!r}" for k, v in zip(grid, values))
        root = f"studies.{study}.grid[{where}]" if grid else f"studies.{study}"
        validate(point, setup_schema, root=root)
        points.append((point, root if grid else f"setups.{config['studies'][study]['setup']}"))
    return points


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
    channels, size = (SOURCE_SIZES[cfg["source"]][3], SOURCE_SIZES[cfg["source"]][2]) \
        if cfg["source"] in SOURCE_SIZES else (cfg["channels"], cfg["image_size"])
    return {**info, "task": "classification", "shape": [channels, size, size], "classes": cfg["classes"]}


def short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def run_spec(config: dict, setup_name: str, setup: dict, variant: str, lr: float, seed: int) -> dict:
    results = config["results"]
    dataset = dataset_info(setup["dataset"], config["datasets"][setup["dataset"]], results)
    optim = {"lr": lr, **setup["optim"]}
    if optim["loss_reduction"] is None:  # the papers': summed squared error (DLN), mean cross-entropy
        optim["loss_reduction"] = "sum" if dataset["task"] == "regression" else "mean"
    spec = {
        "setup": setup_name,
        "seed": seed,
        "dataset": dataset,
        "model": setup["model"],
        "norm": {"variant": variant, **setup["norm"]},
        "optim": optim,
        "augment": setup["augment"],
        "checkpoints": checkpoint_steps(setup["checkpoints"], setup["optim"]["steps"]),
        "log": setup["log"],
    }
    # Precision changes the numbers, so it is part of what a run is (a tf32 checkpoint is never
    # resumed as fp32); where a run trains (device, threads, layout) is not.
    numerics = {"precision": config["runtime"]["precision"]}
    if config["runtime"]["compile"] == "on":  # compiled kernels round differently
        numerics["compile"] = "on"
    digest = short_hash({**spec, **numerics})
    spec["run"] = f"{setup_name}-{variant}-lr{lr:g}-s{seed}-{digest}"
    # how a job process starts is not the job's business (and must not rerun every job when changed)
    spec["runtime"] = {k: v for k, v in config["runtime"].items() if k != "fork_server"}
    return spec


@dataclass
class Plan:
    """Every run and analysis the enabled studies need, and which of them each study reads."""

    runs: dict[str, dict] = field(default_factory=dict)
    study_runs: dict[str, list[str]] = field(default_factory=dict)
    # study -> analysis -> its settings hash (the analysis tables are {run}/{analysis}-{hash}.csv)
    study_analyses: dict[str, dict[str, str]] = field(default_factory=dict)
    # settings hash -> settings, for every analysis setting some study uses
    analysis_settings: dict[str, dict] = field(default_factory=dict)

    def analysis_jobs(self) -> set[tuple[str, str, str]]:
        """Every (run, analysis, settings hash) some study needs: each is computed once."""
        return {(run, analysis, digest) for study, analyses in self.study_analyses.items()
                for analysis, digest in analyses.items() for run in self.study_runs[study]}


def plan(config: dict) -> Plan:
    """Expand every enabled study into run specs and analysis jobs; identical ones collapse."""
    out = Plan()
    for study, cfg in config["studies"].items():
        if not cfg["enabled"]:
            continue
        ids = []
        for point, _ in setups_of(config, study):
            for variant, lr, seed in itertools.product(cfg["variants"], cfg["lrs"], cfg["seeds"]):
                spec = run_spec(config, cfg["setup"], point, variant, lr, seed)
                out.runs.setdefault(spec["run"], spec)
                ids.append(spec["run"])
        out.study_runs[study] = list(dict.fromkeys(ids))
        out.study_analyses[study] = {}
        for analysis in ANALYSES:
            if analysis in cfg:
                settings = {"analysis": analysis, **cfg[analysis]}
                digest = short_hash(settings)
                out.analysis_settings[digest] = settings
                out.study_analyses[study][analysis] = digest
    return out
