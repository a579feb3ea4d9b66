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

# upper bounds of the label-delay buckets (ms), the last bucket is open
DELAY_BUCKETS_MS = {"le_1m": 60_000, "le_5m": 300_000, "le_15m": 900_000, "le_1h": 3_600_000,
                    "le_6h": 21_600_000, "le_1d": 86_400_000}


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
        self.p = np.concatenate([self.p, p])[-self.size:]
        self.y = np.concatenate([self.y, y])[-self.size:]
        d = d[d >= 0]
        self.delay_counts += np.bincount(np.searchsorted(list(DELAY_BUCKETS_MS.values()), d, side="left"),
                                         minlength=len(self.delay_counts))
        self.seen += len(p)

    @property
    def n(self) -> int:
        return len(self.y)

    def logloss(self) -> float | None:
        return metrics.logloss(self.y, self.p) if self.n else None

    def auc(self) -> float | None:
        return metrics.auc(self.y, self.p) if 0 < self.y.sum() < self.n else None

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
