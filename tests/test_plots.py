"""The run figures of skmlp.plots: what they draw, and that nothing falls off them."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from skmlp.plots import (
    plot_confusion_matrix,
    plot_first_layer_weights,
    plot_learning_curves,
    weight_tiles,
)


def test_weight_tiles_put_each_unit_in_reading_order_scaled_to_its_largest_weight():
    coef = np.arange(1, 5 * 6 + 1, dtype=float).reshape(6, 5)  # 6 pixels, 5 units
    coef[:, 1] *= -1
    mosaic = weight_tiles(coef, (2, 3), n_cols=3, gap=1)
    assert mosaic.shape == (2 * 2 + 1, 3 * 3 + 2)
    for unit in range(5):
        row, col = divmod(unit, 3)
        tile = mosaic[row * 3 : row * 3 + 2, col * 4 : col * 4 + 3]
        expected = coef[:, unit].reshape(2, 3)
        np.testing.assert_allclose(tile, expected / np.abs(expected).max())
    assert np.isnan(mosaic[2]).all()  # the gap between the rows
    assert np.isnan(mosaic[:, 3]).all() and np.isnan(mosaic[:, 7]).all()
    assert np.isnan(mosaic[3:, 8:]).all()  # no sixth unit


def test_first_layer_weights_are_green_where_positive_and_red_where_negative():
    coef = np.zeros((16, 2))
    coef[:, 0], coef[:, 1] = 0.3, -2.0  # each tile on its own scale: both saturated
    fig = plot_first_layer_weights(coef, image_shape=(4, 4))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())
    ax = fig.axes[0]
    height = pixels.shape[0]
    for (x, y), colour in (((1.5, 1.5), "green"), ((6.5, 1.5), "red")):
        px, py = ax.transData.transform((x, y))  # the middle of the unit's tile
        r, g, b, _ = pixels[int(height - py), int(px)]
        if colour == "green":
            assert g > 200 and r < 50, (r, g, b)
        else:
            assert r > 200 and g < 50, (r, g, b)


def _texts_inside(fig):
    """Every drawn artist of ``fig`` (its labels included) lies on the figure."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    drawn = fig.get_tightbbox(canvas.get_renderer())  # inches
    width, height = fig.get_size_inches()
    assert drawn.x0 >= 0 and drawn.y0 >= 0, drawn
    assert drawn.x1 <= width and drawn.y1 <= height, drawn


@pytest.mark.parametrize("n_classes", [2, 10])
def test_fixed_margins_keep_every_label_of_the_run_figures_on_them(n_classes):
    epochs = np.arange(1, 31)
    history = pd.DataFrame(
        {
            "epoch": epochs,
            "loss": 2.3 / epochs,
            "train_accuracy": 1 - 0.5 / epochs,
            "test_accuracy": 1 - 0.6 / epochs,
        }
    )
    _texts_inside(plot_learning_curves(history))
    rng = np.random.default_rng(0)
    y = rng.integers(0, n_classes, 5000)
    _texts_inside(plot_confusion_matrix(y, np.where(rng.random(5000) < 0.9, y, 0)))
    _texts_inside(plot_first_layer_weights(rng.standard_normal((784, 16))))
