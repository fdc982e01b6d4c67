"""Every Pillow mode becomes the RGB its values mean, the same for training and predict, or is
refused by name; checked against hand-computed pixels."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from edgekd.data.folder import decode_folder, scan_folder
from edgekd.data.images import BACKGROUND, read_rgb, to_rgb
from edgekd.device.predict import read_image
from edgekd.errors import DataError

RAMP16 = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0..65535 in 257 steps


def _png48(path, rgb16: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def test_sixteen_bit_grey_png_is_not_white(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(RAMP16).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    rgb = read_rgb(path)
    expected = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, -1))


def test_48_bit_rgb_png(tmp_path):
    rgb16 = np.stack([RAMP16, RAMP16[::-1], np.full_like(RAMP16, 257 * 100)], -1)
    _png48(tmp_path / "c48.png", rgb16)
    rgb = read_rgb(tmp_path / "c48.png")
    np.testing.assert_allclose(rgb, rgb16 / 257.0, atol=1.0)
    assert rgb[..., 2].min() == rgb[..., 2].max() == 100


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere, under varying alpha
    rgba[..., 3] = [[0, 85, 170, 255]] * 4
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_rgb(tmp_path / "a.png")[0]
    alpha = np.array([0, 85, 170, 255]) / 255
    want_r = np.rint(200 * alpha + BACKGROUND[0] * (1 - alpha))
    want_g = np.rint(0 * alpha + BACKGROUND[1] * (1 - alpha))
    np.testing.assert_allclose(out[:, 0], want_r, atol=1)
    np.testing.assert_allclose(out[:, 1], want_g, atol=1)


@pytest.mark.parametrize("mode", ["LA", "PA"])
def test_grey_and_palette_alpha(tmp_path, mode):
    la = Image.new("LA", (4, 4), (0, 0))  # black, fully transparent
    if mode == "LA":
        la.save(tmp_path / "x.png")
        out = read_rgb(tmp_path / "x.png")
    else:  # Pillow writes no PA files; PA comes from GIF/PNG palettes with alpha
        pa = Image.new("PA", (4, 4), (0, 0))  # palette entry 0 (black), alpha 0
        pa.putpalette([0, 0, 0] * 256)
        out = to_rgb(pa, "in memory")
    np.testing.assert_array_equal(out, np.full((4, 4, 3), 255))


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putpixel((1, 1), 1)
    p.save(tmp_path / "p.png", transparency=0)  # palette entry 0 (black) is transparent
    out = read_rgb(tmp_path / "p.png")
    assert tuple(out[0, 0]) == BACKGROUND
    assert tuple(out[1, 1]) == (10, 200, 30)


def test_cmyk_and_one_bit(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.tif")  # pure red
    np.testing.assert_array_equal(read_rgb(tmp_path / "c.tif")[0, 0], [255, 0, 0])
    Image.new("1", (4, 4), 1).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "b.png"), np.full((4, 4, 3), 255))


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: Image.new("F", (4, 4), 0.5).save(p / "f.tif"), "mode 'F'"),
        (lambda p: Image.new("I", (4, 4), 70000).save(p / "i.tif"), "outside 0..65535"),
    ],
)
def test_refused_modes_named(tmp_path, make, needle):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(DataError, match=needle) as info:
        read_rgb(path)
    assert str(path) in str(info.value)


def test_training_and_predict_decode_alike(tmp_path):
    """The folder reader (training) and `predict` give the same pixels for odd modes."""
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(RAMP16).save(root / "a" / "g16.png")
    Image.new("LA", (16, 16), (40, 100)).save(root / "b" / "la.png")
    images = decode_folder(scan_folder(root), progress=False)
    for k, path in enumerate([root / "a" / "g16.png", root / "b" / "la.png"]):
        np.testing.assert_array_equal(images.images[k], read_image(path))
    assert images.images[0].max() == 255 and images.images[0].min() == 0
