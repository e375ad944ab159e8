"""The gates and thresholds of the claims' verdict rule: the `claim_rules:` block, one typed record.

A study overrides any of them under `claim_rules:` in its config; the schema of that block is
generated from this dataclass (each field's type, bounds and description live here once). It is a
config record (the schema, the seed check and the figures' window marks read it), used by the
verdicts in `bnstudy.claims`. Torch- and pandas-free.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field


def _rule(default, schema: dict, description: str):
    """A field with its JSON-schema bounds and description (the `claim_rules` block's schema)."""
    return field(default=default, metadata={"schema": schema, "description": description})


@dataclass(frozen=True)
class ClaimRules:
    """Gates and thresholds of the verdict rule (`bnstudy.claims`)."""

    min_steps: int = _rule(1000, {"type": "integer", "minimum": 0},
                           "runs shorter than this are too short to decide")
    chance_accuracy: float = _rule(0.1, {"type": "number", "minimum": 0, "maximum": 1},
                                   "accuracy of guessing (CIFAR-10 and MNIST have 10 balanced classes)")
    chance_margin: float = _rule(0.05, {"type": "number", "minimum": 0, "maximum": 1},
                                 "a network has left chance when its accuracy is above chance + margin")
    min_loss_drop: float = _rule(0.01, {"type": "number", "minimum": 0, "maximum": 1},
                                 "regression: the loss must fall by this fraction to count as training")
    usable_fraction: float = _rule(0.5, {"type": "number", "minimum": 0, "maximum": 1},
                                   "an lr is usable if its accuracy >= chance + fraction x (best mean - chance)")
    noninferiority_margin: float = _rule(0.05, {"type": "number", "minimum": 0, "maximum": 1},
                                         "'about as well': at most this many accuracy points worse")
    alpha: float = _rule(0.05, {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
                         "level of the exact sign-flip tests")
    early_fraction: float = _rule(0.2, {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                                  "the checkpoint-analysis rows (ICS, landscape, Hessian outliers) in two windows: "
                                  "early = the steps after 0 up to this fraction of the run's steps, late = the "
                                  "rest; each averaged over steps by time (trapezoid). Step 0 is a row of its own. "
                                  "Two windows because the order can change during training (2018, Fig. 4: the "
                                  "gap is largest early)")
    classes: int = _rule(10, {"type": "integer", "minimum": 2},
                         "hessian_outliers: the number of classes C (CIFAR-10: 10); the outlier group has at "
                         "most C - 1 members (Ghorbani et al.; cross-entropy's softmax is shift-invariant)")
    eos_low: float = _rule(1.8, {"type": "number", "exclusiveMinimum": 0},
                           "edge_of_stability: the band's low end (lr x sharpness)")
    eos_high: float = _rule(2.6, {"type": "number", "exclusiveMinimum": 0},
                            "edge_of_stability: the band's high end (lr x sharpness)")
    eos_loss_fraction: float = _rule(0.1, {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                                     "edge_of_stability: the window ends where the training loss first falls "
                                     "below this fraction of its first value (after fitting, cross-entropy's "
                                     "curvature falls with the loss: no longer the edge Cohen et al. describe)")
    t_interval_seeds: int = _rule(3, {"type": "integer", "minimum": 2},
                                  "the fewest seeds the config check accepts for a row decided by a t interval: "
                                  "with 2 the interval has df = 1 (t = 12.7) and decides only a mean more than 9 "
                                  "standard deviations from its threshold")
    basin_rise: float = _rule(0.1, {"type": "number", "exclusiveMinimum": 0},
                              "wider_basin: the basin's radius is where the loss first rises this much above its "
                              "value at the trained weights (an absolute amount, in the loss's units; Li et al. "
                              "state no threshold: a choice)")
    unexplained_cosine: float = _rule(1e-4, {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                                      "scale_invariance: the eps identity holds if the part of |cos(w, g)| it does "
                                      "not explain stays below this, at the checkpoints in the activations "
                                      "analysis's dtype (float64 leaves ~1e-14; float32's BN backward up to ~4e-3 "
                                      "in the first layer, measured on CIFAR-10)")
    allow_undecidable: bool = _rule(False, {"type": "boolean"},
                                    "run a study whose seeds cannot decide one of its rows (t interval: fewer than "
                                    "t_interval_seeds; exact test: 2^-n > alpha); its rows then are inconclusive "
                                    "by construction and claims.md says so at the top. For demos and smoke tests; "
                                    "false: the config check refuses it")

    def overridden(self, overrides: Mapping | None) -> "ClaimRules":
        unknown = set(overrides or {}) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown claim_rules keys {sorted(unknown)}")
        return dataclasses.replace(self, **dict(overrides or {}))

    @classmethod
    def schema(cls) -> dict:
        """The JSON schema of a study's `claim_rules` block (no defaults filled in: a study's
        block holds only what it overrides)."""
        return {"type": "object", "additionalProperties": False,
                "description": "overrides of the claims verdict rule's gates (bnstudy.config.claim_rules.ClaimRules)",
                "properties": {f.name: {**f.metadata["schema"],
                                        "description": f"{f.metadata['description']} (default {json.dumps(f.default)})"}
                               for f in dataclasses.fields(cls)}}
