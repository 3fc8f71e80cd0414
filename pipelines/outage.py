"""A tracking store that stops answering for a while: what a run does meanwhile.

MLflow's own HTTP retries stay short (``pipelines.store.HTTP_BOUNDS``); the waiting is
ours and explicit. While training, the per-epoch metrics that fail to reach the store
stay in the logger's buffer and are tried again later (:class:`Backoff`), each try
with no HTTP retries of MLflow's, so that training does not stall on them. At a run's
end, each write (the buffered metrics, the final metrics, artifacts, tags, status)
waits for the store up to ``tracking.outage_wait_s`` (:meth:`Store.call`), saying so
in one log line, and raises :class:`StoreUnavailable` when that time runs out. Then
the run's end writes what it holds to a local spool (:func:`write_spool`), which
``skmlp-replay`` (:func:`replay_main`) writes into the store once it answers.
"""

import argparse
import json
import logging
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
from hydra.errors import CompactHydraException
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from pipelines.lifecycle import REASON_TAG
from pipelines.redact import redact, redact_uri
from pipelines.store import (
    PROJECT_ROOT,
    StoreError,
    bound_http_retries,
    check_store,
    environment,
)

log = logging.getLogger(__name__)

# The most metric points MLflow takes in one log_batch request.
BATCH_POINTS = 1000
# tracking.outage_wait_s where a config does not say (README: What is guaranteed).
DEFAULT_WAIT_S = 300.0
# One try while training: no HTTP retries of MLflow's, and a short read timeout, so a
# store that is down or hangs costs an epoch at most this long.
TRY_TIMEOUT_S = 10
_FAILED_REQUEST = re.compile(
    r"API request to \S+ failed with (timeout )?exception"
    r"|failed with error code 5\d\d"
)


def outage_wait_s(cfg) -> float:
    """``tracking.outage_wait_s``: seconds, 0 or more (absent: ``DEFAULT_WAIT_S``)."""
    value = cfg.tracking.get("outage_wait_s", DEFAULT_WAIT_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(
            f"tracking.outage_wait_s={value!r}: must be a number of seconds, 0 or "
            "more (how long a run's end waits for a store that does not answer)."
        )
    return float(value)


class StoreUnavailable(CompactHydraException, RuntimeError):
    """The store did not answer within the wait allowed (``tracking.outage_wait_s``).

    Its message says what happened and what to do: an entry point lets Hydra print it
    alone, once, with no traceback (:func:`pipelines.run.task` does not log it).
    """


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the store did not answer (connection refused or reset, a
    timeout, an HTTP 5xx), rather than that the request itself was wrong."""
    while exc is not None:
        if isinstance(exc, requests.HTTPError):
            response = exc.response
            if response is not None and response.status_code >= 500:
                return True
        elif isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return True
        elif isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        elif isinstance(exc, RestException) and exc.get_http_status_code() >= 500:
            return True
        elif isinstance(exc, MlflowException) and _FAILED_REQUEST.search(exc.message):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def one_try(timeout: float = TRY_TIMEOUT_S):
    """MLflow requests in this block are tried once, with a read timeout of at most
    ``timeout`` seconds (a user's shorter timeout wins)."""
    current = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 120)
    with environment(
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT=str(int(max(1, min(current, timeout)))),
    ):
        yield


class Backoff:
    """When to try again after failures: ``first`` seconds, doubling up to ``most``."""

    def __init__(self, first: float = 1.0, most: float = 30.0):
        self.first, self.most = first, most
        self.failures, self.next_try = 0, 0.0

    def due(self) -> bool:
        """Whether a try is due now."""
        return time.monotonic() >= self.next_try

    def failed(self) -> float:
        """Count a failure; return the seconds until the next try."""
        delay = min(self.most, self.first * 2**self.failures)
        self.failures += 1
        self.next_try = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.next_try = 0, 0.0


class Store:
    """Writes to the store ``uri`` that wait up to ``wait_s`` seconds for it to answer.

    Parameters
    ----------
    uri : str
        The tracking URI (shown redacted).
    wait_s : float, default=DEFAULT_WAIT_S
        How long one write waits for a store that does not answer
        (``tracking.outage_wait_s``).
    """

    def __init__(self, uri: str, wait_s: float = DEFAULT_WAIT_S):
        self.uri, self.wait_s = uri, float(wait_s)

    def call(self, write, *args, **kwargs):
        """``write(*args, **kwargs)``, tried again with backoff while the store does
        not answer, for ``wait_s`` seconds at most; then :class:`StoreUnavailable`.

        Other errors are raised at once. The first failure logs one line; the
        recovery another.
        """
        bound_http_retries()  # for MLflow's calls outside one_try (it restores them)
        deadline, backoff, said = time.monotonic() + self.wait_s, Backoff(), False
        while True:
            try:
                with one_try():
                    result = write(*args, **kwargs)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreUnavailable(self._gave_up(exc)) from exc
                if not said:
                    said = True
                    log.warning(
                        "store at %s not answering; waiting up to %g s for it (%s)",
                        redact_uri(self.uri),
                        self.wait_s,
                        _short(exc),
                    )
                time.sleep(min(backoff.failed(), left))
                continue
            if said:
                log.warning("store at %s answers again", redact_uri(self.uri))
            return result

    def _gave_up(self, exc):
        return (
            f"The MLflow store {redact_uri(self.uri)} did not answer for "
            f"{self.wait_s:g} s (tracking.outage_wait_s): {_short(exc)}"
        )


def _short(exc: BaseException) -> str:
    """What went wrong, in a few words: the innermost cause of ``exc`` (``Connection
    refused``, a timeout) or its message's first line; at most 200 characters."""
    inner = exc
    while (inner.__cause__ or inner.__context__) is not None:
        inner = inner.__cause__ or inner.__context__
    lines = str(inner).strip().splitlines()
    text = lines[0] if lines else ""
    if inner is not exc:
        text = f"{type(inner).__name__}: {text}"
    return redact(text or type(exc).__name__)[:200]


# ----------------------------------------------------------------------------------
# When the wait runs out: a local spool, replayed later

SPOOL_FILE = "run.json"
REPLAY_COMMAND = "skmlp-replay"


@dataclass
class Spooled:
    """What a run could not write to its store, as ``<spool>/<run id>/run.json``;
    its artifact files lie beside it, under ``artifacts/``.

    ``metrics`` holds ``[key, value, timestamp, step]`` lists; ``status`` is the
    status the run ends with when replayed (empty: the run's points alone, spooled
    by its ``MLflowEpochLogger`` from a full buffer or a ``fit_together`` worker;
    whoever owns the run ends it).
    """

    uri: str
    run_id: str
    status: str
    metrics: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)


def spool_dir(configured: str | None = None) -> Path:
    """Where runs are spooled: ``tracking.spool_dir``, else ``<project>/mlruns/spool``."""
    if configured:
        return Path(configured).expanduser().resolve()
    return PROJECT_ROOT / "mlruns" / "spool"


def write_spool(
    directory: Path, spooled: Spooled, save_artifacts=None, name=None
) -> Path:
    """Write ``spooled`` to ``directory/<name>/`` (default: its run id) and
    ``save_artifacts(path)`` its artifact files under ``artifacts/`` there; return
    that folder.

    The record is written last, through a rename: a folder without ``run.json`` is
    one whose writing did not end, and replay leaves it alone.
    """
    folder = directory / (name or spooled.run_id)
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    if save_artifacts is not None:
        save_artifacts(folder / "artifacts")
    partial = folder / f"{SPOOL_FILE}.partial"
    partial.write_text(json.dumps(asdict(spooled), indent=1))
    partial.replace(folder / SPOOL_FILE)
    return folder


def replay(folder: Path, uri: str | None = None) -> tuple[str, str]:
    """Write the spooled run in ``folder`` to its store (or ``uri``), end it with its
    status (if it has one), and remove the folder; return the run's id and the store.

    Writing again what already reached the store adds nothing: metric points are
    kept with their original timestamps, parameters and tags with the same values.
    """
    spooled = Spooled(**json.loads((folder / SPOOL_FILE).read_text()))
    uri = uri or spooled.uri
    check_store(uri)
    client = MlflowClient(uri)
    points = [Metric(*point) for point in spooled.metrics]
    for start in range(0, len(points), BATCH_POINTS):
        client.log_batch(spooled.run_id, metrics=points[start : start + BATCH_POINTS])
    params = [Param(key, value) for key, value in spooled.params.items()]
    tags = [RunTag(key, value) for key, value in spooled.tags.items()]
    client.log_batch(spooled.run_id, params=params, tags=tags)
    artifacts = folder / "artifacts"
    if any(artifacts.iterdir()):
        client.log_artifacts(spooled.run_id, str(artifacts))
    if spooled.status:
        if REASON_TAG in client.get_run(spooled.run_id).data.tags:
            client.delete_tag(spooled.run_id, REASON_TAG)  # a reaper's "(killed?)"
        client.set_terminated(spooled.run_id, spooled.status)
    shutil.rmtree(folder)
    return spooled.run_id, uri


def replay_main(argv=None) -> None:
    """Console command ``skmlp-replay``: write spooled runs into their store."""
    parser = argparse.ArgumentParser(description=replay_main.__doc__)
    parser.add_argument(
        "folders",
        nargs="*",
        type=Path,
        help="spooled runs (<spool>/<run id>) or spools; default: <project>/mlruns/spool",
    )
    parser.add_argument("--uri", help="the store to write to (default: each run's own)")
    args = parser.parse_args(argv)
    folders = [f for given in args.folders or [spool_dir()] for f in _runs_in(given)]
    if not folders:
        print("no spooled runs")
    for folder in folders:
        try:
            run_id, uri = replay(folder, args.uri)
        except StoreError as exc:
            raise SystemExit(f"{folder} not replayed: {exc}") from None
        print(f"run {run_id} written to {redact_uri(uri)}")


def _runs_in(path: Path) -> list[Path]:
    """``path`` if it is a spooled run, else the spooled runs inside it."""
    if (path / SPOOL_FILE).exists():
        return [path]
    return sorted(p.parent for p in path.glob(f"*/{SPOOL_FILE}"))


if __name__ == "__main__":
    replay_main()
