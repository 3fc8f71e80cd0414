"""scikit-learn's own estimator checks."""

from sklearn.utils.estimator_checks import (
    check_param_validation,
    parametrize_with_checks,
)

from skmlp import SGDMLPClassifier


def _estimators():
    # Small, quick networks; random_state fixed so every check is reproducible.
    return [
        SGDMLPClassifier(hidden_layer_sizes=(10,), max_iter=100, random_state=0),
        SGDMLPClassifier(
            hidden_layer_sizes=(8, 8),
            activation="logistic",
            loss="squared_error",
            learning_rate_init=0.5,
            max_iter=100,
            random_state=0,
        ),
    ]


@parametrize_with_checks(_estimators())
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def test_check_param_validation():
    check_param_validation("SGDMLPClassifier", SGDMLPClassifier())
