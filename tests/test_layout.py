"""The package's folders are the DAG's stages: imports run one way, down the stages, and no module
grows past what a reader takes in at once (#25: "0 arrows back up, no module over ~400 lines")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bnstudy"

# the order of the stages (a stage may import any before it): the base, then the DAG's order
# (`configure` composes the config's checks with the claims': the config stage never reads the claims)
LAYERS = ["errors", "atomic", "config", "files", "data", "models", "train", "analysis", "tables", "claims",
          "figures", "configure", "tracking", "results", "summary", "cli", "__main__"]
MAX_LINES = 400


def stage_of(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def imports() -> set[tuple[str, str, str]]:
    """(importing file, its stage, the imported stage) for every import of a bnstudy module."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [target]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target.startswith("bnstudy.") and stage_of(target) != stage_of(module):
                    found.add((str(path.relative_to(PACKAGE)), stage_of(module), stage_of(target)))
    return found


def test_every_stage_is_a_layer():
    top = [p for p in PACKAGE.glob("*.py")] + [p for p in PACKAGE.glob("*/__init__.py")]
    stages = {p.parent.name if p.name == "__init__.py" else p.stem for p in top}
    assert stages - {"bnstudy", "__init__"} == set(LAYERS)
    # each stage folder is a regular package whose docstring says what it takes and gives
    for folder in (p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        init = folder / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), folder.name


def test_imports_run_down_the_stages():
    back = sorted((path, a, b) for path, a, b in imports()
                  if LAYERS.index(b) > LAYERS.index(a))
    assert not back, f"imports against the stages' order: {back}"


def test_no_module_is_longer_than_a_reader_takes_in():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long
