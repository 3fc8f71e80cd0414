"""MNIST loading: real files, real downloads from a local HTTP server, real errors."""

import functools
import gzip
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skmlp.datasets import (
    MNIST,
    DataError,
    cache_dir,
    load_digits_split,
    load_mnist,
    parse_idx,
)

FILES = [spec.name for pair in MNIST.files.values() for spec in pair]


@pytest.fixture(scope="module")
def mnist_dir(mnist):  # noqa: ARG001 - the fixture skips when the data is absent
    """The directory the session's MNIST was read from."""
    directory = os.environ.get("SKMLP_MNIST_DIR")
    return Path(directory).resolve() if directory else cache_dir("mnist")


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No data directory, an empty cache: only downloads can provide files."""
    monkeypatch.delenv("SKMLP_MNIST_DIR", raising=False)
    monkeypatch.setenv("SKMLP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "mnist"


@pytest.fixture
def serve(tmp_path):
    """Start HTTP servers on 127.0.0.1 for given directories; yield their base URLs."""
    servers = []

    def start(directory):
        handler = functools.partial(
            http.server.SimpleHTTPRequestHandler, directory=str(directory)
        )
        handler.log_message = lambda *args: None
        return _start_server(handler, servers)

    yield start
    _stop_servers(servers)


def _start_server(handler, servers):
    """Serve ``handler`` on a free port of 127.0.0.1 (added to ``servers``); its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    servers.append(server)
    return f"http://127.0.0.1:{server.server_port}/"


def _stop_servers(servers):
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_load_mnist_from_environment_variable(mnist):
    assert mnist.X_train.shape == (60000, 784) and mnist.X_test.shape == (10000, 784)
    assert mnist.X_train.dtype == np.float32
    assert 0.0 == mnist.X_train.min() and mnist.X_train.max() == 1.0
    assert set(np.unique(mnist.y_train)) == set(range(10))
    assert np.bincount(mnist.y_test).min() > 800
    assert (
        mnist.checksums["train-images-idx3-ubyte.gz"]
        == "6bbc9ace898e44ae57da46a324031adb"
    )


def test_as_frame(mnist_dir):
    data = load_mnist(mnist_dir, as_frame=True)
    assert isinstance(data.X_test, pd.DataFrame) and data.X_test.shape == (10000, 784)
    assert isinstance(data.y_test, pd.Series)


def test_downloads_into_the_cache_atomically(isolated, serve, mnist_dir, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(mnist_dir, mirror)
    data = load_mnist(mirrors=[closed_port_url(), serve(mirror)])
    assert data.X_train.shape == (60000, 784)
    # No .part left; beside the files, only their (empty) lock files.
    names = sorted(p.name for p in isolated.iterdir() if not p.name.endswith(".lock"))
    assert names == sorted(FILES)
    # The second call reads the cache, with every mirror gone.
    assert load_mnist(mirrors=[closed_port_url()]).y_test.shape == (10000,)


def test_a_corrupt_download_is_rejected_and_the_next_mirror_used(
    isolated, serve, mnist_dir, tmp_path
):
    good, bad = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(mnist_dir, good)
    bad.mkdir()
    for name in FILES:
        (bad / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 100))
    data = load_mnist(mirrors=[serve(bad), serve(good)])
    assert data.y_train.shape == (60000,)


def test_offline_without_files_names_the_directory_and_the_variable(isolated):
    with pytest.raises(DataError, match="SKMLP_MNIST_DIR") as error:
        load_mnist(mirrors=[closed_port_url()])
    assert str(isolated) in str(error.value)
    # Nothing half-written left behind (a lock file is empty and reused).
    assert [p.name for p in isolated.iterdir()] == [".train-images-idx3-ubyte.gz.lock"]


def test_corrupt_cached_file_is_moved_aside_and_named_offline(isolated, mnist_dir):
    isolated.mkdir(parents=True)
    for name in FILES:
        shutil.copy(mnist_dir / name, isolated / name)
    corrupt = isolated / "t10k-labels-idx1-ubyte.gz"
    damaged = corrupt.read_bytes()[:-50]
    corrupt.write_bytes(damaged)
    with pytest.raises(DataError, match="t10k-labels") as error:
        load_mnist(mirrors=[closed_port_url()])
    assert not corrupt.exists()
    (aside,) = isolated.glob("t10k-labels-idx1-ubyte.gz.damaged-*")
    assert aside.read_bytes() == damaged  # kept, for whoever wants to look
    assert f"moved to {aside}" in str(error.value)


def test_cached_files_are_decompressed_once(isolated, mnist_dir, monkeypatch):
    # Checking a cached file is reading it: a second pass would double the load time.
    isolated.mkdir(parents=True)
    for name in FILES:
        shutil.copy(mnist_dir / name, isolated / name)
    sizes = []

    def decompress(data):
        raw = real_decompress(data)
        sizes.append(len(raw))
        return raw

    real_decompress = gzip.decompress
    monkeypatch.setattr(gzip, "decompress", decompress)
    data = load_mnist(mirrors=[closed_port_url()])
    assert len(sizes) == len(FILES)
    assert data.X_train.shape == (60000, 784)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda raw: raw[:-10], "checksum mismatch"),
        (lambda raw: b"", "checksum mismatch"),
    ],
)
def test_corrupt_user_file_names_the_file_and_is_kept(
    tmp_path, mnist_dir, damage, match
):
    for name in FILES:
        shutil.copy(mnist_dir / name, tmp_path / name)
    victim = tmp_path / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(gzip.compress(damage(gzip.decompress(victim.read_bytes()))))
    with pytest.raises(DataError, match=match) as error:
        load_mnist(tmp_path, mirrors=[closed_port_url()])
    assert str(victim) in str(error.value)
    assert victim.exists()


def test_not_gzip_is_a_clear_error(tmp_path, mnist_dir):
    for name in FILES:
        shutil.copy(mnist_dir / name, tmp_path / name)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: cannot read"):
        load_mnist(tmp_path, mirrors=[closed_port_url()])


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"\x00\x00", "truncated header"),
        (b"\x00\x00\x0d\x01" + (5).to_bytes(4, "big") + b"\x00" * 5, "bad magic"),
        (b"\x00\x00\x08\x01" + (6).to_bytes(4, "big") + b"\x00" * 6, "shape"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x00" * 4, "truncated"),
    ],
)
def test_parse_idx_validates_the_header(raw, match):
    spec = MNIST.files["test"][1].__class__("labels", (5,))
    with pytest.raises(DataError, match=match):
        parse_idx(raw, spec)


def test_parse_idx_reads_images():
    spec = MNIST.files["test"][0].__class__("images", (2, 2, 3))
    header = b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (2, 2, 3))
    array = parse_idx(header + bytes(range(12)), spec)
    np.testing.assert_array_equal(array.ravel(), np.arange(12))


def test_digits_need_no_download():
    data = load_digits_split()
    assert data.X_train.shape[1] == 64 and data.X_train.max() <= 1.0
    assert len(data.y_train) + len(data.y_test) == 1797


# ---- issue 11, item 5: concurrent corrupt caches, slow mirrors, killed downloads


@pytest.fixture
def serve_trickle():
    """A mirror on 127.0.0.1 that announces a file, then sends a byte every 0.2 s
    (for at most 30 s, so that no test can hang on it)."""
    servers = []

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            for _ in range(150):
                try:
                    self.wfile.write(b"\x1f")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)

        def log_message(self, *args):
            pass

    yield lambda: _start_server(Trickle, servers)
    _stop_servers(servers)


LOAD = "import sys; from skmlp.datasets import load_mnist; load_mnist(mirrors=sys.argv[1:])"


@pytest.mark.slow
def test_processes_finding_the_same_corrupt_cached_file_all_load(
    isolated, serve, mnist_dir, tmp_path
):
    isolated.mkdir(parents=True)
    for name in FILES:
        shutil.copy(mnist_dir / name, isolated / name)
    # The first file read, so that every process finds it corrupt at about once.
    corrupt = isolated / "train-images-idx3-ubyte.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:-50])
    mirror = serve(mnist_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD, mirror],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(6)
    ]
    outputs = [p.communicate(timeout=300)[0].decode() for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    assert load_mnist(mirrors=[closed_port_url()]).y_test.shape == (10000,)


def test_a_trickling_mirror_is_given_up_at_the_deadline_and_named(
    isolated, serve_trickle, monkeypatch
):
    monkeypatch.setenv("SKMLP_DOWNLOAD_DEADLINE", "1")
    slow = serve_trickle()
    with pytest.raises(DataError) as error:
        load_mnist(mirrors=[slow])
    assert f"{slow}: too slow" in str(error.value)
    assert "SKMLP_DOWNLOAD_DEADLINE" in str(error.value)


def test_the_next_mirror_is_used_after_a_trickling_one(
    isolated, serve, serve_trickle, mnist_dir, monkeypatch
):
    monkeypatch.setenv("SKMLP_DOWNLOAD_DEADLINE", "1")
    data = load_mnist(mirrors=[serve_trickle(), serve(mnist_dir)])
    assert data.y_test.shape == (10000,)


def test_partial_files_of_a_download_killed_by_sigterm_are_removed(
    isolated, serve, serve_trickle, mnist_dir
):
    killed = subprocess.Popen(
        [sys.executable, "-c", LOAD, serve_trickle()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(isolated.glob("*.part")) and time.monotonic() < deadline:
            time.sleep(0.2)
        (part,) = isolated.glob("*.part")
    finally:
        killed.send_signal(signal.SIGTERM)
        killed.wait(timeout=30)
    assert part.exists()  # SIGTERM's default action leaves it
    load_mnist(mirrors=[serve(mnist_dir)])
    assert list(isolated.glob("*.part")) == []


def test_downloaded_files_are_readable_by_all(isolated, serve, mnist_dir):
    umask = os.umask(0o022)
    try:
        load_mnist(mirrors=[serve(mnist_dir)])
    finally:
        os.umask(umask)
    assert {(isolated / name).stat().st_mode & 0o777 for name in FILES} == {0o644}
