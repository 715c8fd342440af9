"""decode_raster on the real Kermany JPEGs, and on broken copies of them made in tmp_path."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datapaths import DATA_DIR
from medimg.data.images import REASONS, BadImage, DecodedImage, decode_raster, to_grey

CHEST = DATA_DIR / "chest_xray"
FULLRES = DATA_DIR / "chest_xray_fullres"
TRAIN_NORMAL = CHEST / "train" / "NORMAL" / "IM-0115-0001.jpeg"
TRAIN_PNEUMONIA = CHEST / "train" / "PNEUMONIA" / "person100_virus_184.jpeg"


def _centre_to_lungs(pixels: np.ndarray) -> float:
    """Mean of the central (mediastinum/spine) band over the mean of the two lung bands."""
    h, w = pixels.shape
    rows = slice(h // 3, 2 * h // 3)
    centre = pixels[rows, 2 * w // 5 : 3 * w // 5].mean()
    lungs = (pixels[rows, w // 8 : w // 3].mean() + pixels[rows, 2 * w // 3 : 7 * w // 8].mean()) / 2
    return float(centre / lungs)


def test_kermany_jpeg_decodes_to_its_grey_values():
    for path in (TRAIN_NORMAL, TRAIN_PNEUMONIA):
        image = decode_raster(path)
        assert isinstance(image, DecodedImage)
        assert image.pixels.shape == (224, 224)
        assert image.pixels.dtype == np.float32
        assert (image.original_height, image.original_width) == (224, 224)
        assert image.source_kind == "jpeg" and image.bit_depth == 8 and image.n_frames == 1
        assert image.photometric == "RGB"  # the 224 px Kermany files are stored as RGB
        assert image.modality is None and image.window is None
        with Image.open(path) as pil:
            rgb = np.asarray(pil.convert("RGB"))
        assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        # grey stored as RGB comes back bit-exact, in the native 0..255 range
        np.testing.assert_array_equal(image.pixels, rgb[..., 0].astype(np.float32))
        assert 0 <= image.pixels.min() < 20 and 150 < image.pixels.max() <= 255


def test_fullres_images_keep_their_size_and_polarity():
    paths = sorted(FULLRES.glob("*/*.jpeg"))
    assert len(paths) == 30
    modes = set()
    for path in paths:
        image = decode_raster(path)
        with Image.open(path) as pil:
            width, height = pil.size
            modes.add(pil.mode)
        assert image.pixels.shape == (height, width) == (image.original_height, image.original_width)
        # chest X-rays: the mediastinum and spine are brighter than the air-filled lungs
        assert _centre_to_lungs(image.pixels) > 1.1, path.name
    assert modes == {"L", "RGB"}  # both kinds occur in the set and both decode


def test_rgb_becomes_bt601_luminance(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(32, 40, 3), dtype=np.uint8)
    path = tmp_path / "colour.png"
    Image.fromarray(rgb, mode="RGB").save(path)
    image = decode_raster(path)
    expected = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(image.pixels, expected, atol=1e-4)
    assert image.photometric == "RGB" and image.source_kind == "png"
    # and close to Pillow's own (integer-rounded) conversion
    assert np.abs(image.pixels - np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)).max() <= 1


def test_sixteen_bit_png_keeps_native_range(tmp_path):
    values = (np.arange(64 * 48, dtype=np.uint32).reshape(64, 48) * 21).astype(np.uint16)
    assert values.max() > 60000
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    image = decode_raster(path)
    assert image.bit_depth == 16 and image.photometric == "MONOCHROME2"
    np.testing.assert_array_equal(image.pixels, values.astype(np.float32))


def test_pixels_are_read_only():
    image = decode_raster(TRAIN_NORMAL)
    with pytest.raises(ValueError):
        image.pixels[0, 0] = 1.0


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_cut_jpeg_is_truncated(tmp_path, keep):
    data = TRAIN_PNEUMONIA.read_bytes()
    path = tmp_path / TRAIN_PNEUMONIA.name
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(BadImage) as info:
        decode_raster(path)
    assert info.value.reason == "truncated"
    assert info.value.path == path


def test_jpeg_missing_only_its_end_marker_is_truncated(tmp_path):
    source = CHEST / "train" / "PNEUMONIA" / "person22_bacteria_74.jpeg"
    data = source.read_bytes()
    assert data.endswith(b"\xff\xd9")
    path = tmp_path / "no_eoi.jpeg"
    path.write_bytes(data[:-2])
    # For this file Pillow alone loads the cut copy without complaint (for most it raises):
    # the structural check must catch it
    with Image.open(path) as pil:
        pil.load()
    with pytest.raises(BadImage) as info:
        decode_raster(path)
    assert info.value.reason == "truncated"


def test_cut_png_is_truncated(tmp_path):
    source = tmp_path / "whole.png"
    with Image.open(TRAIN_NORMAL) as pil:
        pil.convert("L").save(source)
    assert decode_raster(source).pixels.shape == (224, 224)
    data = source.read_bytes()
    for keep, name in ((len(data) // 2, "half.png"), (len(data) - 12, "no_iend.png")):
        cut = tmp_path / name
        cut.write_bytes(data[:keep])
        with pytest.raises(BadImage) as info:
            decode_raster(cut)
        assert info.value.reason == "truncated", name


def test_empty_text_gif_and_tiny_files(tmp_path):
    empty = tmp_path / "empty.jpeg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpeg"
    text.write_text("this is not a chest x-ray\n" * 20)
    gif = tmp_path / "anim.png"  # a GIF with a misleading extension
    Image.new("L", (64, 64)).save(gif, format="GIF")
    tiny = tmp_path / "tiny.png"
    Image.new("L", (8, 300)).save(tiny)
    expected = {empty: "empty", text: "not_an_image", gif: "unsupported_format", tiny: "too_small"}
    for path, reason in expected.items():
        with pytest.raises(BadImage) as info:
            decode_raster(path)
        assert info.value.reason == reason, path.name
        assert path.name in str(info.value)
    assert decode_raster(tiny, min_size=8).pixels.shape == (300, 8)


def test_copied_file_still_decodes(tmp_path):
    copy = tmp_path / "copy.jpeg"
    shutil.copyfile(TRAIN_NORMAL, copy)
    np.testing.assert_array_equal(decode_raster(copy).pixels, decode_raster(TRAIN_NORMAL).pixels)


def test_bad_image_contract():
    error = BadImage("/some/where/patient_file.dcm", "truncated", "pixel data short")
    assert error.reason == "truncated" and error.path == Path("/some/where/patient_file.dcm")
    assert str(error) == "patient_file.dcm: truncated (pixel data short)"
    assert "/some/where" not in str(error)  # only the file name, folders can carry names
    again = pickle.loads(pickle.dumps(error))
    assert (again.reason, again.path, str(again)) == (error.reason, error.path, str(error))
    with pytest.raises(ValueError):
        BadImage("x", "no_such_reason")
    assert {"empty", "truncated", "not_an_image", "unsupported_transfer_syntax", "missing_pixel_data",
            "too_small", "multiframe", "burned_in_annotation"} <= set(REASONS)


def test_to_grey_rejects_wrong_shapes():
    with pytest.raises(ValueError):
        to_grey(np.zeros((4, 4)))
    np.testing.assert_array_equal(to_grey(np.full((2, 2, 3), 7.0)), np.full((2, 2), 7.0))


@pytest.mark.parametrize("min_side", [128, 256, 448])
def test_jpeg_dct_scaling_takes_the_largest_reduction_that_keeps_the_shorter_side(min_side):
    """Every full-resolution JPEG: scale 1/s for the largest s in (1, 2, 4, 8) with min side >= s * min_side.

    Pillow picks its own scale from the size asked of ``draft``; asking for the reduced size
    (ceil(side / s)) made it round down to s / 2 for about half of these files.
    """
    for path in sorted(FULLRES.rglob("*.jpeg")):
        with Image.open(path) as image:
            width, height = image.size
        s = max(k for k in (1, 2, 4, 8) if k == 1 or min(height, width) >= k * min_side)
        decoded = decode_raster(path, jpeg_min_side=min_side)
        assert decoded.pixels.shape == (-(-height // s), -(-width // s)), path.name
        assert s == 1 or min(decoded.pixels.shape) >= min_side
        assert (decoded.original_height, decoded.original_width) == (height, width)


def test_bytes_already_read_decode_like_the_file():
    data = TRAIN_PNEUMONIA.read_bytes()
    given = decode_raster(Path("elsewhere.jpeg"), data=data, jpeg_min_side=128)
    np.testing.assert_array_equal(given.pixels, decode_raster(TRAIN_PNEUMONIA, jpeg_min_side=128).pixels)
    with pytest.raises(BadImage) as info:
        decode_raster(TRAIN_PNEUMONIA, data=b"")
    assert info.value.reason == "empty"
