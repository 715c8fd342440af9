"""JPEG 2000 DICOM decoding in full against a reduced resolution level, file by file.

For each JPEG 2000 sample in ``$MEDIMG_DATA_DIR/dicom`` (default ../shared/data): the median
time of :func:`medimg.data.dicom.decode_dicom` in full and with ``jpeg2000_min_side`` (what the
contract's ``jpeg2000_reduce`` passes: twice ``--size``), the shape each gives, and how close
the contract image at ``--size`` (area interpolation) stays: mean absolute difference in grey
levels and the correlation. One process, one thread.

Usage: python benchmarks/jpeg2000_decode.py [--size 64] [--repeat 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDIMG_DATA_DIR", ROOT.parent / "shared" / "data"))
FILES = ["xray/RG1_J2KI.dcm", "mr/MR2_J2KI.dcm", "ct/693_J2KI.dcm", "mr/MR_small_jp2klossless.dcm"]


def _median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()

    from medimg import preprocess
    from medimg.config import PreprocessConfig
    from medimg.data import jpeg2000
    from medimg.data.dicom import decode_dicom

    print(f"OpenJPEG through glymur available: {jpeg2000.available()}; contract size {args.size}")
    fast = PreprocessConfig(size=args.size, interpolation="area", jpeg2000_reduce=True)
    full = fast.model_copy(update={"jpeg2000_reduce": False})
    print(
        f"{'file':28} {'full shape':>12} {'full ms':>8} {'reduced shape':>14} {'reduced ms':>10} {'speed-up':>8} "
        f"{'mean |diff|':>11} {'corr':>7}"
    )
    for rel in FILES:
        path = DATA / "dicom" / rel
        whole = decode_dicom(path)
        small = decode_dicom(path, jpeg2000_min_side=2 * args.size)
        t_full = _median_ms(lambda p=path: decode_dicom(p), args.repeat)
        t_fast = _median_ms(lambda p=path: decode_dicom(p, jpeg2000_min_side=2 * args.size), args.repeat)
        a = preprocess.prepare(small, fast).astype(np.float64)
        b = preprocess.prepare(whole, full).astype(np.float64)
        corr = np.corrcoef(a.ravel(), b.ravel())[0, 1] if a.std() and b.std() else float("nan")
        print(
            f"{Path(rel).name:28} {whole.pixels.shape!s:>12} {t_full:8.1f} {small.pixels.shape!s:>14} "
            f"{t_fast:10.1f} {t_full / t_fast:8.1f} {np.abs(a - b).mean():11.2f} {corr:7.4f}"
        )


if __name__ == "__main__":
    main()
