"""Data that heals or says what is wrong (issue 21, items 5 and 6).

Damaged files: real files damaged on disk, real mirrors (a local HTTP server, a
``file://`` directory), real processes healing one cache, the pipeline's command.
Impossible settings: ``pipelines.checks`` on configs composed by Hydra.
"""

import functools
import gzip
import hashlib
import http.server
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import all_runs, run_entry_point, runs_of

from skmlp.datasets import MNIST, DataError, cache_dir, load_mnist

FILES = [spec.name for pair in MNIST.files.values() for spec in pair]
VICTIM = "t10k-images-idx3-ubyte.gz"


def overwrite_four_bytes(packed, at=100):
    """The probe of issue 21: four bytes overwritten inside the deflate stream."""
    return packed[:at] + b"\xff\xff\xff\xff" + packed[at + 4 :]


def wrong_magic(packed):
    """A well-formed gzip whose IDX header is not the expected one."""
    raw = bytearray(gzip.decompress(packed))
    raw[2] = 0x0D  # IDX type float instead of unsigned byte
    return gzip.compress(bytes(raw), compresslevel=1)


# Each damage, and what the error says of it.
DAMAGES = {
    "four-bytes": (overwrite_four_bytes, "Error -3 while decompressing data"),
    "crc": (lambda packed: overwrite_four_bytes(packed, len(packed) // 2), "CRC"),
    "truncated": (lambda packed: packed[: len(packed) // 3], "end-of-stream"),
    "not-gzip": (lambda packed: b"<html>a proxy's error page</html>", "Not a gzip"),
    "wrong-magic": (wrong_magic, "checksum mismatch"),
}


@pytest.fixture(scope="module")
def mnist_dir(mnist):  # noqa: ARG001 - the fixture skips when the data is absent
    """The directory the session's MNIST was read from."""
    directory = os.environ.get("SKMLP_MNIST_DIR")
    return Path(directory).resolve() if directory else cache_dir("mnist")


@pytest.fixture
def cache(monkeypatch, tmp_path, mnist_dir):
    """A full cache of good copies, no user directory: what a second run finds."""
    monkeypatch.delenv("SKMLP_MNIST_DIR", raising=False)
    monkeypatch.setenv("SKMLP_CACHE_DIR", str(tmp_path / "cache"))
    directory = tmp_path / "cache" / "mnist"
    directory.mkdir(parents=True)
    for name in FILES:
        shutil.copyfile(mnist_dir / name, directory / name)
    return directory


@pytest.fixture
def mirror(mnist_dir):
    """A mirror on 127.0.0.1 serving the real files, one second late for each (so
    that processes healing at once overlap), counting what it serves."""
    served = []

    class Slow(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            time.sleep(1)
            served.append(self.path.lstrip("/"))
            super().do_GET()

        def log_message(self, *args):
            pass

    handler = functools.partial(Slow, directory=str(mnist_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/", served
    server.shutdown()
    server.server_close()


def offline():
    """A mirror nobody answers at (the discard port)."""
    return ["http://127.0.0.1:9/"]


def damage(path, kind):
    """Damage ``path`` in place as ``DAMAGES[kind]`` says; its damaged bytes."""
    damaged = DAMAGES[kind][0](path.read_bytes())
    path.write_bytes(damaged)
    return damaged


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", DAMAGES)
def test_a_damaged_cached_file_is_a_data_error_naming_it(cache, kind):
    victim = cache / VICTIM
    damaged = damage(victim, kind)
    with pytest.raises(DataError) as error:
        load_mnist(mirrors=offline())
    message = str(error.value)
    assert str(victim) in message and DAMAGES[kind][1] in message
    (aside,) = cache.glob(f"{VICTIM}.damaged-*")
    assert aside.read_bytes() == damaged  # moved aside, not deleted
    assert f"moved to {aside}" in message
    assert f"{VICTIM} was damaged and could not be downloaded" in message
    assert "SKMLP_MNIST_DIR" in message  # what to do offline


@pytest.mark.parametrize("kind", DAMAGES)
def test_a_damaged_cached_file_is_moved_aside_and_fetched_again(
    cache, mnist_dir, mirror, kind, caplog
):
    url, served = mirror
    victim = cache / VICTIM
    damaged = damage(victim, kind)
    with caplog.at_level(logging.WARNING, logger="skmlp.datasets"):
        data = load_mnist(mirrors=[url])
    assert data.X_train.shape == (60000, 784)
    assert md5(victim) == md5(mnist_dir / VICTIM)  # healed
    assert served == [VICTIM]  # only the damaged file fetched
    (aside,) = cache.glob(f"{VICTIM}.damaged-*")
    assert aside.read_bytes() == damaged
    assert f"{victim}: " in caplog.text and "Downloading it again" in caplog.text
    # Healed for good: the next load reads the cache, with every mirror gone.
    assert load_mnist(mirrors=offline()).y_train.shape == (60000,)


def test_a_file_url_mirror_heals_the_cache(cache, mnist_dir):
    victim = cache / "t10k-labels-idx1-ubyte.gz"
    damage(victim, "four-bytes")
    data = load_mnist(mirrors=[mnist_dir.as_uri() + "/"])
    assert data.y_test.shape == (10000,)
    assert md5(victim) == md5(mnist_dir / victim.name)


@pytest.mark.parametrize("how", ["data_dir", "environment"])
@pytest.mark.parametrize("kind", ["four-bytes", "truncated"])
def test_a_damaged_file_of_the_users_directory_is_named_and_left_alone(
    tmp_path, mnist_dir, monkeypatch, mirror, how, kind
):
    url, served = mirror
    own = tmp_path / "my-mnist"
    own.mkdir()
    for name in FILES:
        shutil.copyfile(mnist_dir / name, own / name)
    monkeypatch.setenv("SKMLP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SKMLP_MNIST_DIR", str(own) if how == "environment" else "")
    victim = own / "t10k-images-idx3-ubyte.gz"
    damaged = damage(victim, kind)
    with pytest.raises(DataError) as error:
        load_mnist(own if how == "data_dir" else None, mirrors=[url])
    message = str(error.value)
    assert str(victim) in message and DAMAGES[kind][1] in message
    assert "left as it is" in message and "Replace it with a good copy" in message
    assert victim.read_bytes() == damaged  # untouched
    assert sorted(p.name for p in own.iterdir()) == sorted(FILES)  # nothing added
    assert served == []  # nothing fetched in its place


@pytest.mark.parametrize("how", ["data_dir", "environment"])
def test_a_user_directory_that_does_not_exist_is_named(tmp_path, monkeypatch, how):
    monkeypatch.setenv("SKMLP_CACHE_DIR", str(tmp_path / "cache"))
    missing = tmp_path / "typo"
    monkeypatch.setenv("SKMLP_MNIST_DIR", str(missing) if how == "environment" else "")
    with pytest.raises(DataError, match="is not a directory") as error:
        load_mnist(missing if how == "data_dir" else None, mirrors=offline())
    assert str(missing) in str(error.value)
    assert not (tmp_path / "cache").exists()  # neither read nor downloaded instead


HEAL = """
import sys
from skmlp.datasets import load_mnist
data = load_mnist(mirrors=sys.argv[1:])
print("loaded", data.X_train.shape)
"""


@pytest.mark.slow
def test_four_processes_heal_one_damaged_cache_with_one_fetch(cache, mnist_dir, mirror):
    url, served = mirror
    victim = cache / "train-images-idx3-ubyte.gz"  # the first file read
    damage(victim, "four-bytes")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", HEAL, url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=300)[0].decode() for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
        assert "loaded (60000, 784)" in output
    assert served == [victim.name]  # one fetch, the others waited and read it
    assert len(list(cache.glob(f"{victim.name}.damaged-*"))) == 1
    assert list(cache.glob(".*.part")) == []  # nothing half-written
    assert md5(victim) == md5(mnist_dir / victim.name)


# ---- the same, through the pipeline's command

SMALL = ["data.n_train=1000", "data.n_test=1000", "model.max_iter=1"]
SMALL += ["tracking.log_model=false", "tracking.experiment_name=data-faults"]


@pytest.mark.slow
def test_the_pipeline_heals_a_damaged_cache_and_trains(store, cache, mnist_dir):
    uri, env = store
    env = {**env, "SKMLP_CACHE_DIR": str(cache.parent)}
    env.pop("SKMLP_MNIST_DIR", None)
    victim = cache / VICTIM
    damage(victim, "four-bytes")
    mirrors = f"+data.loader.mirrors=[{mnist_dir.as_uri()}/]"
    result = run_entry_point("pipelines.train", [*SMALL, mirrors], env, cache)
    output = result.stdout + result.stderr
    assert f"{victim}: cannot read or decompress (Error -3" in output
    assert "Downloading it again" in output
    assert md5(victim) == md5(mnist_dir / VICTIM)
    _, (run,) = runs_of(uri, "data-faults")
    assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_the_pipeline_names_a_damaged_file_of_the_users_directory(
    store, tmp_path, mnist_dir
):
    uri, env = store
    own = tmp_path / "my-mnist"
    own.mkdir()
    for name in FILES:
        shutil.copyfile(mnist_dir / name, own / name)
    damaged = damage(own / VICTIM, "four-bytes")
    env = {**env, "SKMLP_MNIST_DIR": str(own), "SKMLP_CACHE_DIR": str(tmp_path)}
    result = run_entry_point("pipelines.train", SMALL, env, tmp_path, check=False)
    assert result.returncode != 0
    assert f"DataError: {own / VICTIM}: cannot read or decompress" in result.stderr
    assert "has been left as it is" in result.stderr
    assert (own / VICTIM).read_bytes() == damaged
    assert all_runs(uri) == []


# ---- impossible data, evaluation and tracking settings (issue 21, item 6), checked
# on configs composed by Hydra as the entry points compose them; the cases of the
# issue run the real command in tests/test_pipelines.py.


def composed(task, overrides):
    """The config of ``task`` (``train``, ``memorization``, ...) with ``overrides``."""
    from hydra import compose, initialize_config_dir

    from pipelines import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(task, overrides=overrides)


@pytest.mark.parametrize(
    "task, overrides",
    [
        ("train", []),
        ("train", ["data=digits"]),
        ("train", ["data=fashion_mnist"]),
        ("train", ["experiment=3b1b"]),
        ("train", ["experiment=wide"]),
        ("train", ["sweep=seed_network"]),
        ("train", ["data.validation_size=0.1", "data.n_train=1000"]),
        ("train", ["data.validation_size=100", "eval.train_accuracy_samples=null"]),
        ("memorization", []),
        ("memorization", ["scale=full", "regularization=early_stopping"]),
        ("grid_search", ["data=digits"]),
    ],
)
def test_the_shipped_configs_pass_the_checks(task, overrides):
    from pipelines.checks import check_config

    check_config(composed(task, overrides))


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.n_test=0.5", "data.n_test=0.5: must be null (the whole set) or a"),
        ("data.n_train=true", "data.n_train=True: must be null"),
        ("data.validation_size=-1", "data.validation_size=-1: must be 0 (no valid"),
        ("data.validation_size=1.0", "data.validation_size=1.0: must be 0 (no valid"),
        ("eval.noise_samples=0", "eval.noise_samples=0: must be a positive integer"),
        ("eval.train_accuracy_samples=0.5", "eval.train_accuracy_samples=0.5: must"),
        ("tracking.experiment_name=null", "tracking.experiment_name=null: must be a"),
        ("seed=-1", "seed=-1: must be an integer from 0 to 4294967295"),
        ("seed=4294967296", "seed=4294967296: must be an integer from 0"),
    ],
)
def test_an_impossible_setting_is_refused_naming_it(override, message):
    from pipelines.checks import ConfigError, check_config

    with pytest.raises(ConfigError) as error:
        check_config(composed("train", [override]))
    assert str(error.value).startswith(message)


def test_a_validation_count_that_leaves_no_training_set_is_refused():
    from pipelines.checks import ConfigError, check_config

    cfg = composed("train", ["data.n_train=100", "data.validation_size=100"])
    with pytest.raises(ConfigError, match="holds out 100 of data.n_train=100"):
        check_config(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("grid.corruption.p=[0.0,-0.2]", "grid.corruption.p=-0.2: must be a number"),
        ("grid.corruption.p=2", "grid.corruption.p=2: must be a number from 0 to 1"),
        ("fit_threshold=99", "fit_threshold=99: must be a number from 0 to 1"),
        ("corruption.kind=labels", "corruption.kind=labels: must be one of: none,"),
    ],
)
def test_an_impossible_memorization_setting_is_refused(override, message):
    from pipelines.checks import ConfigError, check_config

    with pytest.raises(ConfigError) as error:
        check_config(composed("memorization", [override]))
    assert str(error.value).startswith(message)
