"""Decoding of odd and broken image files (all built here, no shared data needed)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from benchmark.data.images import ImageError, read_image, write_png

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)


def _save(tmp_path, name, im, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA"])
def test_modes_become_rgb(tmp_path, mode):
    im = Image.fromarray(RGB).convert(mode)
    fmt = "JPEG" if mode in ("CMYK", "L") else "PNG"
    out = read_image(_save(tmp_path, f"x.{fmt.lower()}", im, format=fmt))
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    if mode == "RGBA":
        assert np.array_equal(out, RGB)


def test_16bit_grey_is_scaled(tmp_path):
    arr = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 50
    out = read_image(_save(tmp_path, "g16.png", Image.fromarray(arr)))
    assert out.shape == (40, 30, 3)
    assert out[-1, -1, 0] == round(arr[-1, -1] / 65535 * 255)


def test_png_roundtrip_is_lossless(tmp_path):
    write_png(tmp_path / "a.png", RGB)
    assert np.array_equal(read_image(tmp_path / "a.png"), RGB)
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("content,reason", [(b"", "empty-file"), (b"hello, not an image", "not-an-image")])
def test_bad_bytes(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert err.value.reason == reason and "bad.jpg" in str(err.value)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError) as err:
        read_image(path)
    assert err.value.reason in ("truncated", "corrupt")


def test_missing_and_tiny(tmp_path):
    with pytest.raises(ImageError) as err:
        read_image(tmp_path / "nope.png")
    assert err.value.reason == "missing"
    with pytest.raises(ImageError) as err:
        read_image(_save(tmp_path, "tiny.png", Image.fromarray(RGB[:4, :4])))
    assert err.value.reason == "too-small"
