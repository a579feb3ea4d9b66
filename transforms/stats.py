"""Mergeable, order-independent statistics for "analyze".

Beam combines partial results in whatever order its bundles finish. To make the fitted
artifact identical on every runner and every split of the data, each statistic here is exact
or sketch-based with integer counts, so merging is associative and commutative *bit for bit*:

* sums are exact: each float64 is an integer multiple of 2**-1126, summed as Python ints;
* quantiles come from a DDSketch-style log-bucket histogram (integer counts per bucket;
  relative accuracy ``ALPHA``);
* categorical value counts are integer counters; top-k breaks ties by value.

>>> a, b = NumericStats.of(np.array([1.0, 2.0])), NumericStats.of(np.array([3.0]))
>>> a.merge(b).mean(), NumericStats.of(np.array([3.0, 1.0, 2.0])).mean()
(2.0, 2.0)
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

SCALE_BITS = 1126  # 2**-1126 divides every float64 (subnormals: 2**-1074 = 2**52 * 2**-1126)
ALPHA = 0.005  # relative accuracy of quantile estimates
_GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(_GAMMA)
_MIN_ABS = 1e-12  # |x| below this counts as zero in the sketch


def exact_sum(x: np.ndarray) -> int:
    """Sum of finite float64 values, exactly, as an integer in units of 2**-SCALE_BITS."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return 0
    if not np.isfinite(x).all():
        raise ValueError("exact_sum needs finite values")
    m, e = np.frexp(x)  # x = m * 2**e, |m| in [0.5, 1)
    mant = (m * 2.0**53).astype(np.int64)  # exact: m has 53 significant bits
    hi, lo = np.divmod(mant, 1 << 26)  # keep per-group sums inside int64
    exps, inv = np.unique(e, return_inverse=True)
    sh, sl = np.zeros(len(exps), np.int64), np.zeros(len(exps), np.int64)
    np.add.at(sh, inv, hi)
    np.add.at(sl, inv, lo)
    total = 0
    for ex, h, l in zip(exps.tolist(), sh.tolist(), sl.tolist()):
        total += ((h << 26) + l) << (ex - 53 + SCALE_BITS)
    return total


def sketch_index(x: np.ndarray) -> np.ndarray:
    """Signed log-bucket index of each value (0 for |x| < _MIN_ABS)."""
    a = np.abs(x)
    idx = np.ceil(np.log(np.maximum(a, _MIN_ABS)) / _LOG_GAMMA).astype(np.int64)
    # offset so that index 0 is free for zero; sign carried by the key's sign
    idx = idx - int(math.floor(math.log(_MIN_ABS) / _LOG_GAMMA)) + 1
    return np.where(a < _MIN_ABS, 0, np.sign(x).astype(np.int64) * idx)


def sketch_value(key: int) -> float:
    """A representative value of a sketch bucket (relative error <= ALPHA)."""
    if key == 0:
        return 0.0
    i = abs(key) - 1 + int(math.floor(math.log(_MIN_ABS) / _LOG_GAMMA))
    v = 2 * _GAMMA**i / (_GAMMA + 1)
    return math.copysign(v, key)


@dataclass
class NumericStats:
    count: int = 0
    sum: int = 0  # exact, units of 2**-SCALE_BITS
    sumsq: int = 0
    sketch: Counter = field(default_factory=Counter)  # bucket key -> count

    @classmethod
    def of(cls, x: np.ndarray) -> "NumericStats":
        x = np.asarray(x, dtype=np.float64)
        keys, counts = np.unique(sketch_index(x), return_counts=True)
        return cls(int(x.size), exact_sum(x), exact_sum(x * x),
                   Counter(dict(zip(keys.tolist(), counts.tolist()))))

    def merge(self, other: "NumericStats") -> "NumericStats":
        return NumericStats(self.count + other.count, self.sum + other.sum, self.sumsq + other.sumsq,
                            self.sketch + other.sketch)

    def mean(self) -> float:
        return float(Fraction(self.sum, self.count << SCALE_BITS)) if self.count else 0.0

    def std(self) -> float:
        """Population standard deviation, computed exactly then rounded once."""
        if not self.count:
            return 0.0
        d = 1 << SCALE_BITS
        var = Fraction(self.sumsq, d * self.count) - Fraction(self.sum, d * self.count) ** 2
        return math.sqrt(max(float(var), 0.0))

    def quantiles(self, qs: list[float]) -> list[float]:
        """Approximate quantiles from the sketch (lower rank convention)."""
        if not self.count:
            return []
        keys = sorted(self.sketch)
        cum = np.cumsum([self.sketch[k] for k in keys])
        out = []
        for q in qs:
            rank = min(int(math.floor(q * (self.count - 1))), self.count - 1)
            out.append(sketch_value(keys[int(np.searchsorted(cum, rank + 1))]))
        return out

    def to_dict(self) -> dict:
        return {"count": self.count, "sum": str(self.sum), "sumsq": str(self.sumsq),
                "sketch": {str(k): v for k, v in sorted(self.sketch.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> "NumericStats":
        return cls(d["count"], int(d["sum"]), int(d["sumsq"]),
                   Counter({int(k): v for k, v in d["sketch"].items()}))


def top_k(counts: Counter, k: int) -> list[tuple[str, int]]:
    """The k most frequent values; ties broken by value so the result is deterministic."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
