"""Distribution drift between a reference sample and a current one: PSI and a two-sample KS test.

Pure functions over 1-D samples. The population stability index uses bins from the reference's
quantiles, so it is scale-free; a small epsilon keeps empty bins finite. Rules of thumb: below
0.1 no shift, 0.1-0.2 moderate, above 0.2 a shift worth acting on.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import ks_2samp

EPS = 1e-4


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (1-D samples), >= 0.

    Bins: ``bins`` quantiles of the reference (open-ended outer bins); each share gets :data:`EPS`
    added so empty bins stay finite. A constant reference gives 0.0 when ``current`` equals it, else
    inf. ``ValueError`` when either sample is empty.
    """
    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    if len(reference) == 0 or len(current) == 0:
        raise ValueError("psi needs two non-empty samples")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return 0.0 if np.allclose(current, reference[0]) else float("inf")
    edges[0], edges[-1] = -np.inf, np.inf
    ref = np.histogram(reference, edges)[0] / len(reference) + EPS
    cur = np.histogram(current, edges)[0] / len(current) + EPS
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def compare(name: str, reference: np.ndarray, current: np.ndarray, psi_threshold: float, p_threshold: float) -> dict:
    """One feature's drift verdict with every number used."""
    stat = ks_2samp(reference, current)
    value = psi(reference, current)
    return {
        "feature": name,
        "n_reference": len(reference),
        "n_current": len(current),
        "psi": value,
        "ks_statistic": float(stat.statistic),
        "ks_pvalue": float(stat.pvalue),
        "drifted": bool(value > psi_threshold or stat.pvalue < p_threshold),
    }
