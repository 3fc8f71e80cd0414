"""Where the training state's classes lived before ``_state.py``: kept so that
estimators pickled by skmlp at that time (MLflow models among them) still load."""

from skmlp._state import EpochRecord, StoppingRule, TrainingData, TrainingState

__all__ = ["EpochRecord", "StoppingRule", "TrainingData", "TrainingState"]
