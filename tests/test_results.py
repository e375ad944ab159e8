"""The README's results section: generated from a run's tables (claims.csv, runs.csv), so the
numbers a reader sees cannot drift from the tables; `--check` catches a README edited by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from synthetic_tables import STUDIES, Outcome, make_tables

from bnstudy.claims import ClaimRules
from bnstudy.claims.table import claims
from bnstudy.results import accuracy_table, markers, readme_sections, rewrite, save_digest, section

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A results folder as a finished workflow leaves it: study tables, a figure, claims.csv."""
    root = tmp_path_factory.mktemp("results")
    studies = {name: STUDIES[name] for name in ("performance", "noisy_bn", "landscape", "normalisers")}
    folders = {name: make_tables(root, name)["runs"].parent for name in studies}
    claims(studies, folders, root / "claims.csv", root / "claims.md", ClaimRules(min_steps=100))
    for study, kind in (("performance", "accuracy"), ("landscape", "landscape")):
        (root / "figures" / study).mkdir(parents=True)
        (root / "figures" / study / f"{kind}.png").write_bytes(b"\x89PNG fixture")
    return root


def test_digest_keeps_what_the_section_needs_and_nothing_else(finished_run, tmp_path):
    copied = save_digest(finished_run, tmp_path / "digest")
    names = sorted(p.relative_to(tmp_path / "digest").as_posix() for p in copied)
    assert names == ["claims.csv", "claims.md", "figures/landscape-landscape.png", "figures/performance-accuracy.png",
                     "runs/landscape.csv",
                     "runs/noisy_bn.csv", "runs/normalisers.csv", "runs/performance.csv"]


def test_section_says_each_claim_once_from_its_own_rows(finished_run, tmp_path):
    """One line per (study, claim); every row of claims.csv is behind exactly one line, quoted with its
    own numbers and verdict; a measurement is quoted without a verdict; a per-variant claim names
    its variant, not BN."""
    from bnstudy.results import rows_behind

    save_digest(finished_run, tmp_path / "digest")
    text = section(tmp_path / "digest", ["performance"])
    table = pd.read_csv(finished_run / "claims.csv")
    bullets = [line for line in text.splitlines() if line.startswith("- **")]
    assert len(bullets) == table.groupby(["study", "claim"]).ngroups
    behind = [pair for line in bullets for pair in rows_behind(line)]
    assert sorted(behind) == sorted(zip(table["key"], table["study"]))
    beta = table.set_index("key").loc["smoother_landscape.beta.late"]
    line = next(b for b in bullets if "study landscape," in b)
    assert f"(late (after 20% of training)): x{10 ** beta['effect']:.3g}" in line
    assert f"x{10 ** beta['effect']:.3g} (95% CI" in line and f"**{beta['verdict']}**" in line
    at_init = table.set_index("key").loc["smoother_landscape.beta.initialisation"]
    measured = line.split("Measured beside it")[1]
    assert f"x{10 ** at_init['effect']:.3g}" in measured and "**" not in measured.split("Figures")[0]
    layernorm = next(b for b in bullets if b.startswith("- **layernorm:"))
    assert "layernorm against standard" in layernorm and "batchnorm against" not in layernorm
    assert "Figures: [landscape](" in line  # the study's own figures, linked
    # the accuracy table lists each (variant, lr, setup, steps) of the named study, one value per seed
    runs = pd.read_csv(finished_run / "tables" / "performance" / "runs.csv")
    rows = [line for line in text.splitlines() if line.startswith("| standard |") or line.startswith("| batchnorm |")]
    assert len(rows) == runs.groupby(["variant", "lr", "setup", "steps"]).ngroups
    assert all(line.count("%") == 2 * 3 for line in rows if "diverged" not in line)


def committed_sections() -> dict[str, str]:
    """The README's generated sections, by digest name; each names a committed digest folder."""
    sections = readme_sections((ROOT / "README.md").read_text())
    assert "cifar10-cpu" in sections
    for name in sections:
        assert (ROOT / "docs" / "results" / name / "claims.csv").is_file(), name
    return sections


def test_every_readme_results_line_is_its_rows_in_the_template():
    """Each generated line of the committed README names its rows of its digest's claims.csv, and
    is exactly what the template writes from those rows alone: a sentence with no row behind it,
    or one that says more than its rows, fails here."""
    from bnstudy.results import claim_line, rows_behind

    for name, generated in committed_sections().items():
        table = pd.read_csv(ROOT / "docs" / "results" / name / "claims.csv")
        bullets = [line for line in generated.splitlines() if line.startswith("- ")]
        assert bullets, name
        for line in bullets:
            pairs = rows_behind(line)
            assert pairs, f"a results line with no row behind it: {line[:80]}"
            rows = pd.concat([table[(table["key"] == key) & (table["study"] == study)] for key, study in pairs])
            assert len(rows) == len(pairs), f"rows named but not in {name}'s claims.csv: {pairs}"
            figures = line.split(" Figures: ", 1)[1].split(". <!--", 1)[0].split(", ") if " Figures: " in line else []
            assert claim_line(rows, figures) == line


def test_the_readme_states_no_result_by_hand():
    """Outside the generated sections, the results chapter describes the runs and their methods: no
    verdict word and no comparison with the papers' findings."""
    readme = (ROOT / "README.md").read_text()
    chapter = readme.split("## What it produces", 1)[1].split("\n## ", 1)[0]
    for name, generated in committed_sections().items():
        chapter = chapter.replace(generated, "")
    for word in ("supported", "inconclusive", "agrees", "disagree", "as they find", "not at the edge"):
        assert word not in chapter.lower(), word


def test_rewrite_replaces_only_the_marked_section_and_check_detects_drift(tmp_path):
    readme = tmp_path / "README.md"
    begin, end = markers(Path("docs/results/cpu"))
    other_begin, other_end = markers(Path("docs/results/other"))
    assert begin == "<!-- results:begin cpu -->"
    readme.write_text(f"# title\n\nbefore\n{begin}\nold numbers\n{end}\n{other_begin}\nkept\n{other_end}\nafter\n")
    assert rewrite(readme, "new numbers", Path("docs/results/cpu"), check=True) is True
    assert "old numbers" in readme.read_text()             # --check writes nothing
    assert rewrite(readme, "new numbers", Path("docs/results/cpu")) is True
    assert readme.read_text() == (f"# title\n\nbefore\n{begin}\nnew numbers\n{end}\n{other_begin}\nkept\n"
                                  f"{other_end}\nafter\n")     # the other digest's section untouched
    assert rewrite(readme, "new numbers", Path("docs/results/cpu"), check=True) is False
    assert readme_sections(readme.read_text()) == {"cpu": "\nnew numbers\n", "other": "\nkept\n"}
    with pytest.raises(ValueError, match="results:begin absent"):
        rewrite(readme, "x", Path("docs/results/absent"))


def test_the_readme_says_what_its_committed_tables_say():
    """Each of the committed README's results sections is exactly what its committed digest gives."""
    for name in committed_sections():
        result = subprocess.run([sys.executable, "-m", "bnstudy", "results", "--digest", f"docs/results/{name}",
                                 "--readme", "README.md", "--check"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "is up to date" in result.stderr


def test_accuracy_table_keeps_setups_and_lengths_apart():
    """BatchNorm at lr 0.1 in a 1,000-step VGG, a 300-step VGG and a ResNet: three rows, not one."""
    rows = [{"variant": "batchnorm", "lr": 0.1, "setup": setup, "steps": steps, "seed": seed,
             "status": "completed", "final_test_accuracy": acc, "final_train_batches_accuracy": acc}
            for setup, steps, acc in (("vgg", 1000, 0.65), ("vgg", 300, 0.5), ("resnet", 300, 0.4))
            for seed in (0, 1)]
    lines = accuracy_table(pd.DataFrame(rows)).splitlines()[2:]
    assert [line.split(" | ")[2] for line in lines] == ["vgg, 1,000", "vgg, 300", "resnet, 300"]
    assert "| 65.0%, 65.0% | 65.0%, 65.0% |" in lines[0] and "40.0%, 40.0%" in lines[2]


def test_a_claim_kind_is_one_record_from_a_module_outside_the_package(tmp_path):
    """A claim written in a module of its own (BN ends at a higher training accuracy), registered:
    the schema offers it, a study listing it with too few seeds stops at parse time naming the
    claim, the claims table holds its row with a verdict from its own measure, and the README's
    results prose quotes that row."""
    from helpers import import_file, smoke_raw

    from bnstudy.claims import record
    from bnstudy.configure import load_config
    from bnstudy.configure import load_schema
    from bnstudy.errors import ConfigError
    from bnstudy.results import rows_behind

    module = tmp_path / "higher_train_accuracy.py"
    module.write_text(
        "import numpy as np\n"
        "from bnstudy.claims.measures import indexed\n"
        "from bnstudy.claims.record import SUPPORTED, Claim, Row, register\n\n"
        "def final_train_accuracy(data, variant, rules):\n"
        "    runs = data.runs[data.runs['variant'] == variant]\n"
        "    return indexed(runs, runs['final_train_accuracy'].to_numpy(float), data.condition_keys())\n\n"
        "register(Claim('test_higher_train_accuracy', 'BN ends at a higher training accuracy', '2018',\n"
        "               '2018 (Fig. 1): BN trains further',\n"
        "               (Row('accuracy', 'final train accuracy, batchnorm against standard', final_train_accuracy,\n"
        "                    'above', unit='accuracy'),), findings=(('2018', SUPPORTED),), must_train=None))\n")
    try:
        import_file(module)
        assert "test_higher_train_accuracy" in load_schema()["definitions"]["claim_kind"]["enum"]

        raw = smoke_raw(tmp_path / "r")
        raw.pop("claim_rules", None)
        name, study = next((n, s) for n, s in raw["studies"].items() if s.get("setup") == "vgg")
        study.update(seeds=[0, 1], claims=["test_higher_train_accuracy"], claim_rules={})
        with pytest.raises(ConfigError, match=f"studies.{name}.seeds.*test_higher_train_accuracy"):
            load_config(raw)

        root = tmp_path / "run"
        cfg = {**STUDIES["performance"], "claims": ["test_higher_train_accuracy"]}
        def outcome(variant, lr, seed, grid):  # BN 8-12 points ahead, differently for each seed
            return Outcome(train_accuracy=(0.9 if variant == "batchnorm" else 0.8) + 0.01 * seed * (variant == "batchnorm"))

        folder = make_tables(root, "performance", cfg, outcome=outcome)["runs"].parent
        claims({"performance": cfg}, {"performance": folder}, root / "claims.csv", root / "claims.md",
               ClaimRules(min_steps=100))
        table = pd.read_csv(root / "claims.csv")
        row = table[table["key"] == "test_higher_train_accuracy.accuracy.final"]
        runs = pd.read_csv(folder / "runs.csv")
        pairs = runs[runs["variant"] == "batchnorm"].merge(runs[runs["variant"] == "standard"], on=["lr", "seed"])
        effect = (pairs["final_train_accuracy_x"] - pairs["final_train_accuracy_y"]).dropna().mean()
        assert len(row) == 1 and row["effect"].iloc[0] == pytest.approx(effect) and effect > 0
        assert row["verdict"].iloc[0] == "supported" and row["agreement"].iloc[0] == "agrees with 2018"

        save_digest(root, tmp_path / "digest")
        text = section(tmp_path / "digest", [])
        line = next(b for b in text.splitlines() if "test_higher_train_accuracy" in b)
        assert line.startswith("- **BN ends at a higher training accuracy** (2018; study performance")
        assert rows_behind(line) == [("test_higher_train_accuracy.accuracy.final", "performance")]
    finally:
        record._REGISTRY.pop("test_higher_train_accuracy", None)
    assert "test_higher_train_accuracy" not in load_schema()["definitions"]["claim_kind"]["enum"]


def test_a_line_names_whose_value_a_row_is_why_a_row_has_no_verdict_and_an_exact_tests_p(tmp_path):
    """The real CPU run's matched_lr and claim_learning_rate shapes: a row of the standard network's
    own values is not worded "batchnorm against standard"; a row the data could not test (both
    variants peak at one lr) says why beside its number; an exact test's p comes before the t
    interval it did not use."""
    from bnstudy.results import claim_line

    bn = {0.01: 0.5, 0.03: 0.6, 0.1: 0.8, 0.3: 0.7, 1.0: 0.1}
    standard = {0.01: 0.45, 0.03: 0.55, 0.1: 0.66, 0.3: 0.5, 1.0: 0.1}

    def outcome(variant, lr, seed, grid):
        return Outcome(test_accuracy=(bn if variant == "batchnorm" else standard)[lr] + 0.001 * seed,
                       activation_var=lr ** 2 if variant == "standard" else 1.0)

    cfg = {**STUDIES["matched_lr"], "seeds": [0, 1, 2, 3, 4]}
    tables = make_tables(tmp_path, "matched_lr", cfg, outcome=outcome)
    table = claims({"matched_lr": cfg}, {"matched_lr": tables["runs"].parent}, tmp_path / "claims.csv",
                   tmp_path / "claims.md", ClaimRules(min_steps=100))
    line = claim_line(table)
    tested, measured = line.split("Measured beside it, without a verdict: ")
    assert "standard's own value" in tested and "against standard" not in tested
    assert "(why no verdict: batchnorm's best learning rate on the grid is standard's (0.1" in measured
    lr = pd.DataFrame([{**table.iloc[0].to_dict(), "key": "higher_learning_rates.usable_lr.final", "effect": 0.5,
                        "ci_low": 0.2, "ci_high": 0.9, "p_value": 0.0625, "unit": "log10 ratio",
                        "verdict": "inconclusive", "agreement": "undecided", "window": "end of training"}])
    assert "x3.16 (exact p = 0.0625; 95% CI x1.58 to x7.94), **inconclusive**" in claim_line(lr)
