"""Santurkar et al. 2018, section 2.1 (Fig. 2): BN with noise that makes its layers' input
distributions unstable still trains; the same noise without BN does not."""

from __future__ import annotations

from ..measures import final_accuracy
from ..record import SUPPORTED, Claim, Row

_TRAIN_MODE = "final_train_batches_accuracy"  # batch statistics and noise on, as the network trains
_ONE_SENTENCE = ("2018 (section 2.1): injecting the same noise into the standard network \"prevented the"
                 " network from training entirely\" (one sentence, no figure)")


def _chance_line(rules):
    return rules.chance_accuracy + rules.chance_margin


CLAIMS = (
    Claim(
        "noisy_bn_trains", "Noisy BN trains about as well as BN", "2018",
        "2018 (Fig. 2): noisy BN trains almost as well as BN and better than standard, despite"
        " unstable distributions",
        (Row("accuracy", "final training-mode train accuracy (batch statistics and noise on, mean over the last"
             " evaluation window; diverged = chance); noisy_batchnorm minus batchnorm, paired by seed;"
             " holds if not worse than -noninferiority_margin",
             final_accuracy(_TRAIN_MODE), "above", unit="accuracy",
             threshold=lambda rules: -rules.noninferiority_margin),), findings=(("2018", SUPPORTED),),
        variants=("noisy_batchnorm", "batchnorm"), must_train="batchnorm"),
    # the noise alone, on the network without a normaliser (the standard network must train)
    Claim(
        "noise_stops_training", "The same noise stops a network without BN from training", "2018",
        _ONE_SENTENCE,
        (Row("accuracy", "final training-mode train accuracy of standard_noise (Algorithm 1's draws on the raw"
             " pre-activations; diverged = chance); holds if below chance + chance_margin",
             final_accuracy(_TRAIN_MODE), "below", unit="accuracy", threshold=_chance_line),),
        findings=(("2018", SUPPORTED),), variants=("standard_noise", "standard"), paired=False),
    Claim(
        "unit_noise_stops_training", "The same noise, scaled to each unit, stops a network without BN"
        " from training", "2018", _ONE_SENTENCE,
        (Row("accuracy", "final training-mode train accuracy of standard_unit_noise (Algorithm 1's draws in each"
             " unit's standardised coordinates; diverged = chance); holds if below chance +"
             " chance_margin", final_accuracy(_TRAIN_MODE), "below", unit="accuracy", threshold=_chance_line),),
        findings=(("2018", SUPPORTED),), variants=("standard_unit_noise", "standard"), paired=False),
)
