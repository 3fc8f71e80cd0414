"""``skmlp._workers``: joblib's workers end with their parent, however it dies, and
leave nothing in ``/dev/shm`` (issue 21, item 2), with real processes and signals."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_for

from skmlp._workers import SHARED_MEMORY, remove_dead_leftovers

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc and /dev/shm"
)


def group_alive(pgid):
    """The pids of the live (not zombie) processes of process group ``pgid``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def leftovers_of(pid):
    """What process ``pid``'s memory maps and semaphores left in ``/dev/shm``."""
    return sorted(
        path.name
        for path in SHARED_MEMORY.iterdir()
        if path.name.startswith(
            (f"joblib_memmapping_folder_{pid}_", f"sem.loky-{pid}-")
        )
    )


def kill_group(process):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


# A library user's script: fit_together with two workers on a memory-mapped X (2 MB),
# for as long as it takes to be killed.
FIT_TOGETHER = """
import numpy as np
from skmlp import SGDMLPClassifier, fit_together
rng = np.random.default_rng(0)
X, y = rng.random((4000, 64)), rng.integers(0, 3, 4000)
nets = [
    SGDMLPClassifier((8,), max_iter=100000, n_iter_no_change=100000, random_state=i)
    for i in range(4)
]
fit_together(nets, X, y, n_jobs=2)
"""


def workers_of(pid):
    """The pids of the loky workers whose parent is ``pid``."""
    workers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            ppid = int(
                cmdline.with_name("stat").read_text().rsplit(")", 1)[1].split()[1]
            )
            args = cmdline.read_bytes()
        except (OSError, IndexError):
            continue
        if ppid == pid and b"popen_loky_posix" in args:
            workers.append(int(cmdline.parent.name))
    return workers


@pytest.mark.slow
def test_sigterm_inside_fit_together_leaves_no_worker_and_no_shared_memory(tmp_path):
    """SIGTERM (no handler: the process dies at once) while two workers train: within
    ten seconds no process of it is left, nor its memory maps in /dev/shm."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", FIT_TOGETHER],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: len(workers_of(process.pid)) == 2, "two workers", process)
        wait_for(lambda: leftovers_of(process.pid), "the memory map", process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == -signal.SIGTERM
        deadline = time.monotonic() + 10
        while group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_alive(process.pid) == []
        assert leftovers_of(process.pid) == []
    finally:
        kill_group(process)


def test_what_dead_processes_left_in_shared_memory_is_removed(tmp_path):
    """A memory-map folder and a semaphore named after a dead pid are removed; those
    of a live process stay."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = [
        f"joblib_memmapping_folder_{dead.pid}_skmlptest_0",
        f"sem.loky-{dead.pid}-skmlptest",
        f"joblib_memmapping_folder_{os.getpid()}_skmlptest_0",
    ]
    for name in names[::2]:
        (SHARED_MEMORY / name).mkdir()
        (SHARED_MEMORY / name / "x.pkl").write_bytes(b"0")
    (SHARED_MEMORY / names[1]).write_bytes(b"0")
    try:
        removed = remove_dead_leftovers()
        assert {path.name for path in removed} >= set(names[:2])
        assert not any((SHARED_MEMORY / name).exists() for name in names[:2])
        assert (SHARED_MEMORY / names[2]).exists()  # alive: kept
    finally:
        for name in names:
            path = SHARED_MEMORY / name
            if path.is_dir():
                (path / "x.pkl").unlink(missing_ok=True)
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
