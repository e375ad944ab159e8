"""config/gpu-headline.yaml: the paper's Fig. 1, 3 and 4 studies, sized for one GPU. Its plan must
be the paper's runs (read from the planned RunSpecs, and against config/paper.yaml's own plan of
the same studies), every claim must be decidable with its seeds, and Snakemake must plan it.
No training; the CIFAR-10 JPEGs are replaced by a fake image folder (the checks only count files).
benchmarks/gpu_packing.py's decision of how many jobs share a GPU is tested on given rates."""

from __future__ import annotations

import itertools

import pytest
import yaml

from bnstudy.config.architectures import normalised_layers
from bnstudy.claims import ClaimRules
from bnstudy.configure import load_config
from bnstudy.errors import ConfigError
from bnstudy.config.plan import plan

from helpers import REPO, import_file, job_counts, run_snakemake, write_yaml
from test_config import fake_imagefolder

CONFIG = REPO / "config" / "gpu-headline.yaml"
STUDIES = {"performance": [0.1, 0.5], "ics": [0.1, 0.01], "landscape": [0.1]}   # Figs. 1, 3, 4
CHECKPOINTS = [0, 250, 500, 750, 1000, 1500, 3000, 4500, 6000, 7500, 9000, 10500, 12000, 13500, 15000]


def headline_raw(tmp_path) -> dict:
    """The config as written, its CIFAR-10 JPEG folders replaced by empty files in class folders."""
    raw = yaml.safe_load(CONFIG.read_text())
    for dataset in raw["datasets"].values():
        if dataset["source"] == "imagefolder":
            dataset["root"] = str(fake_imagefolder(tmp_path / "images", per_class=20))
    return raw


@pytest.fixture
def headline(tmp_path):
    return load_config(headline_raw(tmp_path))


def test_loads_with_every_claim_decidable(headline, tmp_path):
    assert set(headline["studies"]) == set(STUDIES)
    raw = yaml.safe_load(CONFIG.read_text())
    assert "allow_undecidable" not in yaml.safe_dump(raw)
    assert not any(ClaimRules().overridden(s["claim_rules"]).allow_undecidable for s in headline["studies"].values())
    assert headline["runtime"]["device"] == "auto" and headline["runtime"]["precision"] == "tf32"
    # the seed rule is live for this config: two seeds cannot decide its t-interval rows
    for study in ("ics", "landscape"):
        raw = headline_raw(tmp_path)
        raw["studies"][study]["seeds"] = [0, 1]
        with pytest.raises(ConfigError, match=f"studies.{study}.seeds: 2 seeds cannot decide"):
            load_config(raw)


def test_plan_is_the_papers_runs(headline):
    p = plan(headline)
    assert set(p.study_runs) == set(STUDIES)
    for study, lrs in STUDIES.items():
        specs = [p.runs[r] for r in p.study_runs[study]]
        assert sorted((s.norm.variant, s.optim.lr, s.seed) for s in specs) == \
            sorted(itertools.product(["batchnorm", "standard"], lrs, [0, 1, 2])), study
        for s in specs:
            assert (s.model.arch, s.model.depth, s.model.width, tuple(s.model.head)) == ("vgg", 16, 1.0, ())
            assert normalised_layers(s.to_dict()["model"]) == 13       # the figures index layers #1-#13
            assert (s.model.init, s.model.activation) == ("glorot_uniform", "relu")
            assert (s.optim.steps, s.optim.batch_size, s.optim.momentum, s.optim.weight_decay) == (15000, 128, 0.0, 0.0)
            assert (s.augment.crop, s.augment.flip) == (0, False)
            assert tuple(s.dataset.shape) == (3, 32, 32) and s.dataset.classes == 10
            assert list(s.checkpoints) == CHECKPOINTS                      # the steps the analyses read
    # the analyses and the steps they read: Fig. 3's ICS at layers #5 and #10, Fig. 4's eta in [1/2, 4] x lr
    cfg = headline["studies"]
    assert cfg["performance"]["layers"] == [3, 11] and cfg["ics"]["layers"] == [5, 10]
    ics = p.analysis_settings[p.study_analyses["ics"]["ics"]]
    landscape = p.analysis_settings[p.study_analyses["landscape"]["landscape"]]
    assert ics["steps"] is None and ics["batch_size"] == 128                 # every checkpoint
    assert landscape["steps"] is None and (landscape["eta_min"], landscape["eta_max"]) == (0.5, 4.0)
    assert p.study_analyses["performance"] == {}
    # 18 runs (landscape's are performance's, ics adds lr 0.01), 12 of them analysed
    assert len(p.runs) == 18 and len(p.analysed_runs()) == 12


def test_same_runs_analyses_figures_and_claims_as_paper_yaml(headline):
    """Every planned run equals paper.yaml's run of the same study, variant, lr and seed in all but
    where it trains (results folder, runtime: TF32, threads) and its id; the analysis settings (so
    their hashes), layers, figures and claims are paper.yaml's."""
    paper = load_config(REPO / "config" / "paper.yaml")
    mine, theirs = plan(headline), plan(paper)

    def key(spec) -> tuple:
        return spec.norm.variant, spec.optim.lr, spec.seed

    def comparable(spec) -> dict:
        d = spec.to_dict()
        for key in ("run", "runtime"):
            d.pop(key)
        d["dataset"].pop("path")
        return d

    for study in STUDIES:
        a = {key(s): comparable(s) for s in (mine.runs[r] for r in mine.study_runs[study])}
        b = {key(s): comparable(s) for s in (theirs.runs[r] for r in theirs.study_runs[study])}
        assert a == b, study
        assert mine.study_analyses[study] == theirs.study_analyses[study], study
        for field in ("setup", "variants", "lrs", "seeds", "layers", "figures", "claims", "description"):
            assert headline["studies"][study][field] == paper["studies"][study][field], (study, field)


def test_gpu_packing_decides_jobs_per_gpu(headline):
    packing = import_file(REPO / "benchmarks" / "gpu_packing.py")
    # the fewest jobs within 5% of the best aggregate rate; no more jobs than host cores
    assert packing.choose_jobs_per_gpu({1: 100.0, 2: 180.0, 4: 300.0, 8: 310.0}, cores=16) == 4
    assert packing.choose_jobs_per_gpu({1: 100.0, 2: 180.0, 4: 300.0, 8: 400.0}, cores=16) == 8
    assert packing.choose_jobs_per_gpu({1: 100.0, 2: 102.0, 4: 90.0}, cores=16) == 1
    assert packing.choose_jobs_per_gpu({1: 100.0, 2: 180.0, 4: 300.0}, cores=2) == 2
    assert packing.snakemake_slots(4, 16) == (4, 16) and packing.snakemake_slots(3, 16) == (5, 15)
    # the config's comment: 4 jobs on a 16-core GPU host = runtime.threads 4, --cores 16
    assert packing.snakemake_slots(4, 16)[0] == headline["runtime"]["threads"]
    measured = next(iter(plan(headline).runs.values()))
    runs, steps, seconds, others = packing.config_training_seconds(headline, measured, 151.9 * 3)
    assert (runs, steps, others) == (18, 270000, 0) and seconds == pytest.approx(270000 / (151.9 * 3))


@pytest.mark.e2e  # runs Snakemake (a dry run: seconds)
def test_dry_run_plans_every_job(tmp_path):
    raw = headline_raw(tmp_path)   # results: a relative folder, under tmp_path (the working directory)
    configfile = write_yaml(tmp_path / "gpu-headline.yaml", raw)
    p = plan(load_config(raw))
    proc = run_snakemake(tmp_path, "-n", "--cores", "16", configfile=str(configfile))
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["train"] == len(p.runs) == 18 and counts["analyze"] == len(p.analysed_runs()) == 12
    assert counts["aggregate"] == counts["figures"] == 3 and counts["prepare_data"] == 1
    assert not (tmp_path / raw["results"]).exists()
