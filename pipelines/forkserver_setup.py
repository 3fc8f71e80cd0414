"""Imported by multiprocessing's fork server alone, after a job's modules
(``pipelines.warm`` preloads it last), to set up the process its workers are
forked from.

- It ignores SIGTERM. multiprocessing makes it ignore SIGINT already; a SIGTERM to
  the sweep's process group would otherwise end it at once, and the sweep's process
  would read its workers, alive and ending their runs, as dead ("exit code 255").
  It ends when its "alive" pipe closes: once the sweep's process has ended
  (``skmlp._workers`` puts SIGTERM back to its default in each worker).
- Everything imported is moved to the garbage collector's permanent generation
  (:func:`gc.freeze`): a forked worker shares those pages with the fork server, and
  the collector's first pass over them would otherwise copy most of them into the
  worker and slow its first job's start (benchmarks/README.md).
"""

import gc
import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
gc.freeze()
