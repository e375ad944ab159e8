"""The report's front page is written from the config that ran, not from a fixed description."""

from __future__ import annotations

from pathlib import Path

import jinja2

from helpers import smoke_config

ROOT = Path(__file__).parents[1]


def render(config: dict) -> str:
    """As `snakemake --report` renders the global description (a Jinja template with `snakemake.config`)."""
    class Snakemake:
        pass

    Snakemake.config = config
    template = (ROOT / "workflow" / "report" / "workflow.rst").read_text()
    return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(snakemake=Snakemake)


def test_the_front_page_lists_what_the_config_ran(tmp_path):
    config = smoke_config(tmp_path)
    page = render(config)
    for name, study in config["studies"].items():
        if study.get("enabled", True):
            setup = config["setups"][study["setup"]]
            assert f"**{name}**: ``{study['setup']}``: {setup['model']['arch']}" in page
            assert f"{len(study['seeds'])} seed(s)" in page
    for name in config["datasets"]:
        assert f"``{name}``" in page
    assert "CIFAR-10" not in page  # the smoke config has synthetic data only; nothing claims otherwise
    assert "at\nleast 3 seeds give a value" in page  # what the bands are
    from docutils.core import publish_parts

    html = publish_parts(page, writer="html", settings_overrides={"report_level": 2, "halt_level": 2})["html_body"]
    assert html.count("<li>") >= len(config["datasets"]) + 1  # the lists are lists, not one paragraph
