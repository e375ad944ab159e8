"""The Slurm profile (profiles/slurm) on a real, single-node Slurm cluster.

Opt-in: `pytest --slurm` (CI: tests/harness/ci_services.sh, or `sudo bash tests/harness/slurm.sh`,
starts the cluster: slurmctld + slurmd + slurmdbd/MariaDB, so `sacct` works, and 2 fake GPUs so
the profile's `gpu: 1` requests are scheduled as on a GPU cluster).

The tests use the repository's profile unchanged, plus a second `--profile` that only scales it to
this 2-core machine: one core per job instead of 4 (set-threads), at most 2 GB per job, quick
status polling, and successful jobs' Slurm logs kept. Partition and account come through the
profile's `$BNSTUDY_SLURM_PARTITION`/`$BNSTUDY_SLURM_ACCOUNT`, as for a user.

The DAG is config/smoke.yaml restricted to the ics_dln study (a second --configfile): every rule,
CPU and GPU, plus one extra target that fails (a dataset whose files cannot be decoded), so one
Snakemake run shows both completed and failed jobs. Only data preparation, training and analysis
go through sbatch; bookkeeping and plotting are local rules. A second run requeues a training job.
The profile's dry-run test at the end needs no cluster and always runs.
"""

from __future__ import annotations

import copy
import csv
import io
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from helpers import (
    REPO, job_counts, mlflow_training_runs, only_studies, read_rows, sqlite_uri, summaries,
    write_yaml,
)

from conftest import require_flag
from helpers import run_snakemake

PROFILE = REPO / "profiles" / "slurm"
HARNESS = REPO / "tests" / "harness" / "slurm.sh"
PARTITION = os.environ.get("SLURM_PARTITION", "debug")  # what tests/harness/slurm.sh creates
ACCOUNT = os.environ.get("SLURM_ACCOUNT", "bnstudy")
SLURM_ENV = {"BNSTUDY_SLURM_PARTITION": PARTITION, "BNSTUDY_SLURM_ACCOUNT": ACCOUNT}
GPU_RULES = {"train", "analyze"}
CLUSTER_RULES = GPU_RULES | {"prepare_data"}
LOCAL_RULES = {"install_data", "init_tracking", "aggregate", "figures", "claims", "track", "all"}
STUDIES = ("ics_dln",)
BROKEN = "broken"  # a dataset whose preparation fails


# ---------------------------------------------------------------------------------------------
# helpers


def repo_profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def machine_profile(folder: Path, retries: int) -> Path:
    """A second profile scaling the repository's one to this machine (it replaces the top-level
    keys it names, so set-resources is the repository's with only the memory capped)."""
    base = repo_profile()
    resources = copy.deepcopy(base["set-resources"])
    assert not set(resources) & LOCAL_RULES, "a local rule never reaches Slurm: no resources for it"
    for values in resources.values():
        if "mem_mb" in values:
            values["mem_mb"] = min(values["mem_mb"], 2000)
    write_yaml(folder / "config.yaml", {
        "set-threads": {rule: 1 for rule in base.get("set-threads", {})},
        "set-resources": resources,
        "retries": retries,
        "latency-wait": 5,
        # the plugin polls `init` s after a job finished, then 10 s later each time: 5 catches
        # the ~10-20 s jobs of this machine at the 2nd poll (2 would need a 3rd, at 36 s)
        "slurm-init-seconds-before-status-checks": 5,
        "slurm-keep-successful-logs": True,
    })
    return folder


def slurm_snakemake(workdir: Path, *configs: str, targets: tuple[str, ...] = (), retries: int = 0,
                    check: bool = True, timeout: int = 900):
    """Snakemake with the repository's profile plus the machine profile. `configs` extend
    config/smoke.yaml; targets go last (`--configfile` would swallow them otherwise)."""
    profile = machine_profile(workdir.parent / f"profile-{workdir.name}", retries)
    return run_snakemake(workdir, *configs, "--profile", str(PROFILE), "--profile", str(profile),
                         *targets, env=SLURM_ENV, check=check, timeout=timeout)


def slurm_run_id(output: str) -> str:
    m = re.search(r"SLURM run ID: (\S+)", output)
    assert m, f"no 'SLURM run ID' in the snakemake output:\n{output[-3000:]}"
    return m.group(1)


def sacct(run_uuid: str | None = None, job: str | None = None, duplicates: bool = False) -> list[dict]:
    """Accounting records (one per job; with duplicates=True one per requeued attempt too)."""
    cmd = ["sacct", "-X", "-P", "--starttime", "now-6hours",
           "--format", "JobIDRaw,JobName,State,ExitCode,Start,End,AllocTRES,Comment,Account,Partition"]
    if run_uuid:
        cmd += ["--name", run_uuid]
    if job:
        cmd += ["-j", job]
    if duplicates:
        cmd.append("-D")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return list(csv.DictReader(io.StringIO(out), delimiter="|"))


def rule_of(record: dict) -> str:
    m = re.match(r"rule_([A-Za-z0-9_]+?)(?:_wildcards_.*)?$", record["Comment"])
    assert m, f"job {record['JobIDRaw']} has no rule comment: {record['Comment']!r}"
    return m.group(1)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def cluster(request):
    """The test cluster is up (starting it when we may, i.e. as root); sacct answers."""
    require_flag(request, "slurm")
    if not shutil.which("sbatch"):
        pytest.fail("--slurm given but Slurm is not installed: run tests/harness/ci_services.sh")
    status = subprocess.run(["bash", str(HARNESS), "status"], capture_output=True, text=True)
    if status.returncode != 0:
        if os.geteuid() != 0:
            pytest.fail("no Slurm cluster is running: start one with `sudo bash tests/harness/slurm.sh`")
        start = subprocess.run(["bash", str(HARNESS)], capture_output=True, text=True, timeout=600)
        assert start.returncode == 0, f"tests/harness/slurm.sh failed:\n{start.stdout}\n{start.stderr}"
    info = subprocess.run(["sinfo", "-h", "-o", "%P %G"], capture_output=True, text=True).stdout
    assert "gpu:" in info, f"the test cluster advertises no GPUs (FAKE_GPUS=0?): {info}"


@pytest.fixture(scope="module")
def slurm_dag(cluster, tmp_path_factory):
    """The smoke DAG subset through sbatch, plus one target that fails at run time (a dataset
    that passes every config check, but whose image files cannot be decoded); keep-going (the
    profile's) finishes everything else. Returns (workdir, snakemake's return code and output,
    the plugin's run uuid, the undecodable file)."""
    root = tmp_path_factory.mktemp("slurm")
    work = root / "work"
    work.mkdir()
    images = root / "corrupt-images"
    for split in ("train", "test"):
        for label in ("a", "b"):
            (images / split / label).mkdir(parents=True)
            (images / split / label / "0.jpg").write_bytes(b"not a jpeg")
    missing = sorted((images / "train").glob("*/0.jpg"))[0]
    override = write_yaml(root / "studies.yaml", {
        **only_studies(*STUDIES),
        "datasets": {BROKEN: {"source": "imagefolder", "root": str(images), "classes": 2}}})
    proc = slurm_snakemake(work, str(override), targets=("all", f"results/data/{BROKEN}.pt"),
                           check=False)
    out = proc.stdout + proc.stderr
    return work, proc.returncode, out, slurm_run_id(out), missing


# ---------------------------------------------------------------------------------------------
# the DAG through Slurm


@pytest.mark.slurm
def test_outputs_appear(slurm_dag):
    work, _, out, _, _ = slurm_dag
    results = work / "results"
    for path in ("claims.csv", "claims.md", "tracking/track.json"):
        assert (results / path).is_file(), path
    claims = read_rows(results / "claims.csv")
    assert claims, "claims.csv is empty"
    for study in STUDIES:
        assert read_rows(results / "tables" / study / "runs.csv")
        assert list((results / "figures" / study).glob("*.png")), study
    runs = summaries(work)
    assert len(runs) == 2 and all(s["status"] == "completed" for s in runs.values()), runs


@pytest.mark.slurm
def test_cluster_jobs_went_through_sbatch_and_bookkeeping_stayed_local(slurm_dag):
    """Exactly the data, training and analysis jobs were sbatch jobs, each completed: one per
    dataset, run and analysed run (2 datasets, 2 runs, 2 analysed runs); bookkeeping and
    plotting ran where Snakemake runs."""
    work, _, out, run_uuid, _ = slurm_dag
    counts = job_counts(out)
    submitted = {rule: n for rule, n in counts.items() if rule in CLUSTER_RULES}
    assert submitted == {"prepare_data": 2, "train": 2, "analyze": 2}, counts
    assert set(counts) - {"total"} - CLUSTER_RULES <= LOCAL_RULES, counts
    # prepare_data's wildcards are the dataset and a hash of its source: rule_prepare_data_wildcards_<name>_<hash>
    records = [r for r in sacct(run_uuid) if f"_wildcards_{BROKEN}_" not in r["Comment"]]
    submitted["prepare_data"] -= 1  # the deliberately failing job: see the next test
    assert len(records) == sum(submitted.values()) == 5, (counts, [r["Comment"] for r in records])
    by_rule: dict[str, int] = {}
    for record in records:
        by_rule[rule_of(record)] = by_rule.get(rule_of(record), 0) + 1
        assert record["State"] == "COMPLETED", record
        assert record["Account"] == ACCOUNT and record["Partition"] == PARTITION, record
    assert by_rule == submitted
    # the plugin's per-job logs (kept for successful jobs by the test profile)
    logs = list((work / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} >= {r["JobIDRaw"] for r in records}, logs


@pytest.mark.slurm
def test_failing_job_is_reported_failed(slurm_dag):
    work, returncode, out, run_uuid, missing = slurm_dag
    assert returncode != 0, out[-3000:]
    assert "Error in rule prepare_data" in out, out[-3000:]
    failed = [r for r in sacct(run_uuid) if r["State"] != "COMPLETED"]
    assert [(rule_of(r), r["Comment"].startswith(f"rule_prepare_data_wildcards_{BROKEN}_"), r["State"])
            for r in failed] == [("prepare_data", True, "FAILED")], failed
    assert failed[0]["ExitCode"] != "0:0"
    (log,) = [p.read_text() for p in (work / "results" / "logs" / "prepare_data").glob(f"{BROKEN}-*.log")]
    assert str(missing) in log, log
    # the failed job's Slurm log is kept for inspection; no output is left behind
    assert list((work / ".snakemake" / "slurm_logs").rglob(f"{failed[0]['JobIDRaw']}.log"))
    assert not (work / "results" / "data" / f"{BROKEN}.pt").exists()


@pytest.mark.slurm
def test_gpu_rules_got_a_gpu_and_cpu_rules_none(slurm_dag):
    run_uuid = slurm_dag[3]
    records = sacct(run_uuid)
    assert {rule_of(r) for r in records} == CLUSTER_RULES
    for record in records:
        tres = dict(kv.split("=", 1) for kv in record["AllocTRES"].split(",") if "=" in kv)
        if rule_of(record) in GPU_RULES:
            assert tres.get("gres/gpu") == "1", record
        else:
            assert "gres/gpu" not in tres, record
        assert tres.get("cpu") == "1", record  # the machine profile's set-threads


@pytest.mark.slurm
def test_jobs_ran_concurrently(slurm_dag):
    run_uuid = slurm_dag[3]
    spans = [(ts(r["Start"]), ts(r["End"]), rule_of(r)) for r in sacct(run_uuid)]
    overlaps = [(a[2], b[2], min(a[1], b[1]) - max(a[0], b[0]))
                for i, a in enumerate(spans) for b in spans[i + 1:]]
    best = max(overlaps, key=lambda o: o[2])
    assert best[2] >= 1, f"no two Slurm jobs overlapped in time: {sorted(spans)}"
    # and in particular two GPU jobs shared the node's two (fake) GPUs at once
    gpu = [s for s in spans if s[2] in GPU_RULES]
    assert any(min(a[1], b[1]) - max(a[0], b[0]) >= 1
               for i, a in enumerate(gpu) for b in gpu[i + 1:]), sorted(gpu)


@pytest.mark.slurm
def test_cluster_jobs_tracked_as_one_execution(slurm_dag):
    work = slurm_dag[0]
    tracked = mlflow_training_runs(sqlite_uri(work), "bnstudy-smoke")
    assert set(tracked) == set(summaries(work))
    runs = [r for rs in tracked.values() for r in rs]
    assert all(r.info.status == "FINISHED" for r in runs)
    # BNSTUDY_EXECUTION reached every sbatch job through the exported environment
    executions = {r.data.tags["bnstudy.execution"] for r in runs}
    assert len(executions) == 1 and "manual" not in executions, executions


# ---------------------------------------------------------------------------------------------
# preemption


@pytest.mark.slurm
def test_requeued_train_job_resumes_from_its_checkpoint(cluster, tmp_path):
    """Preemption with requeue: Slurm SIGTERMs the running train job and starts it again; the
    new attempt resumes from the last checkpoint and continues the same MLflow run. Snakemake
    (retries 0) never sees a failure."""
    work = tmp_path / "work"
    work.mkdir()
    steps = 20000  # long enough (tens of seconds) to be caught running, however fast the machine
    override = write_yaml(tmp_path / "long.yaml", {
        **only_studies("mnist_2015"),
        "studies": {**only_studies("mnist_2015")["studies"],
                    "mnist_2015": {"enabled": True, "variants": ["batchnorm"], "claims": []}},
        "setups": {"mlp": {"optim": {"steps": steps},
                           "checkpoints": {"dense_until": 0, "dense_every": 1, "every": 100},
                           "log": {"train_every": 1, "eval_every": 5000, "layers_every": 1000}}}})
    profile = machine_profile(tmp_path / "profile", retries=0)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(work), "--configfile", str(REPO / "config" / "smoke.yaml"),
           str(override), "--until", "train", "--profile", str(PROFILE), "--profile", str(profile)]
    snakemake = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env={**os.environ, **SLURM_ENV})
    try:
        def running_train_job():
            if snakemake.poll() is not None:  # it stopped before the job could be requeued
                raise AssertionError(f"snakemake exited {snakemake.returncode}:\n{snakemake.stdout.read()[-4000:]}")
            out = subprocess.run(["squeue", "-h", "-o", "%i|%k|%T"], capture_output=True,
                                 text=True).stdout
            jobs = [line.split("|") for line in out.split()]
            ids = [j[0] for j in jobs if j[1].startswith("rule_train") and j[2] == "RUNNING"]
            ckpts = list(work.glob("results/runs/*/checkpoints/step_*.pt"))
            past = [p for p in ckpts if int(p.stem.split("_")[1]) >= 200]
            return ids[0] if ids and past else None

        job = wait_until(running_train_job, 300, 0.1, "a running train job past step 200")
        run_dir = next(work.glob("results/runs/mlp-*"))
        subprocess.run(["scontrol", "requeue", job], check=True)
        # a requeued job waits ~2 min (BeginTime) before it may start again: skip that wait
        # (the update fails while the job is still completing, and once it runs again)
        def released():
            state = sacct(job=job)[0]["State"]
            if state == "PENDING":
                return subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"],
                                      capture_output=True).returncode == 0
            return state in ("RUNNING", "COMPLETED")  # already restarted

        wait_until(released, 60, 0.5, "the requeued job to be released")
        out, _ = snakemake.communicate(timeout=600)
    finally:
        if snakemake.poll() is None:
            snakemake.kill()
    assert snakemake.returncode == 0, out[-4000:]
    attempts = sacct(job=job, duplicates=True)
    assert [a["State"] for a in attempts] == ["REQUEUED", "COMPLETED"], attempts
    run = run_dir.name
    summary = summaries(work)[run]
    assert summary["status"] == "completed" and summary["steps_done"] == steps
    log = (work / "results" / "logs" / "train" / f"{run}.log").read_text()
    m = re.search(rf"resuming {re.escape(run)} from step (\d+)", log)
    assert m and 200 <= int(m.group(1)) < steps, log[-2000:]
    assert len(read_rows(run_dir / "train.csv")) == steps
    # one MLflow run across both attempts; the first attempt recorded why it stopped
    (tracked,) = mlflow_training_runs(sqlite_uri(work), "bnstudy-smoke")[run]
    assert tracked.info.run_id == summary["mlflow_run_id"]
    assert tracked.info.status == "FINISHED"
    assert tracked.data.tags.get("failure") == "SystemExit: 143", tracked.data.tags


# ---------------------------------------------------------------------------------------------
# no cluster needed: what the profile asks Slurm for


def test_profile_requests(tmp_path):
    """A dry run with the repository's profile: GPU rules ask for one GPU, the data rule none, and
    partition/account come from the environment (no cluster needed; that the local rules stay off
    the queue is what the sbatch count of the cluster test shows)."""
    profile = repo_profile()
    assert profile["executor"] == "slurm"
    assert set(profile["set-resources"]) == CLUSTER_RULES
    # (--cores: a dry run caps threads at --cores, 1 by default; a real Slurm run does not)
    proc = run_snakemake(tmp_path, "-n", "--cores", "64", "--profile", str(PROFILE),
                         env={"BNSTUDY_SLURM_PARTITION": "gpupart", "BNSTUDY_SLURM_ACCOUNT": "proj1"})
    out = proc.stdout + proc.stderr
    blocks = re.findall(r"^rule (\w+):\n(.*?)^\s*resources: (.*?)$", out, re.M | re.S)
    assert blocks, out[-3000:]
    seen = set()
    for rule, body, resources in blocks:
        seen.add(rule)
        if rule not in CLUSTER_RULES:
            continue
        res = dict(kv.split("=", 1) for kv in resources.split(", "))
        assert res["slurm_partition"] == "gpupart" and res["slurm_account"] == "proj1", res
        assert int(res["runtime"]) > 0 and int(res["mem_mb"]) > 0, res
        if rule in GPU_RULES:
            assert res.get("gpu") == "1", (rule, res)
            assert int(res["mem_mb"]) == profile["set-resources"][rule]["mem_mb"]
            # --cpus-per-task = threads, from set-threads
            assert f"threads: {profile['set-threads'][rule]}" in body, (rule, body)
        else:
            assert "gpu" not in res, (rule, res)
    assert seen >= CLUSTER_RULES, seen
