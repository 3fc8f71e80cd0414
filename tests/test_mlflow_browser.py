"""The MLflow UI in a real browser after a 2x2 sweep: a user who opens the address the
sweep printed, then clicks through, sees the winner without hunting.

Headless Chromium from the system (Debian's ``chromium``), driven by Playwright for
Python; never a downloaded browser. Skipped only where either cannot be had.

The same test makes the README's screenshots: to rewrite them, run

    SKMLP_SCREENSHOTS=tests/screenshots .venv/bin/python -m pytest -m slow \
        tests/test_mlflow_browser.py
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import QUICK, free_port, run_entry_point, wait_until_healthy
from test_mlflow_ui import SWEEP_2X2

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CHILDREN = ["lr=0.01 relu", "lr=0.01 tanh", "lr=0.5 relu", "lr=0.5 tanh"]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium (a fresh profile per page context)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def printed(pattern, output):
    match = re.search(pattern, output)
    assert match, f"{pattern!r} not in the sweep's output:\n{output[-2000:]}"
    return match.group(1)


@pytest.fixture
def ui(store, tmp_path):
    """Run the 2x2 sweep, then serve its store with the ``mlflow ui`` command the
    sweep printed (on a free port). Yields the address the sweep printed, on it."""
    _, env = store
    result = run_entry_point(
        "pipelines.train",
        ["-m", *QUICK, *SWEEP_2X2, "tracking.experiment_name=browser"],
        env,
        tmp_path,
    )
    command = printed(r"(mlflow ui --backend-store-uri \S+)", result.stdout).split()
    url = printed(r"then open (\S+)", result.stdout)
    compare = printed(r"compare them: (\S+)", result.stdout)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", *command, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, server, timeout=120)
        yield tuple(u.replace("http://127.0.0.1:5000", base) for u in (url, compare))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_ui_shows_the_sweeps_winner(browser, ui, tmp_path):
    shots = Path(os.environ.get("SKMLP_SCREENSHOTS") or tmp_path)
    page = browser.new_page(viewport={"width": 1440, "height": 520})
    page.set_default_timeout(TIMEOUT_MS)
    runs, compare = ui
    page.goto(runs)

    # The runs table, in the model-training view, on the sweep's saved view.
    for name in CHILDREN:
        page.get_by_role("link", name=name, exact=True).wait_for()
    parent = page.get_by_role("link", name=re.compile(r"^sweep-"))
    parent.wait_for()
    for column in (
        "final_test_accuracy",
        "model.learning_rate_init",
        "model.activation",
    ):
        page.get_by_role("columnheader", name=column).first.wait_for()
    _close_assistant(page)
    page.screenshot(path=shots / "runs_table.png")

    # The parent run: the best run, its objective and parameters.
    parent.click()
    note = page.get_by_text(re.compile(r"Best of 4 runs: .+, final_test_accuracy = "))
    best = next(name for name in CHILDREN if f"runs: {name}," in note.inner_text())
    page.get_by_text("skmlp.best_run", exact=True).wait_for()
    page.get_by_text(re.compile(r"^\s*:?\s*" + re.escape(best) + r"$")).first.wait_for()
    page.get_by_role("cell", name="final_test_accuracy").wait_for()
    for param in ("model.learning_rate_init", "model.activation"):
        page.get_by_role("cell", name=param, exact=True).wait_for()
    child_runs = page.get_by_test_id("key-value-Child runs")  # under "About this run"
    for name in CHILDREN:
        child_runs.get_by_role("link", name=name, exact=True).wait_for()
    _close_assistant(page)
    page.set_viewport_size({"width": 1440, "height": 700})
    page.screenshot(path=shots / "parent_run.png")
    page.set_viewport_size({"width": 1440, "height": 520})

    # Its artifacts: the objective against each swept parameter.
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("objective.png").click()
    page.locator("img[src*='objective.png'], img").first.wait_for()
    page.screenshot(path=shots / "objective.png")

    # Parent -> child (the note's link; MLflow opens note links in a new tab) -> the
    # experiment's runs: still in the model-training view, the children shown.
    page.get_by_role("tab", name="Overview").click()
    note_links = page.get_by_test_id("note-editor-preview-content")
    with page.expect_popup() as popup:
        note_links.get_by_role("link", name=best, exact=True).click()
    child = popup.value
    child.get_by_role("cell", name="model.activation", exact=True).wait_for()
    child.get_by_role("list").get_by_role("link", name="Runs", exact=True).click()
    child.wait_for_url(re.compile(r"/runs\?.*workflowType=machine_learning"))
    child.get_by_role(
        "heading", name="Runs", exact=True
    ).wait_for()  # GenAI: "Training runs"
    child.get_by_role("link", name=re.compile(r"^sweep-")).wait_for()
    child.close()

    # "Compare": the chart view charts the objective against the swept parameters.
    page.set_viewport_size({"width": 1440, "height": 760})
    page.goto(compare)
    page.get_by_text("Objective: final_test_accuracy").wait_for()
    page.get_by_text("Parallel Coordinates").first.wait_for()
    _close_assistant(page)
    page.wait_for_timeout(2500)  # the charts draw after their cards
    page.screenshot(path=shots / "compare.png")
    page.close()


def _close_assistant(page):
    """Fold MLflow's assistant panel (open in a fresh profile) out of the picture."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
        page.wait_for_timeout(500)
