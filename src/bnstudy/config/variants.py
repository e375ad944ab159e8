"""The normalisation variants of both papers, as a table (no torch: the config schema and the
Snakemake process read it without importing the training stack).

A variant is a row: which normaliser follows each conv/linear layer, and whether Algorithm 1's
distributional noise (Santurkar et al. 2018, section 2) follows the normaliser. Adding a variant
is one row here; a new normaliser is one `Normaliser` record here (what the config stage must know:
its settings, where it fits) plus its module builder in `bnstudy.models.norms.NORMALISERS`.

    standard         no normalisation
    batchnorm        BatchNorm (Ioffe & Szegedy 2015)
    noisy_batchnorm  BatchNorm, then Algorithm 1's noise (Santurkar et al. 2018, Fig. 2)
    standard_noise   the same noise on the un-normalised network: the draws as they are, on the
                     raw pre-activations (the literal reading of section 2.1)
    standard_unit_noise  the same noise relative to each unit's spread: applied in the unit's
                     standardised coordinates, as it is after BatchNorm (the other reading)
    l1, l2, linf     lp normalisation (Santurkar et al. 2018, section 3.3)
    layernorm        LayerNorm: each sample over all its channels (and positions) (Ba et al. 2016)
    groupnorm        GroupNorm: each sample over groups of `norm.group_size` channels (Wu & He 2018)
    instancenorm     InstanceNorm: each sample and channel over its positions (conv layers only)
    weightnorm       WeightNorm: each filter's weight reparametrised as g v / ||v||, no activation
                     normaliser (Salimans & Kingma 2016)
    noisy_groupnorm  GroupNorm, then Algorithm 1's noise
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Normaliser:
    """What planning and the config checks know of a normaliser; its module is built by
    `bnstudy.models.norms.NORMALISERS` under the same key (a test checks the two agree).

    `settings`: the `norm.<key>` config keys only this normaliser reads (JSON-schema properties
    with defaults): the schema offers them, and a run's spec (so its id) holds them only when its
    variant uses this normaliser and the value is not the default (`bnstudy.config.spec.added`);
    its module builder reads them with `NormSpec.setting(key)`.
    `check(widths, norm)`: why the network's normalised layers of `widths` units cannot take this
    normaliser with the setup's `norm` block (None if they can)."""

    per_sample: bool = False  # normalises each sample on its own: no batch or running statistics
    conv_only: bool = False   # needs spatial positions (over one unit of a linear layer: nothing)
    settings: Mapping[str, dict] = field(default_factory=dict)
    check: Callable[[Sequence[int], Mapping], str | None] | None = None


def _group_size_problem(widths: Sequence[int], norm: Mapping) -> str | None:
    group = norm["group_size"]
    bad = sorted({w for w in widths if w > group and w % group})
    return (f"layers of {bad} units do not split into groups of {group}: use a group size that divides them"
            if bad else None)


GROUP_SIZE = {"type": "integer", "minimum": 1, "default": 8,
              "description": "groupnorm: channels per group (1 group when a layer is narrower; it must divide "
                             "every wider layer's width). LayerNorm is one group, InstanceNorm one channel per group"}

# the normalisers a variant can name; None is no normaliser
NORMALISER_RECORDS: dict[str | None, Normaliser] = {
    None: Normaliser(),
    "batch": Normaliser(),                                 # Ioffe & Szegedy 2015
    "lp": Normaliser(),                                    # Santurkar et al. 2018, section 3.3
    "layer": Normaliser(per_sample=True),                  # Ba et al. 2016
    "group": Normaliser(per_sample=True, settings={"group_size": GROUP_SIZE},  # Wu & He 2018
                        check=_group_size_problem),
    "instance": Normaliser(per_sample=True, conv_only=True),
    "weight": Normaliser(),                                # Salimans & Kingma 2016: reparametrises the layer
}
NORMS = tuple(NORMALISER_RECORDS)
NOISES = (None, "absolute", "unit")


@dataclass(frozen=True)
class Variant:
    norm: str | None  # one of NORMS
    p: float | None = None  # for lp normalisation
    noise: str | None = None  # Algorithm 1 after the normaliser: "absolute" draws, or "unit" (scaled)

    def __post_init__(self):
        # a typo here would otherwise build a network with no normaliser, silently
        if self.norm not in NORMALISER_RECORDS:
            raise ValueError(f"Variant(norm={self.norm!r}): no such normaliser; known: "
                             f"{', '.join(map(str, NORMALISER_RECORDS))}")
        if (self.norm == "lp") != (self.p is not None):
            raise ValueError(f"Variant(norm={self.norm!r}, p={self.p!r}): p is lp normalisation's, and it needs one")
        if self.noise not in NOISES:
            raise ValueError(f"Variant(noise={self.noise!r}): known: {', '.join(map(str, NOISES))}")

    @property
    def normaliser(self) -> Normaliser:
        return NORMALISER_RECORDS[self.norm]

    @property
    def per_sample(self) -> bool:
        """Normalises each sample on its own (no batch statistics, so no running statistics)."""
        return self.normaliser.per_sample

    @property
    def conv_only(self) -> bool:
        """Needs spatial positions: over one unit of a linear layer there is nothing to normalise."""
        return self.normaliser.conv_only


def normaliser_settings() -> dict[str, tuple[str | None, dict]]:
    """Every normaliser-specific `norm.<key>`: key -> (the normaliser that reads it, its schema)."""
    return {key: (name, schema) for name, record in NORMALISER_RECORDS.items()
            for key, schema in record.settings.items()}


VARIANTS: dict[str, Variant] = {
    "standard": Variant(None),
    "batchnorm": Variant("batch"),
    "noisy_batchnorm": Variant("batch", noise="absolute"),
    "standard_noise": Variant(None, noise="absolute"),
    "standard_unit_noise": Variant(None, noise="unit"),
    "l1": Variant("lp", p=1.0),
    "l2": Variant("lp", p=2.0),
    "linf": Variant("lp", p=float("inf")),
    "layernorm": Variant("layer"),
    "groupnorm": Variant("group"),
    "instancenorm": Variant("instance"),
    "weightnorm": Variant("weight"),
    "noisy_groupnorm": Variant("group", noise="absolute"),
}
