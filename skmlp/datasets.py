"""Data sets: MNIST and Fashion-MNIST from their IDX files, and sklearn's 8x8 digits.

Where the files are looked for, in order: the ``data_dir`` argument, the data set's
environment variable (``SKMLP_MNIST_DIR``, ``SKMLP_FASHION_MNIST_DIR``), then the cache
directory (``SKMLP_CACHE_DIR``, default ``~/.cache/skmlp/<name>``). Files missing from all
of them are downloaded into the cache, trying each mirror in turn, written atomically
(mode 0644) and checked against the known checksums before they are kept. A mirror
gets ``SKMLP_DOWNLOAD_DEADLINE`` seconds (default 600) per file before the next one is
tried.

Every read is checked: decompressed, checksummed and parsed. A damaged file in the
cache is moved aside (``<name>.damaged-<time>``) and downloaded again; one process at a
time fetches a file into the cache (a lock file beside it, ``.<name>.lock``), the others
wait and read what it fetched. A damaged file in a user's own directory is named in the
error and left as it is.
"""

import gzip
import hashlib
import logging
import os
import socket
import struct
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from sklearn.utils import Bunch

log = logging.getLogger(__name__)


class DataError(OSError):
    """A data file is missing, unreadable, truncated or fails its checksum."""

    damaged = False  # whether a damaged copy was found (and moved aside)


@dataclass(frozen=True)
class _IdxFile:
    name: str
    shape: tuple  # expected shape, first dimension included
    raw_md5: str | None = None  # md5 of the decompressed bytes
    gz_md5: str | None = None  # md5 of the published .gz file


@dataclass(frozen=True)
class _Dataset:
    name: str
    env_var: str
    mirrors: tuple
    files: dict  # split -> (images, labels)


MNIST = _Dataset(
    name="mnist",
    env_var="SKMLP_MNIST_DIR",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    files={
        "train": (
            _IdxFile(
                "train-images-idx3-ubyte.gz",
                (60000, 28, 28),
                raw_md5="6bbc9ace898e44ae57da46a324031adb",
            ),
            _IdxFile(
                "train-labels-idx1-ubyte.gz",
                (60000,),
                raw_md5="a25bea736e30d166cdddb491f175f624",
            ),
        ),
        "test": (
            _IdxFile(
                "t10k-images-idx3-ubyte.gz",
                (10000, 28, 28),
                raw_md5="2646ac647ad5339dbf082846283269ea",
            ),
            _IdxFile(
                "t10k-labels-idx1-ubyte.gz",
                (10000,),
                raw_md5="27ae3e4e09519cfbb04c329615203637",
            ),
        ),
    },
)

# Fashion-MNIST publishes the md5 of its .gz files (README of zalandoresearch/fashion-mnist).
FASHION_MNIST = _Dataset(
    name="fashion-mnist",
    env_var="SKMLP_FASHION_MNIST_DIR",
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    files={
        "train": (
            _IdxFile(
                "train-images-idx3-ubyte.gz",
                (60000, 28, 28),
                gz_md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            ),
            _IdxFile(
                "train-labels-idx1-ubyte.gz",
                (60000,),
                gz_md5="25c81989df183df01b3e8a0aad5dffbe",
            ),
        ),
        "test": (
            _IdxFile(
                "t10k-images-idx3-ubyte.gz",
                (10000, 28, 28),
                gz_md5="bef4ecab320f06d8554ea6380940ec79",
            ),
            _IdxFile(
                "t10k-labels-idx1-ubyte.gz",
                (10000,),
                gz_md5="bb300cfdad3c16e7a12a480ee83cd310",
            ),
        ),
    },
)

_IDX_DTYPE = 0x08  # unsigned byte, the only type these files use


def cache_dir(name):
    """Directory where downloaded files of data set ``name`` are kept."""
    root = os.environ.get("SKMLP_CACHE_DIR") or Path.home() / ".cache" / "skmlp"
    return Path(root) / name


def parse_idx(raw, spec, source=None):
    """Parse the bytes of an uncompressed IDX file into a uint8 array.

    Parameters
    ----------
    raw : bytes
        Decompressed file content.
    spec : _IdxFile
        Expected name and shape.
    source : str or Path, default=None
        The file the bytes come from, named in errors (default: ``spec.name``).

    Returns
    -------
    array : ndarray of dtype uint8 and shape ``spec.shape``

    Raises
    ------
    DataError
        If the header, the shape or the size is not what ``spec`` expects.
    """
    n_dims, name = len(spec.shape), source or spec.name
    if len(raw) < 4 + 4 * n_dims:
        raise DataError(f"{name}: truncated header ({len(raw)} bytes).")
    zero, dtype, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _IDX_DTYPE or dims != n_dims:
        raise DataError(
            f"{name}: bad magic number {raw[:4].hex()} (expected an IDX file of "
            f"unsigned bytes with {n_dims} dimensions)."
        )
    shape = struct.unpack(f">{n_dims}I", raw[4 : 4 + 4 * n_dims])
    if shape != spec.shape:
        raise DataError(f"{name}: shape {shape}, expected {spec.shape}.")
    body = raw[4 + 4 * n_dims :]
    if len(body) != int(np.prod(shape)):
        raise DataError(
            f"{name}: {len(body)} bytes of data, expected {int(np.prod(shape))} "
            "(the file is truncated or has trailing bytes)."
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _read_verified(path, spec):
    """Read, checksum and parse one .gz IDX file; DataError naming ``path`` if
    anything is wrong (unreadable, truncated, not gzip, a damaged stream, a wrong
    checksum, a bad header or size)."""
    try:
        packed = path.read_bytes()
        raw = gzip.decompress(packed)
    # BadGzipFile (a CRC or a header) is an OSError; a damaged deflate stream is a
    # zlib.error; a truncated one an EOFError.
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read or decompress ({exc}).") from exc
    if spec.raw_md5 and hashlib.md5(raw).hexdigest() != spec.raw_md5:
        raise DataError(f"{path}: checksum mismatch, the file is corrupt.")
    if spec.gz_md5 and hashlib.md5(packed).hexdigest() != spec.gz_md5:
        raise DataError(f"{path}: checksum mismatch, the file is corrupt.")
    return parse_idx(raw, spec, source=path)


def download_deadline():
    """Seconds one file may take from one mirror: ``$SKMLP_DOWNLOAD_DEADLINE``, else
    600 (MNIST's largest file is 9.9 MB)."""
    return float(os.environ.get("SKMLP_DOWNLOAD_DEADLINE") or 600)


def _fetch(url, out, deadline):
    """Copy ``url`` into the open file ``out``, giving up ``deadline`` seconds in.

    The socket timeout bounds each read; the deadline bounds the whole transfer, so
    that a mirror trickling a byte at a time cannot stall a download forever.
    """
    end = time.monotonic() + deadline
    with urllib.request.urlopen(url, timeout=min(30, deadline)) as response:
        while chunk := response.read1(1 << 16):
            out.write(chunk)
            if time.monotonic() > end:
                raise TimeoutError(
                    f"too slow: {out.tell()} bytes in {deadline:g} s (the limit, "
                    "SKMLP_DOWNLOAD_DEADLINE)"
                )


def _remove_stale_parts(directory, name):
    """Remove partial downloads of ``name`` left by dead processes of this host
    (killed mid-download); those of live processes are theirs."""
    host = socket.gethostname()
    for part in directory.glob(f".{name}.{host}.*.part"):
        pid = part.name.removeprefix(f".{name}.{host}.").split(".")[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            part.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            pass  # not our naming, or another user's live process


def _download(spec, directory, mirrors):
    """Fetch ``spec`` from the first mirror that serves a valid copy into ``directory``;
    return its parsed content."""
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(directory, spec.name)
    target, errors = directory / spec.name, []
    prefix = f".{spec.name}.{socket.gethostname()}.{os.getpid()}."
    for mirror in mirrors:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(mirror + spec.name, out, download_deadline())
            array = _read_verified(Path(tmp), spec)
            os.chmod(tmp, 0o644)  # a cache readable by all, as any (mkstemp: 0600)
            os.replace(tmp, target)  # atomic: readers never see a partial file
            return array
        except (OSError, urllib.error.URLError) as exc:
            errors.append(f"{mirror}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DataError("\n  ".join([f"could not download {spec.name}:", *errors]))


def _read(dataset, spec, data_dir, mirrors):
    """The verified content of ``spec``: from the user's directory if it holds the
    file, else from the cache, fetched (or healed) there if needed.

    Each file is decompressed and checksummed once when all is well: the check is
    the read.
    """
    given = _given_directories(dataset, data_dir)
    for directory in given:
        if (directory / spec.name).exists():
            return _read_own(dataset, spec, directory)
    cached = cache_dir(dataset.name) / spec.name
    if cached.exists():
        try:
            return _read_verified(cached, spec)
        except DataError:
            pass  # damaged (or replaced as it was read): healed under the lock
    try:
        return _fetch_into_cache(spec, cached, mirrors or dataset.mirrors)
    except DataError as exc:
        looked = ", ".join(str(d) for d in [*given, cached.parent])
        what = "was damaged" if exc.damaged else f"not found (looked in: {looked})"
        raise DataError(
            f"{dataset.name} file {spec.name} {what} and could not be downloaded. "
            f"Put the four IDX files in a directory and pass data_dir=... or set "
            f"{dataset.env_var}.\n{exc}"
        ) from None


def _given_directories(dataset, data_dir):
    """The user's directories, ``data_dir`` then the environment variable's; an
    error if one is named that is not a directory (a typo would silently read, or
    download, the cache's files instead)."""
    given = []
    for what, directory in (
        ("data_dir", data_dir),
        (f"${dataset.env_var}", os.environ.get(dataset.env_var)),
    ):
        if not directory:
            continue
        if not Path(directory).is_dir():
            raise DataError(
                f"{what}={directory} is not a directory. Name the directory that "
                f"holds the four IDX files of {dataset.name}, or leave {what} unset "
                "to use the cache (downloading into it if needed)."
            )
        given.append(Path(directory))
    return given


def _read_own(dataset, spec, directory):
    """The content of ``spec`` in a user's ``directory``; a damaged file is named,
    with what to do, and never touched."""
    try:
        return _read_verified(directory / spec.name, spec)
    except DataError as exc:
        raise DataError(
            f"{exc}\nThis file is in your own data directory ({directory}: data_dir "
            f"or ${dataset.env_var}) and has been left as it is. Replace it with a "
            "good copy (the file as distributed), or remove it to have it downloaded "
            f"into the cache ({cache_dir(dataset.name)})."
        ) from None


def _fetch_into_cache(spec, cached, mirrors):
    """The verified content of the cached file ``cached``, downloaded if it is
    missing or damaged (a damaged one is moved aside first, never deleted).

    One process at a time, under a lock file beside it: a process that waited reads
    what the one before it fetched, so several processes finding the same damage
    fetch the file once.
    """
    cached.parent.mkdir(parents=True, exist_ok=True)
    with _cache_lock(cached, len(mirrors)):
        damage = None
        if cached.exists():
            try:
                return _read_verified(cached, spec)  # fetched or healed meanwhile
            except DataError as exc:
                aside = _move_aside(cached)
                damage = f"{exc}\nThe damaged file was moved to {aside}."
                log.warning("%s Downloading it again.", damage)
        try:
            return _download(spec, cached.parent, mirrors)
        except DataError as exc:
            error = DataError(f"{damage}\n{exc}" if damage else str(exc))
            error.damaged = damage is not None
            raise error from None


@contextmanager
def _cache_lock(cached, n_mirrors):
    """Hold the lock that one process at a time holds to fetch ``cached``; wait as
    long as a download may take from every mirror, then give up."""
    path = cached.with_name(f".{cached.name}.lock")
    timeout = download_deadline() * n_mirrors + 60
    lock = FileLock(path, timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise DataError(
            f"{cached}: another process has held {path} for {timeout:g} s while "
            "fetching it. If no process is downloading, remove the lock file."
        ) from None
    except OSError as exc:  # an unusable lock file (permissions, read-only disk)
        raise DataError(f"{path}: cannot lock the cache ({exc}).") from exc
    try:
        yield
    finally:
        lock.release()


def _move_aside(path):
    """Rename the damaged ``path`` to ``<name>.damaged-<time>`` beside it."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}-{os.getpid()}")
    try:
        os.replace(path, aside)
    except OSError as exc:
        raise DataError(
            f"{path} is damaged and cannot be moved aside ({exc}): remove it."
        ) from exc
    return aside


def _load_idx_dataset(dataset, data_dir, as_frame, dtype, mirrors):
    bunch = Bunch()
    for split, (images_spec, labels_spec) in dataset.files.items():
        images = _read(dataset, images_spec, data_dir, mirrors)
        labels = _read(dataset, labels_spec, data_dir, mirrors)
        X = images.reshape(images.shape[0], -1).astype(dtype)
        X /= dtype(255)  # in place: a second array of this size costs its page faults
        y = labels.astype(np.int64)
        if as_frame:
            import pandas as pd

            columns = [f"pixel{i}" for i in range(X.shape[1])]
            X, y = pd.DataFrame(X, columns=columns), pd.Series(y, name="label")
        bunch[f"X_{split}"], bunch[f"y_{split}"] = X, y
    bunch.image_shape = (28, 28)
    bunch.checksums = {
        spec.name: spec.raw_md5 or spec.gz_md5
        for pair in dataset.files.values()
        for spec in pair
    }
    return bunch


def load_mnist(data_dir=None, *, as_frame=False, dtype=np.float32, mirrors=None):
    """Load MNIST: 60,000 training and 10,000 test images of handwritten digits.

    Parameters
    ----------
    data_dir : str or Path, default=None
        Directory holding the four ``*-ubyte.gz`` files. Defaults to
        ``$SKMLP_MNIST_DIR``, then the cache directory (downloading if needed).
    as_frame : bool, default=False
        Return pandas DataFrames (``pixel0`` ... ``pixel783``) and Series.
    dtype : numpy float type, default=np.float32
        Type of the pixels, scaled to [0, 1].
    mirrors : sequence of str, default=None
        Base URLs to download from, in order; None uses the known public mirrors.

    Returns
    -------
    data : Bunch
        ``X_train`` (60000, 784), ``y_train`` (60000,), ``X_test`` (10000, 784),
        ``y_test`` (10000,), ``image_shape`` and the md5 ``checksums``.

    Raises
    ------
    DataError
        If a file is missing and cannot be downloaded, or is damaged and is not the
        cache's (a damaged cached file is moved aside and downloaded again), or if
        ``data_dir`` or ``$SKMLP_MNIST_DIR`` is not a directory. The message names
        the file and what to do.
    """
    return _load_idx_dataset(MNIST, data_dir, as_frame, dtype, mirrors)


def load_fashion_mnist(
    data_dir=None, *, as_frame=False, dtype=np.float32, mirrors=None
):
    """Load Fashion-MNIST (Zalando): same format, sizes and options as
    :func:`load_mnist`.

    Looks in ``data_dir``, then ``$SKMLP_FASHION_MNIST_DIR``, then the cache. Its files
    are checked against the md5 sums Zalando publishes for the .gz files.
    """
    return _load_idx_dataset(FASHION_MNIST, data_dir, as_frame, dtype, mirrors)


def load_digits_split(
    *, test_size=0.25, random_state=0, as_frame=False, dtype=np.float32
):
    """scikit-learn's 8x8 digits, scaled to [0, 1] and split like the IDX data sets.

    Needs no download: the data ship with scikit-learn.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits(as_frame=as_frame)
    X = digits.data.astype(dtype) / dtype(16)
    X_train, X_test, y_train, y_test = train_test_split(
        X,
        digits.target,
        test_size=test_size,
        random_state=random_state,
        stratify=digits.target,
    )
    return Bunch(
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        image_shape=(8, 8),
        checksums={},
    )
