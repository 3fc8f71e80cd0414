"""The MLflow UI in a real browser, as the quickstart opens it: a small memorization
sweep and then a 2x2 train sweep into one experiment, ``skmlp-ui`` serving the store.
A user who opens the address ``skmlp-ui`` printed sees the latest sweep's runs (only
those) in the "Model training" mode, and its compare address charts what tells them
apart, every run drawn.

Headless Chromium from the system (Debian's ``chromium``), driven by Playwright for
Python; never a downloaded browser. Skipped only where either cannot be had.

The same test makes the README's screenshots, as a first visit shows them (a fresh
browser profile for each page, MLflow's assistant panel open): to rewrite them, run

    SKMLP_SCREENSHOTS=tests/screenshots .venv/bin/python -m pytest -m slow \
        tests/test_mlflow_browser.py
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import QUICK, free_port, run_entry_point, runs_of, wait_for
from test_mlflow_ui import SWEEP_2X2

from pipelines.ui import run_link

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
# More than the 10 runs that MLflow's charts show unless told otherwise.
MEMORIZATION = [
    "grid.corruption.p=[0.0,0.5,1.0]",
    "grid.model.hidden_layer_sizes=[[8],[16],[32],[16,16]]",
    "model.batch_size=32",
]
N_MEMORIZATION = 12
EPOCHS = 3  # QUICK's model.max_iter
TIMEOUT_MS = 90_000
VIEWPORT = {"width": 1440, "height": 900}
TALL = {"width": 1440, "height": 1300}


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium (a fresh profile per page: ``new_page``)."""
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
    assert match, f"{pattern!r} not in the output:\n{output[-2000:]}"
    return match.group(1)


def sweep(module, args, env, cwd):
    """Run a sweep into experiment ``browser``; the addresses it printed (runs, compare),
    relative to the UI."""
    args = [*args, *QUICK, "tracking.experiment_name=browser"]
    output = run_entry_point(module, args, env, cwd).stdout
    return tuple(
        printed(pattern, output).removeprefix("http://127.0.0.1:5000/")
        for pattern in (r"then open (\S+)", r"compare them: (\S+)")
    )


@pytest.fixture
def ui(store, tmp_path):
    """The two sweeps, then ``skmlp-ui`` on a free port (the console script, on the
    store the pipelines used: ``MLFLOW_TRACKING_URI``). Yields (what skmlp-ui printed,
    the train sweep's addresses, the memorization's, the skmlp-ui process)."""
    uri, env = store
    memorization = sweep("pipelines.memorization", MEMORIZATION, env, tmp_path)
    train = sweep("pipelines.train", ["-m", *SWEEP_2X2], env, tmp_path)
    command = shutil.which("skmlp-ui", path=Path(sys.executable).parent)
    log = tmp_path / "skmlp-ui.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [command, "--port", str(free_port())],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    process.log = log
    try:
        wait_for(lambda: "Ctrl-C stops it" in log.read_text(), "UI", process, 240)
        yield log.read_text(), train, memorization, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)


def test_the_quickstart_address_opens_the_sweep_and_its_charts(
    browser, ui, store, tmp_path
):
    shots = Path(os.environ.get("SKMLP_SCREENSHOTS") or tmp_path)
    output, (runs, compare), memorization, process = ui
    base = printed(r"at (http://127.0.0.1:\d+)", output)
    latest = printed(r"the latest sweep \(or run\): (\S+)", output)
    assert latest == f"{base}/{runs}"  # the train sweep, which ran last

    page = _runs_table(browser, latest)
    page.screenshot(path=shots / "runs_table.png")
    page.close()
    _parent_run(browser, base, store[0], shots)
    page = _charts(browser, f"{base}/{compare}", "final_test_accuracy", len(CHILDREN))
    page.set_viewport_size(TALL)  # both sections of charts in the picture
    page.wait_for_timeout(2000)
    page.screenshot(path=shots / "compare.png")
    page.close()
    page = _charts(
        browser, f"{base}/{memorization[1]}", "final_train_accuracy", N_MEMORIZATION
    )
    section = "Objective: final_train_accuracy"
    _points(page, section, "corruption.p vs. final_test_accuracy", N_MEMORIZATION)
    page.screenshot(path=shots / "memorization.png")
    page.close()

    process.send_signal(signal.SIGINT)  # Ctrl-C: the server stops with it
    assert process.wait(timeout=60) == 0
    assert "MLflow UI stopped." in process.log.read_text()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/health", timeout=5)


def _open(browser, address):
    """A first visit to ``address``: a fresh browser profile."""
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(address)
    return page


def _runs_table(browser, address):
    """The sweep's view: "Model training" mode, the four children and nothing else,
    objective and swept parameters as columns."""
    page = _open(browser, address)
    for name in CHILDREN:
        page.get_by_role("link", name=name, exact=True).wait_for()
    page.get_by_text(f"{len(CHILDREN)} matching runs").wait_for()
    assert page.get_by_role("link", name=re.compile(r"^(sweep-|p=)")).count() == 0
    # "Model training": its Runs page; GenAI's shows "Training runs" and an overview.
    page.get_by_role("heading", name="Runs", exact=True).wait_for()
    assert page.get_by_text("Detect Issues").count() == 0
    for column in ("final_test_accuracy", "model.learning_rate_init"):
        page.get_by_role("columnheader", name=column).first.wait_for()
    page.get_by_role("columnheader", name="model.activation").first.wait_for()
    return page


def _parent_run(browser, base, uri, shots):
    """The sweep's parent run: the best run, its objective and parameters, links to
    every child; its artifacts: the objective against each swept parameter."""
    client, runs = runs_of(uri, "browser")
    (parent,) = [
        run
        for run in runs
        if "mlflow.parentRunId" not in run.data.tags
        and run.data.tags.get("skmlp.best_run") in CHILDREN
    ]
    experiment_id = parent.info.experiment_id
    page = _open(browser, f"{base}/{run_link(experiment_id, parent.info.run_id)}")
    note = page.get_by_text(re.compile(r"Best of 4 runs: .+, final_test_accuracy = "))
    best = next(name for name in CHILDREN if f"runs: {name}," in note.inner_text())
    page.get_by_text("skmlp.best_run", exact=True).wait_for()
    page.get_by_text(re.compile(r"^\s*:?\s*" + re.escape(best) + r"$")).first.wait_for()
    for param in ("model.learning_rate_init", "model.activation"):
        page.get_by_role("cell", name=param, exact=True).wait_for()
    child_runs = page.get_by_test_id("key-value-Child runs")  # under "About this run"
    for name in CHILDREN:
        child_runs.get_by_role("link", name=name, exact=True).wait_for()
    page.screenshot(path=shots / "parent_run.png")
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("objective.png").click()
    page.locator("img[src*='objective.png'], img").first.wait_for()
    page.screenshot(path=shots / "objective.png")
    page.close()


def _charts(browser, address, objective, n_runs):
    """The compare address: the objective against each swept parameter (one point a
    run) and the per-epoch curves of every run. Left scrolled to its top."""
    page = _open(browser, address)
    section = f"Objective: {objective}"
    page.get_by_text(section).wait_for()
    page.get_by_text(f"{n_runs} matching runs").wait_for()
    page.get_by_text("Parallel Coordinates").first.wait_for()
    scatter = page.get_by_text(re.compile(rf"^\S+ vs\. {objective}$")).first
    _points(page, section, scatter.inner_text(), n_runs)
    for curve in ("test_accuracy", "train_accuracy", "loss"):
        _points(page, "Per epoch", curve, n_runs * EPOCHS)
    page.get_by_text(section).scroll_into_view_if_needed()
    page.wait_for_timeout(2000)  # the charts draw after their cards
    return page


def _points(page, section, title, n_points):
    """The chart card titled ``title`` in ``section`` draws ``n_points`` points (MLflow
    draws only the cards near the window: scroll to the section first)."""
    page.get_by_text(section).first.scroll_into_view_if_needed()
    card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
        has=page.get_by_text(title, exact=True)
    )
    points = card.locator(".scatterlayer path.point")
    points.nth(n_points - 1).wait_for(state="attached")
    assert points.count() == n_points, title
