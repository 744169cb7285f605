"""Image files for the image-folder tests, written with Pillow (the decoder logitcache uses)."""

from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor


def write_png(image: Tensor, path: str | Path) -> None:
    """Save a (3, H, W) uint8 tensor as a PNG file."""
    Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).save(path, format="PNG")
