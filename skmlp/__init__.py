"""skmlp: a multilayer perceptron for scikit-learn users, trained by its own backprop."""

from skmlp._classifier import SGDMLPClassifier
from skmlp._gradient_check import GradientCheckResult, check_gradients
from skmlp._together import fit_together
from skmlp.inspection import noise_confidence

__version__ = "0.1.0"

__all__ = [
    "GradientCheckResult",
    "SGDMLPClassifier",
    "__version__",
    "check_gradients",
    "fit_together",
    "noise_confidence",
]
