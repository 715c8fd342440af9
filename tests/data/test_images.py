"""decode_raster on the real Kermany JPEGs, and on broken copies of them made in tmp_path."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datapaths import DATA_DIR, FIELD_CASES
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
    assert {
        "empty",
        "truncated",
        "not_an_image",
        "unsupported_transfer_syntax",
        "missing_pixel_data",
        "too_small",
        "multiframe",
        "burned_in_annotation",
    } <= set(REASONS)


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


# --------------------------------------------------------------------------- orientation and JPEG variants

FIELD_EXIF = FIELD_CASES / "exif-orientation"

#: EXIF/TIFF Orientation (tag 0x0112) -> how the stored rows and columns are shown, written with
#: numpy from the tag's definition (row 0 / column 0 of the stored image is the visual ...):
#: 1 top-left, 2 top-right (mirrored), 3 bottom-right (180), 4 bottom-left (flipped), 5 left-top
#: (transposed), 6 right-top (turn 90 degrees clockwise), 7 right-bottom (transverse), 8 left-bottom
#: (turn 90 degrees counter-clockwise).
DISPLAY = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).T,
    8: lambda a: np.rot90(a, 1),
}
#: the stored image that each orientation shows as the given upright one
STORED = {**{k: DISPLAY[k] for k in (1, 2, 3, 4, 5, 7)}, 6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1)}


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _upright_chest() -> np.ndarray:
    """A real chest X-ray, grey, reduced to 240 x 180 (not square, so every orientation shows)."""
    with Image.open(FULLRES / "NORMAL" / "IM-0117-0001.jpeg") as pil:
        return np.asarray(pil.convert("L").resize((180, 240), Image.BILINEAR))


def test_field_case_rotated_jpeg_decodes_upright_exactly():
    """IM-9001-0001.jpeg is stored sideways with Orientation 6; reference_upright.png is the picture upright.

    Measured: identical, pixel for pixel (the PNG holds exactly the JPEG's decoded samples turned
    upright, and the orientation is a lossless transpose of the decoded samples).
    """
    rotated, upright = FIELD_EXIF / "IM-9001-0001.jpeg", FIELD_EXIF / "reference_upright.png"
    with Image.open(rotated) as pil:
        assert pil.getexif().get(0x0112) == 6 and pil.size == (1152, 1422)  # stored: 1422 rows, 1152 columns
    jpeg, png = decode_raster(rotated), decode_raster(upright)
    assert jpeg.pixels.shape == png.pixels.shape == (1152, 1422)
    assert (jpeg.original_height, jpeg.original_width) == (png.original_height, png.original_width) == (1152, 1422)
    np.testing.assert_array_equal(jpeg.pixels, png.pixels)
    assert _centre_to_lungs(jpeg.pixels) > 1.1  # the spine runs down the middle, as in an upright chest


def test_field_case_draft_decoding_is_turned_upright_too():
    rotated = FIELD_EXIF / "IM-9001-0001.jpeg"
    reduced = decode_raster(rotated, jpeg_min_side=128)
    # 1/8 scale of 1422 x 1152 stored, then turned: 144 x 178 shown, the original size as shown
    assert reduced.pixels.shape == (144, 178)
    assert (reduced.original_height, reduced.original_width) == (1152, 1422)
    with Image.open(rotated) as pil:
        pil.draft("L", (128, 128))
        stored = np.asarray(pil, dtype=np.float32)
    np.testing.assert_array_equal(reduced.pixels, np.rot90(stored, -1))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_of_a_png_shows_the_upright_picture_exactly(tmp_path, orientation):
    upright = _upright_chest()
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(np.ascontiguousarray(STORED[orientation](upright))).save(path, exif=_exif(orientation))
    with Image.open(path) as pil:  # the eXIf chunk is really there
        assert pil.getexif().get(0x0112) == orientation
    image = decode_raster(path)
    np.testing.assert_array_equal(image.pixels, upright.astype(np.float32))
    assert (image.original_height, image.original_width) == upright.shape == (240, 180)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_of_a_jpeg_is_applied_to_the_decoded_samples(tmp_path, orientation):
    upright = _upright_chest()
    path = tmp_path / f"o{orientation}.jpeg"
    Image.fromarray(np.ascontiguousarray(STORED[orientation](upright))).save(path, quality=95, exif=_exif(orientation))
    with Image.open(path) as pil:
        stored = np.asarray(pil, dtype=np.float32)  # Pillow's decode as stored, not turned
    image = decode_raster(path)
    np.testing.assert_array_equal(image.pixels, DISPLAY[orientation](stored))
    assert image.pixels.shape == (image.original_height, image.original_width) == (240, 180)
    # and it is the picture upright (JPEG at quality 95: measured 0.83 to 0.85 grey levels from the source)
    assert np.abs(image.pixels - upright).mean() < 2.0


def test_sixteen_bit_png_with_orientation_keeps_its_values(tmp_path):
    upright = _upright_chest().astype(np.uint16) * 257
    path = tmp_path / "o6_16bit.png"
    Image.fromarray(np.ascontiguousarray(STORED[6](upright))).save(path, exif=_exif(6))
    image = decode_raster(path)
    assert image.bit_depth == 16
    np.testing.assert_array_equal(image.pixels, upright.astype(np.float32))


def test_progressive_jpeg_is_decoded_upright(tmp_path):
    upright = _upright_chest()
    path = tmp_path / "progressive.jpeg"
    Image.fromarray(np.ascontiguousarray(STORED[8](upright))).save(path, progressive=True, quality=95, exif=_exif(8))
    with Image.open(path) as pil:
        assert pil.info.get("progressive") and pil.format == "JPEG"
        stored = np.asarray(pil, dtype=np.float32)
    image = decode_raster(path)
    np.testing.assert_array_equal(image.pixels, DISPLAY[8](stored))
    # the draft (DCT scaling) path decodes progressive files as well, then turns them
    reduced = decode_raster(path, jpeg_min_side=60)
    assert reduced.pixels.shape == (120, 90) and (reduced.original_height, reduced.original_width) == (240, 180)


def test_cmyk_jpeg_becomes_the_grey_picture(tmp_path):
    upright = _upright_chest()
    path = tmp_path / "cmyk.jpeg"
    cmyk = Image.fromarray(np.ascontiguousarray(STORED[6](upright))).convert("RGB").convert("CMYK")
    cmyk.save(path, quality=95, exif=_exif(6))
    with Image.open(path) as pil:
        assert pil.mode == "CMYK" and "adobe" in pil.info  # Pillow writes CMYK JPEGs with an Adobe APP14 marker
        stored_rgb = np.asarray(pil.convert("RGB"), dtype=np.float64)
    image = decode_raster(path)
    assert image.photometric == "RGB" and image.bit_depth == 8
    np.testing.assert_allclose(image.pixels, DISPLAY[6](stored_rgb @ np.array([0.299, 0.587, 0.114])), atol=1e-4)
    assert np.abs(image.pixels - upright).mean() < 2.0  # measured 0.84 grey levels (JPEG at quality 95)


def test_mpo_decodes_its_primary_picture_upright(tmp_path):
    upright = _upright_chest()
    primary = Image.fromarray(np.ascontiguousarray(STORED[6](upright))).convert("RGB")
    second = Image.fromarray(255 - np.ascontiguousarray(STORED[6](upright))).convert("RGB")  # e.g. the other eye
    path = tmp_path / "camera.mpo"
    primary.save(path, format="MPO", save_all=True, append_images=[second], quality=95, exif=_exif(6))
    with Image.open(path) as pil:
        assert pil.format == "MPO" and pil.n_frames == 2
        stored = np.asarray(pil.convert("L"), dtype=np.float32)  # frame 0
        size = pil.mpinfo[0xB002][0]["Size"]
    image = decode_raster(path)
    assert image.source_kind == "jpeg" and image.n_frames == 1
    np.testing.assert_array_equal(image.pixels, DISPLAY[6](stored))
    assert np.abs(image.pixels - upright).mean() < 2.0  # the primary, not the inverted second picture
    data = path.read_bytes()
    cut = tmp_path / "cut.mpo"
    cut.write_bytes(data[: size // 2])  # inside the primary picture
    with pytest.raises(BadImage) as info:
        decode_raster(cut)
    assert info.value.reason == "truncated"


def test_damaged_exif_is_refused_not_guessed(tmp_path):
    """An EXIF block whose first IFD (where Orientation lives) is cut: the orientation is unknown."""
    path = tmp_path / "bad_exif.jpeg"
    # a TIFF header announcing one IFD0 entry, then only its first two bytes (the Orientation tag number)
    Image.fromarray(_upright_chest()).save(path, exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12")
    with pytest.raises(BadImage) as info, pytest.warns(UserWarning, match="Corrupt EXIF"):
        decode_raster(path)
    assert info.value.reason == "invalid_header" and "EXIF" in info.value.detail
    assert "Corrupt EXIF" in info.value.library_message
    # a whole EXIF block without an Orientation tag is simply shown as stored
    plain = tmp_path / "exif_without_orientation.jpeg"
    exif = Image.Exif()
    exif[0x010F] = "Scanner maker"
    Image.fromarray(_upright_chest()).save(plain, exif=exif)
    assert decode_raster(plain).pixels.shape == (240, 180)


def test_library_message_is_kept_apart_from_the_message(tmp_path):
    data = TRAIN_PNEUMONIA.read_bytes()
    path = tmp_path / "cut.jpeg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage) as info:
        decode_raster(path)
    error = info.value
    assert error.reason == "truncated" and "truncated" in error.library_message  # Pillow's own words
    assert error.library_message not in str(error) and str(error) == "cut.jpeg: truncated (decoder ran out of data)"
    again = pickle.loads(pickle.dumps(error))
    assert (again.library_message, str(again), again.reason) == (error.library_message, str(error), error.reason)
    assert BadImage("x.png", "empty").library_message is None
