"""bnstudy as an installed package: the config schema is package data, so a wheel (not an editable
install) plans a config from a directory outside the checkout.

The wheel is built from a copy of the sources (the checkout gets no build/ folder) with the
venv's setuptools, and installed with --no-deps into a --target folder put first on PYTHONPATH:
its dependencies (torch, mlflow, ...) come from the project venv, nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO

from bnstudy.config import schema
from bnstudy.errors import ConfigError

WORKFLOW_SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def test_the_package_schema_is_the_workflow_schema():
    """One copy is edited: in the checkout the package's schema is a link to workflow/'s."""
    assert schema.SCHEMA_PATH.is_relative_to(Path(schema.__file__).resolve().parent)
    assert schema.SCHEMA_PATH.resolve() == WORKFLOW_SCHEMA.resolve()


def test_a_missing_schema_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(schema, "SCHEMA_PATH", tmp_path / "schemas" / "config.schema.yaml")
    schema._parsed_schema.cache_clear()
    try:
        with pytest.raises(ConfigError, match="config schema .* is unreadable.*reinstall bnstudy"):
            schema.load_schema()
    finally:
        schema._parsed_schema.cache_clear()


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True,
                          timeout=300, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.e2e
def test_an_installed_wheel_plans_a_config_outside_the_checkout(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    # symlinks=True: the package's schema stays a link into workflow/schemas, as in the checkout
    shutil.copytree(REPO / "src", source / "src", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "workflow" / "schemas", source / "workflow" / "schemas", symlinks=True)

    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--wheel-dir", dist, source])
    (wheel,) = dist.glob("bnstudy-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "bnstudy/py.typed" in names
        assert zf.read("bnstudy/config/schemas/config.schema.yaml") == WORKFLOW_SCHEMA.read_bytes()

    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", site, wheel])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(REPO / "config" / "config.yaml", elsewhere / "config.yaml")
    env = {**os.environ, "PYTHONPATH": str(site)}

    # the installed package, not the checkout's sources (the venv's editable install comes later
    # on sys.path), and its schema a file of its own
    where = _run([sys.executable, "-c", "import bnstudy.config.schema as s; print(s.SCHEMA_PATH)"],
                 cwd=elsewhere, env=env).stdout.strip()
    installed = Path(where)
    assert installed.is_relative_to(site), where
    assert installed.is_file() and not installed.is_symlink()

    proc = _run([site / "bin" / "bnstudy", "plan", "config.yaml"], cwd=elsewhere, env=env)
    assert "total (shared runs once)" in proc.stdout, proc.stdout
    assert "performance" in proc.stdout
