"""decode_dicom on every file of shared/data/dicom, on pydicom's test files and on broken copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from datapaths import CHEST, CR_CHEST, CR_CHEST_J2K, CT_SMALL, DICOM, FIELD_CASES, MR_SMALL
from medimg.config import PreprocessConfig
from medimg.data import jpeg2000
from medimg.data.dicom import DEFAULT_CT_WINDOW, decode_dicom, linear_window, stored_values
from medimg.data.images import BadImage
from medimg.preprocess import grey_uint8, prepare_file

SIIM = CR_CHEST
FAKE_M1 = DICOM / "xray" / "Fake_MONOHR1.dcm"
RG1 = CR_CHEST_J2K
CT_UNC = DICOM / "ct" / "693_UNCI.dcm"
CT_J2K = DICOM / "ct" / "693_J2KI.dcm"

# file -> (transfer syntax UID, photometric, (rows, columns), modality); measured, and checked
# against the header in test_every_file_decodes_as_its_header_says.
EXPECTED = {
    "ct/693_J2KI.dcm": ("1.2.840.10008.1.2.4.91", "MONOCHROME2", (512, 512), "CT"),
    "ct/693_UNCI.dcm": ("1.2.840.10008.1.2.1", "MONOCHROME2", (512, 512), "CT"),
    "ct/CT_small.dcm": ("1.2.840.10008.1.2.1", "MONOCHROME2", (128, 128), "CT"),
    "mr/MR2_J2KI.dcm": ("1.2.840.10008.1.2.4.91", "MONOCHROME2", (1024, 1024), "MR"),
    "mr/MR_small.dcm": ("1.2.840.10008.1.2.1", "MONOCHROME2", (64, 64), "MR"),
    "mr/MR_small_RLE.dcm": ("1.2.840.10008.1.2.5", "MONOCHROME2", (64, 64), "MR"),
    "mr/MR_small_jp2klossless.dcm": ("1.2.840.10008.1.2.4.90", "MONOCHROME2", (64, 64), "MR"),
    "xray/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm": (
        "1.2.840.10008.1.2.4.50",
        "MONOCHROME2",
        (1024, 1024),
        "CR",
    ),
    "xray/Fake_MONOHR1.dcm": ("1.2.840.10008.1.2.4.50", "MONOCHROME1", (1024, 1024), "CR"),
    "xray/RG1_J2KI.dcm": ("1.2.840.10008.1.2.4.91", "MONOCHROME1", (1955, 1841), "CR"),
}
BAD = {"mr/MR_truncated.dcm": "truncated"}


def _rel(path: Path) -> str:
    return path.relative_to(DICOM).as_posix()


def _reason(path, **kwargs) -> str:
    with pytest.raises(BadImage) as info:
        decode_dicom(path, **kwargs)
    assert info.value.path == Path(path)
    assert Path(path).name in str(info.value)
    return info.value.reason


def _centre_to_lungs(pixels: np.ndarray) -> float:
    h, w = pixels.shape
    rows = slice(h // 3, 2 * h // 3)
    centre = pixels[rows, 2 * w // 5 : 3 * w // 5].mean()
    lungs = (pixels[rows, w // 8 : w // 3].mean() + pixels[rows, 2 * w // 3 : 7 * w // 8].mean()) / 2
    return float(centre / lungs)


def test_the_data_folder_holds_exactly_the_expected_files():
    assert {_rel(p) for p in DICOM.rglob("*.dcm")} == set(EXPECTED) | set(BAD)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_file_decodes_as_its_header_says(name):
    path = DICOM / name
    tsuid, photometric, shape, modality = EXPECTED[name]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert (ds.file_meta.TransferSyntaxUID, ds.PhotometricInterpretation) == (tsuid, photometric)
    assert (ds.Rows, ds.Columns) == shape
    image = decode_dicom(path)
    assert image.pixels.shape == shape == (image.original_height, image.original_width)
    assert image.pixels.dtype == np.float32 and np.isfinite(image.pixels).all()
    assert image.pixels.std() > 0  # not a blank decode
    assert (image.photometric, image.modality, image.source_kind, image.n_frames) == (photometric, modality, "dicom", 1)
    assert image.bit_depth == int(ds.BitsStored)


def test_truncated_mr_is_truncated_not_missing():
    # MR_truncated.dcm declares 8192 bytes of pixel data and the file ends after 8130
    ds = pydicom.dcmread(DICOM / "mr" / "MR_truncated.dcm")
    raw = ds.get_item("PixelData")
    assert (raw.length, len(raw.value)) == (8192, 8130)
    assert _reason(DICOM / "mr" / "MR_truncated.dcm") == "truncated"


def test_lossless_mr_encodings_decode_identically():
    reference = decode_dicom(MR_SMALL).pixels
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
        np.testing.assert_array_equal(decode_dicom(DICOM / "mr" / name).pixels, reference)
    # not windowed (MR): the stored values themselves
    np.testing.assert_array_equal(reference, pydicom.dcmread(MR_SMALL).pixel_array.astype(np.float32))


def test_jpeg2000_ct_equals_uncompressed_after_the_same_processing():
    uncompressed, j2k = decode_dicom(CT_UNC), decode_dicom(CT_J2K)
    assert uncompressed.window == j2k.window == (40.0, 100.0)  # the files' own VOI
    # measured: identical (the "J2KI" sample's codestream reproduces the uncompressed values)
    np.testing.assert_array_equal(j2k.pixels, uncompressed.pixels)
    lung_u, lung_j = decode_dicom(CT_UNC, window=(-600, 1500)), decode_dicom(CT_J2K, window=(-600, 1500))
    np.testing.assert_array_equal(lung_j.pixels, lung_u.pixels)


def test_ct_is_rescaled_to_hu_and_windowed():
    ds = pydicom.dcmread(CT_UNC)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    lung = decode_dicom(CT_UNC, window=(-600.0, 1500.0))
    assert lung.window == (-600.0, 1500.0)
    np.testing.assert_allclose(lung.pixels, np.clip((hu + 1350.0) / 1500.0, 0, 1), atol=1e-6)
    assert lung.pixels.min() == 0.0 and lung.pixels.max() == 1.0
    # the file's VOI (40/100) through pydicom: in [0, 1], monotone in HU, saturating outside
    own = decode_dicom(CT_UNC).pixels
    assert own.min() == 0.0 and own.max() == 1.0
    assert (own[hu <= -10] == 0).all() and (own[hu >= 91] == 1).all()
    inside = (hu > 0) & (hu < 80)
    order = np.argsort(hu[inside])
    assert (np.diff(own[inside][order]) >= -1e-6).all()
    # no VOI in the file and no window given: the documented default
    small = decode_dicom(CT_SMALL)
    assert "WindowCenter" not in pydicom.dcmread(CT_SMALL, stop_before_pixels=True)
    assert small.window == DEFAULT_CT_WINDOW
    assert small.pixels.min() >= 0.0 and small.pixels.max() <= 1.0


def test_explicit_window_applies_to_mr_too():
    image = decode_dicom(MR_SMALL, window=(600.0, 1600.0))
    raw = pydicom.dcmread(MR_SMALL).pixel_array
    np.testing.assert_allclose(image.pixels, linear_window(raw, 600.0, 1600.0), atol=1e-6)
    with pytest.raises(ValueError):
        decode_dicom(MR_SMALL, window=(600.0, 0.0))


def test_ct_window_applies_to_ct_only():
    lung = (-600.0, 1500.0)
    ct = decode_dicom(CT_UNC, ct_window=lung)
    assert ct.window == lung
    np.testing.assert_array_equal(ct.pixels, decode_dicom(CT_UNC, window=lung).pixels)
    mr = decode_dicom(MR_SMALL, ct_window=lung)
    assert mr.window is None
    np.testing.assert_array_equal(mr.pixels, decode_dicom(MR_SMALL).pixels)
    with pytest.raises(ValueError):
        decode_dicom(MR_SMALL, ct_window=(600.0, 0.0))


def test_bytes_already_read_and_pseudonyms_come_from_the_one_parse():
    from medimg.data.deid import identity_pseudonyms

    secret = b"test-secret-for-the-dicom-decoder"
    given = decode_dicom(Path("renamed.dcm"), data=SIIM.read_bytes(), secret=secret)
    np.testing.assert_array_equal(given.pixels, decode_dicom(SIIM).pixels)
    assert decode_dicom(SIIM).pseudonyms is None
    assert given.pseudonyms == identity_pseudonyms(pydicom.dcmread(SIIM), secret)
    assert given.pseudonyms["patient_pseudonym"].startswith("pat-") and given.pseudonyms["sop_pseudonym"]
    with pytest.raises(BadImage) as info:
        decode_dicom(SIIM, data=b"")
    assert info.value.reason == "empty"
    cut = SIIM.read_bytes()[:1000]
    with pytest.raises(BadImage) as info:
        decode_dicom(SIIM, data=cut, secret=secret)
    assert info.value.reason == "truncated" and str(info.value).startswith(SIIM.name)


def test_monochrome1_header_variant_is_inverted():
    original, fake = decode_dicom(SIIM), decode_dicom(FAKE_M1)
    # Fake_MONOHR1.dcm has the very same pixel data as the original and only says MONOCHROME1,
    # so honouring that header must give the exact negative of the original
    assert pydicom.dcmread(SIIM).PixelData == pydicom.dcmread(FAKE_M1).PixelData
    np.testing.assert_array_equal(fake.pixels, 255.0 - original.pixels)
    corr = np.corrcoef(fake.pixels.ravel(), original.pixels.ravel())[0, 1]
    assert corr < -0.999


def test_a_true_monochrome1_copy_displays_like_the_original(tmp_path):
    # stored values inverted AND photometric MONOCHROME1: a real MONOCHROME1 encoding of the
    # same picture, which must display exactly like the MONOCHROME2 original
    ds = pydicom.dcmread(SIIM)
    ds.PixelData = (255 - ds.pixel_array).astype(np.uint8).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "siim_monochrome1.dcm"
    ds.save_as(path)
    inverted, original = decode_dicom(path), decode_dicom(SIIM)
    assert inverted.photometric == "MONOCHROME1"
    assert np.corrcoef(inverted.pixels.ravel(), original.pixels.ravel())[0, 1] > 0.999
    np.testing.assert_array_equal(inverted.pixels, original.pixels)


def test_real_monochrome1_chest_has_bright_bones():
    image = decode_dicom(RG1)
    assert _centre_to_lungs(image.pixels) > 1.15  # mediastinum and spine brighter than lungs
    raw = pydicom.dcmread(RG1).pixel_array.astype(np.float64)
    assert _centre_to_lungs(raw) < 0.9  # what it would look like without the inversion
    np.testing.assert_array_equal(image.pixels, (2**15 - 1) - raw)  # 15 bits stored
    assert _centre_to_lungs(decode_dicom(SIIM).pixels) > 1.15  # MONOCHROME2 left as it is


def test_empty_and_non_dicom_files(tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    text = tmp_path / "notes.dcm"
    text.write_text("Patient: nobody. This is a text file renamed to .dcm\n" * 10)
    jpeg = tmp_path / "image.dcm"
    shutil.copyfile(CHEST / "train" / "NORMAL" / "IM-0115-0001.jpeg", jpeg)
    assert _reason(empty) == "empty"
    assert _reason(text) == "not_an_image"
    assert _reason(jpeg) == "not_an_image"


@pytest.mark.parametrize("source", [CT_SMALL, SIIM, RG1, DICOM / "mr" / "MR_small_RLE.dcm"])
def test_cut_copies_are_truncated(tmp_path, source):
    data = source.read_bytes()
    # native and encapsulated pixel data, cut in the middle, near the end, and inside the
    # final sequence delimiter / trailing element; pydicom itself reads all of these silently
    for keep in (len(data) // 2, len(data) * 9 // 10, len(data) - 4, len(data) - 1):
        path = tmp_path / f"cut_{keep}.dcm"
        path.write_bytes(data[:keep])
        assert _reason(path) == "truncated", keep


def test_multiframe_files_are_rejected():
    for name, frames in (("rtdose.dcm", 15), ("SC_rgb_rle_2frame.dcm", 2), ("examples_ybr_color.dcm", 30)):
        path = get_testdata_file(name)
        assert int(pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames) == frames
        assert _reason(path) == "multiframe"


def test_missing_pixel_data(tmp_path):
    assert _reason(get_testdata_file("reportsi.dcm")) == "missing_pixel_data"  # a structured report
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PixelData
    path = tmp_path / "no_pixels.dcm"
    ds.save_as(path)
    assert _reason(path) == "missing_pixel_data"


def test_burned_in_annotation(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    ds.BurnedInAnnotation = "YES"
    ds.PatientName = "Doe^Janet"
    path = tmp_path / "burned.dcm"
    ds.save_as(path)
    with pytest.raises(BadImage) as info:
        decode_dicom(path)
    assert info.value.reason == "burned_in_annotation"
    assert "Doe" not in str(info.value) and "Janet" not in str(info.value)
    assert decode_dicom(path, allow_burned_in=True).pixels.shape == (128, 128)
    ds.BurnedInAnnotation = "NO"
    ds.save_as(path)
    assert decode_dicom(path).pixels.shape == (128, 128)


def test_unsupported_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(MR_SMALL)
    ds.PixelData = encapsulate([ds.PixelData])
    for uid in ("1.2.840.10008.1.2.4.100", "1.2.826.0.1.3680043.2.1143.999.1"):  # MPEG-2, private
        ds.file_meta.TransferSyntaxUID = UID(uid)
        path = tmp_path / f"{uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert _reason(path) == "unsupported_transfer_syntax", uid


def test_too_small_and_colour(tmp_path):
    assert _reason(get_testdata_file("rtdose_1frame.dcm")) == "too_small"  # 10 x 10
    colour = decode_dicom(get_testdata_file("SC_rgb_rle.dcm"))
    rgb = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm")).pixel_array.astype(np.float64)
    np.testing.assert_allclose(colour.pixels, rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-3)
    assert colour.window is None and colour.photometric == "RGB"


def test_errors_carry_no_identifying_values(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    secret_name, secret_id = "Sensitive^Person", "MRN-8817-22"
    ds.PatientName, ds.PatientID = secret_name, secret_id
    ds.NumberOfFrames = 3  # -> multiframe, raised after the header has been read
    path = tmp_path / "identified.dcm"
    ds.save_as(path)
    with pytest.raises(BadImage) as info:
        decode_dicom(path)
    assert info.value.reason == "multiframe"
    text = str(info.value) + repr(info.value.args)
    assert secret_name.split("^")[0] not in text and secret_id not in text
    assert info.value.__cause__ is None


# --------------------------------------------------------------------------- stored bits, float data, library text

OVERLAY = FIELD_CASES / "overlay-high-bits"
FLOAT_CASE = FIELD_CASES / "float-pixel-data-nan"


def test_stored_values_masks_unsigned_and_sign_extends_signed():
    unsigned = np.array([0x0FFF, 0x8FFF, 0xF000, 0x1234], dtype=np.uint16)
    np.testing.assert_array_equal(stored_values(unsigned, 12, signed=False), [0x0FFF, 0x0FFF, 0x0000, 0x0234])
    assert stored_values(unsigned, 12, signed=False).dtype == np.uint16
    # 12-bit two's complement: 0x800 is -2048, 0x7FF is 2047, whatever bits 12..15 hold
    signed = np.array([0x0800, 0x07FF, 0x8FFF, 0x7800, 0x0001], dtype=np.uint16).view(np.int16)
    np.testing.assert_array_equal(stored_values(signed, 12, signed=True), [-2048, 2047, -1, -2048, 1])
    assert stored_values(signed, 12, signed=True).dtype == np.int16
    before = unsigned.copy()
    stored_values(unsigned, 12, signed=False)
    np.testing.assert_array_equal(unsigned, before)  # the input is not changed
    full = np.array([0xFFFF], dtype=np.uint16)
    assert stored_values(full, 16, signed=False) is full  # nothing above Bits Stored
    floats = np.array([1.5, -2.0], dtype=np.float32)
    assert stored_values(floats, 12, signed=False) is floats


def test_overlay_bits_are_not_image_data_in_any_encoding():
    """Field case: a 12-bit DX with an overlay plane in bit 15, native, RLE and JPEG 2000 lossless."""
    reference = pydicom.dcmread(OVERLAY / "reference_no_overlay.dcm")
    assert (int(reference.BitsStored), int(reference.BitsAllocated), int(reference.PixelRepresentation)) == (12, 16, 0)
    expected = decode_dicom(OVERLAY / "reference_no_overlay.dcm")
    np.testing.assert_array_equal(expected.pixels, reference.pixel_array.astype(np.float32))
    assert expected.pixels.max() <= 4095
    # pydicom 3.0.2 itself masks the native and RLE files but hands back the overlay in JPEG 2000
    j2k = pydicom.dcmread(OVERLAY / "overlay_j2k_lossless.dcm")
    assert j2k.pixel_array.max() > 4095
    for name in ("overlay_native.dcm", "overlay_rle.dcm", "overlay_j2k_lossless.dcm"):
        image = decode_dicom(OVERLAY / name)
        np.testing.assert_array_equal(image.pixels, expected.pixels, err_msg=name)
        # the reduced-resolution JPEG 2000 path declines a codestream that carries bits above Bits
        # Stored (precision 16 here), so the full, masked decode is what comes back
        reduced = decode_dicom(OVERLAY / name, jpeg2000_min_side=128)
        np.testing.assert_array_equal(reduced.pixels, expected.pixels, err_msg=name)
    config = PreprocessConfig(size=64, jpeg2000_reduce=True)
    np.testing.assert_array_equal(
        prepare_file(OVERLAY / "overlay_j2k_lossless.dcm", config),
        prepare_file(OVERLAY / "reference_no_overlay.dcm", config),
    )


def test_reduced_jpeg2000_of_the_clean_image_is_the_codestream_level(tmp_path):
    """Where the codestream holds only the stored bits, the reduced path is used and passes through unchanged."""
    ds = pydicom.dcmread(OVERLAY / "reference_no_overlay.dcm")
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")  # precision 12, as Bits Stored says
    path = tmp_path / "clean_j2k.dcm"
    ds.save_as(path)
    frame = get_frame(pydicom.dcmread(path).PixelData, 0, number_of_frames=1)
    level = jpeg2000.decode_reduced(frame, 1024, 1024, 12, False, min_side=128)
    assert level is not None and level.level == 3
    reduced = decode_dicom(path, jpeg2000_min_side=128)
    assert reduced.pixels.shape == (128, 128)
    np.testing.assert_array_equal(reduced.pixels, level.pixels.astype(np.float32))
    np.testing.assert_array_equal(decode_dicom(path).pixels, decode_dicom(OVERLAY / "reference_no_overlay.dcm").pixels)


@pytest.mark.parametrize("syntax", ["native", "rle", "j2k"])
def test_signed_data_is_sign_extended_from_bits_stored(tmp_path, syntax):
    """A 14-bit signed CT with junk in bits 14 and 15 decodes to its 14-bit values in every encoding."""
    ds = pydicom.dcmread(CT_UNC)
    assert (int(ds.BitsStored), int(ds.PixelRepresentation)) == (14, 1)
    values = ds.pixel_array.astype(np.int16)
    junk = (np.arange(values.size, dtype=np.uint16).reshape(values.shape) % 4) << 14  # bits 14-15
    dirty = (values.view(np.uint16) & 0x3FFF | junk).view(np.int16)
    assert not np.array_equal(dirty, values)
    ds.PixelData = dirty.tobytes()
    if syntax == "rle":
        ds.compress(RLELossless, encoding_plugin="pydicom")
    elif syntax == "j2k":
        ds.BitsStored = 16  # so the encoder keeps all 16 bits, then the header says 14 again
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        ds.BitsStored = 14
    path = tmp_path / f"dirty_{syntax}.dcm"
    ds.save_as(path)
    np.testing.assert_array_equal(decode_dicom(path).pixels, decode_dicom(CT_UNC).pixels)


def test_float_pixel_data_with_nan_is_refused_not_blank():
    """Field case: 32-bit Float Pixel Data with 4 NaN pixels; its twin without them decodes."""
    with pytest.raises(BadImage) as info:
        decode_dicom(FLOAT_CASE / "float_with_nan.dcm")
    assert info.value.reason == "non_finite" and "4 of 65536" in info.value.detail
    with pytest.raises(BadImage) as info:  # the contract's entry point, used by ingest and predict
        prepare_file(FLOAT_CASE / "float_with_nan.dcm", PreprocessConfig(size=64))
    assert info.value.reason == "non_finite"
    twin = pydicom.dcmread(FLOAT_CASE / "reference_float_no_nan.dcm")
    assert "FloatPixelData" in twin and "PixelData" not in twin
    image = decode_dicom(FLOAT_CASE / "reference_float_no_nan.dcm")
    np.testing.assert_array_equal(image.pixels, twin.pixel_array)  # values as stored, no Modality LUT
    assert image.bit_depth == 32 and image.window is None
    grey = grey_uint8(image)  # the contract: by the image's own min and max
    v = twin.pixel_array.astype(np.float64)
    expected = np.rint((v - v.min()) / (v.max() - v.min()) * 255)
    np.testing.assert_array_equal(grey, expected.astype(np.uint8))
    prepared = prepare_file(FLOAT_CASE / "reference_float_no_nan.dcm", PreprocessConfig(size=64))
    assert prepared.std() > 20  # not blank


def test_float_rules_monochrome1_rescale_double_and_infinity(tmp_path):
    base = pydicom.dcmread(FLOAT_CASE / "reference_float_no_nan.dcm")
    values = base.pixel_array.astype(np.float64)
    ds = pydicom.dcmread(FLOAT_CASE / "reference_float_no_nan.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.RescaleSlope, ds.RescaleIntercept = 2, 100  # not part of the float pixel modules: ignored
    ds.save_as(tmp_path / "m1.dcm")
    inverted = decode_dicom(tmp_path / "m1.dcm").pixels
    np.testing.assert_allclose(inverted, values.min() + values.max() - values, atol=1e-6)  # about the data range

    ds = pydicom.dcmread(FLOAT_CASE / "reference_float_no_nan.dcm")
    ds.Modality, ds.WindowCenter, ds.WindowWidth = "CT", 0.5, 0.4  # a float CT with its own window
    ds.save_as(tmp_path / "ct.dcm")
    ct = decode_dicom(tmp_path / "ct.dcm")
    assert ct.window == (0.5, 0.4)
    np.testing.assert_allclose(ct.pixels, np.clip((values - 0.3) / 0.4, 0, 1), atol=1e-6)

    ds = pydicom.dcmread(FLOAT_CASE / "reference_float_no_nan.dcm")
    del ds.FloatPixelData
    ds.BitsAllocated = 64
    ds.DoubleFloatPixelData = values.astype("<f8").tobytes()
    ds.save_as(tmp_path / "double.dcm")
    np.testing.assert_array_equal(decode_dicom(tmp_path / "double.dcm").pixels, values.astype(np.float32))
    bad = values.copy()
    bad[10, 20], bad[30, 40] = np.inf, -np.inf
    ds.DoubleFloatPixelData = bad.astype("<f8").tobytes()
    ds.save_as(tmp_path / "infinite.dcm")
    with pytest.raises(BadImage) as info:
        decode_dicom(tmp_path / "infinite.dcm")
    assert info.value.reason == "non_finite" and "2 of" in info.value.detail


def test_library_messages_reach_the_error_but_not_its_text_nor_the_logs(caplog):
    import logging
    import pickle

    caplog.set_level(logging.DEBUG)
    broken = get_testdata_file("JPEG2000-embedded-sequence-delimiter.dcm")  # no decoder reads its codestream
    with pytest.raises(BadImage) as info:
        decode_dicom(broken)
    error = info.value
    assert error.reason == "decode_error" and "Unable to decode" in error.library_message
    assert "Unable to decode" not in str(error) and "Unable to decode" not in repr(error.args)
    again = pickle.loads(pickle.dumps(error))  # as it comes back from a worker process
    assert (again.library_message, str(again)) == (error.library_message, str(error))
    short = get_testdata_file("emri_small_jpeg_2k_lossless_too_short.dcm")  # pydicom logs its path
    with pytest.raises(BadImage) as info:
        decode_dicom(short)
    assert info.value.reason == "truncated" and "End of file" in info.value.library_message
    assert not [r for r in caplog.records if r.name.startswith("pydicom")], "pydicom logged while decoding"
    assert logging.getLogger("pydicom").propagate  # restored afterwards
    # without medimg's guard the same decode does log (so the check above can fail)
    with pytest.raises(RuntimeError, match="Unable to decode"):
        _ = pydicom.dcmread(broken).pixel_array
    assert [r for r in caplog.records if r.name.startswith("pydicom")]
