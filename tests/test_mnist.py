"""The seed's network on the real MNIST: the accuracy the issue promises."""

import pytest

from skmlp import SGDMLPClassifier

# The documented setting (README): 784-16-16-10, ReLU, cross-entropy, batches of 100.
SEED_NETWORK = dict(
    hidden_layer_sizes=(16, 16),
    activation="relu",
    loss="log_loss",
    batch_size=100,
    learning_rate_init=0.05,
    momentum=0.9,
    max_iter=30,
    random_state=0,
)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_seed_network_reaches_95_percent_within_30_epochs(mnist):
    clf = SGDMLPClassifier(**SEED_NETWORK).fit(mnist.X_train, mnist.y_train)
    assert clf.n_iter_ <= 30
    assert clf.score(mnist.X_test, mnist.y_test) >= 0.95
    assert clf.coefs_[0].dtype.name == "float32"  # trained at the data's precision
