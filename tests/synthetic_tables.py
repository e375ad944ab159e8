"""Synthetic per-run tables in the layout of `bnstudy.files`, for the aggregate/figure/claim tests.

Not a conftest: imported explicitly by the tests. Everything is drawn from a seeded numpy
Generator, so the fixtures are identical on every run. An ``outcome`` callable decides, per run,
the levels the curves converge to (accuracy, ICS, beta, divergence, how noisy single units are),
which is how the claim tests construct data with a known verdict.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd

from bnstudy.tables.aggregate import aggregate
from bnstudy.files import ANALYSIS_TABLES, RUN_TABLES, study_tables

TRAIN_EVERY, EVAL_EVERY, LAYERS_EVERY, ANALYSIS_EVERY = 10, 50, 20, 50  # analyses also at 10-40 (dense early)
N_LAYERS = 13
UNITS = (0, 21, 42, 63)
CHANCE = 0.1
ETA_REL = [0.5, 1.0, 2.0, 4.0]
FIXTURE_DIGEST = "fixture"  # the fixture's analysis tables are <analysis>-fixture.csv

_VGG = {"setup": "vgg", "lrs": [0.1], "seeds": [0, 1, 2], "grid": {}, "overrides": {}, "enabled": True,
        "description": "", "figures": [], "claims": [], "layers": []}
_DLN = {**_VGG, "setup": "dln", "lrs": [1e-6, 1e-7]}

# One small config per study, shaped like the real config's `studies:` entries.
STUDIES: dict[str, dict] = {
    "performance": {**_VGG, "variants": ["standard", "batchnorm"], "lrs": [0.1, 0.5], "layers": [3, 11],
                    "figures": ["accuracy", "distributions"]},
    "noisy_bn": {**_VGG, "variants": ["standard", "batchnorm", "noisy_batchnorm", "standard_noise"],
                 "layers": [2, 9, 13], "figures": ["train_accuracy", "distributions", "moment_changes"],
                 "claims": ["noisy_bn_trains", "noise_stops_training"]},
    "ics": {**_VGG, "variants": ["standard", "batchnorm"], "lrs": [0.1, 0.01], "layers": [5, 10],
            "ics": {}, "figures": ["ics"], "claims": ["reduces_ics"]},
    "ics_dln": {**_DLN, "variants": ["standard", "batchnorm"], "layers": [9, 17], "ics": {},
                "figures": ["ics", "train_loss"], "claims": ["reduces_ics"]},
    "landscape": {**_VGG, "variants": ["standard", "batchnorm"], "landscape": {},
                  "figures": ["landscape"], "claims": ["smoother_landscape"]},
    "landscape_dln": {**_DLN, "variants": ["standard", "batchnorm"], "lrs": [1e-6], "landscape": {},
                      "figures": ["landscape"], "claims": ["smoother_landscape"]},
    "lp_norms": {**_VGG, "variants": ["l1", "l2", "linf", "batchnorm", "standard"], "layers": [3, 11],
                 "landscape": {}, "figures": ["accuracy", "distributions", "landscape"]},
    "dln_distributions": {**_DLN, "variants": ["standard", "batchnorm"], "lrs": [1e-6],
                          "layers": [1, 11, 24], "figures": ["distributions"]},
    "curvature": {**_VGG, "variants": ["standard", "batchnorm"], "curvature": {}, "figures": ["curvature"]},
    "claim_learning_rate": {**_VGG, "variants": ["standard", "batchnorm"], "lrs": [0.01, 0.1, 1.0],
                            "figures": ["accuracy_vs_lr"], "claims": ["higher_learning_rates"]},
    "claim_initialisation": {**_VGG, "variants": ["standard", "batchnorm"], "lrs": [0.1, 0.5],
                             "grid": {"model.init_scale": [0.5, 1.0, 2.0]},
                             "figures": ["accuracy_vs_init_scale"], "claims": ["initialisation"]},
    "claim_regularisation": {**_VGG, "variants": ["standard", "batchnorm"],
                             "grid": {"model.dropout": [0.0, 0.5]},
                             "figures": ["generalisation_gap", "accuracy_vs_dropout"],
                             "claims": ["regularisation", "generalisation_gap"]},
    "claim_sigmoid": {**_VGG, "setup": "vgg_sigmoid", "variants": ["standard", "batchnorm"], "lrs": [0.1, 0.5],
                      "figures": ["accuracy", "accuracy_vs_lr"], "claims": ["sigmoid"]},
    "mnist_2015": {**_VGG, "setup": "mlp", "variants": ["standard", "batchnorm"], "layers": [1, 2, 3],
                   "figures": ["test_accuracy", "unit_input"], "claims": ["faster_training"]},
    "hessian_spectrum": {**_VGG, "variants": ["standard", "batchnorm"], "spectrum": {"bn_mode": ["batch", "running"]},
                         "density": {},
                         "figures": ["hessian_spectrum", "spectral_density"], "claims": ["hessian_outliers"]},
    "edge_of_stability": {**_VGG, "variants": ["standard", "batchnorm"], "lrs": [0.02, 0.05], "sharpness": {},
                          "figures": ["edge_of_stability"], "claims": ["edge_of_stability"]},
    "depth_at_init": {**_VGG, "variants": ["standard", "batchnorm"], "grid": {"model.depth": [11, 16, 19]},
                      "activations": {}, "figures": ["layer_measures"],
                      "claims": ["gradient_explosion", "rank_collapse"]},
    "depth_at_init_mlp": {**_VGG, "variants": ["standard", "batchnorm"],
                          "grid": {"model.hidden_layers": [8, 16, 32, 64]}, "activations": {},
                          "figures": ["layer_measures"], "claims": ["gradient_explosion", "rank_collapse"]},
    "matched_lr": {**_VGG, "variants": ["standard", "batchnorm"], "lrs": [0.01, 0.03, 0.1, 0.3, 1.0],
                   "activations": {}, "figures": ["accuracy_vs_lr", "activation_vs_lr"], "claims": ["benefit_is_the_lr"]},
    "bn_only": {**_VGG, "variants": ["batchnorm"], "lrs": [0.1, 2.0],
                "grid": {"optim.train_only": ["all", "bn_affine", "random_matched"]},
                "figures": ["test_accuracy_by_train_only"], "claims": ["bn_only_trains"]},
    "landscape_2d": {**_VGG, "variants": ["standard", "batchnorm"], "surface": {},
                     "figures": ["loss_surface"], "claims": ["wider_basin"]},
    "normalisers": {**_VGG, "variants": ["standard", "batchnorm", "layernorm", "groupnorm", "instancenorm",
                                         "weightnorm"], "landscape": {}, "activations": {},
                    "figures": ["accuracy", "landscape", "layer_measures"],
                    "claims": ["smoother_than_none", "bn_trains_better"]},
    "group_size": {**_VGG, "variants": ["groupnorm"], "grid": {"norm.group_size": [1, 2, 4, 8]},
                   "activations": {}, "figures": ["gradient_vs_group_size"], "claims": ["group_size_gradients"]},
    "scale_invariance": {**_VGG, "variants": ["standard", "batchnorm"], "lrs": [0.1, 1.0], "layers": [2, 7],
                         "overrides": {"log": {"layers_every": 1}}, "activations": {"dtype": "float64"},
                         "figures": ["weight_norm", "accuracy_vs_lr"],
                         "claims": ["scale_invariance"]},
}


@dataclass(frozen=True)
class Outcome:
    """What a synthetic run converges to."""

    train_accuracy: float = 0.9        # eval mode, on training samples
    test_accuracy: float = 0.8
    diverged_step: int | None = None
    ics_l2: float = 1.0                # ||G - G'|| / ||G||
    grad_scale: float = 1.0            # ||G||: scales ||G - G'|| too (the raw ICS)
    ics_cos: float = 0.8               # cos(G, G')
    beta: float = 10.0
    init_factor: float = 1.0           # step 0's relative ICS, 1 - cos, beta, outlier and share, as a multiple
    early_factor: float = 1.0          # the same, over the early window (0 < step <= 20% of the run)
    sharpness: float = 10.0            # the Hessian's largest eigenvalue (an outlier above the bulk)
    bulk: float = 1.0                  # where the bulk of the spectral density ends
    outliers: int = 9                  # the outlier group's size (Ghorbani et al.: C - 1 with cross-entropy)
    running_sharpness: float | None = None  # the largest eigenvalue with running statistics (None: as batch)
    share: float = 0.3                 # share of ||g||^2 in the top-k eigenvectors
    eos_level: float | None = None     # full-batch GD: lr x sharpness settles here (None: no such rise)
    eos_start: float = 1.0             # ... rising from this value at step 0 by 0.05 a step
    basin: float = 0.5                 # the 2-D surface's loss doubles at this distance
    final_loss: float = 0.3            # the training loss goes here from 2.3 (>= 2.3: no training)
    train_batches_accuracy: float | None = None  # training mode; default: train_accuracy
    unit_jitter: float = 0.0           # per-step random shift of single units (Algorithm 1-like)
    rate: float = 5.0                  # how fast the accuracy curves rise
    converged: bool = True             # curvature: the Lanczos searches converged
    first_grad: float = 1.0            # activations: the first layer's gradient norm at step 0
    layers: int = 8                    # activations: normalised layers of the network
    last_rank: float | None = None     # activations: the last layer's stable rank (None: 10 / layer)
    activation_var: float = 1.0        # activations: scale of the block outputs' variance
    scale_invariant: bool = False      # layers: |cos(w, g)| ~ 0 and ||w||^2 = ||w_0||^2 + lr^2 sum ||g||^2

    @property
    def train_mode_accuracy(self) -> float:
        return self.train_accuracy if self.train_batches_accuracy is None else self.train_batches_accuracy


Outcomes = Callable[[str, float, int, dict], Outcome]


def default_outcome(variant: str, lr: float, seed: int, grid: dict) -> Outcome:
    """BatchNorm-like variants train better; standard diverges at lr >= 0.5 for odd seeds;
    standard + noise stays at chance; noisy variants' single units jump from step to step."""
    if variant == "standard_noise":
        return Outcome(CHANCE + 0.01, CHANCE, ics_l2=2.0, beta=50.0, unit_jitter=0.3)
    if variant == "standard":
        diverged = 120 if lr >= 0.5 and seed % 2 else None
        return Outcome(0.85, 0.78, diverged, ics_l2=0.5, beta=100.0)
    if variant == "noisy_batchnorm":
        return Outcome(0.7, 0.8, None, ics_l2=1.5, beta=5.0, train_batches_accuracy=0.93, unit_jitter=0.3)
    if variant == "groupnorm":  # Lubana et al.: smaller groups, larger first-layer gradients
        return Outcome(0.9, 0.8, None, ics_l2=1.5, beta=8.0,
                       first_grad=(8 / grid.get("norm.group_size", 8)) ** 0.5)
    return Outcome(0.95, 0.83, None, ics_l2=1.5, beta=5.0, scale_invariant=variant == "batchnorm")


def set_dotted(spec: dict, dotted: str, value) -> None:
    node = spec
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _rising(steps: np.ndarray, start: float, end: float, total: int, rate: float = 5.0) -> np.ndarray:
    return end + (start - end) * np.exp(-rate * steps / max(total, 1))


def _train_table(rng, steps, outcome, total, regression) -> pd.DataFrame:
    loss = _rising(steps, 2.3, outcome.final_loss, total) * rng.lognormal(0, 0.01, len(steps))
    accuracy = np.clip(_rising(steps, CHANCE, outcome.train_mode_accuracy, total, outcome.rate)
                       + rng.normal(0, 0.01, len(steps)), 0, 1)
    if outcome.diverged_step is not None and len(steps):
        loss[-1] = np.inf
    return pd.DataFrame({"step": steps, "loss": loss, "accuracy": np.nan if regression else accuracy})


def _eval_table(rng, steps, outcome, total, regression) -> pd.DataFrame:
    frames = []
    for split, level in (("train", outcome.train_accuracy), ("test", outcome.test_accuracy),
                         ("train_batches", outcome.train_mode_accuracy)):
        at = steps[steps > 0] if split == "train_batches" else steps
        accuracy = np.clip(_rising(at, CHANCE, level, total, outcome.rate) + rng.normal(0, 0.01, len(at)), 0, 1)
        frames.append(pd.DataFrame({"step": at, "split": split,
                                    "loss": _rising(at, 2.3, outcome.final_loss, total),
                                    "accuracy": np.nan if regression else accuracy}))
    return pd.concat(frames, ignore_index=True).sort_values(["step", "split"], kind="stable")


def _layers_table(rng, steps, variant, outcome, lr) -> pd.DataFrame:
    """A scale-invariant outcome's weights obey plain SGD's norm identity exactly (the steps
    must then be every step) with |cos(w, g)| ~ 1e-7; otherwise ||w|| wanders and cos ~ 0.05."""
    rows = []
    normalised = variant != "standard"
    w_sq = dict.fromkeys(range(1, N_LAYERS + 1), 1.0)
    for step, layer in product(steps, range(1, N_LAYERS + 1)):
        change = outcome.unit_jitter + (0.01 if normalised else 0.03)
        grad = rng.lognormal(0, 0.3)
        rows.append({"step": step, "layer": layer, "weight_grad_norm": grad,
                     "output_grad_norm": rng.lognormal(-2, 0.3),
                     "gamma_over_sigma": rng.lognormal(0, 0.1) if normalised else np.nan,
                     "unit_mean_change": change * rng.lognormal(0, 0.1),
                     "unit_var_change": change * rng.lognormal(0, 0.1),
                     "weight_norm": w_sq[layer] ** 0.5,
                     "weight_grad_cos": (1e-7 if outcome.scale_invariant else 0.05) * rng.lognormal(0, 0.1),
                     "weight_grad_cos_p50": (1e-8 if outcome.scale_invariant else 0.01) * rng.lognormal(0, 0.1),
                     "unexplained_cos": 1e-8 * rng.lognormal(0, 0.1) if outcome.scale_invariant else np.nan})
        w_sq[layer] = w_sq[layer] + lr ** 2 * grad ** 2 if outcome.scale_invariant else \
            w_sq[layer] * rng.lognormal(0, 0.01)
    return pd.DataFrame(rows, columns=RUN_TABLES["layers"])


def _units_table(rng, steps, variant, outcome) -> pd.DataFrame:
    rows = []
    normalised = variant != "standard"
    z = {"p05": -1.645, "p15": -1.036, "p50": 0.0, "p85": 1.036, "p95": 1.645}
    for step, layer, unit in product(steps, range(1, N_LAYERS + 1), UNITS):
        drift = 0.0 if normalised else 0.002 * step * layer ** 0.5
        mean = drift + 0.1 * unit / 63 + rng.normal(0, 0.02) + rng.uniform(-1, 1) * outcome.unit_jitter
        std = (1.0 if normalised else 0.5 + 0.01 * layer) * rng.lognormal(0, 0.02 + outcome.unit_jitter / 3)
        rows.append({"step": step, "layer": layer, "unit": unit, "mean": mean, "var": std ** 2,
                     **{name: mean + q * std for name, q in z.items()}})
    return pd.DataFrame(rows, columns=RUN_TABLES["units"])


def _analysis_table(name: str, rng, steps, outcome, layers, lr: float, run_steps: int) -> pd.DataFrame:
    rows = []
    for step in steps:
        factor = outcome.init_factor if step == 0 else outcome.early_factor if step <= 0.2 * run_steps else 1.0
        if name == "ics":
            for layer in layers or [1, 2]:
                grad_norm = outcome.grad_scale * rng.lognormal(0, 0.1)
                rows.append({"step": step, "layer": layer,
                             "l2_diff": factor * outcome.ics_l2 * grad_norm * rng.lognormal(0, 0.1),
                             "cosine": float(np.clip(1 - factor * (1 - outcome.ics_cos) + rng.normal(0, 0.01), -1, 1)),
                             "grad_norm": grad_norm})
        elif name == "landscape":
            for direction, eta_rel in product(("gradient", "random1"), ETA_REL):
                # a random direction must not enter the gradient measures: make it huge and the
                # same for every variant, so mixing it in would erase any effect
                beta = factor * outcome.beta if direction == "gradient" else 1e6
                rows.append({"step": step, "direction": direction, "eta": 0.1 * eta_rel, "eta_rel": eta_rel,
                             "loss": (1.0 + 0.1 * eta_rel * beta ** 0.5) * rng.lognormal(0, 0.02),
                             "grad_diff": beta * 0.1 * eta_rel * rng.lognormal(0, 0.1),
                             "beta": beta * rng.lognormal(0, 0.1)})
        elif name == "spectrum":
            # an outlier group of `outliers` eigenvalues over a bulk 20 ranks deep; the gradient's
            # share builds up within the group
            for mode in ("batch", "running"):
                top = factor * (outcome.running_sharpness if mode == "running" and outcome.running_sharpness
                                else outcome.sharpness)
                group = [top * 0.9 ** r for r in range(outcome.outliers)]
                bulk = [outcome.bulk * 0.95 ** r for r in range(20 - outcome.outliers)]
                share = min(1.0, factor * outcome.share * rng.lognormal(0, 0.02))
                for rank, value in enumerate(group + bulk, start=1):
                    cumulative = share * min(rank, outcome.outliers) / outcome.outliers + 0.001 * max(0, rank - outcome.outliers)
                    rows.append({"step": step, "bn_mode": mode, "rank": rank, "eigenvalue": value * rng.lognormal(0, 0.01),
                                 "residual": 1e-5, "converged": True, "gradient_share": min(cumulative, 1.0),
                                 "trace": 5 * top, "trace_se": 0.1 * top, "products": 80, "samples": 128})
                rows.append({"step": step, "bn_mode": mode, "rank": -1, "eigenvalue": -0.1 * top, "residual": 1e-5,
                             "converged": True, "gradient_share": np.nan, "trace": 5 * top, "trace_se": 0.1 * top,
                             "products": 80, "samples": 128})
        elif name == "sharpness":
            level = outcome.eos_level if outcome.eos_level is not None else 1.0
            ratio = min(outcome.eos_start + 0.05 * step, max(level, outcome.eos_start))
            rows.append({"step": step, "bn_mode": "batch", "sharpness": ratio / lr * rng.lognormal(0, 0.01),
                         "residual": 1e-5, "converged": True, "products": 22, "samples": 128})
        elif name == "density":
            for start in range(2):
                bulk = np.linspace(-0.1, 1.0, 20) * outcome.bulk * rng.lognormal(0, 0.01)
                nodes = np.append(bulk, factor * outcome.sharpness)
                weights = np.append(np.full(20, 0.999 / 20), 0.001)
                rows += [{"step": step, "bn_mode": "batch", "start": start, "node": node, "weight": weight,
                          "n_params": 1000, "samples": 128} for node, weight in zip(nodes, weights)]
        elif name == "activations":
            eps_rng = rng.spawn(1)[0]
            for layer in range(1, outcome.layers + 1):
                rank = outcome.last_rank if outcome.last_rank is not None and layer == outcome.layers else 10 / layer
                rows.append({"step": step, "bn_mode": "batch", "layer": layer,
                             "cosine_similarity": 0.3 + 0.05 * layer * (outcome.beta / 100),
                             "stable_rank": rank * rng.lognormal(0, 0.05),
                             "grad_norm": (outcome.first_grad if layer == 1 and step == 0 else 1.0)
                             * rng.lognormal(0, 0.02),
                             "activation_var": outcome.activation_var * rng.lognormal(0, 0.1),
                             # the eps identity at the checkpoint (float64): BN's cosine is eps's (drawn
                             # from a spawned stream: rng's own draws, the other tables' noise, stay as they were)
                             "weight_grad_cos": (1e-6 if outcome.scale_invariant else 0.05) * eps_rng.lognormal(0, 0.1),
                             "unexplained_cos": 1e-14 * eps_rng.lognormal(0, 0.1) if outcome.scale_invariant else np.nan})
        elif name == "surface":
            for x, y in product(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5)):
                rows.append({"step": step, "bn_mode": "batch", "x": x, "y": y,
                             "loss": 0.5 * (1 + (x * x + y * y) / outcome.basin ** 2) * rng.lognormal(0, 0.01)
                             if (x or y) else 0.5, "accuracy": 0.8})
        else:
            rows.append({"step": step, "grad_quadratic": outcome.beta * rng.lognormal(0, 0.1),
                         "top_eigenvalue": 3 * outcome.beta * rng.lognormal(0, 0.1),
                         "top_residual": 1e-4 if outcome.converged else 0.2,
                         "bottom_eigenvalue": -0.1 * outcome.beta * rng.lognormal(0, 0.1),
                         "bottom_residual": 1e-4 if outcome.converged else 0.3,
                         "products": 60 if outcome.converged else 200, "converged": outcome.converged})
    return pd.DataFrame(rows, columns=ANALYSIS_TABLES[name])


def write_run(runs_root: Path, study_cfg: dict, variant: str, lr: float, seed: int, grid: dict,
              outcome: Outcome, steps: int, rng: np.random.Generator) -> tuple[Path, str]:
    """Write one run directory (spec, summary, train, eval, layers, units); return (dir, run id)."""
    regression = study_cfg["setup"] == "dln"
    digest = hashlib.sha256(json.dumps([variant, lr, seed, grid], sort_keys=True).encode()).hexdigest()[:8]
    run = f"{study_cfg['setup']}-{variant}-lr{lr:g}-s{seed}-{digest}"
    spec = {"run": run, "setup": study_cfg["setup"], "seed": seed,
            "dataset": {"name": "synthetic", "path": "results/data/synthetic.pt",
                        "task": "regression" if regression else "classification"},
            "model": {"arch": "dln" if regression else "vgg", "depth": N_LAYERS, "init_scale": 1.0, "dropout": 0.0},
            "norm": {"variant": variant, "eps": 1e-5},
            "optim": {"lr": lr, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 128, "steps": steps},
            "log": {"train_every": TRAIN_EVERY, "eval_every": EVAL_EVERY, "layers_every": LAYERS_EVERY}}
    for dotted, value in grid.items():
        set_dotted(spec, dotted, value)
    end = steps if outcome.diverged_step is None else outcome.diverged_step
    layers_every = (study_cfg.get("overrides") or {}).get("log", {}).get("layers_every", LAYERS_EVERY)
    spec["log"]["layers_every"] = layers_every
    run_dir = runs_root / run
    run_dir.mkdir(parents=True)
    tables = {
        "train": _train_table(rng, np.arange(0, end + 1, TRAIN_EVERY), outcome, steps, regression),
        "eval": _eval_table(rng, np.arange(0, end + 1, EVAL_EVERY), outcome, steps, regression),
        "layers": _layers_table(rng, np.arange(0, end + 1, layers_every), variant, outcome, lr),
        "units": _units_table(rng, np.arange(0, end + 1, LAYERS_EVERY), variant, outcome),
    }
    for name, table in tables.items():
        table.to_csv(run_dir / f"{name}.csv", index=False)
    diverged = outcome.diverged_step is not None
    final = {"train_loss": outcome.final_loss, "test_loss": 0.5, "train_batches_loss": outcome.final_loss,
             "train_accuracy": None if regression else outcome.train_accuracy,
             "test_accuracy": None if regression else outcome.test_accuracy,
             "train_batches_accuracy": None if regression else outcome.train_mode_accuracy}
    summary = {"run": run, "status": "diverged" if diverged else "completed", "steps_done": end,
               "diverged_step": outcome.diverged_step,
               "final": {k: None for k in final} if diverged else final,
               "checkpoints": [], "labels": {"variant": variant, "lr": lr, "seed": seed},
               "wall_seconds": 1.0, "device": "cpu"}
    (run_dir / "spec.json").write_text(json.dumps(spec))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir, run


def analyses_of(study_cfg: dict) -> list[str]:
    return [name for name in ANALYSIS_TABLES if name in study_cfg]


def make_study(root: Path, study: str, study_cfg: dict | None = None, outcome: Outcomes = default_outcome,
               steps: int = 200, seed: int = 0) -> tuple[list[Path], dict[str, dict[Path, Path]]]:
    """Write every run of ``study`` (and its analysis tables) under ``root``.

    Returns (run folders, analysis -> {run folder: analysis table}), what aggregation reads.
    """
    study_cfg = study_cfg or STUDIES[study]
    rng = np.random.default_rng(seed)
    analyses: dict[str, dict[Path, Path]] = {name: {} for name in analyses_of(study_cfg)}
    grid_items = list((study_cfg.get("grid") or {}).items())
    run_dirs = []
    for variant, lr, run_seed, values in product(study_cfg["variants"], study_cfg["lrs"], study_cfg["seeds"],
                                                 product(*[v for _, v in grid_items])):
        grid = {dotted: value for (dotted, _), value in zip(grid_items, values)}
        result = outcome(variant, lr, run_seed, grid)
        run_dir, run = write_run(root / "runs" / study, study_cfg, variant, lr, run_seed, grid, result, steps, rng)
        run_dirs.append(run_dir)
        end = steps if result.diverged_step is None else result.diverged_step
        for name in analyses:
            analysed = sorted({*range(0, 41, 10), *range(0, end + 1, ANALYSIS_EVERY)} & set(range(end + 1)))
            table = _analysis_table(name, rng, np.array(analysed), result,
                                    study_cfg.get("layers"), lr, steps)
            path = root / "analysis" / run / f"{name}-{FIXTURE_DIGEST}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(path, index=False)
            analyses[name][run_dir] = path
    return run_dirs, analyses


def make_tables(root: Path, study: str, study_cfg: dict | None = None, **kwargs) -> dict[str, Path]:
    """make_study + aggregation: returns table name -> ``root/tables/{study}/{name}.csv``."""
    study_cfg = study_cfg or STUDIES[study]
    run_dirs, analyses = make_study(root, study, study_cfg, **kwargs)
    out_dir = root / "tables" / study
    aggregate(study, study_cfg, run_dirs, {name: FIXTURE_DIGEST for name in analyses}, root / "analysis", out_dir)
    return {name: out_dir / f"{name}.csv" for name in study_tables(study_cfg)}
