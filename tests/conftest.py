"""Shared fixtures. The end-to-end fixtures run the real Snakefile on config/smoke.yaml in a
temporary working directory, once per test session, so several tests can read one DAG's outputs.

Tests that need a service that is absent on a user's machine are opt-in, not skipped:
`--slurm` (a Slurm cluster: tests/harness/slurm.sh starts one) and `--browser` (Debian's
chromium + chromedriver). CI passes both (see .ci/run).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import run_snakemake


def pytest_configure(config):
    """Under pytest-xdist (`-n 2`), each worker computes on one thread: two workers with torch's
    default of one thread per core would oversubscribe the cores. Set before any test imports
    torch; jobs the tests start as processes inherit it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")
        try:
            import torch
        except ImportError:  # torch-free test runs
            return
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def away_from_the_checkout(tmp_path, monkeypatch):
    """Every test runs in its own empty folder, so a relative `results:` (every shipped config's)
    never reads or writes the checkout's `results/`: the suite passes whatever a user's last DAG
    left there. Tests name the checkout's files by absolute path (REPO / ...)."""
    monkeypatch.chdir(tmp_path)


def pytest_addoption(parser):
    parser.addoption("--slurm", action="store_true", help="run the tests that need a Slurm cluster")
    parser.addoption("--browser", action="store_true", help="run the tests that need chromium")


# the fixtures that start or drive a service, by the opt-in flag they need: a test that uses one
# is opt-in even if its marker was forgotten (a bare machine must pass the default run)
SERVICE_FIXTURES = {"cluster": "slurm", "browser": "browser"}


def needed_services(item) -> set[str]:
    """The opt-in services a collected test needs: its markers and its service fixtures."""
    marked = {m for m in ("slurm", "browser") if item.get_closest_marker(m)}
    used = {flag for name, flag in SERVICE_FIXTURES.items() if name in getattr(item, "fixturenames", ())}
    return marked | used


def pytest_collection_modifyitems(config, items):
    selected, deselected = [], []
    for item in items:
        if any(not config.getoption(f"--{flag}") for flag in needed_services(item)):
            deselected.append(item)
        else:
            selected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


def require_flag(request, flag: str) -> None:
    """Service fixtures refuse to run without their opt-in flag (skip, naming the flag)."""
    if not request.config.getoption(f"--{flag}"):
        pytest.skip(f"needs a service: run with --{flag}")


@pytest.fixture(scope="session")
def smoke_dag(tmp_path_factory) -> Path:
    """A working directory in which the whole smoke DAG has run (results/ inside it)."""
    workdir = tmp_path_factory.mktemp("smoke")
    run_snakemake(workdir, "--cores", "2")
    return workdir


@pytest.fixture
def smoke_copy(smoke_dag, tmp_path) -> Path:
    """A private copy of the finished smoke DAG, for tests that change or rerun things."""
    target = tmp_path / "work"
    shutil.copytree(smoke_dag, target, symlinks=True)
    return target
