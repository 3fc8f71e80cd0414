"""skmlp: a multilayer perceptron for scikit-learn users, trained by its own backprop."""

from skmlp._classifier import SGDMLPClassifier
from skmlp._gradient_check import GradientCheckResult, check_gradients

__version__ = "0.1.0"

__all__ = ["GradientCheckResult", "SGDMLPClassifier", "check_gradients", "__version__"]
