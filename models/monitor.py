"""Progressive quality over a sliding window, and the label-delay histogram.

Each example is scored by the online model *before* it is learned (``p_before``), so the
logloss and AUC of the last ``size`` examples are honest progressive-validation figures of
what the model serves now. Engine-free: the Flink learner feeds it per tick and exports it
as Flink metrics and a ``metrics`` output.

>>> m = WindowMetrics(size=4)
>>> m.update([0.9, 0.2, 0.7, 0.4, 0.6], [1, 0, 1, 0, 0], [60_000, -1, 7_200_000, -1, -1])
>>> m.n, m.seen  # the window keeps the last 4
(4, 5)
>>> round(m.auc(), 3), m.delay_histogram()["le_1m"], m.delay_histogram()["le_6h"]
(1.0, 1, 1)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models import metrics
from models.ftrl_kernel import njit  # numba, with the Flink worker's print workaround

# upper bounds of the label-delay buckets (ms), the last bucket is open
DELAY_BUCKETS_MS = {"le_1m": 60_000, "le_5m": 300_000, "le_15m": 900_000, "le_1h": 3_600_000,
                    "le_6h": 21_600_000, "le_1d": 86_400_000}


def _losses(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example log losses, as ``metrics.logloss`` computes them before averaging."""
    q = np.clip(np.asarray(p, np.float64), metrics.EPS, 1 - metrics.EPS)
    t = np.asarray(y, np.float64)
    return -(t * np.log(q) + (1 - t) * np.log1p(-q))


@njit(cache=True)
def _merge(ps, ys, out_p, out_y, in_p, in_y):  # pragma: no cover - compiled
    """The sorted (score, label) multiset ``ps``/``ys`` without ``out`` and with ``in`` (both
    sorted by score, then label; every ``out`` is in it): one merge pass."""
    n, m, k = len(ps), len(out_p), len(in_p)
    rp, ry = np.empty(n - m + k, ps.dtype), np.empty(n - m + k, ys.dtype)
    i = o = j = r = 0
    while i < n or j < k:
        if i < n and o < m and ps[i] == out_p[o] and ys[i] == out_y[o]:
            i += 1
            o += 1
        elif j < k and (i == n or in_p[j] < ps[i] or (in_p[j] == ps[i] and in_y[j] <= ys[i])):
            rp[r], ry[r] = in_p[j], in_y[j]
            j += 1
            r += 1
        else:
            rp[r], ry[r] = ps[i], ys[i]
            i += 1
            r += 1
    if o != m or r != len(rp):
        raise ValueError("window: a leaving example is not in the sorted window")
    return rp, ry


@njit(cache=True)
def _auc_unit(ps, ys):  # pragma: no cover - compiled
    """``metrics.auc_sorted`` with unit weights over scores sorted ascending: per run of equal
    scores, its positives x (negatives below + half its negatives). Every term and partial sum
    is a multiple of 0.5 far below 2**53, so the sum is exact in any order: bit for bit the
    same value."""
    acc, below, pos, i, n = 0.0, 0.0, 0.0, 0, len(ps)
    while i < n:
        g_pos = g_neg = 0.0
        j = i
        while j < n and ps[j] == ps[i]:
            if ys[j] > 0:
                g_pos += 1.0
            else:
                g_neg += 1.0
            j += 1
        acc += g_pos * (below + 0.5 * g_neg)
        below += g_neg
        pos += g_pos
        i = j
    return acc / (pos * below)


def _by_score(p: np.ndarray, y: np.ndarray):
    order = np.lexsort((y, p))
    return np.ascontiguousarray(p[order], np.float64), np.ascontiguousarray(y[order])


def _shift(cache, out_p, out_y, in_p, in_y):
    """The sorted window (by score, then label) and its losses with the examples ``out``
    (the oldest, in window order) removed and ``in`` added (appended to the losses); one
    compiled merge (a tick moves a few dozen of the window's examples). Equal (score, label)
    pairs are interchangeable, so the result is the window's unique sorted order."""
    ps, ys, loss = cache
    op, oy = _by_score(np.asarray(out_p, np.float64), np.asarray(out_y, ys.dtype))
    ip, iy = _by_score(np.asarray(in_p, np.float64), np.asarray(in_y, ys.dtype))
    ps, ys = _merge(ps, ys, op, oy, ip, iy)
    return ps, ys, np.concatenate([loss[len(out_p):], _losses(in_p, in_y)])


@dataclass
class WindowMetrics:
    size: int = 10_000
    p: np.ndarray = field(default_factory=lambda: np.empty(0))
    y: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    delay_counts: np.ndarray = field(default_factory=lambda: np.zeros(len(DELAY_BUCKETS_MS) + 1, np.int64))
    seen: int = 0

    def update(self, p, y, delay_ms) -> None:
        """Add examples in learning order: their pre-update predictions, labels, and label
        delays (negative: no label, e.g. a negative example)."""
        p, y, d = np.asarray(p, float), np.asarray(y, np.int8), np.asarray(delay_ms, np.int64)
        drop = max(0, len(self.p) + len(p) - self.size)  # the oldest examples leaving the window
        cache = self.__dict__.get("_cache")
        if cache is not None and drop <= len(self.p) and drop + len(p) <= max(1, self.size // 4):
            self._cache = _shift(cache, self.p[:drop], self.y[:drop], p, y)
        else:
            self._cache = None  # rebuilt on the next read
        self.p = np.concatenate([self.p, p])[-self.size:]
        self.y = np.concatenate([self.y, y])[-self.size:]
        d = d[d >= 0]
        self.delay_counts += np.bincount(np.searchsorted(list(DELAY_BUCKETS_MS.values()), d, side="left"),
                                         minlength=len(self.delay_counts))
        self.seen += len(p)

    @property
    def n(self) -> int:
        return len(self.y)

    def _sorted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores sorted, their labels, the window's per-example log losses in window order),
        kept across updates (``_shift``): a tick changes a few dozen of the 10,000 examples, so
        the Learner's per-tick report neither re-sorts nor recomputes every loss. Not pickled
        (a checkpoint keeps p and y only; rebuilt on first read)."""
        if self.__dict__.get("_cache") is None:
            order = np.lexsort((self.y, self.p))
            self._cache = (self.p[order], self.y[order], _losses(self.p, self.y))
        return self._cache

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def logloss(self) -> float | None:
        """``metrics.logloss`` of the window (the same losses, summed the same way)."""
        return float(np.mean(self._sorted()[2])) if self.n else None

    def auc(self) -> float | None:
        """``metrics.auc`` of the window, from the kept sorted scores: tie groups of unit
        weights sum exactly, so the value is bit for bit the same."""
        if not 0 < self.y.sum() < self.n:
            return None
        ps, ys, _ = self._sorted()
        return float(_auc_unit(ps, ys))  # = metrics.auc_sorted(ps, ys > 0, ones, pos, neg)

    def normalized_entropy(self) -> float | None:
        """Logloss over the entropy of the window's positive rate (He et al. 2014): 1.0 is no
        better than predicting the rate; unlike logloss it does not move with the rate itself."""
        return metrics.normalized_entropy(self.y, self.p) if 0 < self.y.sum() < self.n else None

    def delay_histogram(self) -> dict[str, int]:
        return dict(zip([*DELAY_BUCKETS_MS, "gt_1d"], self.delay_counts.tolist()))

    def as_dict(self) -> dict:
        return {"window_n": self.n, "window_logloss": self.logloss(), "window_auc": self.auc(),
                "window_positive_rate": float(self.y.mean()) if self.n else None,
                "examples_seen": self.seen, "label_delay_hist": self.delay_histogram()}
