"""The MLflow UI shows the smoke DAG's runs: headless Debian chromium, driven by chromedriver
through selenium, opens `mlflow server` (loopback) on the smoke DAG's SQLite store, finds the
experiment `bnstudy-smoke`, opens the page the track job names (track.json's `ui_page`) on the
model training view's runs table, with no click on the GenAI / Model training switch (a fresh
browser profile: MLflow 3.17 would show its GenAI view), then a training run by its name and its
study tags, and saves screenshots.

Opt-in: `pytest --browser` (needs `chromium` and `chromium-driver` from apt:
tests/harness/ci_services.sh installs them; selenium comes with `pip install -e ".[test]"`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mlflow_server import MlflowServer
from helpers import mlflow_training_runs, sqlite_uri, summaries

from conftest import require_flag

EXPERIMENT = "bnstudy-smoke"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000"]


def chromium_binary() -> str:
    # Debian's /usr/bin/chromium is a wrapper script; chromedriver is happier with the binary
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("--browser given but chromium is not installed (apt-get install chromium)")


@pytest.fixture
def browser(request, tmp_path):
    require_flag(request, "browser")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    if not driver_path:
        pytest.fail("--browser given but chromedriver is not installed (apt-get install chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    # an explicit driver path: selenium-manager would try to download one
    driver = webdriver.Chrome(service=Service(driver_path, log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def assert_real_png(path: Path, min_colours: int = 20) -> None:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    with Image.open(path) as img:
        assert img.size[0] >= 800 and img.size[1] >= 600, img.size
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    # a blank or error page has a handful of colours; the UI with text and widgets has many
    assert colours is None or len(colours) >= min_colours, f"{path}: only {len(colours)} colours"


def clickable_link(browser, wait, text: str, failure_shot, problem: str):
    """The link with this text once clickable; else a screenshot and a failure quoting the page."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    try:
        return wait.until(EC.element_to_be_clickable((By.LINK_TEXT, text)))
    except TimeoutException:
        browser.save_screenshot(str(failure_shot))
        raise AssertionError(f"{text!r}: {problem}; page text:\n"
                             f"{browser.find_element(By.TAG_NAME, 'body').text[:3000]}") from None


@pytest.mark.browser
def test_mlflow_ui_shows_the_smoke_runs(smoke_dag, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from mlflow.tracking import MlflowClient

    uri = sqlite_uri(smoke_dag)
    tracked = mlflow_training_runs(uri, EXPERIMENT)
    run_id = sorted(r for r in summaries(smoke_dag) if r.startswith("vgg-batchnorm"))[0]
    (run,) = tracked[run_id]
    name = run.info.run_name
    assert name.startswith("vgg batchnorm lr="), name
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(EXPERIMENT)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development", exp.tags
    studies = run.data.tags["study"].split(",")
    assert studies and all(run.data.tags.get(f"study.{s}") == "true" for s in studies), run.data.tags
    record = json.loads((smoke_dag / "results" / "tracking" / "track.json").read_text())
    assert record["ui_page"] == f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"

    with MlflowServer(store=smoke_dag / "results" / "mlflow.db",
                      artifacts=tmp_path / "artifacts", log=tmp_path / "server.log") as server:
        wait = WebDriverWait(browser, 60)
        browser.get(f"{server.url}/#/experiments")
        clickable_link(browser, wait, EXPERIMENT, tmp_path / "failed-experiments.png",
                       "experiment not listed")
        browser.save_screenshot(str(tmp_path / "experiments.png"))
        # the page the README and track.json name opens on the model training view's runs table
        # (no click on the sidebar's GenAI / Model training switch)
        browser.get(f"{server.url}/{record['ui_page']}")
        link = clickable_link(browser, wait, name, tmp_path / "failed-runs.png",
                              "run not in the runs table of the page track.json names")
        assert link.get_attribute("href").endswith(f"/runs/{run.info.run_id}")
        assert f"/experiments/{exp.experiment_id}/runs" in browser.current_url, browser.current_url
        assert "workflowType=machine_learning" in browser.current_url, browser.current_url
        browser.save_screenshot(str(tmp_path / "runs.png"))
        link.click()
        wait.until(EC.title_contains(run.info.run_id))
        # the run page shows the bnstudy tags and the spec as params
        wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), run_id))
        text = browser.find_element(By.TAG_NAME, "body").text
        for expected in (name, "bnstudy.execution", "norm.variant", "checkpoint_dir", "Finished",
                         *(f"study.{s}" for s in studies)):
            assert expected in text, f"{expected!r} not on the run page"
        shot = tmp_path / "run.png"
        assert browser.save_screenshot(str(shot))
    for png in (shot, tmp_path / "runs.png", tmp_path / "experiments.png"):
        assert_real_png(png)
    (tmp_path / "screenshots.json").write_text(json.dumps(
        {"run": run_id, "mlflow_run_id": run.info.run_id, "url": server.url,
         "screenshots": [str(p) for p in sorted(tmp_path.glob("*.png"))]}, indent=2))
