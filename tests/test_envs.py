"""The conda environments (envs/*.yaml, used with `--sdm conda`) and pyproject.toml must pin the
same versions: a package that appears in both has the same version specifier, torch and
torchvision are pinned to the exact builds the project is tested with, and every env's Python
satisfies requires-python. Fast (no conda needed): it only parses the files."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))
PINNED = {"torch": "==2.14.1", "torchvision": "==0.29.1"}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pyproject_requirements() -> dict[str, SpecifierSet]:
    project = pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    out = {}
    for text in reqs:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name not in out, f"pyproject.toml lists {name} twice"
        out[name] = req.specifier
    return out


def conda_spec(text: str) -> tuple[str, SpecifierSet]:
    """A conda MatchSpec like `python=3.11`, `numpy>=1.26` or `pip` as (name, pip specifier)."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", text)
    assert m, f"cannot parse conda dependency {text!r}"
    name, spec = m.group(1), m.group(2).replace(" ", "")
    if re.fullmatch(r"=[^=<>!].*", spec):  # conda's `=X` means X.*
        spec = f"=={spec[1:].rstrip('*').rstrip('.')}.*"
    return canonicalize_name(name), SpecifierSet(spec)


def env_requirements(path: Path) -> tuple[dict[str, SpecifierSet], dict[str, SpecifierSet]]:
    """(conda packages, pip packages) of one env file."""
    env = yaml.safe_load(path.read_text())
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for text in dep.get("pip", []):
                req = Requirement(text)
                name = canonicalize_name(req.name)
                assert name not in pip, f"{path.name} lists {name} twice under pip"
                pip[name] = req.specifier
        else:
            name, spec = conda_spec(dep)
            conda[name] = spec
    return conda, pip


def test_env_files_exist():
    names = {p.name for p in ENVS}
    assert {"train.yaml", "figures.yaml"} <= names, names


def test_pyproject_pins_torch_exactly():
    reqs = pyproject_requirements()
    for name, pin in PINNED.items():
        assert str(reqs[name]) == pin, f"pyproject.toml: {name}{reqs[name]} (want {name}{pin})"


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_agree_with_pyproject(env):
    project = pyproject_requirements()
    conda, pip = env_requirements(env)
    assert pip or conda, f"{env.name} lists no packages"
    disagreements, unknown = [], []
    for source, deps in (("pip", pip), ("conda", conda)):
        for name, spec in deps.items():
            if name in ("python", "pip"):
                continue
            if name not in project:
                unknown.append(f"{name} ({source})")
            elif spec != project[name]:
                disagreements.append(f"{name}: {env.name} has {spec or '(any)'}, "
                                     f"pyproject.toml has {project[name] or '(any)'}")
    assert not disagreements, "\n".join(disagreements)
    # a package only in the env would drift unnoticed: every env package must be a project dep
    assert not unknown, f"{env.name} installs packages pyproject.toml does not list: {unknown}"


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_python_satisfies_requires_python(env):
    conda, _ = env_requirements(env)
    assert "python" in conda, f"{env.name} does not pin python"
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    # every Python release the env's spec (e.g. ==3.11.*) allows must be one requires-python allows
    releases = [Version(f"3.{minor}.{patch}") for minor in range(6, 20) for patch in (0, 1)]
    allowed = [v for v in releases if v in conda["python"]]
    assert allowed, f"{env.name}: python spec {conda['python']} allows no 3.x release"
    refused = [str(v) for v in allowed if v not in requires]
    assert not refused, f"{env.name} python {conda['python']} allows {refused}, requires-python is {requires}"


def test_train_env_pins_torch_and_figures_env_has_none():
    _, train_pip = env_requirements(REPO / "envs" / "train.yaml")
    for name, pin in PINNED.items():
        assert str(train_pip.get(name)) == pin, f"envs/train.yaml: {name}{train_pip.get(name)}"
    _, fig_pip = env_requirements(REPO / "envs" / "figures.yaml")
    # figures, aggregate and claims never import torch: their env must stay torch-free
    assert not {"torch", "torchvision"} & set(fig_pip), "envs/figures.yaml installs torch"


def test_envs_cover_the_rules_that_use_them():
    """Every `conda:` directive names an existing env file, and every env is used by a rule."""
    used = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for rel in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            target = (smk.parent / rel).resolve()
            assert target.is_file(), f"{smk.name}: conda env {rel} does not exist"
            used.add(target)
    assert used == {p.resolve() for p in ENVS}, f"envs used by rules: {sorted(map(str, used))}"


def test_installed_torch_matches_pin():
    """The venv the tests run in holds the pinned builds (a drifted venv would test other code)."""
    for name, pin in PINNED.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed in this environment")
        # local version labels (+cpu, +cu121) are build variants of the same release
        assert Version(installed.split("+")[0]) in SpecifierSet(pin), f"{name} {installed} vs {pin}"
