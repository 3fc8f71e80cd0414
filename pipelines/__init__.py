"""Experiment entry points: the only code of the project that imports hydra or mlflow."""

import os
from pathlib import Path

# SciPy reads this once, at its import, and scikit-learn's array-API dispatch (any
# device but cpu, see pipelines/device.py) needs it. Importing any entry point imports
# this package first, before SciPy; joblib's workers inherit it from the environment.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

_HERE = Path(__file__).resolve().parent


def config_dir() -> str:
    """Absolute path of the Hydra configs, whatever the working directory.

    A wheel ships ``conf/`` inside the package (``pipelines/conf``); a source checkout
    and an editable install use the project's top-level ``conf/``. Hydra reads a
    relative ``config_path`` relative to the module, which fails for console scripts.
    """
    packaged = _HERE / "conf"
    return str(packaged if packaged.is_dir() else _HERE.parent / "conf")
