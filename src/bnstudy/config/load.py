"""Config: read a YAML config, validate it against the schema (filling defaults), then run the
checks a schema cannot express, so that every bad config stops before any job starts, naming the
key, the bad value and what is allowed. The expansion of the studies into runs is `bnstudy.config.plan`.

`parse_config` checks everything the config stage knows: datasets, setups, variants, analyses and
figures. What a study's claims ask of it (their tables, design and seeds) the claim records check
(`bnstudy.claims.check`); `bnstudy.configure.load_config` runs both, and is what the entry points
call.

Plain Python (no torch): the Snakemake process imports it to plan the DAG.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

from .architectures import VGG_CONFIGS, VGG_POOLS, layer_widths, normalised_layers, resnet_depth_ok
from .variants import VARIANTS
from .catalog import ANALYSES, FIGURE_KINDS, figure_tables
from ..errors import ConfigError
from .plan import SOURCE_SIZES, checkpoint_steps, setups_of
from .schema import load_schema, read_yaml, validate

# MLflow's tracking URI schemes (a plain path is a local file store)
TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def parse_config(config: dict | str | Path, schema: dict | None = None) -> dict:
    """A validated, defaulted copy of a config dict (or YAML file), with every cross-key check of
    the config stage (the claims' own checks: `bnstudy.configure.load_config`)."""
    if not isinstance(config, dict):
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        config = read_yaml(path)
    config = copy.deepcopy(config)
    check_finite(config)
    schema = schema or load_schema()
    validate(config, schema)
    check_tracking(config["tracking"])
    for study in config["studies"].values():  # the config-wide gates under each study's own
        study["claim_rules"] = {**config["claim_rules"], **(study.get("claim_rules") or {})}
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


def _prepared_from_this_source(config: dict, name: str) -> bool:
    """Whether results/data/<name>.pt exists and was made from the configured source, as the
    record rule prepare_data writes beside it (<name>.json) says; `download` is how the data is
    fetched, not which. A file from before records were written is taken as it is."""
    if not _prepared_path(config, name).is_file():
        return False
    try:
        made_from = json.loads(_prepared_path(config, name).with_suffix(".json").read_text())["prepared_from"]
    except FileNotFoundError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False
    wanted = {k: v for k, v in config["datasets"][name].items() if k != "download"}
    return {k: v for k, v in made_from.items() if k != "download"} == wanted


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
    # the raw data is no longer needed (prepared from this very source) or never was; a changed
    # source (path, subset, size) is prepared again, so its path is checked here, before any job
    if source in ("synthetic", "gaussian") or _prepared_from_this_source(config, name):
        return
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
    if model.get("hidden_layers") is not None:
        if model["arch"] != "mlp":
            raise _bad(f"{key}.model.hidden_layers", model["hidden_layers"],
                       f"only arch mlp has hidden layers to repeat ({model['arch']}: use model.depth)")
        if len(set(model["hidden"])) > 1:
            raise _bad(f"{key}.model.hidden_layers", model["hidden_layers"],
                       f"it repeats one width, but model.hidden lists {model['hidden']}: give one width, "
                       f"e.g. hidden: [{model['hidden'][0]}]")
    if model["arch"] == "resnet" and not resnet_depth_ok(model["depth"]):
        raise _bad(f"{key}.model.depth", model["depth"], "CIFAR ResNets have depth 6n + 2 (20, 32, 44, 56, 110)")
    if model["arch"] == "resnet" and regression:
        raise _bad(f"{key}.model.arch", "resnet", f"{data_key} is a gaussian regression dataset")
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
        check_variants(config, name, cfg, point, where)
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
    if "surface" in cfg and cfg["surface"]["points"] % 2 == 0:
        raise _bad(f"{key}.surface.points", cfg["surface"]["points"],
                   "use an odd number, so that the checkpoint itself is a grid point")
    if "landscape" in cfg and cfg["landscape"]["eta_min"] >= cfg["landscape"]["eta_max"]:
        raise _bad(f"{key}.landscape.eta_min", cfg["landscape"]["eta_min"],
                   f"it must be below eta_max ({cfg['landscape']['eta_max']!r})")
    for i, kind in enumerate(cfg["figures"]):
        check_reads(name, cfg, f"figures.{i}", kind, figure_tables(kind))
        axis = FIGURE_KINDS[kind].axis
        if axis and len(cfg["grid"].get(axis, [])) < 2:
            raise _bad(f"{key}.figures.{i}", kind, f"it plots against {axis}: give the study "
                       f"grid: {{{axis}: [two or more values]}}")


def check_reads(name: str, cfg: dict, field_: str, kind: str, tables) -> None:
    """A figure or claim kind reads only analyses its study runs (`field_`: e.g. figures.0)."""
    missing = [t for t in tables if t in ANALYSES and t not in cfg]
    if missing:
        raise _bad(f"studies.{name}.{field_}", kind, f"it reads the {missing[0]} analysis: add a "
                   f"`{missing[0]}:` block to the study (e.g. {missing[0]}: {{}})")


def check_variants(config: dict, name: str, cfg: dict, setup: dict, where: str) -> None:
    """Each variant fits the study's network: InstanceNorm needs spatial positions in every
    normalised layer, GroupNorm's group size must divide every layer wider than a group."""
    model = setup["model"]
    dim = config["datasets"][setup["dataset"]].get("dim")
    widths = layer_widths({**model, "dim": dim})
    for i, variant in enumerate(cfg["variants"]):
        v = VARIANTS[variant]
        if v.conv_only and (model["arch"] in ("mlp", "dln") or model["head"]):
            raise _bad(f"studies.{name}.variants.{i}", variant, "it normalises each channel over its spatial "
                       "positions: it needs a network whose normalised layers are all convolutions (vgg without "
                       "a head, or resnet)")
        check = v.normaliser.check
        problem = check(widths, setup["norm"]) if check else None
        if problem:
            keys = sorted(v.normaliser.settings)
            key = f"{where}.norm.{keys[0]}" if keys else f"studies.{name}.variants.{i}"
            value = setup["norm"][keys[0]] if keys else variant
            raise _bad(key, value, f"the {model['arch']}'s {problem}")
