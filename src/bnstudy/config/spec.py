"""The run spec: the resolved settings of one training run, as frozen dataclasses.

`bnstudy.config.plan` builds it once per run from the validated config; training, the models and the
analyses read it by attribute (`spec.optim.lr`, `spec.log.eval_every`), so a misspelt name fails
where it is written rather than as a KeyError deep in a job. On disk and on the Snakemake command
line it is JSON (`spec.json`, a checkpoint's `spec`) with exactly the keys of docs/architecture.md;
`to_dict()` and `from_dict()` convert, and `from_dict` names what a stored spec lacks.

Torch-free: the Snakemake process builds specs while it plans the DAG.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigError
from .variants import VARIANTS, normaliser_settings

# Keys added after runs were first planned enter a spec (and its run id) only when they differ
# from these defaults, so that runs planned before the key existed keep their ids and results.
_ADDED_FIELDS = {"optim.loss": "cross_entropy", "optim.train_only": "all", "model.hidden_layers": None}


def added() -> dict:
    """Every added key -> its default. A normaliser's own settings (norm.group_size) are such keys
    by construction, read from the records at call time (`bnstudy.config.variants`), so that one
    registered from outside the package (`bnstudy.models.norms.register`) counts too."""
    return {**{f"norm.{key}": schema["default"] for key, (_, schema) in normaliser_settings().items()},
            **_ADDED_FIELDS}


def _added(key: str):
    return dataclasses.field(default=_ADDED_FIELDS[key], metadata={"added": True})


# Settings that mean something for some runs only: a run's spec holds them only where they apply,
# so that runs they cannot change (a BatchNorm run on a grid over GroupNorm's group size) are one
# run, not one per value.
_APPLIES_FIELDS = {
    # a regression dataset (the DLN) keeps its own squared error whatever optim.loss says
    "optim.loss": lambda spec: spec["dataset"]["task"] == "classification",
    "model.hidden_layers": lambda spec: spec["model"]["arch"] == "mlp"}


def applies(dotted: str, spec: Mapping) -> bool:
    """Whether the setting `dotted` means something for the run of `spec` (its JSON form): a
    normaliser's own setting only where the run's variant uses that normaliser."""
    owners = {f"norm.{key}": norm for key, (norm, _) in normaliser_settings().items()}
    if dotted in owners:
        return VARIANTS[spec["norm"]["variant"]].norm == owners[dotted]
    return _APPLIES_FIELDS.get(dotted, lambda _: True)(spec)


# optim.train_only (Frankle, Schwab & Morcos 2021, "Training BatchNorm and Only BatchNorm"): which
# parameters SGD may change, every other one staying bit for bit at its random initialisation.
# "all" trains everything (the default: such runs keep their ids); "bn_affine" only the
# normalisers' affine weight and bias (gamma, beta; the output layer too stays frozen, as in their
# main experiments); "random_matched" as many scalars as bn_affine trains, drawn uniformly from every
# other parameter (conv/linear weights and biases, the output layer) with a generator seeded by the
# run's seed, gamma and beta frozen (`bnstudy.models.networks.training_masks`).
TRAIN_ONLY = ("all", "bn_affine", "random_matched")


def has_affine(variant: str) -> bool:
    """Whether the variant's normaliser has per-channel affine parameters (gamma, beta): BatchNorm
    (noisy or not), lp, LayerNorm, GroupNorm, InstanceNorm. Not the standard network (no
    normaliser) nor WeightNorm (its gain is part of the layer, not a normaliser's affine step)."""
    return VARIANTS[variant].norm not in (None, "weight")


def without_added_defaults(spec: dict) -> dict:
    """`spec` (the JSON form) without the settings that do not apply to it and without the added
    keys that are at their default (in place)."""
    for dotted, default in added().items():
        block, name = dotted.split(".")
        if not applies(dotted, spec) or spec.get(block, {}).get(name, default) == default:
            spec.get(block, {}).pop(name, None)
    return spec


def lookup(tree: Mapping, dotted: str):
    """The value at a dotted key such as "norm.group_size" in a nested mapping (a run spec's JSON
    form, a setup, a config): the one walk over dotted keys. KeyError(dotted) if a part is missing."""
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def assign(tree: dict, dotted: str, value) -> None:
    """Set the value at a dotted key of a nested dict (its parents must exist)."""
    *parents, last = dotted.split(".")
    node = lookup(tree, ".".join(parents)) if parents else tree
    node[last] = value


def setting(spec: dict, dotted: str):
    """A spec's value at a dotted key, the default of an added key where it applies but was left
    out, NaN where it does not apply; KeyError if a key every spec has is missing."""
    try:
        return lookup(spec, dotted)
    except KeyError:
        defaults = added()
        if dotted in defaults:
            return defaults[dotted] if applies(dotted, spec) else float("nan")
        raise


@dataclass(frozen=True)
class DataSpec:
    """What a run needs to know of its dataset before it is prepared (`datasets.<name>`)."""

    name: str
    path: str                            # the prepared tensor file, results/data/<name>.pt
    task: str                            # "classification" or "regression" (the DLN)
    classes: int                         # 0 for regression
    shape: tuple[int, ...] | None = None  # classification: (channels, height, width)
    dim: int | None = None               # regression: the dimension of x and A x


@dataclass(frozen=True)
class ModelSpec:
    """The network (`setups.<setup>.model`; each key is described in the config schema)."""

    arch: str
    depth: int
    width: float
    head: tuple[int, ...]
    hidden: tuple[int, ...]
    activation: str
    init: str
    init_scale: float
    dropout: float
    bias: bool
    norm_last: bool
    hidden_layers: int | None = _added("model.hidden_layers")  # mlp: `hidden[0]` repeated (a depth grid)


@dataclass(frozen=True)
class NoiseSpec:
    """Algorithm 1's constants (Santurkar et al. 2018, section 2)."""

    n_mu: float
    n_sigma: float
    r_mu: float
    r_sigma: float


@dataclass(frozen=True)
class NormSpec:
    """The normalisation variant (a row of `bnstudy.config.variants.VARIANTS`) and its settings."""

    variant: str
    eps: float
    lp_scale: str
    noise: NoiseSpec
    # a normaliser's own `norm.<key>` settings (its record's `settings`, e.g. GroupNorm's
    # group_size) as sorted (key, value) pairs, only those away from their defaults: in the JSON
    # form they sit flat in the norm block, as every other key
    settings: tuple[tuple[str, object], ...] = dataclasses.field(
        default=(), metadata={"flat": lambda: set(normaliser_settings())})

    def setting(self, key: str):
        """A normaliser setting's value: this run's, else the default on its normaliser's record."""
        defaults = normaliser_settings()
        if key not in defaults:
            raise KeyError(f"norm.{key}: no normaliser declares this setting (known: {sorted(defaults)})")
        return dict(self.settings).get(key, defaults[key][1]["default"])


@dataclass(frozen=True)
class OptimSpec:
    """Plain SGD: the learning rate, the schedule length, the loss and what a step averages over."""

    lr: float
    steps: int
    batch_size: int | None       # None = full batch (gradient descent)
    momentum: float
    weight_decay: float
    loss_reduction: str          # "sum" or "mean" over a batch's samples
    loss: str = _added("optim.loss")  # classification: "cross_entropy" or "mse" (models.loss_fn)
    train_only: str = _added("optim.train_only")  # one of TRAIN_ONLY: what SGD may change (models.training_masks)


@dataclass(frozen=True)
class AugmentSpec:
    crop: int
    flip: bool


@dataclass(frozen=True)
class LogSpec:
    """The logging schedule: what training records, how often, on how many samples."""

    train_every: int
    eval_every: int
    layers_every: int
    eval_samples: int
    units: int
    final_test_samples: int | None  # None = the whole test set


@dataclass(frozen=True)
class RuntimeSpec:
    """Where and how a job computes. Only precision (and compile) change the numbers, so only
    they enter the run id; device, threads and memory layout do not."""

    device: str
    precision: str
    channels_last: str
    threads: int
    compile: str


@dataclass(frozen=True)
class RunSpec:
    """One training run. `run` is `{setup}-{variant}-lr{lr}-s{seed}-{hash8}` (bnstudy.config.plan)."""

    run: str
    setup: str
    seed: int
    dataset: DataSpec
    model: ModelSpec
    norm: NormSpec
    optim: OptimSpec
    augment: AugmentSpec
    checkpoints: tuple[int, ...]  # the steps whose weights are saved (analyses read them)
    log: LogSpec
    runtime: RuntimeSpec

    def __post_init__(self):
        # bn_affine trains the normalisers' gamma and beta, random_matched as many other scalars:
        # a variant without them would train nothing, or match a count of zero
        mode = self.optim.train_only
        if mode not in TRAIN_ONLY:
            raise ConfigError(f"config key optim.train_only: {mode!r} is not allowed; use one of "
                              f"{', '.join(TRAIN_ONLY)} (run {self.run})")
        if mode != "all" and not has_affine(self.norm.variant):
            raise ConfigError(f"config key optim.train_only: {mode!r} is not allowed with variant "
                              f"{self.norm.variant} (run {self.run}): it has no normaliser affine parameters "
                              f"(gamma, beta) to train or to match; use a variant with an affine normaliser "
                              f"(batchnorm, layernorm, groupnorm, ...) or train_only: all")

    def to_dict(self) -> dict:
        """The JSON form: lists for tuples, and no dataset key that does not apply to the task."""
        return _plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def updated(self, changes: dict) -> "RunSpec":
        """A copy with dotted keys replaced, e.g. {"optim.steps": 5, "checkpoints": [5]}
        (benchmarks and tests derive variants of a planned run this way)."""
        data = self.to_dict()
        for dotted, value in changes.items():
            *parents, last = dotted.split(".")
            node = lookup(data, ".".join(parents)) if parents else data
            if last not in node and dotted not in added():  # an added key at its default is left out
                raise ConfigError(f"run spec has no key {dotted!r}")
            assign(data, dotted, value)
        return RunSpec.from_dict(data, f"run {self.run} with {sorted(changes)}")

    @classmethod
    def from_dict(cls, data: dict, source: str = "run spec") -> "RunSpec":
        """Build from the JSON form; a missing or unknown key is a ConfigError naming `source`."""
        return _build(cls, data, source)

    @classmethod
    def from_json(cls, text: str, source: str = "run spec") -> "RunSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{source}: not JSON ({err})") from None
        return cls.from_dict(data, source)


# ---------------------------------------------------------------------------------------------


def _plain(value):
    if dataclasses.is_dataclass(value):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and isinstance(value, DataSpec) and f.name in ("shape", "dim"):
                continue  # a regression dataset has no image shape, an image dataset no dim
            if f.metadata.get("added") and item == f.default:
                continue  # a key added later, at its default: not part of the spec (see added())
            if "flat" in f.metadata:
                defaults = added()  # pairs flat in the parent block, those away from their defaults
                out.update((key, _plain(v)) for key, v in item if v != defaults.get(f"norm.{key}"))
                continue
            out[f.name] = _plain(item)
        return out
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _build(cls, data, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    flat = {f.name: f.metadata["flat"]() for f in dataclasses.fields(cls) if "flat" in f.metadata}
    names = {f.name for f in dataclasses.fields(cls) if f.name not in flat}
    unknown = sorted(set(data) - names - set().union(*flat.values()))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (known: {sorted(names.union(*flat.values()))})")
    values = {name: tuple(sorted((key, data[key]) for key in keys if key in data)) for name, keys in flat.items()}
    for f in dataclasses.fields(cls):
        if f.name in flat:
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing key {f.name!r}")
            continue
        values[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
    return cls(**values)


def _convert(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    return value
