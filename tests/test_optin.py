"""The README's test command must pass on a bare machine: tests that need a service (Slurm, a
browser) are collected only with their opt-in flag, whether they carry the marker or only use the
service's fixture."""

import subprocess
import sys

from helpers import REPO


def collected(*flags: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *flags,
                           "tests/test_browser.py", "tests/test_slurm.py"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr  # 5 = nothing collected
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_service_tests_are_deselected_without_their_flags():
    bare = collected()
    assert not [t for t in bare if "test_browser.py" in t], bare
    # only the profile check (no cluster needed) runs without --slurm
    assert all("test_profile_requests" in t for t in bare if "test_slurm.py" in t), bare


def test_service_tests_are_collected_with_their_flags():
    with_flags = collected("--browser", "--slurm")
    assert any("test_mlflow_ui_shows_the_smoke_runs" in t for t in with_flags), with_flags
    assert any("test_requeued_train_job_resumes" in t for t in with_flags), with_flags
