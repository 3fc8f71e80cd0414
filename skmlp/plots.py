"""Figures: learning curves, confusion matrix, first-layer weights as images.

Matplotlib's object API only (no pyplot state), so the functions are safe in worker
processes and never open a window.
"""

import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

# 3Blue1Brown's colouring of weights: red negative, black zero, green positive.
RED_GREEN = LinearSegmentedColormap.from_list(
    "red_black_green", ["red", "black", "lime"]
)


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
    # Fixed margins, not a layout engine, which took a large share of the drawing
    # (benchmarks/README.md: a sweep draws a run's figures while its next job runs).
    fig = Figure(figsize=(9, 3.5))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.9, wspace=0.22)
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
    fig = Figure(figsize=(6, 6))
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.09, top=0.98)  # as above
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
        One image of tiles in reading order, one per unit: green for positive
        weights, red for negative, black for zero, each tile on a scale symmetric
        about 0 (its own largest absolute weight); white between the tiles.
    """
    coef = np.asarray(coef)
    n_units = min(n_units, coef.shape[1])
    n_cols = int(np.ceil(np.sqrt(n_units)))
    n_rows = int(np.ceil(n_units / n_cols))
    # One image on one axes: an axes per unit costs far more to draw (benchmarks/).
    height = 1.6 * n_rows + 0.4
    fig = Figure(figsize=(1.6 * n_cols, height))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96 - 0.4 / height))
    ax.set_axis_off()
    ax.imshow(
        weight_tiles(coef[:, :n_units], image_shape, n_cols),
        cmap=RED_GREEN.with_extremes(bad="white"),
        vmin=-1,
        vmax=1,
        interpolation="nearest",
    )
    units = f"units 0-{n_units - 1}" if n_units > 1 else "unit 0"
    fig.suptitle(f"First-layer weights, {units} in reading order", fontsize=9)
    return fig


def weight_tiles(coef, image_shape, n_cols, gap=1):
    """The columns of ``coef`` as one mosaic of ``image_shape`` tiles.

    Parameters
    ----------
    coef : array of shape (n_pixels, n_units)
        One column per tile.
    image_shape : tuple of int
        ``(height, width)`` of a tile.
    n_cols : int
        Tiles per row, in reading order.
    gap : int, default=1
        NaN pixels between neighbouring tiles.

    Returns
    -------
    mosaic : ndarray of floats
        ``n_rows`` tiles high and ``n_cols`` wide, ``gap`` pixels apart, each tile
        divided by its largest absolute weight (so in [-1, 1]); NaN between tiles
        and where a row has no more units.
    """
    height, width = image_shape
    n_rows = -(-coef.shape[1] // n_cols)
    mosaic = np.full(
        (n_rows * (height + gap) - gap, n_cols * (width + gap) - gap), np.nan
    )
    for unit in range(coef.shape[1]):
        weights = coef[:, unit].reshape(image_shape)
        row, col = divmod(unit, n_cols)
        top, left = row * (height + gap), col * (width + gap)
        mosaic[top : top + height, left : left + width] = weights / (
            np.abs(weights).max() or 1.0
        )
    return mosaic


def plot_memorization_summary(table, curves):
    """Figures of the memorization sweep, after Zhang et al. (2017), Figure 1.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per run: ``run_id``, ``p``, ``hidden_layer_sizes``, ``n_parameters``,
        ``time_to_fit``, ``final_train_accuracy``, ``final_test_accuracy``.
    curves : pandas.DataFrame
        Long format: ``run_id``, ``metric``, ``epoch``, ``value``.

    Returns
    -------
    figures : dict of name -> matplotlib.figure.Figure
        ``a_learning_curves`` (largest network: training loss and accuracy against
        epochs, one line per corruption level), ``b_time_to_fit`` and
        ``c_test_accuracy`` (against p, one line per network) and ``capacity`` (final
        training accuracy at the highest p against the number of parameters).
    """
    figures = {}
    largest = table.loc[table["n_parameters"].idxmax(), "hidden_layer_sizes"]
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for metric, ax in zip(("loss", "train_accuracy"), axes, strict=False):
        for _, run in table[table["hidden_layer_sizes"] == largest].iterrows():
            points = curves[
                (curves["run_id"] == run["run_id"]) & (curves["metric"] == metric)
            ].sort_values("epoch")
            ax.plot(points["epoch"], points["value"], label=f"p = {run['p']:g}")
        ax.set(
            xlabel="epoch",
            ylabel=metric.replace("_", " "),
            title=f"784-{largest.strip('[]').replace(', ', '-')}-10",
        )
    axes[1].legend()
    figures["a_learning_curves"] = fig
    for name, column, ylabel in (
        ("b_time_to_fit", "time_to_fit", "epochs to fit the training labels"),
        ("c_test_accuracy", "final_test_accuracy", "test accuracy (true labels)"),
    ):
        fig = Figure(figsize=(5, 4), layout="constrained")
        ax = fig.subplots()
        for sizes, group in table.groupby("hidden_layer_sizes"):
            ax.plot(group["p"], group[column], marker="o", label=sizes)
        ax.set(xlabel="label corruption p", ylabel=ylabel)
        ax.legend(title="hidden layers")
        figures[name] = fig
    top = table[table["p"] == table["p"].max()].sort_values("n_parameters")
    fig = Figure(figsize=(5, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(top["n_parameters"], top["final_train_accuracy"], marker="o")
    for _, run in top.iterrows():
        ax.annotate(
            run["hidden_layer_sizes"],
            (run["n_parameters"], run["final_train_accuracy"]),
        )
    ax.set(
        xscale="log",
        xlabel="number of parameters",
        ylabel=f"training accuracy at p = {top['p'].iloc[0]:g}",
    )
    figures["capacity"] = fig
    return figures


def plot_objective(table, objective, params):
    """A sweep's objective against each parameter it varies, one panel per parameter.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per run: a column ``objective`` and one column per name in ``params``
        (values as strings, the way they were logged).
    objective : str
        The column to draw on the y axes; the best (highest) run is ringed.
    params : sequence of str
        The varied parameters; each gets a panel with its values on the x axis, in
        numeric order where they are all numbers.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    params = list(params) or ["run"]
    fig = Figure(figsize=(3.2 * len(params), 3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(params), sharey=True))
    best = table[objective].idxmax()
    for ax, param in zip(axes, params, strict=True):
        values = table[param].astype(str)
        levels = sorted(values.unique(), key=_numeric_first)
        x = values.map({level: i for i, level in enumerate(levels)})
        ax.scatter(x, table[objective], zorder=2)
        ax.scatter(
            x[best],
            table[objective][best],
            s=160,
            facecolors="none",
            edgecolors="tab:red",
            label="best",
            zorder=3,
        )
        ax.set_xticks(range(len(levels)), levels, rotation=30, ha="right")
        ax.set(xlabel=param, xlim=(-0.5, len(levels) - 0.5))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(objective)
    axes[0].legend()
    return fig


def _numeric_first(value):
    """Sort key: numbers by value, before any other strings (alphabetical)."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)
