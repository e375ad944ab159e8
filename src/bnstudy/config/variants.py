"""The normalisation variants of both papers, as a table (no torch: the config schema and the
Snakemake process read it without importing the training stack).

A variant is a row: which normaliser follows each conv/linear layer, and whether Algorithm 1's
distributional noise (Santurkar et al. 2018, section 2) follows the normaliser. Adding a variant
is one row here, plus a normaliser class in `bnstudy.models.norms` if it needs a new one.

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

from dataclasses import dataclass


# the normalisers a variant can name: each has its builder in `bnstudy.models.norms.NORMALISERS` (a test
# checks the two agree); None is no normaliser
NORMS = (None, "batch", "lp", "layer", "group", "instance", "weight")
NOISES = (None, "absolute", "unit")


@dataclass(frozen=True)
class Variant:
    norm: str | None  # one of NORMS
    p: float | None = None  # for lp normalisation
    noise: str | None = None  # Algorithm 1 after the normaliser: "absolute" draws, or "unit" (scaled)

    def __post_init__(self):
        # a typo here would otherwise build a network with no normaliser, silently
        if self.norm not in NORMS:
            raise ValueError(f"Variant(norm={self.norm!r}): no such normaliser; known: {', '.join(map(str, NORMS))}")
        if (self.norm == "lp") != (self.p is not None):
            raise ValueError(f"Variant(norm={self.norm!r}, p={self.p!r}): p is lp normalisation's, and it needs one")
        if self.noise not in NOISES:
            raise ValueError(f"Variant(noise={self.noise!r}): known: {', '.join(map(str, NOISES))}")

    @property
    def per_sample(self) -> bool:
        """Normalises each sample on its own (no batch statistics, so no running statistics)."""
        return self.norm in ("layer", "group", "instance")

    @property
    def conv_only(self) -> bool:
        """Needs spatial positions: over one unit of a linear layer there is nothing to normalise."""
        return self.norm == "instance"


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
