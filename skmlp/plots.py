"""Figures: learning curves, confusion matrix, first-layer weights as images.

Matplotlib's object API only (no pyplot state), so the functions are safe in worker
processes and never open a window.
"""

import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

# 3Blue1Brown's colouring of weights: red negative, black zero, green positive.
RED_GREEN = LinearSegmentedColormap.from_list("red_black_green", ["red", "black", "lime"])


def plot_learning_curves(history, metrics=("train_accuracy", "test_accuracy")):
    """Loss and accuracy against epochs.

    Parameters
    ----------
    history : pandas.DataFrame
        One row per epoch with an ``epoch`` and a ``loss`` column, and any of
        ``metrics``.
    metrics : sequence of str
        Accuracy-like columns to draw on the right-hand axes, where present.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    loss_ax, score_ax = fig.subplots(1, 2)
    loss_ax.plot(history["epoch"], history["loss"], marker=".")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="Loss")
    for name in metrics:
        if name in history:
            score_ax.plot(history["epoch"], history[name], marker=".", label=name)
    score_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    score_ax.legend()
    return fig


def plot_confusion_matrix(y_true, y_pred, labels=None):
    """Confusion matrix of ``y_pred`` against ``y_true`` (sklearn's display)."""
    fig = Figure(figsize=(6, 6), layout="constrained")
    ax = fig.subplots()
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=labels, ax=ax, colorbar=False
    )
    return fig


def plot_first_layer_weights(coef, image_shape=(28, 28), n_units=16):
    """The weights into each of the first hidden units, drawn as images.

    Parameters
    ----------
    coef : array of shape (n_pixels, n_hidden)
        ``coefs_[0]`` of a fitted network whose inputs are pixels.
    image_shape : tuple of int, default=(28, 28)
        Shape of an input image; ``prod(image_shape) == n_pixels``.
    n_units : int, default=16
        How many hidden units to draw (the first ones).

    Returns
    -------
    fig : matplotlib.figure.Figure
        Green for positive weights, red for negative, on a scale symmetric about 0.
    """
    coef = np.asarray(coef)
    n_units = min(n_units, coef.shape[1])
    n_cols = int(np.ceil(np.sqrt(n_units)))
    n_rows = int(np.ceil(n_units / n_cols))
    fig = Figure(figsize=(1.6 * n_cols, 1.6 * n_rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols)).ravel()
    for unit, ax in enumerate(axes):
        ax.set_axis_off()
        if unit < n_units:
            weights = coef[:, unit].reshape(image_shape)
            bound = np.abs(weights).max() or 1.0
            ax.imshow(weights, cmap=RED_GREEN, vmin=-bound, vmax=bound)
            ax.set_title(f"unit {unit}", fontsize=8)
    return fig
