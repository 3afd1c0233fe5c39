import numpy as np
import pytest
from PIL import Image

from optimization.visualize import grid

pytestmark = pytest.mark.unit


def ink_columns(strip: np.ndarray) -> np.ndarray:
    """Columns of a caption strip holding any dark pixel."""
    return (strip.min(axis=(0, 2)) < 128).nonzero()[0]


def test_a_caption_wider_than_its_tile_wraps_instead_of_running_into_its_neighbour():
    tiles = [Image.new("RGB", (128, 128), "white")] * 2
    short = grid(tiles, columns=2, labels=["7 circles", "8 circles"])
    long = grid(tiles, columns=2, labels=["resample: 10 triangles, judge 11", "noise: 10 triangles, judge 11"])
    assert short.size == (256, 128 + 14)  # one line: the strip as it always was
    assert long.size[0] == 256 and long.size[1] > short.size[1]  # two lines
    strip = np.asarray(long)[128:]
    left = ink_columns(strip[:, :128])
    assert left.size and left.max() < 128 - 1  # the first caption stays inside its tile
    assert ink_columns(strip[:, 128:]).size  # and the second is drawn in its own
