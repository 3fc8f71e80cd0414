"""What the console shows, as a user sees it: the progress bar and the log lines in a
real terminal, the lines of a joint fit, the quiet mode, and the printed way to load a
run's model from any directory."""

import fcntl
import logging
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
import warnings

import pyte
import pytest
from helpers import ROOT, run, run_entry_point
from omegaconf import OmegaConf
from sklearn.exceptions import ConvergenceWarning

from pipelines.callbacks import EpochScoring
from pipelines.training import instantiate_callbacks
from skmlp import SGDMLPClassifier, fit_together

QUICK = ["data=digits", "model.tol=0", "tracking.log_model=false"]
# A log line as Hydra's job logging writes it: [time][logger][LEVEL] - message.
LOG_LINE = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[[\w.]+\]\[[A-Z]+\] - "
)
EPOCH = r"epoch (\d+)/(\d+): loss \d\.\d{4}, test_accuracy \d\.\d{4}, "
EPOCH += r"train_accuracy \d\.\d{4} \(\d+\.\d\d s\)$"
# MLflow's own lines (creating the store) and the indented lines of a long message.
OTHER_LINE = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d [A-Z]+ [\w.]+: |  \S)")
BAR = "SGDMLPClassifier - fit"
COLUMNS, ROWS = 250, 400  # rows enough that nothing scrolls off the screen


def run_in_terminal(args, env, cwd, timeout=300):
    """Run ``python -m pipelines.train args`` with a pseudo-terminal as its stdin,
    stdout and stderr; return the lines of the terminal's screen at the end (a
    terminal emulator replays every byte the program wrote, cursor moves included).
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {**env, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.train", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    os.close(slave)
    screen = pyte.Screen(COLUMNS, ROWS)
    stream = pyte.ByteStream(screen)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([master], [], [], 1.0)[0]:
            continue  # nothing yet: look at the clock again
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the program ended and closed the terminal
            break
        if not data:
            break
        stream.feed(data)
    os.close(master)
    if process.poll() is None:
        process.kill()
    assert process.wait(timeout=60) == 0, "\n".join(screen.display)
    return [line.rstrip() for line in screen.display if line.strip()]


@pytest.mark.slow
def test_progress_bar_and_log_lines_share_the_terminal(store, tmp_path):
    """Every log line stands whole on its own line of the screen, the epoch lines
    all there, in order; the bar stands alone on its line, at 100 %."""
    args = [*QUICK, "callbacks=progress", "model.max_iter=40"]
    lines = run_in_terminal(args, store[1], tmp_path)
    shown = "\n".join(lines)
    log_lines = [line for line in lines if LOG_LINE.match(line)]
    assert len(log_lines) >= 40, shown
    for line in lines:  # each line whole: a log line, a bar, or another known line
        if line.startswith(BAR):
            assert re.fullmatch(BAR + r" \S+ +\d+% [\d:-]+", line), shown
        else:
            assert LOG_LINE.match(line) or OTHER_LINE.match(line), shown
    epochs = [re.search(EPOCH, line) for line in log_lines]
    assert [(m[1], m[2]) for m in epochs if m] == [(str(e), "40") for e in range(1, 41)]
    bars = [line for line in lines if line.startswith(BAR)]
    assert bars and "100%" in bars[-1], shown


@pytest.mark.slow
def test_a_joint_fit_names_the_run_of_each_line(store, tmp_path):
    """A grid's networks log their epochs in turn: each line says whose it is."""
    grid = "+grid.model.learning_rate_init=[0.01,0.1]"
    result = run_entry_point(
        "pipelines.train", [*QUICK, "model.max_iter=2", grid], store[1], tmp_path
    )
    lines = result.stdout.splitlines()
    epochs = [line for line in lines if re.search(EPOCH, line)]
    assert len(epochs) == 4, result.stdout
    named = [
        re.search(
            r"\]\[pipelines\.callbacks\]\[INFO\] - \[(lr=[\d.]+)\] epoch (\d)/2", line
        )
        for line in epochs
    ]
    assert sorted((m[1], m[2]) for m in named if m) == [
        ("lr=0.01", "1"),
        ("lr=0.01", "2"),
        ("lr=0.1", "1"),
        ("lr=0.1", "2"),
    ], result.stdout
    for name in ("lr=0.01", "lr=0.1"):  # and each network's result
        assert any(f"[{name}] test accuracy 0." in line for line in lines), (
            result.stdout
        )


def test_a_joint_fit_names_the_run_of_each_epoch_line(digits, caplog):
    """The configured epoch log of each network of one fit_together call names its
    run (the name that the pipelines hand to the callbacks)."""
    X, y = digits
    config = OmegaConf.load(ROOT / "conf" / "callbacks" / "default.yaml")
    config.pop("mlflow")  # no store here: only the log lines
    models = []
    for rate in (0.01, 0.1):
        scoring = EpochScoring({"test": (X, y)})
        model = SGDMLPClassifier((8,), learning_rate_init=rate, max_iter=2, tol=0)
        model.set_callbacks(*instantiate_callbacks(config, scoring, None, f"lr={rate}"))
        models.append(model)
    with caplog.at_level(logging.INFO, logger="pipelines.callbacks"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit_together(models, X, y)
    named = [
        re.match(r"\[(lr=[\d.]+)\] epoch (\d)/2: loss ", r.getMessage())
        for r in caplog.records
    ]
    assert sorted((m[1], m[2]) for m in named if m) == [
        ("lr=0.01", "1"),
        ("lr=0.01", "2"),
        ("lr=0.1", "1"),
        ("lr=0.1", "2"),
    ], caplog.text


@pytest.mark.slow
def test_quiet_prints_the_result_alone_and_how_to_load_the_model(store, tmp_path):
    """``console=quiet``: a run's result line, how to load its model and the UI's
    address, nothing else (no MLflow store set-up, no pickle caution); the printed
    code loads the model from any directory, creating no store there."""
    args = ["data=digits", "model.max_iter=2", "console=quiet"]
    result = run_entry_point("pipelines.train", args, store[1], tmp_path)
    lines = (result.stdout + result.stderr).splitlines()
    expected = [
        r"\[digits-16-16-relu-lr0.05\] test accuracy 0\.\d{4} after 2 epochs "
        r"\(\d+\.\d s\), run \w{32}",
        r"Load its model, from any directory:",
        r"  import mlflow; mlflow\.set_tracking_uri\('sqlite:////.+/mlruns/mlflow\.db'\)",
        r"  model = mlflow\.sklearn\.load_model\('runs:/\w{32}/model'\)",
        r"See the runs in the MLflow UI: skmlp-ui --uri sqlite:////.+/mlruns/mlflow\.db",
        r"  then open http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?\S+",
        r"  compare them: http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?\S+",
    ]
    assert len(lines) == len(expected), "\n".join(lines)
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), "\n".join(lines)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "\n".join(line.strip() for line in lines[2:4])
    code += "\nfrom sklearn.datasets import load_digits\n"
    code += "print(model.predict(load_digits().data[:5]))"
    env = {k: v for k, v in store[1].items() if k != "MLFLOW_TRACKING_URI"}
    loaded = run([sys.executable, "-c", code], elsewhere, env)
    assert re.fullmatch(r"\[\d( \d){4}\]", loaded.stdout.strip()), loaded.stdout
    assert list(elsewhere.iterdir()) == []  # no stray store


@pytest.mark.slow
def test_a_quiet_sweep_prints_its_table_and_the_address_alone(store, tmp_path):
    args = [
        "-m",
        *QUICK,
        "model.max_iter=2",
        "console=quiet",
        "model.activation=relu,tanh",
    ]
    result = run_entry_point("pipelines.train", args, store[1], tmp_path)
    lines = (result.stdout + result.stderr).splitlines()
    assert lines[0] == "The sweep's 2 runs, best first:", result.stdout + result.stderr
    assert re.fullmatch(
        r" *run +model\.activation +final_test_accuracy +status", lines[1]
    )
    for line in lines[2:4]:
        assert re.fullmatch(r" *(relu|tanh) +(relu|tanh) +0\.\d{4} FINISHED", line), (
            lines
        )
    assert lines[4].startswith("See the runs in the MLflow UI: skmlp-ui")
    assert lines[5].startswith("  then open http://127.0.0.1:5000/#/experiments/")
    assert lines[6].startswith("  compare them: http://127.0.0.1:5000/#/experiments/")
    assert len(lines) == 7, lines


def test_tab_completion_of_the_console_scripts(tmp_path):
    """README: ``eval "$(skmlp-train --shell-completion install=bash)"`` makes bash
    complete the overrides of the installed console script."""
    scripts = os.path.dirname(sys.executable)  # the venv's bin, where skmlp-train is
    script = """
        eval "$(skmlp-train --shell-completion install=bash)"
        COMP_LINE="skmlp-train data=" COMP_POINT=17 COMP_CWORD=1
        hydra_bash_completion
        printf '%s\\n' "${COMPREPLY[@]}"
    """
    env = {**os.environ, "PATH": scripts + os.pathsep + os.environ["PATH"]}
    result = run(["bash", "-c", script], tmp_path, env)
    assert {"data=digits", "data=mnist"} <= set(result.stdout.split()), result.stdout
