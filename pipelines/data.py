"""Load the configured data set and cut the subsets a run asks for."""

import threading
from contextlib import contextmanager

import hydra
from sklearn.model_selection import train_test_split
from sklearn.utils import Bunch

from skmlp.datasets import DataError


def load_data(cfg, seed):
    """Train, validation and test arrays for ``cfg.data``.

    ``n_train`` / ``n_test`` take stratified random subsets; ``validation_size``
    (a count or a fraction) holds part of the training set out for validation.
    """
    loader = hydra.utils.instantiate(cfg.loader, _partial_=True)
    try:
        data = loader()  # called here: its own error, not Hydra's wrapping of it
    except DataError as exc:
        raise DataError(
            f"{exc}\nWith the pipelines, name the directory by the override "
            "data.loader.data_dir=/that/directory (or set the environment variable)."
        ) from None
    X_train, y_train = _subset(data.X_train, data.y_train, cfg, "n_train", seed)
    X_test, y_test = _subset(data.X_test, data.y_test, cfg, "n_test", seed)
    X_val = y_val = None
    if cfg.validation_size:
        with _naming(cfg, "validation_size", len(y_train)):
            X_train, X_val, y_train, y_val = train_test_split(
                X_train,
                y_train,
                test_size=cfg.validation_size,
                stratify=y_train,
                random_state=seed,
            )
    return Bunch(
        X_train=X_train,
        y_train=y_train,
        X_val=X_val,
        y_val=y_val,
        X_test=X_test,
        y_test=y_test,
        checksums=data.checksums,
        image_shape=tuple(data.image_shape),
    )


def load_data_soon(cfg, seed):
    """``load_data(cfg, seed)`` started in a thread of its own; its ``result()`` gives
    the data or raises what loading raised.

    Reading the files is mostly outside the GIL (decompression, checksums, the cast
    to floats), so an entry point imports MLflow and Matplotlib meanwhile
    (``benchmarks/bench_startup.py overlap`` measures what it saves).
    """
    return _Loading(cfg, seed)


class _Loading(threading.Thread):
    """A ``load_data`` call in a daemon thread: a Ctrl-C while it downloads ends the
    process at once (partial files are cleaned up by the next download)."""

    def __init__(self, cfg, seed):
        super().__init__(name="load_data", daemon=True)
        self._args, self._data, self._error = (cfg, seed), None, None
        self.start()

    def run(self):
        try:
            self._data = load_data(*self._args)
        except BaseException as exc:  # raised in the caller's thread by result()
            self._error = exc

    def result(self):
        """The loaded data, once loaded; raises what loading raised."""
        self.join()
        if self._error is not None:
            raise self._error
        return self._data


def _subset(X, y, cfg, key, seed):
    """A stratified random subset of ``cfg[key]`` rows (all if null or more)."""
    n = cfg[key]
    if n is None or n >= len(y):
        return X, y
    with _naming(cfg, key, len(y)):
        X, _, y, _ = train_test_split(X, y, train_size=n, stratify=y, random_state=seed)
    return X, y


@contextmanager
def _naming(cfg, key, n_rows):
    """Turn scikit-learn's refusal of a split (fewer rows than classes) into an
    error that names the override (``pipelines.checks`` refused what it could
    before the data were loaded)."""
    try:
        yield
    except ValueError as exc:
        raise ValueError(
            f"data.{key}={cfg[key]} cannot be used with {cfg.name}'s {n_rows} rows: "
            f"{exc} Each part of a stratified split needs every class."
        ) from None
