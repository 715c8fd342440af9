"""Where the real data sets are: $MEDIMG_DATA_DIR, else ../shared/data beside the checkout.

Tests never skip when the data is missing: a missing folder fails loudly, in the fixture below.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR = Path(os.environ.get("MEDIMG_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
PNEUMONIAMNIST = DATA_DIR / "pneumoniamnist" / "pneumoniamnist.npz"
