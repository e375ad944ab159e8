"""Snakemake reruns exactly what changed, and nothing else, on a finished smoke DAG (`smoke_copy`):
a deleted per-run output retrains that run only, and once it ends as before nothing downstream is
redone; a new study that reuses runs trains and analyses nothing; a renamed MLflow experiment
redoes only the tracking jobs; `--forcerun aggregate` redoes the tables and what is drawn from
them but trains nothing, `--until aggregate` stops before the figures, and a changed study setting
plans new runs for that study only. The README's rerun commands run as written; a target the
config does not make stops with one line; a dataset whose source changes to a path that does not
exist stops before any job, and a preparation that fails keeps the prepared file. Mostly dry runs
(-n), so this file is fast once the session's smoke DAG exists."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnstudy.configure import ConfigError, load_config
from bnstudy.config.plan import plan

from helpers import (REPO, job_counts, mlflow_training_runs, run_snakemake, scheduled_jobs, smoke_raw,
                     sqlite_uri, summaries, write_yaml)

E2E = pytest.mark.e2e  # every test here but the config check runs the workflow

SMOKE_STUDIES = set(smoke_raw()["studies"])


def dry_run(workdir: Path, *args: str) -> tuple[dict[str, int], list[tuple[str, dict]]]:
    """Job counts and (rule, wildcards) of a dry run. `args` may start with extra config files
    (they extend run_snakemake's `--configfile config/smoke.yaml`) and end with targets."""
    # `--configfile` takes every following word up to the next option: extra config files go
    # right after it, and "-n" ends the list before any target
    configs = [a for a in args if a.endswith((".yaml", ".yml"))]
    rest = [a for a in args if a not in configs]
    proc = run_snakemake(workdir, *configs, "-n", *rest)
    out = proc.stdout + proc.stderr
    return job_counts(out), scheduled_jobs(out)


def mtimes(paths) -> dict[Path, int]:
    return {Path(p): Path(p).stat().st_mtime_ns for p in paths}


@E2E
def test_finished_dag_has_nothing_to_do(smoke_copy):
    """The baseline the other tests rely on: a copied, finished DAG is up to date (no absolute
    paths in params, no code/params drift between the fixture and the copy)."""
    proc = run_snakemake(smoke_copy, "-n")
    out = proc.stdout + proc.stderr
    assert "Nothing to be done" in out, out[-3000:]


@E2E
def test_deleted_summary_retrains_only_that_run(smoke_copy):
    runs = summaries(smoke_copy)
    victim = sorted(r for r in runs if r.startswith("mlp-"))[0]
    target = smoke_copy / "results" / "runs" / victim / "summary.json"
    rel = str(target.relative_to(smoke_copy))
    others = mtimes(p for p in (smoke_copy / "results" / "runs").glob("*/summary.json")
                    if p != target)
    target.unlink()
    # asking for the file plans exactly one job: that run's training
    counts, jobs = dry_run(smoke_copy, rel)  # (targets go last: see dry_run)
    assert counts == {"train": 1, "total": 1}, counts
    assert jobs == [("train", {"run": victim})], jobs

    tables = {name: (target.parent / name).read_bytes() for name in ("train.csv", "eval.csv", "spec.json")}
    proc = run_snakemake(smoke_copy, "--cores", "1", rel)
    assert job_counts(proc.stdout + proc.stderr) == {"train": 1, "total": 1}
    assert target.exists()
    assert mtimes(others) == others, "another run's summary.json was rewritten"
    # the checkpoints survived (they are not outputs), so the job resumed instead of retraining
    log = (smoke_copy / "results" / "logs" / "train" / f"{victim}.log").read_text()
    steps = json.loads(target.read_text())["steps_done"]
    assert f"resuming {victim} from step {steps}" in log, log
    # ... and ended as before: the same tables (its summary.json has new wall times)
    assert {name: (target.parent / name).read_bytes() for name in tables} == tables
    # the run ends by saying where things are (onsuccess)
    assert "bnstudy: the workflow finished." in proc.stdout and "Figures:" in proc.stdout, proc.stdout

    # so a second snakemake has nothing to do: summary.json's wall times and timestamps redo
    # nothing downstream, and the tables it would redo from have the same bytes
    again = run_snakemake(smoke_copy, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]


REUSING = {
    # the noisy-BN runs again under another name (the bn_affine: another figure of them)
    "bn_affine": {"setup": "vgg", "variants": ["batchnorm", "noisy_batchnorm"], "lrs": [0.1], "seeds": [0],
                  "layers": [2, 5], "figures": ["train_accuracy"]},
    # the landscape study's runs with the same analysis settings: the same analysis tables
    "landscape_twin": {**smoke_raw()["studies"]["landscape"], "claims": []},
}


@E2E
def test_a_new_study_that_reuses_runs_trains_and_analyses_nothing(smoke_copy, tmp_path):
    """Which studies use a run is how MLflow labels it, not what the run is: adding a study that
    reuses existing runs (and their analyses) makes its own tables and figures, and nothing else."""
    extra = write_yaml(tmp_path / "reuse.yaml", {"studies": REUSING})
    cfg = smoke_raw()
    cfg["studies"].update(REUSING)
    p = plan(load_config(cfg))
    assert set(p.study_runs["bn_affine"]) | set(p.study_runs["landscape_twin"]) <= set(summaries(smoke_copy))
    counts, jobs = dry_run(smoke_copy, str(extra))
    for rule in ("prepare_data", "train", "analyze", "claims"):  # the new studies list no claim
        assert rule not in counts, (rule, counts)
    assert {w["study"] for rule, w in jobs if "study" in w} == set(REUSING), jobs
    assert counts.get("aggregate") == counts.get("figures") == 2, counts
    proc = run_snakemake(smoke_copy, str(extra), "--cores", "2")
    assert "train" not in job_counts(proc.stdout + proc.stderr)
    assert (smoke_copy / "results" / "figures" / "bn_affine" / "train_accuracy.png").is_file()
    again = run_snakemake(smoke_copy, str(extra), "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


@E2E
def test_changing_tracking_redoes_only_the_tracking_jobs(smoke_copy):
    """The tracking settings reach the training jobs through the context file each execution
    writes before its first job, no param or input of theirs: a renamed experiment retrains and
    reanalyses nothing, and the track job sends every run to the new experiment."""
    renamed = ["--config", 'tracking={"experiment": "renamed"}']
    counts, jobs = dry_run(smoke_copy, *renamed)
    assert set(counts) <= {"init_tracking", "track", "all", "total"}, counts
    assert counts.get("track") == 1, counts
    proc = run_snakemake(smoke_copy, "--cores", "1", *renamed)
    assert not {"train", "analyze"} & set(job_counts(proc.stdout + proc.stderr))
    runs = mlflow_training_runs(sqlite_uri(smoke_copy), "renamed")
    assert set(runs) == set(summaries(smoke_copy)), sorted(runs)
    context = json.loads((smoke_copy / "results" / "tracking" / "context.json").read_text())
    assert context["tracking"]["experiment"] == "renamed" and set(context["runs"]) == set(runs)
    again = run_snakemake(smoke_copy, "-n", *renamed)
    assert "Nothing to be done" in again.stdout + again.stderr


@E2E
def test_forcerun_aggregate_redoes_tables_and_downstream_but_no_training(smoke_copy):
    counts, jobs = dry_run(smoke_copy, "--forcerun", "aggregate")
    assert counts.get("aggregate") == len(SMOKE_STUDIES), counts
    for rule in ("figures", "claims", "track"):
        assert counts.get(rule, 0) >= 1, (rule, counts)
    for rule in ("train", "analyze", "prepare_data", "init_tracking"):
        assert rule not in counts, (rule, counts)
    assert {w["study"] for rule, w in jobs if rule == "aggregate"} == SMOKE_STUDIES


@E2E
def test_until_aggregate_stops_before_figures(smoke_copy):
    study = "mnist_2015"
    runs = [r for r in summaries(smoke_copy) if r.startswith("mlp-")]
    tables = sorted((smoke_copy / "results" / "tables" / study).glob("*.csv"))
    figures = sorted((smoke_copy / "results" / "figures" / study).glob("*.png"))
    assert runs and tables and figures, "the smoke DAG made no mnist_2015 runs/tables/figures"
    kept = mtimes(figures + [smoke_copy / "results" / "claims.csv"])
    # a retrained run with other numbers (new bytes in its tables) outdates its study's tables and
    # everything drawn from them. (A mere `touch` would not: Snakemake 9 keeps input checksums and
    # ignores a newer mtime when the content is unchanged; nor would a new summary.json, whose
    # wall times change on every retraining.) Same data, new bytes:
    table = smoke_copy / "results" / "runs" / runs[0] / "eval.csv"
    table.write_text(table.read_text() + "\n")
    counts, _ = dry_run(smoke_copy)
    assert counts.get("aggregate") == 1 and counts.get("figures", 0) >= 1 and "claims" in counts
    # ... but --until aggregate stops there
    counts, jobs = dry_run(smoke_copy, "--until", "aggregate")
    assert counts == {"aggregate": 1, "total": 1}, counts
    assert jobs == [("aggregate", {"study": study})], jobs
    before = mtimes(tables)
    proc = run_snakemake(smoke_copy, "--until", "aggregate", "--cores", "1")
    assert job_counts(proc.stdout + proc.stderr) == {"aggregate": 1, "total": 1}
    assert all(t.stat().st_mtime_ns > before[t] for t in tables), "tables not rewritten"
    assert mtimes(kept) == kept, "--until aggregate touched figures or claims"
    # what is left for a plain run is at most downstream of that study's tables (nothing, here:
    # the rewritten tables have the same bytes, so Snakemake's checksums spare the figures)
    counts, jobs = dry_run(smoke_copy)
    assert {w["study"] for rule, w in jobs if rule == "figures"} <= {study}, jobs
    assert not {"aggregate", "train", "analyze"} & set(counts), counts


@E2E
def test_changed_study_setting_reruns_only_that_study(smoke_copy, tmp_path):
    study, new_lr = "mnist_2015", 0.1
    lrs = smoke_raw()["studies"][study]["lrs"]
    assert new_lr not in lrs
    override = write_yaml(tmp_path / "more_lrs.yaml", {"studies": {study: {"lrs": lrs + [new_lr]}}})
    # two config files: smoke.yaml, then the change (later files win, keys merge)
    counts, jobs = dry_run(smoke_copy, str(override))
    trains = sorted(w["run"] for rule, w in jobs if rule == "train")
    variants = smoke_raw()["studies"][study]["variants"]
    assert len(trains) == len(variants), trains
    assert all(r.startswith("mlp-") and f"-lr{new_lr:g}-" in r for r in trains), trains
    assert not set(trains) & set(summaries(smoke_copy)), "an existing run would be retrained"
    studies = {w["study"] for rule, w in jobs if "study" in w}
    assert studies == {study}, f"jobs for other studies: {studies - {study}}"
    assert counts.get("aggregate") == 1 and "prepare_data" not in counts, counts
    # and the same dry run without the override still has nothing to do
    plain = run_snakemake(smoke_copy, "-n")
    assert "Nothing to be done" in plain.stdout + plain.stderr


@E2E
def test_a_killed_run_needs_no_snakemake_folklore(tmp_path):
    """kill -9 of Snakemake and its job mid-training leaves Snakemake's lock and 'incomplete'
    mark. The README's one recovery command (`snakemake --unlock && snakemake --cores N`: the
    workflow profile sets rerun-incomplete) finishes the run, resuming it from its checkpoint."""
    import os
    import signal
    import subprocess
    import time

    from helpers import SNAKEMAKE

    cfg = smoke_raw()
    cfg["setups"]["vgg"]["optim"]["steps"] = 800
    cfg["setups"]["vgg"]["checkpoints"] = {"dense_until": 0, "dense_every": 1, "every": 20}
    cfg["studies"] = {"performance": {**cfg["studies"]["performance"], "variants": ["batchnorm"]}}
    config = write_yaml(tmp_path / "long.yaml", cfg)
    base = [SNAKEMAKE, "--snakefile", str(Path(__file__).resolve().parents[1] / "Snakefile"),
            "--directory", str(tmp_path), "--configfile", str(config)]
    proc = subprocess.Popen(base + ["--cores", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    runs = tmp_path / "results" / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and not list(runs.glob("*/checkpoints/step_0000040.pt")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((tmp_path / ".snakemake" / "incomplete").iterdir()), "no incomplete mark left"
    assert not list(runs.glob("*/summary.json")), "the run finished before the kill"
    recover = subprocess.run(["bash", "-c", f"{' '.join(base)} --unlock && {' '.join(base)} --cores 1"],
                             capture_output=True, text=True, timeout=900)
    assert recover.returncode == 0, recover.stderr[-3000:]
    (summary,) = list(runs.glob("*/summary.json"))
    assert json.loads(summary.read_text())["steps_done"] == 800
    log = (tmp_path / "results" / "logs" / "train" / f"{summary.parent.name}.log").read_text()
    assert "resuming" in log


# -- the README's commands, targets a config does not make


def readme_block(heading: str, index: int = 0) -> list[str]:
    """The command lines (comments and blank lines dropped) of a README section's index-th bash block."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[index]
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def checkout_copy(tmp_path: Path) -> Path:
    """What `snakemake` needs from the repository root, so the default config can run as written
    without writing into the checkout's own results folder."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("Snakefile", "workflow", "config", "profiles", "envs", "src"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, work / name)
    return work


@E2E
def test_readme_rerun_commands_run_verbatim(tmp_path, smoke_dag):
    """Each command of 'Rerunning one stage or one run' as written, from a copy of the checkout:
    on the default config as dry runs (-n: training the default DAG would take minutes), with <run>
    an id `bnstudy plan` prints (an analysed one for the analysis folder); the other-config lines
    (`--configfile=config/smoke.yaml`, the report among them) as they are, on the session's smoke
    results copied in."""
    work = checkout_copy(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    section = "Rerunning one stage or one run"
    smoke = readme_block(section, 1)
    assert smoke and all("--configfile=config/smoke.yaml" in c for c in smoke), smoke
    shutil.copytree(smoke_dag / "results", work / "results", symlinks=True)
    shutil.copytree(smoke_dag / ".snakemake", work / ".snakemake", symlinks=True)
    for command in smoke:
        proc = subprocess.run(shlex.split(command), cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{(proc.stdout + proc.stderr)[-3000:]}"
        assert "train" not in job_counts(proc.stdout + proc.stderr), command  # it was all made
    assert (work / "report.html").stat().st_size > 10_000
    shutil.rmtree(work / "results")
    shutil.rmtree(work / ".snakemake")

    p = plan(load_config(work / "config" / "config.yaml"))
    commands = readme_block(section) + readme_block(section, 2)
    expected = {  # what each target plans, at least: the command does what its comment says
        "results/runs/<run>/summary.json": {"train"}, "results/analysis/<run>": {"analyze"},
        "results/tables/landscape": {"aggregate"}, "results/figures/landscape": {"figures"},
        "--forcerun figures": {"figures"}, "--forcerun aggregate": {"aggregate"},
        "--until aggregate": {"aggregate"}}
    for command in commands:
        run = p.analysed_runs()[0] if "results/analysis/<run>" in command else next(iter(p.runs))
        line = command.replace("<run>", run)
        for part in line.split(" && "):  # `snakemake --unlock && snakemake --cores 2`
            args = shlex.split(part)
            if args[0] == "snakemake" and "--unlock" not in args:
                args.insert(1, "-n")
            proc = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 0, f"{part}\n{out[-3000:]}"
            for key, rules in expected.items():
                if key in command and args[0] == "snakemake":
                    assert rules <= set(job_counts(out)), (part, job_counts(out))
            if "--until aggregate" in part:
                assert not {"figures", "claims", "track"} & set(job_counts(out)), job_counts(out)
            if args[0] == "bnstudy":
                assert run in out


@E2E
def test_a_target_the_config_does_not_make_gets_one_line(tmp_path):
    """A run id of another config, a study or dataset it lacks, the analyses of a run no study
    analyses: one line naming the config and what to pass, no InputFunctionException/KeyError."""
    p = plan(load_config(REPO / "config" / "smoke.yaml"))
    unanalysed = next(r for r in p.runs if r not in p.analysed_runs())
    cases = {"results/runs/vgg-batchnorm-lr0.1-s0-00000000/summary.json": "has no run 'vgg-batchnorm-lr0.1-s0-00000000'",
             "results/tables/nope": "has no study 'nope'",
             "results/figures/nope": "has no study with figures 'nope'",
             "results/data/nope.pt": "has no dataset 'nope'",
             f"results/analysis/{unanalysed}": f"has no analysed run '{unanalysed}'"}
    for target, message in cases.items():
        proc = run_snakemake(tmp_path, "-n", target, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, target
        lines = [line for line in out.splitlines() if line.startswith("bnstudy:")]
        assert len(lines) == 1 and message in lines[0], (target, out[-2000:])
        assert "config/smoke.yaml" in lines[0] and "--configfile=<that config>" in lines[0]
        assert "InputFunctionException" not in out and "KeyError" not in out, out[-2000:]
    # the = form the README shows for other configs: the word after it is a target, where
    # `--configfile config/smoke.yaml results/tables/landscape` would read it as a config file
    from helpers import SNAKEMAKE

    proc = subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                           f"--configfile={REPO / 'config' / 'smoke.yaml'}", "results/tables/landscape", "-n"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    assert "aggregate" in job_counts(proc.stdout + proc.stderr)


# -- datasets: the source decides the preparation, a failing preparation keeps the prepared file


def test_a_prepared_dataset_needs_its_path_only_when_its_source_changed(tmp_path):
    """The config check reads the record beside a prepared file (rule prepare_data's <name>.json):
    prepared from the configured source, the raw data may be gone; a changed source (path, subset
    size) is prepared again, so its path must exist, checked before any job."""
    cfg = smoke_raw()
    cfg["results"] = str(tmp_path / "results")
    raw_data = tmp_path / "raw"
    cfg["datasets"]["images"] = {"source": "imagefolder", "root": str(raw_data), "classes": 10,
                                 "n_train": 256, "n_test": 128}
    for split in ("train", "test"):  # the check counts files; it never opens them
        for c in range(10):
            (raw_data / split / f"class{c}").mkdir(parents=True)
            for i in range(26):
                (raw_data / split / f"class{c}" / f"{i}.png").touch()
    source = load_config(cfg)["datasets"]["images"]
    shutil.rmtree(raw_data)
    with pytest.raises(ConfigError, match="datasets.images.root"):
        load_config(cfg)  # nothing prepared: the raw data is needed
    data = tmp_path / "results" / "data"
    data.mkdir(parents=True)
    (data / "images.pt").write_bytes(b"prepared")
    # how it was fetched (`download`) is not part of the source
    (data / "images.json").write_text(json.dumps({"prepared_from": {**source, "download": True}}))
    assert load_config(cfg)["datasets"]["images"]["root"] == str(raw_data)  # the same source
    for key, value in (("root", str(tmp_path / "elsewhere")), ("n_train", 200)):
        changed = {**cfg, "datasets": {**cfg["datasets"], "images": {**cfg["datasets"]["images"], key: value}}}
        with pytest.raises(ConfigError, match="datasets.images.root"):
            load_config(changed)


@E2E
def test_a_changed_dataset_path_stops_at_parse_time_and_keeps_the_prepared_file(tmp_path):
    prepared = tmp_path / "results" / "data" / "images.pt"
    proc = run_snakemake(tmp_path, "--cores", "1", "results/data/images.pt")
    assert prepared.is_file() and (prepared.with_suffix(".json")).is_file(), proc.stderr[-2000:]
    before = prepared.read_bytes(), prepared.stat().st_mtime_ns

    # a path that does not exist: stopped before any job, the prepared file untouched
    missing = write_yaml(tmp_path / "missing.yaml", {"datasets": {"images": {
        "source": "imagefolder", "root": str(tmp_path / "no-such-folder"), "classes": 10}}})
    for target in ([], ["results/data/images.pt"]):
        proc = run_snakemake(tmp_path, str(missing), "--cores", "1", *target, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "datasets.images.root" in out, out[-2000:]
        assert "Building DAG" not in out, "the check ran after Snakemake started planning jobs"
    assert (prepared.read_bytes(), prepared.stat().st_mtime_ns) == before

    # a path that exists but cannot be prepared (files that are not images): the job fails, the
    # prepared file stays (the new one would have been put in place only once complete), and the
    # run ends naming the job's log
    for split in ("train", "test"):
        for c in range(10):
            folder = tmp_path / "broken" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(26):
                (folder / f"{i}.png").write_bytes(b"not an image")
    broken = write_yaml(tmp_path / "broken.yaml", {"datasets": {"images": {
        "source": "imagefolder", "root": str(tmp_path / "broken"), "classes": 10, "n_train": 256, "n_test": 128}}})
    counts, _ = dry_run(tmp_path, str(broken), "results/data/images.pt")
    assert counts == {"prepare_data": 1, "install_data": 1, "total": 2}, counts
    proc = run_snakemake(tmp_path, str(broken), "--cores", "1", "results/data/images.pt", check=False)
    assert proc.returncode != 0
    assert (prepared.read_bytes(), prepared.stat().st_mtime_ns) == before, "a failing preparation touched the data"
    # ... and the next run with that config tries again (the failure left no record of success)
    counts, _ = dry_run(tmp_path, str(broken), "results/data/images.pt")
    assert counts == {"prepare_data": 1, "install_data": 1, "total": 2}, counts
    assert re.search(r"^bnstudy: job prepare_data failed: read results/logs/prepare_data/images-[0-9a-f]{8}\.log$",
                     proc.stdout + proc.stderr, re.M), (proc.stdout + proc.stderr)[-3000:]
    # back to the configured source: nothing to prepare
    proc = run_snakemake(tmp_path, "-n", "results/data/images.pt")
    assert "Nothing to be done" in proc.stdout + proc.stderr
