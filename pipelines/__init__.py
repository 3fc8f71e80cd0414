"""Experiment entry points: the only code of the project that imports hydra or mlflow."""

import os

# SciPy reads this once, at its import, and scikit-learn's array-API dispatch (any
# device but cpu, see pipelines/device.py) needs it. Importing any entry point imports
# this package first, before SciPy; joblib's workers inherit it from the environment.
os.environ.setdefault("SCIPY_ARRAY_API", "1")
