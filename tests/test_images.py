"""Image files to pixels (ccr/io/images.py)."""

from __future__ import annotations

import numpy as np


def test_16_bit_images_are_scaled_not_white(tmp_path):
    from PIL import Image

    from ccr.io.images import load_image_file

    a = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    x = load_image_file(tmp_path / "g16.png", 32)
    assert 120 < x.mean() < 135 and x.min() < 10 and x.max() > 245  # a gradient, as the 16-bit values say
