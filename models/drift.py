"""Distribution drift between a reference sample and a current one, per feature: population
stability index (PSI) and Jensen-Shannon divergence (base 2, in [0, 1]). Engine-free; the
evaluation report plots it over time, and the same functions can watch serving traffic.

Categorical values are binned by the reference's most frequent values (the rest in one
"other" bin); numeric values by the reference's quantiles. Empty bins get ``eps`` mass so
PSI stays finite.

>>> ref = Bins.fit(["a"] * 50 + ["b"] * 50)
>>> round(jsd(ref.hist(["a"] * 50 + ["b"] * 50), ref.hist(["a"] * 50 + ["b"] * 50)), 6)
0.0
>>> round(jsd(ref.hist(["a"] * 100), ref.hist(["b"] * 100)), 3)
1.0
>>> psi(ref.hist(["a"] * 50 + ["b"] * 50), ref.hist(["a"] * 90 + ["b"] * 10)) > 0.25  # a large shift
True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

EPS = 1e-6


@dataclass(frozen=True)
class Bins:
    """How to histogram one feature: ``categories`` (top values of the reference) or numeric
    ``edges`` (reference quantiles)."""

    categories: tuple[str, ...] | None = None
    edges: np.ndarray | None = None

    @classmethod
    def fit(cls, values: Sequence, top: int = 50, quantiles: int = 10) -> "Bins":
        arr = np.asarray(values, dtype=object)
        numeric = len(arr) > 0 and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                                       for v in arr)
        if numeric:
            edges = np.unique(np.quantile(arr.astype(np.float64), np.linspace(0, 1, quantiles + 1)[1:-1]))
            return cls(edges=edges)
        vals, counts = np.unique(arr.astype(str), return_counts=True)
        return cls(categories=tuple(vals[np.argsort(-counts, kind="stable")[:top]]))

    def hist(self, values: Sequence) -> np.ndarray:
        """Normalized histogram of ``values`` over these bins (the last bin: other / above)."""
        if self.edges is not None:
            idx = np.searchsorted(self.edges, np.asarray(values, np.float64), side="right")
            counts = np.bincount(idx, minlength=len(self.edges) + 1).astype(np.float64)
        else:
            pos = {c: i for i, c in enumerate(self.categories or ())}
            other = len(pos)
            counts = np.bincount([pos.get(str(v), other) for v in values], minlength=other + 1).astype(np.float64)
        return counts / counts.sum() if counts.sum() else counts


def _smooth(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, np.float64) + EPS
    return p / p.sum()


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index: sum (c - r) ln(c / r). Rule of thumb: < 0.1 stable,
    0.1-0.25 moderate, > 0.25 large."""
    r, c = _smooth(reference), _smooth(current)
    return float(np.sum((c - r) * np.log(c / r)))


def jsd(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon divergence, base 2 (0 identical, 1 disjoint)."""
    r, c = _smooth(reference), _smooth(current)
    m = (r + c) / 2
    return float(0.5 * np.sum(r * np.log2(r / m)) + 0.5 * np.sum(c * np.log2(c / m)))


def drift_over_time(times: np.ndarray, columns: dict[str, Sequence], reference_end: int, window_ms: int,
                    min_rows: int = 50) -> dict[str, list[dict]]:
    """Per feature, per event-time window from ``reference_end`` on: PSI and JSD of the window
    against everything before ``reference_end`` (the first period). Windows with fewer than
    ``min_rows`` rows are skipped (their histograms are noise)."""
    times = np.asarray(times)
    ref = times < reference_end
    keys = times // window_ms
    out: dict[str, list[dict]] = {}
    for name, values in columns.items():
        vals = np.asarray(values, dtype=object)
        if not ref.any():
            continue
        bins = Bins.fit(list(vals[ref]))
        r = bins.hist(list(vals[ref]))
        rows = []
        for k in np.unique(keys[~ref]):
            m = (keys == k) & ~ref
            if m.sum() >= min_rows:
                c = bins.hist(list(vals[m]))
                rows.append({"start": int(k * window_ms), "n": int(m.sum()), "psi": psi(r, c), "jsd": jsd(r, c)})
        out[name] = rows
    return out
