"""Studies -> runs and analyses: what a validated config asks the workflow to do.

A *setup* is a (dataset, model, training) recipe; a *study* names a setup, the variants, learning
rates and seeds it needs, optional `overrides` of the setup, an optional `grid` over more setup
keys, and the analyses, figures and claims it produces. `plan()` expands every enabled study into
run specs (`bnstudy.config.spec.RunSpec`) and analysis tables. A run's id ends in a hash of its resolved
settings (and numeric precision), so a run that several studies need is trained once; an analysis
table is keyed by (run, analysis, hash of its settings), so two studies that ask for the same
analysis of a shared run read one table, and one job per run computes all of its tables.

Plain Python (no torch): the Snakemake process imports it to plan the DAG.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field

from .catalog import ANALYSES
from ..errors import ConfigError
from .schema import load_schema, setup_schema, validate
from .spec import RunSpec, applies, assign, lookup, without_added_defaults

# the training-set sizes, image sizes and channels of the torchvision sources
SOURCE_SIZES = {"cifar10": (50000, 10000, 32, 3), "mnist": (60000, 10000, 28, 1)}


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def leaves(d: dict, prefix: str = "") -> dict:
    """{dotted key: value} of every non-dict value in a nested dict."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def setup_for(config: dict, study: str, schema: dict | None = None) -> dict:
    """The study's setup with its overrides merged, validated as a setup."""
    schema = schema or load_schema()
    cfg = config["studies"][study]
    if cfg["setup"] not in config["setups"]:
        raise ConfigError(f"config key studies.{study}.setup: {cfg['setup']!r} is not allowed; defined "
                          f"setups: {', '.join(config['setups'])}")
    setup = deep_merge(config["setups"][cfg["setup"]], cfg["overrides"])
    validate(setup, setup_schema(schema), root=f"studies.{study}.overrides")
    if setup["dataset"] not in config["datasets"]:
        raise ConfigError(f"config key setups.{cfg['setup']}.dataset: {setup['dataset']!r} is not "
                          f"allowed; defined datasets: {', '.join(config['datasets'])}")
    return setup


def setups_of(config: dict, study: str, schema: dict | None = None) -> list[tuple[dict, str]]:
    """Every grid point of the study's setup, validated, with the config key that names it."""
    schema = schema or load_schema()
    setup = setup_for(config, study, schema)
    grid = config["studies"][study]["grid"]
    for key in grid:
        try:
            lookup(setup, key)
        except (KeyError, TypeError):
            raise ConfigError(f"config key studies.{study}.grid.{key}: no such setup key; grid keys "
                              f"are dotted paths into the setup such as model.init_scale") from None
    points = []
    for values in itertools.product(*grid.values()):
        point = copy.deepcopy(setup)
        for key, value in zip(grid, values):
            assign(point, key, value)
        where = " ".join(f"{k}={v!r}" for k, v in zip(grid, values))
        root = f"studies.{study}.grid[{where}]" if grid else f"studies.{study}"
        validate(point, setup_schema(schema), root=root)
        points.append((point, root if grid else f"setups.{config['studies'][study]['setup']}"))
    return points


def checkpoint_steps(schedule: dict, steps: int) -> list[int]:
    """Dense early (every `dense_every` up to `dense_until`), then every `every`, and the steps
    listed in `at` (within the run); always 0 and the end."""
    dense = range(0, min(schedule["dense_until"], steps) + 1, schedule["dense_every"])
    sparse = range(0, steps + 1, schedule["every"])
    extra = {step for step in schedule.get("at", ()) if step <= steps}
    return sorted(set(dense) | set(sparse) | extra | {0, steps})


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


def run_spec(config: dict, setup_name: str, setup: dict, variant: str, lr: float, seed: int) -> RunSpec:
    """The resolved settings of one run; its id hashes everything that changes its numbers."""
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
    spec = without_added_defaults(copy.deepcopy(spec))
    # Precision changes the numbers, so it is part of what a run is (a tf32 checkpoint is never
    # resumed as fp32); where a run trains (device, threads, layout) is not.
    numerics = {"precision": config["runtime"]["precision"]}
    if config["runtime"]["compile"] == "on":  # compiled kernels round differently
        numerics["compile"] = "on"
    digest = short_hash({**spec, **numerics})
    spec["run"] = f"{setup_name}-{variant}-lr{lr:g}-s{seed}-{digest}"
    spec["runtime"] = dict(config["runtime"])
    return RunSpec.from_dict(spec, f"run {spec['run']}")


def display_name(spec: RunSpec, setup: dict, base: dict) -> str:
    """What a person reads in the MLflow UI: setup, variant, lr and seed, then every setup value
    in which this run differs from its setup as configured (a study's overrides and grid values),
    e.g. `vgg batchnorm lr=0.1 seed=0 init_scale=0.25`."""
    name = f"{spec.setup} {spec.norm.variant} lr={spec.optim.lr:g} seed={spec.seed}"
    mine, theirs = leaves(setup), leaves(base)
    as_dict = spec.to_dict()
    changed = [key for key in mine if mine[key] != theirs.get(key)
               and applies(key, as_dict)]
    short = {key: key.rsplit(".", 1)[-1] for key in changed}
    ambiguous = {s for s in short.values() if list(short.values()).count(s) > 1}
    for key in changed:
        label = key if short[key] in ambiguous else short[key]
        value = mine[key]
        name += f" {label}={value:g}" if isinstance(value, float) else f" {label}={json.dumps(value)}" \
            if isinstance(value, (list, dict)) else f" {label}={value}"
    return name


@dataclass
class Plan:
    """Every run and analysis the enabled studies need, and which of them each study reads."""

    runs: dict[str, RunSpec] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # run id -> display name (MLflow)
    study_runs: dict[str, list[str]] = field(default_factory=dict)
    # study -> analysis -> its settings hash (the analysis tables are {run}/{analysis}-{hash}.csv)
    study_analyses: dict[str, dict[str, str]] = field(default_factory=dict)
    # settings hash -> settings, for every analysis setting some study uses
    analysis_settings: dict[str, dict] = field(default_factory=dict)

    def run_analyses(self, run: str) -> list[tuple[str, str]]:
        """(analysis, settings hash) of every table some study needs of `run`, each once."""
        return sorted({(analysis, digest) for study, analyses in self.study_analyses.items()
                       if run in self.study_runs[study] for analysis, digest in analyses.items()})

    def analysed_runs(self) -> list[str]:
        """The runs with at least one analysis table to compute."""
        return [run for run in self.runs if self.run_analyses(run)]


def plan(config: dict) -> Plan:
    """Expand every enabled study into run specs and analysis jobs; identical ones collapse."""
    out = Plan()
    for study, cfg in config["studies"].items():
        if not cfg["enabled"]:
            continue
        ids = []
        base = config["setups"][cfg["setup"]]
        for point, _ in setups_of(config, study):
            for variant, lr, seed in itertools.product(cfg["variants"], cfg["lrs"], cfg["seeds"]):
                spec = run_spec(config, cfg["setup"], point, variant, lr, seed)
                out.runs.setdefault(spec.run, spec)
                out.names.setdefault(spec.run, display_name(spec, point, base))
                ids.append(spec.run)
        out.study_runs[study] = list(dict.fromkeys(ids))
        out.study_analyses[study] = {}
        for analysis in ANALYSES:
            if analysis in cfg:
                settings = {"analysis": analysis, **cfg[analysis]}
                digest = short_hash(settings)
                out.analysis_settings[digest] = settings
                out.study_analyses[study][analysis] = digest
    return out
