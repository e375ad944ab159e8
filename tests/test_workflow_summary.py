"""What the workflow says at its end (bnstudy.summary, called by the Snakefile's onsuccess and
onerror): the short claims table read from a fixture claims.csv with the csv module only, where the
figures, the report and the MLflow store are with the command that opens each, the one log of a
failed job, and the one line for a target the config does not make. Fast: no workflow runs."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from bnstudy.summary import (config_option, failed_jobs, failure_line, success_lines, unknown_target)

COLUMNS = ["key", "claim", "source", "study", "measure", "window", "unit", "effect", "ci_low", "ci_high",
           "p_value", "test", "n_seeds", "paper", "verdict", "agreement", "rule", "reason"]


def write_claims(results: Path) -> Path:
    rows = [
        {"key": "higher_learning_rates.usable_lr.final", "claim": "BN allows higher learning rates",
         "study": "claim_learning_rate", "window": "end of training", "effect": "0.69897",
         "ci_low": "", "ci_high": "", "p_value": "0.03125", "verdict": "supported"},
        {"key": "smoother_landscape.loss_range.late", "claim": "BN makes the loss landscape smoother",
         "study": "landscape", "window": "late", "effect": "-0.41", "ci_low": "-0.9", "ci_high": "0.08",
         "p_value": "", "verdict": "inconclusive"},
        {"key": "noisy_bn_trains.accuracy.final", "claim": "noisy BN still trains", "study": "noisy_bn",
         "window": "end of training", "effect": "", "ci_low": "", "ci_high": "", "p_value": "",
         "verdict": "inconclusive"},
    ]
    path = results / "claims.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        writer.writerows({c: row.get(c, "x") for c in COLUMNS} for row in rows)
    return path


def test_success_names_claims_figures_report_and_mlflow(tmp_path):
    results = tmp_path / "results"
    write_claims(results)
    for study in ("landscape", "noisy_bn"):
        (results / "figures" / study).mkdir(parents=True)
        (results / "figures" / study / "accuracy.png").write_bytes(b"png")
    lines = success_lines(str(results), {"enabled": True, "uri": None, "experiment": "bnstudy"}, [],
                          opener="xdg-open")
    text = "\n".join(lines)
    # the short table: one line per row, claim, study, verdict and effect with its interval or p
    table = [line for line in lines if "claim_learning_rate" in line or "landscape" in line.split()
             or "noisy_bn" in line.split()]
    assert len(table) == 3, text
    assert "supported" in table[0] and "+0.699 (p = 0.0312)" in table[0], table[0]
    assert "-0.41 [-0.9, +0.08]" in table[1] and "inconclusive" in table[1], table[1]
    assert table[2].rstrip().endswith("-"), table[2]  # no effect: a dash, not 'nan'
    assert "1 supported, 2 inconclusive" in text
    # where each thing is, and the one command that opens it (the default config: no --configfile)
    assert f"Figures: {results / 'figures'}" in text and "(2 figures, 2 studies)" in text
    assert f"xdg-open {results / 'figures'}" in text
    assert "snakemake --report report.html && xdg-open report.html" in text
    assert f"mlflow ui --backend-store-uri sqlite:///{results / 'mlflow.db'}" in text
    assert "nan" not in text.lower()


def test_success_with_another_config_a_server_and_no_claims_yet(tmp_path):
    results = tmp_path / "results"
    lines = success_lines(str(results), {"enabled": True, "uri": "http://10.0.0.5:5000", "experiment": "e"},
                          ["config/smoke.yaml"], opener="open")
    text = "\n".join(lines)
    assert "Claims: none yet" in text and "snakemake --configfile=config/smoke.yaml --cores 2" in text
    assert "snakemake --configfile=config/smoke.yaml --report report.html && open report.html" in text
    assert "open: http://10.0.0.5:5000" in text
    off = "\n".join(success_lines(str(results), {"enabled": False}, []))
    assert "tracking is off" in off


def test_success_reads_claims_without_torch_or_pandas(tmp_path):
    """It runs in the Snakemake process after the last job: the standard library only."""
    results = tmp_path / "results"
    write_claims(results)
    code = ("import sys; from bnstudy.summary import on_success; "
            f"on_success({str(results)!r}, {{'enabled': True, 'uri': None, 'experiment': 'x'}}, []); "
            "bad = [m for m in ('torch', 'pandas', 'matplotlib', 'mlflow') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "BN allows higher learning rates" in proc.stdout


def test_a_malformed_claims_table_is_reported_not_raised(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "claims.csv").write_bytes(b"\xff\xfe\x00bad")
    text = "\n".join(success_lines(str(results), {"enabled": False}, []))
    assert "could not be read" in text


SNAKEMAKE_LOG = """\
Building DAG of jobs...
[Mon Dec  7 13:20:01 2026]
rule train:
    input: results/data/images.pt
    output: results/runs/vgg-a/summary.json
    log: results/logs/train/vgg-a.log
    jobid: 4
    wildcards: run=vgg-a
[Mon Dec  7 13:20:05 2026]
Error in rule train:
    message: None
    jobid: 4
    input: results/data/images.pt
    output: results/runs/vgg-a/summary.json
    log: results/logs/train/vgg-a.log (check log file(s) for error details)
    shell:
        python -m bnstudy train ...
        (command exited with non-zero exit code)
    wildcards: run=vgg-a
Removing output files of failed job train since they might be corrupted:
results/runs/vgg-a/summary.json
Error in rule prepare_data:
    jobid: 1
    log: results/logs/prepare_data/images.log (check log file(s) for error details)
    wildcards: dataset=images
Shutting down, this might take some time.
Exiting because a job execution failed. Look below for error messages
"""


def test_failure_names_the_failed_jobs_log(tmp_path):
    log = tmp_path / "snakemake.log"
    log.write_text(SNAKEMAKE_LOG)
    assert [j["log"] for j in failed_jobs(log)] == ["results/logs/train/vgg-a.log",
                                                    "results/logs/prepare_data/images.log"]
    line = failure_line(log)
    assert "\n" not in line
    assert line.startswith("bnstudy: job train (run=vgg-a) failed: read results/logs/train/vgg-a.log")
    assert f"1 more failed (see {log})" in line
    # no job failed (a scheduling or DAG error), or no log at all: still one line
    empty = tmp_path / "empty.log"
    empty.write_text("Building DAG of jobs...\n")
    assert "\n" not in failure_line(empty) and "before a job failed" in failure_line(empty)
    assert "\n" not in failure_line(None)


def test_unknown_target_says_which_config_and_what_to_pass():
    line = unknown_target("run", "vgg-x-1", ["config/smoke.yaml"])
    assert "\n" not in line
    assert "config/smoke.yaml has no run 'vgg-x-1'" in line
    assert "bnstudy plan config/smoke.yaml --runs" in line and "--configfile=<that config>" in line
    assert "config/config.yaml has no study 'nope'" in unknown_target("study", "nope", [], ["a", "b"])
    assert config_option([]) == "" and config_option(["c.yaml"]) == "--configfile=c.yaml "
