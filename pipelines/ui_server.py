"""``skmlp-ui``: the MLflow UI on the project's store, opened on the latest sweep.

It resolves the store as the pipelines do (``--uri``, else ``MLFLOW_TRACKING_URI``,
else the configured URI, else ``mlruns/mlflow.db`` in the project), starts
``mlflow ui`` on it bound to 127.0.0.1, waits until it answers, and prints the
address of the latest top-level run's saved view (a sweep's: its runs only) in the
"Model training" mode, and its chart view. Ctrl-C (or SIGTERM) stops the server.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from pipelines import config_dir
from pipelines.store import StoreError, check_store, sqlite_path, tracking_uri
from pipelines.summary import sweep_view_id
from pipelines.ui import SINGLE_RUNS_VIEW, VIEW_TAG_PREFIX, runs_link

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
START_TIMEOUT_S = 180  # a fresh server on a loaded 2-core box can take a minute
STOP_TIMEOUT_S = 20
WORKERS = 2  # request handlers (MLflow's default 4: slower to start, one user needs 2)


class UIError(RuntimeError):
    """The UI cannot be started; the message says why and what to do."""


def configured_uri() -> str | None:
    """``tracking.uri`` of the pipelines' configuration (``conf/tracking/mlflow.yaml``)."""
    return OmegaConf.load(Path(config_dir()) / "tracking" / "mlflow.yaml").get("uri")


def store_uri(explicit: str | None = None) -> str:
    """The store to serve: ``explicit`` (``--uri``; a sqlite path made absolute), else
    the one the pipelines resolve (``MLFLOW_TRACKING_URI``, the configured URI, the
    project's ``mlruns/mlflow.db``)."""
    if explicit is None:
        return tracking_uri(configured_uri())
    if explicit.startswith("sqlite:///") and explicit != "sqlite:///:memory:":
        return f"sqlite:///{Path(explicit.removeprefix('sqlite:///')).resolve()}"
    return explicit


def latest_links(client: MlflowClient) -> tuple[str, str] | None:
    """The runs table and chart view (addresses relative to the UI) of the latest
    top-level run: a sweep's parent opens the sweep's saved view, a single run the
    experiment's view of single runs, where they exist. None: the store has no run.
    """
    experiments = [e.experiment_id for e in client.search_experiments()]
    latest = client.search_runs(
        experiments,
        "tags.mlflow.parentRunId IS NULL",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not latest:
        return None
    run = latest[0]
    experiment_id = run.info.experiment_id
    tags = client.get_experiment(experiment_id).tags
    views = [sweep_view_id(run.info.run_id), SINGLE_RUNS_VIEW]
    view = next((v for v in views if VIEW_TAG_PREFIX + v in tags), None)
    return runs_link(experiment_id, view), runs_link(experiment_id, view, charts=True)


def port_free(port: int) -> bool:
    """Whether nothing listens on ``HOST:port`` (so that ``mlflow ui`` can)."""
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def ui_argv(uri: str, port: int, workers: int = WORKERS) -> list[str]:
    """The ``mlflow ui`` command serving ``uri`` on ``HOST:port``."""
    mlflow_ui = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    return [*mlflow_ui, "--host", HOST, "--port", str(port), "--workers", str(workers)]


def ui_environment() -> dict[str, str]:
    """The server's environment: without MLflow's job runner (seven processes for
    GenAI's judges and scheduled jobs, which comparing trained models does not use),
    unless the user's environment asks for it."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}


def wait_until_answering(base: str, server: subprocess.Popen, timeout: float) -> None:
    """Wait until the server at ``base`` answers its health check; UIError if its
    process ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None:
            raise UIError(f"mlflow ui ended (exit status {server.returncode}) first")
        if time.monotonic() > deadline:
            raise UIError(
                f"mlflow ui did not answer at {base} within {timeout:.0f} s (a machine "
                "this busy: try again when it is quieter)"
            )
        time.sleep(0.3)


@contextmanager
def serve(uri: str, port: int = DEFAULT_PORT, timeout: float = START_TIMEOUT_S):
    """Run ``mlflow ui`` on the store ``uri`` at ``http://127.0.0.1:<port>``; yields
    ``(base address, server process)`` once it answers, and stops the server (its
    whole process group) on leaving. The server's own output goes to
    ``server_log(port)``, so that its request lines do not bury the addresses."""
    if not port_free(port):
        raise UIError(
            f"Port {port} of {HOST} is in use (an MLflow UI already running?): open "
            f"http://{HOST}:{port}, or choose another port: skmlp-ui --port {port + 1}"
        )
    check_store(uri)  # created and migrated under the pipelines' lock, not by the UI
    path = sqlite_path(uri)
    cwd = path.parent if path is not None else None
    log = server_log(port)
    with open(log, "wb") as output:
        server = subprocess.Popen(
            ui_argv(uri, port),
            cwd=cwd,
            env=ui_environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://{HOST}:{port}"
        try:
            wait_until_answering(base, server, timeout)
        except UIError as exc:
            tail = log.read_text(errors="replace")[-2000:]
            raise UIError(f"{exc}. Its output ({log}):\n{tail}") from exc
        yield base, server
    finally:
        stop(server)


def server_log(port: int) -> Path:
    """Where the output of the server on ``port`` goes (the temporary directory)."""
    return Path(tempfile.gettempdir()) / f"skmlp-ui-{port}.log"


def stop(server: subprocess.Popen) -> None:
    """End ``server`` and the workers it started: SIGTERM, then SIGKILL if needed."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> None:
    """Console command ``skmlp-ui``: serve the project's MLflow store and print the
    address of the latest sweep (or run) in the "Model training" mode."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default 5000")
    parser.add_argument("--uri", help="tracking URI (default: as the pipelines use)")
    args = parser.parse_args(argv)
    uri = store_uri(args.uri)
    if uri.startswith(("http://", "https://")):
        sys.exit(f"{uri} is an MLflow server already: open it in a browser.")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # even where a shell ignores it
    try:
        with serve(uri, args.port) as (base, server):
            links = latest_links(MlflowClient(uri))
            print(f"MLflow UI on {uri}, at {base} (log: {server_log(args.port)})")
            if links is None:
                print("  no runs yet: run skmlp-train, then reload", flush=True)
            else:
                print(f"  the latest sweep (or run): {base}/{links[0]}")
                print(f"  compare its runs: {base}/{links[1]}", flush=True)
            print("Ctrl-C stops it.", flush=True)
            server.wait()
        sys.exit(f"mlflow ui ended by itself (exit status {server.returncode})")
    except (UIError, StoreError) as exc:
        sys.exit(str(exc))
    except KeyboardInterrupt:
        print("MLflow UI stopped.", flush=True)


if __name__ == "__main__":
    main()
