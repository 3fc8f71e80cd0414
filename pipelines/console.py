"""What the pipelines print on the console: one stream shared with the progress bar,
and a quiet mode that shows the results alone.

Hydra's logging configs (``conf/hydra/job_logging``, ``conf/hydra/hydra_logging``)
build these by name; ``console=quiet`` selects the quiet ones.

scikit-learn's ``ProgressBar`` draws with rich, whose live display, in a terminal,
swaps ``sys.stdout`` and ``sys.stderr`` for proxies that print each line above the
bar. A ``logging.StreamHandler`` keeps the stream it was given when logging was
configured, the real terminal, and its lines and the bar overwrite each other.
:class:`ConsoleHandler` writes to the stream of the moment, the proxy while a bar is
live (MLflow's own handler does the same for ``sys.stderr``).
"""

import logging
import os
import sys


class ConsoleHandler(logging.StreamHandler):
    """A ``StreamHandler`` that writes each record to ``sys.<stream>`` as it is then.

    Parameters
    ----------
    stream : {"stdout", "stderr"}, default="stdout"
        The name of the ``sys`` attribute to write to.
    """

    def __init__(self, stream="stdout"):
        if stream not in ("stdout", "stderr"):
            raise ValueError(
                f"ConsoleHandler: stream must be stdout or stderr, got {stream!r}."
            )
        logging.Handler.__init__(self)
        self.stream_name = stream

    @property
    def stream(self):
        """The stream written to: ``sys.stdout`` (or ``sys.stderr``) now."""
        return getattr(sys, self.stream_name)


class ResultsOnly(logging.Filter):
    """Lets through warnings and errors, and the records of the ``results`` loggers
    (and their children): what a quiet console shows.

    Parameters
    ----------
    results : list of str
        Names of the loggers whose records are results (a run's final line, a
        sweep's ranked table, the address of the UI).
    mlflow_level : str, default=None
        Where given, MLflow's own logging (its handler, not the root's) is cut to
        this level too: see :func:`set_mlflow_level`.
    """

    def __init__(self, results=(), mlflow_level=None):
        super().__init__()
        self.results = tuple(results)
        if mlflow_level is not None:
            set_mlflow_level(mlflow_level)

    def filter(self, record):
        if record.levelno >= logging.WARNING:
            return True
        name = record.name
        return any(name == r or name.startswith(r + ".") for r in self.results)


def set_mlflow_level(level):
    """Cut MLflow's logging to ``level`` in this process and the ones it starts,
    unless the user set ``MLFLOW_LOGGING_LEVEL``.

    MLflow gives its logger a handler of its own and sets its level when it is
    imported, from ``MLFLOW_LOGGING_LEVEL``: Hydra's logging config cannot reach it.
    Where MLflow is imported already, its logger's level is set here.
    """
    level = os.environ.setdefault("MLFLOW_LOGGING_LEVEL", level)
    if "mlflow" in sys.modules:
        logging.getLogger("mlflow").setLevel(level.upper())


def is_quiet() -> bool:
    """Whether the console shows results alone (``console=quiet``): its handler on the
    root logger filters with :class:`ResultsOnly`. What prints outside logging (the
    verbose output of scikit-learn's searches) asks this first."""
    return any(
        isinstance(handler, ConsoleHandler)
        and any(isinstance(f, ResultsOnly) for f in handler.filters)
        for handler in logging.getLogger().handlers
    )
