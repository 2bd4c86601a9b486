"""Images deeper than 8 bits, scaled to 8 bits instead of clipped.

Pillow reduces 16-bit RGB(A) PNGs to 8 bits itself, but opens 16-bit grayscale as mode ``I;16``
(older versions: ``I``), whose ``convert("RGB")`` clips every value above 255: a 16-bit photo
becomes nearly all white. Every image madkit reads passes through ``to_8bit`` first.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# modes holding more than 8 bits per sample; "I" (32-bit int) comes from 16-bit files in older Pillow
_WIDE_INT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` unchanged if it has 8 bits per sample, else its 16-bit range [0, 65535] scaled to an
    8-bit ``L`` image [0, 255] (rounded; values outside the range are clipped)."""
    if image.mode not in _WIDE_INT:
        return image
    wide = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), mode="L")
