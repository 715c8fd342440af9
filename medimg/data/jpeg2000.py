"""JPEG 2000 codestreams decoded at a reduced resolution level (OpenJPEG through glymur).

A JPEG 2000 codestream holds the image as a wavelet pyramid: its resolution level ``r`` (the
image at 1/2^r per side, the low-pass band of the ``r`` finest wavelet levels) decodes without
the finer levels being decoded at all. An ingest that keeps 64 px of a 2000 px CR chest needs
only a small part of the full decode (the shared 1955 x 1841 CR file: about 6 ms at 1/8 against
100 ms in full, on the CPU here). pydicom's pixel-data plugins always decode in full, so this
module calls OpenJPEG itself, through glymur (its ctypes binding; the library comes from the
operating system, ``libopenjp2``).

What a caller can rely on:

* :func:`decode_reduced` returns ``None``, never a guess, whenever it cannot give the samples
  pydicom would give at that resolution: glymur or libopenjp2 missing, not one grey component,
  a precision or signedness other than the caller expects, a resolution level the codestream
  lacks, an image origin other than (0, 0), or any OpenJPEG error. The caller then decodes in
  full, which also classifies a damaged codestream the usual way. In particular a codestream
  whose precision exceeds the header's Bits Stored (an overlay or other data in the bits above,
  which PS3.5 section 8.1.1 says are not image data) is declined: its low-pass band mixes those
  bits into the picture, and no mask applied afterwards could separate them again; the full
  decode is masked exactly instead.
* At level 0 the samples are exactly the full decode; at level ``r`` the array has
  ``ceil(rows / 2^r)`` x ``ceil(columns / 2^r)`` samples in the stored value range (the
  wavelet's low-pass band is normalised to it, and OpenJPEG clips its output to the precision),
  so a Modality LUT or window applies unchanged; the caller still passes the array through
  :func:`medimg.data.dicom.stored_values`, like every decode.

OpenJPEG reads from a file here: the codestream is written to a private temporary file that is
deleted before the function returns.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Reduced:
    """A decode at resolution level ``level`` (each side divided by 2^level, rounded up)."""

    pixels: np.ndarray
    level: int


@functools.cache
def available() -> bool:
    """True when glymur imports and has found an OpenJPEG library (``libopenjp2``) to call."""
    try:
        import glymur  # here: an optional dependency; its absence is an answer, not an ImportError
        from glymur.lib import openjp2
    except Exception:
        return False
    return openjp2.OPENJP2 is not None and bool(glymur.version.openjpeg_version)


def reduction_level(rows: int, columns: int, min_side: int, max_level: int) -> int:
    """The largest level ``r <= max_level`` whose shorter side, ``ceil(side / 2^r)``, is >= ``min_side``."""
    level = 0
    while level < max_level and math.ceil(min(rows, columns) / 2 ** (level + 1)) >= min_side:
        level += 1
    return level


def decode_reduced(
    codestream: bytes, rows: int, columns: int, bits_stored: int, signed: bool, min_side: int
) -> Reduced | None:
    """One grey JPEG 2000 codestream (no JP2 wrapper) at the coarsest level keeping ``min_side``.

    ``rows``, ``columns``, ``bits_stored`` and ``signed`` are what the container (the DICOM
    header) declares; a codestream that disagrees is left to the full decoder (``None``).
    """
    if not available():
        return None
    import glymur  # here: optional (see available)

    fd, name = tempfile.mkstemp(prefix="medimg-", suffix=".j2k")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(codestream)
        try:
            jp2 = glymur.Jp2kr(name)
            siz, cod = _segment(jp2, "SIZ"), _segment(jp2, "COD")
            if siz is None or cod is None or not _matches(siz, rows, columns, bits_stored, signed):
                return None
            level = reduction_level(rows, columns, min_side, int(cod.num_res))
            step = 2**level
            pixels = jp2[::step, ::step]
        except Exception:  # OpenJPEG and glymur errors: the full decoder decides what is wrong
            return None
    finally:
        os.unlink(name)
    if pixels.shape != (math.ceil(rows / step), math.ceil(columns / step)):
        return None
    return Reduced(pixels=pixels, level=level)


def _segment(jp2, marker: str):
    for segment in jp2.codestream.segment:
        if segment.marker_id == marker:
            return segment
    return None


def _matches(siz, rows: int, columns: int, bits_stored: int, signed: bool) -> bool:
    return (
        len(siz.bitdepth) == 1
        and int(siz.bitdepth[0]) == bits_stored
        and bool(siz.signed[0]) == signed
        and (int(siz.ysiz) - int(siz.yosiz), int(siz.xsiz) - int(siz.xosiz)) == (rows, columns)
        and int(siz.xosiz) == 0
        and int(siz.yosiz) == 0
        and tuple(siz.xrsiz) == (1,)
        and tuple(siz.yrsiz) == (1,)
    )
