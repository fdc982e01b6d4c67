"""One image file to the (H, W, 3) uint8 RGB the models take, the same in training and on the
device: every Pillow mode is converted by what its values mean, or refused by name.

`Image.convert("RGB")` alone clips 16-bit greyscale to white and drops alpha onto whatever
colour the transparent pixels happen to hold, so those modes are handled here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from edgekd.errors import DataError

# Bump when a conversion below changes: it is part of the decoded-image cache key.
DECODER_VERSION = 2

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa")
_REFUSED = {
    "F": "32-bit floating-point pixels have no fixed range",
    "LAB": "CIE L*a*b* needs a colour-managed conversion",
    "La": "premultiplied grey+alpha is not convertible by Pillow",
}
BACKGROUND = (255, 255, 255)  # transparent pixels are shown over white, as viewers do


def to_rgb(image: Image.Image, where: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an open Pillow image; DataError naming `where` and the mode."""
    mode = image.mode
    if mode in _REFUSED:
        raise DataError(
            f"{where}: image mode {mode!r} is not supported ({_REFUSED[mode]}); "
            "save it as 8-bit RGB or greyscale"
        )
    if mode in _SIXTEEN_BIT or (mode == "I" and image.format in ("PNG", "TIFF")):
        # 16-bit greyscale (PNG opens it as I;16 or I): 0..65535 onto 0..255.
        grey = np.asarray(image, dtype=np.float64)
        if grey.min() < 0 or grey.max() > 65535:
            raise DataError(f"{where}: mode {mode!r} pixels outside 0..65535; save it as 8-bit")
        grey8 = np.rint(grey / 257.0).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=-1)
    if mode == "I":
        raise DataError(
            f"{where}: image mode 'I' (32-bit integer pixels) has no fixed range; "
            "save it as 8-bit RGB or greyscale"
        )
    if mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), np.uint8)
    return np.asarray(image.convert("RGB"), np.uint8)


def read_rgb(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as (H, W, 3) uint8 RGB, resized (bilinear) to `size` = (height, width).

    Raises:
        DataError: the file is missing, Pillow cannot decode it, or its mode is refused; the
            message names the path.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such image file")
    return _open_rgb(p, p, size)


def decode_rgb(data: bytes, where: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Encoded image bytes (a TFRecord's ``image/encoded``) as `read_rgb` reads a file;
    errors name `where`."""
    return _open_rgb(io.BytesIO(data), where, size)


def _open_rgb(
    file: Path | io.BytesIO, where: str | Path, size: tuple[int, int] | None
) -> np.ndarray:
    try:
        with Image.open(file) as image:
            image.load()
            rgb = to_rgb(image, where)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, ...
        raise DataError(f"{where}: cannot read image ({type(exc).__name__}: {exc})") from None
    if size is not None and rgb.shape[:2] != tuple(size):
        resized = Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        rgb = np.asarray(resized, np.uint8)
    return rgb
