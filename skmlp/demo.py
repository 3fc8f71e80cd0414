"""Train the seed network (784-16-16-10) on MNIST for a few epochs and report accuracy.

Run with ``python -m skmlp.demo``.
"""

from sklearn.callback import ProgressBar

from skmlp import SGDMLPClassifier
from skmlp.datasets import load_mnist


def main(epochs: int = 10) -> float:
    """Fit the seed network and print its test accuracy; return the accuracy."""
    data = load_mnist()
    clf = SGDMLPClassifier(
        (16, 16), activation="relu", batch_size=100, learning_rate_init=0.05,
        max_iter=epochs, random_state=0,
    ).set_callbacks(ProgressBar())
    clf.fit(data.X_train, data.y_train)
    accuracy = clf.score(data.X_test, data.y_test)
    print(f"784-16-16-10 after {clf.n_iter_} epochs: test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main()
