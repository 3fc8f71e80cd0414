"""Imported by multiprocessing's fork server alone (``pipelines.warm`` preloads it),
and only for this: the fork server ignores SIGTERM.

multiprocessing makes it ignore SIGINT already. A SIGTERM to the sweep's process
group would otherwise end it at once, and the sweep's process would read its
workers, alive and ending their runs, as dead ("exit code 255"). Ignoring it, the
fork server ends when its "alive" pipe closes: once the sweep's process has ended
(``skmlp._workers`` lets its workers put the signal back to its default).
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
