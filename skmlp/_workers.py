"""joblib's worker processes that end with their parent, and what a dead parent
leaves behind.

loky's workers keep both ends of their queues, so they never see their parent die:
killed with ``-9`` (or by a SIGTERM without a handler), it leaves them training,
starting the jobs already queued, then idling for minutes, with its memory maps in
``/dev/shm``. :func:`loky_backend` gives joblib a loky backend whose workers run
:func:`watch_parent` at start; :func:`remove_dead_leftovers` removes what the
memory maps and semaphores of dead processes left in ``/dev/shm``.
"""

import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from joblib._parallel_backends import LokyBackend
from joblib.externals.loky.backend.context import get_start_method
from joblib.parallel import get_active_backend

SHARED_MEMORY = Path("/dev/shm")  # where joblib puts its memory maps (2 GB free)
# joblib_memmapping_folder_<pid>_<id>_<context>, sem.loky-<pid>-<id>
LEFTOVER = re.compile(r"^(?:joblib_memmapping_folder_|sem\.loky-)(\d+)[_-]")
POLL_S = 0.2  # how often a worker looks for its parent
# How long a worker whose parent died gives its job (a SIGTERM handler) to end its
# runs before it exits.
GRACE_S = 5
EXIT_CODE = 70  # what an orphaned worker exits with (EX_SOFTWARE)

_parent = None  # the process this one watches (None: not watched)
_gone = threading.Event()
_workers = {}  # pid -> loky's process object, of this process's workers


def watch_parent(parent=None, grace=GRACE_S):
    """(In a worker process.) End this process once ``parent`` is no longer its
    parent (it died), within ``POLL_S`` seconds; once per process.

    A process with a SIGTERM handler of its own (a pipeline's job: it ends its runs)
    is sent SIGTERM and given ``grace`` seconds first.

    Parameters
    ----------
    parent : int or None, default=None
        The parent's pid, as the parent knew it (None: this process's parent now);
        a parent that died before the worker got here is caught too.
    grace : float, default=GRACE_S
        Seconds that a process with a SIGTERM handler has to end its work.

    Notes
    -----
    A thread that polls ``os.getppid()`` rather than Linux's ``PR_SET_PDEATHSIG``:
    that signal comes when the *thread* that started the worker ends, and loky starts
    replacement workers from a thread of its own that ends while the parent lives; it
    is Linux-only; and it cannot wait for a job to end its runs. A dead parent's
    children are adopted by another process (init, or a subreaper), so the parent
    pid changes.
    """
    global _parent
    if _parent is not None:
        return
    _parent = os.getppid() if parent is None else parent
    thread = threading.Thread(
        target=_watch, args=(_parent, grace), name="skmlp-watch-parent", daemon=True
    )
    thread.start()


def parent_gone() -> bool:
    """Whether this process is a watched worker whose parent died."""
    return _gone.is_set() or (_parent is not None and os.getppid() != _parent)


def _watch(parent, grace):
    while os.getppid() == parent:
        time.sleep(POLL_S)
    _gone.set()
    if callable(signal.getsignal(signal.SIGTERM)):  # a handler: let it end its runs
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
    os._exit(EXIT_CODE)


def _forked_worker(environment):
    """(In a worker forked by multiprocessing's fork server, which loky uses once its
    start method is ``forkserver``: ``pipelines.warm``.) This process's environment
    as its caller's was when the workers started; the fork server watched.

    A fork server ends once no process holds its "alive" pipe: its caller, and each
    process it forked. The worker lets go of it, so that the fork server ends with
    the caller, however the caller dies, and the worker then with the fork server.
    SIGTERM is put back to its default (the fork server ignores it, so that it
    outlives a signal to the sweep's process group while its workers end their runs).
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(environment)
    server = getattr(sys.modules.get("multiprocessing.forkserver"), "_forkserver", None)
    alive = getattr(server, "_forkserver_alive_fd", None)
    if alive is not None:
        os.close(alive)
        server._forkserver_alive_fd = None
    watch_parent()


class WatchedLokyBackend(LokyBackend):
    """joblib's loky backend whose workers end with their parent
    (:func:`watch_parent`), and whose worker processes are remembered so that the
    cause of a worker's death can be told (:func:`worker_exit`)."""

    def configure(self, n_jobs=1, parallel=None, **kwargs):
        """As ``LokyBackend.configure``, the workers watching this process (or,
        forked by the fork server, watching the fork server)."""
        if "initializer" not in {**self.backend_kwargs, **kwargs}:
            if get_start_method() == "forkserver":
                kwargs.update(initializer=_forked_worker, initargs=(dict(os.environ),))
            else:
                kwargs.update(initializer=watch_parent, initargs=(os.getpid(),))
        return super().configure(n_jobs, parallel, **kwargs)

    def submit(self, func, callback=None):
        """As ``LokyBackend.submit``; remembers the workers (started by now)."""
        future = super().submit(func, callback=callback)
        _workers.update(getattr(self._workers, "_processes", {}))
        return future


def loky_backend():
    """The active joblib backend as :class:`WatchedLokyBackend` where it is loky
    (joblib's default), with the same settings; None for any other backend."""
    backend, _ = get_active_backend()
    if not isinstance(backend, LokyBackend):
        return None
    return WatchedLokyBackend(
        nesting_level=backend.nesting_level,
        inner_max_num_threads=backend.inner_max_num_threads,
        **backend.backend_kwargs,
    )


def worker_exit(pid: int):
    """How worker ``pid`` of this process ended: a description ("killed by signal 9
    (SIGKILL)", "exit code 1"), or None if it is not known to have ended."""
    process = _workers.get(pid)
    code = None if process is None else process.exitcode
    if code is None:
        return None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"


def remove_dead_leftovers(folder=SHARED_MEMORY) -> list:
    """Remove joblib's memory-map folders and loky's semaphores in ``folder`` whose
    process (the pid in their name) is dead; return what was removed.

    Their tracker removes them when the last process using them ends; this catches
    what a tracker killed with the rest leaves. Only ``/dev/shm``, which belongs to
    this machine (a shared temporary folder may hold other hosts' live pids), and
    only this user's entries (another user's, or a container's that shares
    ``/dev/shm`` but not our pids, are left alone).
    """
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = LEFTOVER.match(path.name)
        if match is None or _alive(int(match.group(1))) or not _ours(path):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _ours(path: Path) -> bool:
    try:
        return path.lstat().st_uid == os.getuid()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True
