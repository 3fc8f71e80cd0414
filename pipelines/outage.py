"""A tracking store that stops answering for a while: what a run does meanwhile.

MLflow's own HTTP retries stay short (``pipelines.store.HTTP_BOUNDS``); the waiting is
ours and explicit. While training, the per-epoch metrics that fail to reach the store
stay in the logger's buffer and are tried again later (:class:`Backoff`), each try
with no HTTP retries of MLflow's, so that training does not stall on them. At a run's
end, each write (the buffered metrics, the final metrics, artifacts, tags, status)
waits for the store up to ``tracking.outage_wait_s`` (:meth:`Store.call`), saying so
in one log line, and raises :class:`StoreUnavailable` when that time runs out.
"""

import logging
import os
import re
import time
from contextlib import contextmanager

import requests
from mlflow.exceptions import MlflowException, RestException

from pipelines.redact import redact, redact_uri

log = logging.getLogger(__name__)

# tracking.outage_wait_s where a config does not say (README: What is guaranteed).
DEFAULT_WAIT_S = 300.0
# One try while training: no HTTP retries of MLflow's, and a short read timeout, so a
# store that is down or hangs costs an epoch at most this long.
TRY_TIMEOUT_S = 10
_FAILED_REQUEST = re.compile(
    r"API request to \S+ failed with (timeout )?exception"
    r"|failed with error code 5\d\d"
)


class StoreUnavailable(RuntimeError):
    """The store did not answer within the wait allowed (``tracking.outage_wait_s``)."""


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
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {name: os.environ.get(name) for name in names}
    current = float(saved[names[1]] or 120)
    os.environ[names[0]] = "0"
    os.environ[names[1]] = str(int(max(1, min(current, timeout))))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    """The first line of an exception's message, at most 200 characters."""
    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)[:200]
