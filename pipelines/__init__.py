"""Experiment entry points: the only code of the project that imports hydra or mlflow."""
