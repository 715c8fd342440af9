"""The preprocessing contract: geometry, intensity, filters, JPEG scaling, and one definition for everyone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from datapaths import DATA_DIR, FIELD_CASES
from medimg import preprocess
from medimg.config import PreprocessConfig, parse_params
from medimg.data.dicom import decode_dicom
from medimg.data.images import DecodedImage, decode_raster

FULLRES = DATA_DIR / "chest_xray_fullres"
KERMANY_RGB = DATA_DIR / "chest_xray" / "train" / "NORMAL" / "IM-0115-0001.jpeg"


def _grey(h: int, w: int) -> np.ndarray:
    """A wide or tall test card: white everywhere, so padding shows as black bars."""
    return np.full((h, w), 255, dtype=np.uint8)


def test_default_contract_keeps_the_version_2_keys_and_defaults_describe_them():
    c = preprocess.contract(PreprocessConfig())
    for key in ("size", "resize", "resize_sampling", "grey_uint8", "scale", "mean", "std", "channels", "layout"):
        assert key in c
    assert c["resize"] == "bilinear, no antialias, aspect ratio not kept" and c["version"] == 4
    # a version 2 contract (no v3 keys) means the defaults, i.e. what v2 did
    v2 = {k: c[k] for k in ("size", "mean", "std", "channels")}
    assert preprocess.config_from_contract(v2) == PreprocessConfig(size=c["size"])
    # a version 3 contract has no jpeg2000_reduce: JPEG 2000 was decoded in full then
    v3 = {k: v for k, v in c.items() if k != "jpeg2000_reduce"}
    assert preprocess.config_from_contract(v3).jpeg2000_reduce is False


def test_contract_round_trips_through_json_and_the_hash_sees_every_field():
    config = parse_params(
        {
            "preprocess": {
                "size": 64,
                "resize": "pad",
                "interpolation": "area",
                "clahe": True,
                "intensity": "percentile",
                "percentiles": [1, 99],
                "ct_window": [-600, 1500],
                "denoise": "median3",
                "jpeg_dct_scaling": True,
                "jpeg2000_reduce": True,
                "channels": 3,
            }
        }
    ).preprocess
    back = preprocess.config_from_contract(json.loads(json.dumps(preprocess.contract(config))))
    assert back == config
    hashes = {preprocess.contract_hash(config)}
    for change in (
        {"resize": "crop"},
        {"interpolation": "bicubic"},
        {"clahe": False},
        {"denoise": "none"},
        {"jpeg_dct_scaling": False},
        {"jpeg2000_reduce": False},
        {"percentiles": (2.0, 98.0)},
        {"ct_window": None},
    ):
        hashes.add(preprocess.contract_hash(config.model_copy(update=change)))
    assert len(hashes) == 9


@pytest.mark.parametrize(("policy", "expected_black_rows"), [("pad", 16), ("crop", 0), ("stretch", 0)])
def test_resize_policies_on_a_wide_image(policy, expected_black_rows):
    config = PreprocessConfig(size=32, resize=policy)
    out = preprocess.to_contract_size(_grey(50, 100), config)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    black_rows = int((out.max(axis=1) < 128).sum())
    assert black_rows == expected_black_rows  # pad: (100 - 50) / 2 / 100 * 32 = 8 rows top, 8 bottom


def test_crop_keeps_the_centre():
    image = np.zeros((40, 100), dtype=np.uint8)
    image[:, 30:70] = 255  # the centre 40 columns white
    out = preprocess.to_contract_size(image, PreprocessConfig(size=20, resize="crop", interpolation="area"))
    assert out.min() == 255


def test_bilinear_without_antialias_samples_like_pytorch():
    image = np.array(Image.open(KERMANY_RGB).convert("L"))
    for mode in ("bilinear", "bicubic"):
        ours = preprocess.to_contract_size(image, PreprocessConfig(size=64, interpolation=mode)).astype(int)
        x = torch.from_numpy(image).float()[None, None] / 255
        ref = (
            torch.clamp(
                torch.round(
                    F.interpolate(x, size=(64, 64), mode=mode, align_corners=False, antialias=False)[0, 0] * 255
                ),
                0,
                255,
            )
            .numpy()
            .astype(int)
        )
        assert np.abs(ours - ref).max() <= 1 and (ours != ref).mean() < 0.02


def test_antialiased_modes_are_pillow_and_differ_from_point_sampling():
    image = np.asarray(Image.open(FULLRES / "NORMAL" / "IM-0117-0001.jpeg").convert("L"))
    area = preprocess.to_contract_size(image, PreprocessConfig(size=64, interpolation="area"))
    assert np.array_equal(area, np.asarray(Image.fromarray(image).resize((64, 64), Image.BOX)))
    point = preprocess.to_contract_size(image, PreprocessConfig(size=64))
    assert np.abs(area.astype(int) - point.astype(int)).mean() > 1  # aliasing is real at 20x reduction


def test_grey_uint8_fast_path_is_bit_identical_to_the_float64_rule():
    for path in (KERMANY_RGB, FULLRES / "NORMAL" / "IM-0117-0001.jpeg"):
        decoded = decode_raster(path)
        general = np.clip(np.rint(np.asarray(decoded.pixels, np.float64) * (255.0 / 255.0)), 0, 255).astype(np.uint8)
        assert np.array_equal(preprocess.grey_uint8(decoded), general)
    assert decode_raster(KERMANY_RGB).photometric == "RGB"  # the luma (non-integer) case is covered


def test_intensity_modes_on_an_mr_slice():
    mr = decode_dicom(DATA_DIR / "dicom" / "mr" / "MR_small.dcm")
    auto = preprocess.grey_uint8(mr)
    minmax = preprocess.grey_uint8(mr, PreprocessConfig(intensity="minmax"))
    assert np.array_equal(auto, minmax) and auto.min() == 0 and auto.max() == 255  # auto = min-max for MR
    pct = preprocess.grey_uint8(mr, PreprocessConfig(intensity="percentile", percentiles=(5, 95)))
    assert (pct == 255).mean() >= 0.04 and (pct == 0).mean() >= 0.04  # the tails are clipped


def test_ct_window_applies_to_ct_only(tmp_path):
    wide = PreprocessConfig(size=64, ct_window=(-600.0, 1500.0))
    ct_default = preprocess.prepare_file(DATA_DIR / "dicom" / "ct" / "CT_small.dcm", PreprocessConfig(size=64))
    ct_lung = preprocess.prepare_file(DATA_DIR / "dicom" / "ct" / "CT_small.dcm", wide)
    assert not np.array_equal(ct_default, ct_lung)
    mr = DATA_DIR / "dicom" / "mr" / "MR_small.dcm"
    assert np.array_equal(preprocess.prepare_file(mr, PreprocessConfig(size=64)), preprocess.prepare_file(mr, wide))


def test_clahe_and_median_filter():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64), 120, dtype=np.uint8)
    flat[:, 32:] = 130  # low contrast
    eq = preprocess.to_contract_size(flat, PreprocessConfig(size=64, clahe=True, clahe_clip_limit=0.05))
    assert int(eq[:, 40].mean()) - int(eq[:, 10].mean()) > 10
    noisy = flat.copy()
    noisy[rng.random(flat.shape) < 0.05] = 255  # salt
    clean = preprocess.to_contract_size(noisy, PreprocessConfig(size=64, denoise="median3"))
    assert (clean == 255).mean() < 0.005 < (noisy == 255).mean()


def test_jpeg_dct_scaling_reports_the_original_size_and_stays_close_to_a_full_decode():
    path = FULLRES / "NORMAL" / "IM-0117-0001.jpeg"
    fast = PreprocessConfig(size=64, interpolation="area", jpeg_dct_scaling=True)
    full = fast.model_copy(update={"jpeg_dct_scaling": False})
    reduced = preprocess.decode_file(path, fast)
    whole = preprocess.decode_file(path, full)
    assert (reduced.original_height, reduced.original_width) == (whole.original_height, whole.original_width)
    assert min(reduced.pixels.shape) >= 128 and reduced.pixels.size * 4 <= whole.pixels.size
    a, b = preprocess.prepare(reduced, fast).astype(int), preprocess.prepare(whole, full).astype(int)
    assert np.abs(a - b).mean() < 2.0


def test_jpeg_dct_scaling_keeps_decode_raster_rejections(tmp_path):
    data = KERMANY_RGB.read_bytes()
    cut = tmp_path / "cut.jpeg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception) as info:
        preprocess.decode_file(cut, PreprocessConfig(size=16, jpeg_dct_scaling=True))
    assert getattr(info.value, "reason", None) == "truncated"


def test_apply_resizes_through_the_contract_so_there_is_one_definition():
    config = PreprocessConfig(size=32, resize="pad", interpolation="area", mean=0.2, std=0.3, channels=3)
    image = np.asarray(Image.open(KERMANY_RGB).convert("L"))[:, :150]
    direct = preprocess.apply(image, config)
    staged = preprocess.apply(preprocess.to_contract_size(image, config), config)
    assert direct.shape == (1, 3, 32, 32) and torch.equal(direct, staged)


def test_prepare_accepts_a_decoded_npz_image():
    pixels = np.arange(28 * 28, dtype=np.float32).reshape(28, 28) % 256
    decoded = DecodedImage(
        pixels=pixels,
        original_height=28,
        original_width=28,
        bit_depth=8,
        photometric="MONOCHROME2",
        modality=None,
        source_kind="npz",
    )
    assert np.array_equal(preprocess.prepare(decoded, PreprocessConfig()), pixels.astype(np.uint8))


def test_grey_uint8_equals_the_documented_formulas_evaluated_literally():
    """The in-place arithmetic must give the bytes the GREY_UINT8 text promises, file by file."""

    def literal(image):
        v = np.asarray(image.pixels, dtype=np.float64)
        if image.source_kind == "dicom":
            if image.window is not None or image.modality == "CT":
                scaled = v * 255.0
            else:
                lo, hi = float(v.min()), float(v.max())
                scaled = (v - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(v)
        else:
            scaled = v * (255.0 / (2.0**image.bit_depth - 1.0))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    decoded = [decode_dicom(p) for p in sorted((DATA_DIR / "dicom").rglob("*.dcm")) if p.name != "MR_truncated.dcm"]
    decoded.append(decode_raster(KERMANY_RGB))
    sixteen = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.float32)
    decoded.append(
        DecodedImage(
            pixels=sixteen,
            original_height=64,
            original_width=64,
            bit_depth=16,
            photometric="MONOCHROME2",
            modality=None,
            source_kind="png",
        )
    )
    for image in decoded:
        assert np.array_equal(preprocess.grey_uint8(image), literal(image))


@pytest.mark.parametrize("size", [28, 224])
def test_a_rotated_jpeg_and_its_upright_png_prepare_to_the_same_bytes(size):
    """Field case exif-orientation: the contract sees the picture upright, whatever the file stores.

    Exact (measured: 0 differing pixels at 28, 64 and 224, bilinear and area): the PNG holds the
    JPEG's decoded samples upright. With ``jpeg_dct_scaling`` the JPEG is decoded at 1/8 scale and
    the PNG cannot be, so the resize starts from different images: measured mean |diff| 3.3
    grey levels at 28 px, 1.2 at 224, correlation >= 0.996.
    """
    folder = FIELD_CASES / "exif-orientation"
    config = PreprocessConfig(size=size)
    rotated = preprocess.prepare_file(folder / "IM-9001-0001.jpeg", config)
    upright = preprocess.prepare_file(folder / "reference_upright.png", config)
    np.testing.assert_array_equal(rotated, upright)
    area = config.model_copy(update={"interpolation": "area"})
    np.testing.assert_array_equal(
        preprocess.prepare_file(folder / "IM-9001-0001.jpeg", area),
        preprocess.prepare_file(folder / "reference_upright.png", area),
    )
    fast = config.model_copy(update={"jpeg_dct_scaling": True})
    a = preprocess.prepare_file(folder / "IM-9001-0001.jpeg", fast).astype(float)
    b = upright.astype(float)
    assert np.abs(a - b).mean() < 4.0 and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    # what the sideways picture would have been: clearly another image
    with Image.open(folder / "IM-9001-0001.jpeg") as pil:
        sideways = preprocess.to_contract_size(np.asarray(pil.convert("L")), config).astype(float)
    assert np.corrcoef(sideways.ravel(), b.ravel())[0, 1] < 0.9


def test_grey_uint8_refuses_non_finite_pixels_instead_of_a_blank_image():
    pixels = np.ones((32, 32), dtype=np.float32)
    pixels[3, 4] = np.nan
    image = DecodedImage(
        pixels=pixels,
        original_height=32,
        original_width=32,
        bit_depth=32,
        photometric="MONOCHROME2",
        modality="MR",
        source_kind="dicom",
    )
    with pytest.raises(ValueError, match="NaN or infinite"):
        preprocess.grey_uint8(image)
