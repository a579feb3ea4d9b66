"""Feature drift of serving traffic against the training reference, as the job serves.

The reference is the distribution of the *served features* over the span the transform
artifact was fitted on (``TransformArtifact.event_time_range``: the data its statistics come
from, and the features every base model is trained on are this artifact's). The monitor
collects it from the impressions it scores in that span, then compares a sliding window of the
last ``window`` impressions with it, every ``step`` impressions: per feature (sparse column),
population stability index and Jensen-Shannon divergence (``models.drift``). A feature whose
PSI rises above ``psi_alert`` raises an alert (once, until it falls below half of that again).

When a base model goes live whose manifest carries the distribution of its own training span
(``reference_counts``, written by the TFX retrain), the monitor compares against that instead
(``use_reference``): drift is then measured against what the served model learned from, and an
alert raised against an older reference clears once the new one explains the traffic.

Features are compared as served: a one-hot column by its slot (hashed bucket, time or numeric
bucket), a numeric column by its scaled value in fixed bins, soft: a value between two bins'
centers counts in both, split linearly by its distance to each (``soft_bin_keys``), so a value
near an edge does not jump from one bin to the other (a heavy hitter whose value wobbles across
an edge moved a tenth of a window's mass with hard bins and raised an alert). The reference keeps its ``top``
most frequent bins per column with at least ``min_bin_count`` impressions (the rest: "other").
Calendar features are excluded by default. A feature computed over a window of past events (the
windowed aggregates: ``warmup`` maps each to its window) is compared only against a reference
whose impressions all came a full window after the monitor's first impression: the job's counts
start empty, so a reference span that starts with the job (the artifact's fit span, usually) sees
them filling and is biased low. Until such a reference arrives (a base model trained on a later
span) the feature is ``deferred``: kept in the window, not compared. Engine-free and
deterministic: the result depends only on the impressions, in scoring order.

>>> import numpy as np
>>> m = FeatureDrift(DriftConfig(window=100, step=50, min_reference=100), ["site"], (0, 999))
>>> a = np.array([[1], [2]] * 50)
>>> m.observe(np.arange(100), a, np.ones((100, 1)))  # the reference span
[]
>>> m.observe(np.arange(1000, 1100), a, np.ones((100, 1)))  # same distribution
[]
>>> [x["feature"] for x in m.observe(np.arange(1100, 1200), np.full((100, 1), 7), np.ones((100, 1)))]
['site']
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from models.drift import jsd, psi

VALUE_EDGES = np.array([-3.0, -2.0, -1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0])
OTHER = -(2**62)
_LOW, _STRIDE = -(2**31), 2**32  # bin keys (slots, value bins) lie in [_LOW, _LOW + _STRIDE)
REFERENCE_KEEP = 200  # bins per feature a model's reference keeps (the monitor uses its ``top``)


@dataclass(frozen=True)
class DriftConfig:
    enabled: bool = True
    window: int = 5_000  # impressions in the serving window
    step: int = 1_000  # compare every this many impressions
    psi_alert: float = 0.25  # the usual "large shift"
    top: int = 50  # reference bins per feature, plus "other"
    min_bin_count: int = 10  # a reference bin needs this many impressions (rarer: "other"), or
    # the PSI of a high-cardinality feature is mostly the noise of its rare bins
    min_reference: int = 1_000  # fewer reference impressions: no comparisons
    retrain: bool = False  # an alert also starts an early retrain (a job that retrains itself)
    # calendar features differ from any short reference by construction
    exclude: tuple = ("hour_of_day", "day_of_week")

    def __post_init__(self) -> None:
        if self.window < 1 or self.step < 1 or self.psi_alert <= 0:
            raise ValueError("drift: window and step must be >= 1 and psi_alert > 0")
        object.__setattr__(self, "exclude", tuple(self.exclude))

    @classmethod
    def from_dict(cls, d: "dict | DriftConfig") -> "DriftConfig":
        return d if isinstance(d, DriftConfig) else cls(**d)


# each value bin's center (the two outer bins': half a neighbour's width beyond the last edge)
_CENTERS = np.concatenate([[VALUE_EDGES[0] - (VALUE_EDGES[1] - VALUE_EDGES[0]) / 2],
                           (VALUE_EDGES[:-1] + VALUE_EDGES[1:]) / 2,
                           [VALUE_EDGES[-1] + (VALUE_EDGES[-1] - VALUE_EDGES[-2]) / 2]])
QUANTA = 256  # a soft weight is a multiple of 1/QUANTA: sums of weights are exact in any order


def soft_bin_keys(indices: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each served feature's bin key and soft weight: ``(key, q)``: weight ``1 - q / QUANTA`` on
    ``key`` and ``q / QUANTA`` on ``key - 1`` (the next value bin). One-hot features (value 1):
    their slot, q = 0. Scaled numeric values: a negative value-bin key; a value between two
    bins' centers is split between them linearly, beyond the outer centers it is all in the
    outer bin.

    >>> key, q = soft_bin_keys(np.zeros((1, 3), np.int64), np.array([[1.0, 0.125, 2.0]]))
    >>> key.tolist(), q.tolist()  # 0.125: bin [0, 0.25)'s center; 2.0: 1/3 from 1.75 to 2.5
    ([[0, -8, -12]], [[0, 0, 85]])
    """
    v = np.asarray(values, np.float64)
    j = np.clip(np.searchsorted(_CENTERS, v, side="right") - 1, -1, len(_CENTERS) - 1)  # center at or below
    lo, hi = np.maximum(j, 0), np.minimum(j + 1, len(_CENTERS) - 1)
    width = _CENTERS[hi] - _CENTERS[lo]
    t = np.where(width > 0, (v - _CENTERS[lo]) / np.where(width > 0, width, 1.0), 0.0)
    q = np.rint(np.nan_to_num(np.clip(t, 0.0, 1.0)) * QUANTA).astype(np.uint16)
    onehot = v == 1.0
    return (np.where(onehot, np.asarray(indices, np.int64), -1 - lo).astype(np.int64),
            np.where(onehot, 0, q).astype(np.uint16))


def _weighted(keys: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct bin keys and their summed soft weights (``soft_bin_keys`` of one column)."""
    w = q.astype(np.float64) / QUANTA
    both, wts = np.concatenate([keys, keys - 1]), np.concatenate([1.0 - w, w])
    u, inv = np.unique(both[wts > 0], return_inverse=True)
    return u, np.bincount(inv, weights=wts[wts > 0], minlength=len(u))


def _count(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def reference_counts(indices: np.ndarray, values: np.ndarray, names: list[str], keep: int = REFERENCE_KEEP) -> dict:
    """The served-feature distribution of some impressions (a base model's training span), as
    its manifest keeps it for ``FeatureDrift.use_reference``: per feature the ``keep`` most
    frequent bin keys and their counts (the rest is "other"), and the number of impressions.
    Small (a few KB) and JSON: it travels in the model's manifest.

    >>> r = reference_counts(np.array([[3], [3], [5]]), np.ones((3, 1)), ["site"])
    >>> r["n"], r["features"]["site"]
    (3, {'keys': [3, 5], 'counts': [2, 1]})
    """
    keys, q = soft_bin_keys(indices, values)
    keys, q = keys.reshape(len(indices), len(names)), q.reshape(len(indices), len(names))
    features = {}
    for j, name in enumerate(names):
        u, c = _weighted(keys[:, j], q[:, j])
        order = np.lexsort((u, -c))[:keep]  # by count, then key: the order ``_freeze`` ranks in
        features[name] = {"keys": u[order].tolist(), "counts": [_count(x) for x in c[order]]}
    return {"n": int(keys.shape[0]), "features": features}


@dataclass
class FeatureDrift:
    cfg: DriftConfig
    names: list[str]
    span: tuple[int, int]  # reference: impressions with event time in [lo, hi]
    ref_counts: list[Counter] = field(default_factory=list)
    ref_n: int = 0
    bins: list[np.ndarray] | None = None  # per column: the reference's top keys (frozen)
    ref_hist: list[np.ndarray] | None = None
    ring: np.ndarray | None = None  # [window, k] keys of the last impressions
    ring_q: np.ndarray | None = None  # [window, k] their soft weights (``soft_bin_keys``)
    filled: int = 0
    at: int = 0  # next ring row
    since: int = 0  # impressions since the last comparison
    alerting: set = field(default_factory=set)
    last: dict = field(default_factory=dict)  # feature -> {"psi", "jsd"} of the last comparison
    seen: int = 0
    reference: str = "artifact"  # what the window is compared with: "artifact" or "base <version>"

    cols: list[int] = field(default_factory=list)  # the monitored sparse columns
    warmup: dict = field(default_factory=dict)  # feature -> ms of past events it counts (aggregates)
    first_at: int | None = None  # event time of the first impression observed
    deferred: set = field(default_factory=set)  # warm-up features the current reference cannot judge

    def __post_init__(self) -> None:
        if not self.cols:
            self.cols = [j for j, n in enumerate(self.names) if n not in self.cfg.exclude]
            self.names = [self.names[j] for j in self.cols]
        if not self.ref_counts:
            self.ref_counts = [Counter() for _ in self.names]

    def _freeze(self, counts: list[Counter], n: int) -> None:
        """Reference bins and histograms from per-feature counts over ``n`` impressions (a
        counter may hold only the most frequent keys: the rest of ``n`` is "other")."""
        self.bins, self.ref_hist = [], []
        for c in counts:
            keys = np.array([k for k in sorted(c, key=lambda k: (-c[k], k))[: self.cfg.top]
                             if c[k] >= self.cfg.min_bin_count], np.int64)
            self.bins.append(keys)
            self.ref_hist.append(self._hist(keys, c, n))
        self.ref_counts = []
        if self.ring is None:
            self.ring = np.zeros((self.cfg.window, len(self.names)), np.int64)
            self.ring_q = np.zeros((self.cfg.window, len(self.names)), np.uint16)
        self.__dict__.pop("_lookup", None)  # the bins changed: so do the ring's bin ids
        self.__dict__.pop("_ring_ids", None)

    @staticmethod
    def _hist(keys: np.ndarray, counts: Counter, n: int) -> np.ndarray:
        top = np.array([counts.get(int(k), 0) for k in keys], np.float64)
        h = np.append(top, n - top.sum())
        return h / h.sum() if h.sum() else h

    def _deferred(self, start: int | None) -> set:
        """The warm-up features a reference whose impressions start at ``start`` cannot judge:
        their windows were still filling then (``start`` earlier than a window after the first
        impression) or it is unknown."""
        return {n for n, w in self.warmup.items() if n in self.names
                and (start is None or self.first_at is None or start < self.first_at + w)}

    def use_reference(self, ref: dict, version: str) -> bool:
        """Compare from now on with ``ref`` (``reference_counts`` of base model ``version``'s
        training span), not with the current reference: drift against the data the served
        model learned from. The window of served impressions stays (judged against the new
        reference at the next impression, when it is full), and so do alerts: one clears when its feature's PSI
        falls below half the threshold against the new reference. Also starts a monitor the
        artifact's span left silent (too little of it). Returns False, changing nothing, for a
        reference of fewer than ``min_reference`` impressions or without a monitored feature.
        A warm-up feature is judged against it only if the reference's ``train_range`` starts a
        full window after the first impression (else, or if it lacks the feature: ``deferred``).

        >>> m = FeatureDrift(DriftConfig(window=4, step=4, min_reference=2, min_bin_count=1), ["site"], (0, 9))
        >>> m.observe(np.arange(10), np.ones((10, 1)), np.ones((10, 1)))  # the artifact's span
        []
        >>> [a["alert"] for a in m.observe(np.arange(10, 14), np.full((4, 1), 2), np.ones((4, 1)))]
        ['feature_drift']
        >>> m.use_reference(reference_counts(np.full((8, 1), 2), np.ones((8, 1)), ["site"]), "v2")
        True
        >>> [(a["alert"], a["reference"]) for a in m.observe(np.arange(14, 18), np.full((4, 1), 2), np.ones((4, 1)))]
        [('feature_drift_cleared', 'base v2')]
        """
        feats, n = ref.get("features") or {}, int(ref.get("n") or 0)
        if n < self.cfg.min_reference or any(x not in feats for x in self.names if x not in self.warmup):
            return False
        self._freeze([Counter(dict(zip(feats[x]["keys"], feats[x]["counts"]))) if x in feats else Counter()
                      for x in self.names], n)
        self.deferred = self._deferred((ref.get("train_range") or [None])[0]) | {x for x in self.names if x not in feats}
        if not self.cfg.enabled:  # silenced for want of an artifact reference; the caller
            self.cfg = replace(self.cfg, enabled=True)  # only passes one if monitoring is on
        self.ref_n, self.reference, self.seen = n, f"base {version}", 0
        self.since = self.cfg.step  # judge the window against it at the next impression
        return True

    def __getstate__(self) -> dict:
        # the lookup and the ring's bin ids are derived: not in checkpoints (rebuilt on first use)
        return {k: v for k, v in self.__dict__.items() if k not in ("_lookup", "_ring_ids")}

    def __setstate__(self, state: dict) -> None:
        # a checkpoint of a build before warm-up features: none (its job excluded the aggregates);
        # before soft bins: its ring's keys whole (weight 0 on the next bin)
        self.__dict__.update({"warmup": {}, "first_at": None, "deferred": set(), "ring_q": None}, **state)
        if self.ring is not None and self.ring_q is None:
            self.ring_q = np.zeros(self.ring.shape, np.uint16)

    def _bin_ids(self, keys: np.ndarray) -> np.ndarray:
        """Bin keys [rows, k] -> each one's position in its column's reference bins (the
        column's bin count for "other"): one search over every column's bins at once (each
        column's keys sorted and offset by column), done once per row as it enters the ring,
        not at every comparison for the whole window."""
        lookup = self.__dict__.get("_lookup")
        if lookup is None:
            orders = [np.argsort(b) for b in self.bins]
            lookup = self._lookup = (
                np.concatenate([j * _STRIDE + (b[o] - _LOW) for j, (b, o) in enumerate(zip(self.bins, orders))]
                               + [np.empty(0, np.int64)]),
                np.concatenate(orders + [np.empty(0, np.int64)]), np.array([len(b) for b in self.bins], np.int64))
        comb, pos, n_bins = lookup
        if not len(comb):
            return np.broadcast_to(n_bins, keys.shape).copy()
        q = np.arange(keys.shape[1], dtype=np.int64) * _STRIDE + (keys - _LOW)
        at = np.minimum(np.searchsorted(comb, q), len(comb) - 1)
        hit = (comb[at] == q) & (keys >= _LOW) & (keys < _LOW + _STRIDE)
        return np.where(hit, pos[at], n_bins)

    def _both_ids(self, keys: np.ndarray, q: np.ndarray) -> np.ndarray:
        """``_bin_ids`` of keys and of their soft weights' next bins: [2, rows, k]."""
        return np.stack([self._bin_ids(keys), self._bin_ids(np.where(q > 0, keys - 1, keys))])

    def _ids(self) -> np.ndarray:
        """The ring's bin ids (``_both_ids`` of ``ring``), kept as rows are written."""
        if self.__dict__.get("_ring_ids") is None:
            self._ring_ids = self._both_ids(self.ring, self.ring_q)
        return self._ring_ids

    def observe(self, event_time: np.ndarray, indices: np.ndarray, values: np.ndarray) -> list[dict]:
        """Impressions just scored (in scoring order); returns the alerts they raise."""
        if self.first_at is None and len(event_time):
            self.first_at = int(np.min(event_time))
        if not self.cfg.enabled or len(event_time) == 0:
            return []
        keys, q = soft_bin_keys(indices, values)
        keys, q = keys[:, self.cols], q[:, self.cols]
        et = np.asarray(event_time, np.int64)
        lo, hi = self.span
        if self.bins is None:
            ref = (et >= lo) & (et <= hi)
            for j, c in enumerate(self.ref_counts):
                c.update(dict(zip(*(a.tolist() for a in _weighted(keys[ref, j], q[ref, j])))))
            self.ref_n += int(ref.sum())
            if not (et > hi).any():
                return []
            if self.ref_n < self.cfg.min_reference:  # too little reference: stay silent
                self.cfg = DriftConfig(**{**asdict(self.cfg), "enabled": False})
                return []
            self._freeze(self.ref_counts, self.ref_n)
            self.deferred = self._deferred(lo)
            keys, q = keys[et > hi], q[et > hi]
            et = et[et > hi]
        # row by row, a comparison after each row that finds the window full and ``step`` rows
        # since the last one; written as runs of rows up to the next comparison (one ring write
        # per run, not per row: the same ring, the same comparisons)
        alerts = []
        w, i, n = self.cfg.window, 0, len(et)
        ring_ids, ids = self._ids(), self._both_ids(keys, q)
        while i < n:
            due = max(w - self.filled, self.cfg.step - self.since, 1)  # rows to the next comparison
            take = min(due, n - i)
            pos = (self.at + np.arange(take)) % w
            self.ring[pos[-w:]] = keys[i:i + take][-w:]  # only the last w rows stay in the ring
            self.ring_q[pos[-w:]] = q[i:i + take][-w:]
            ring_ids[:, pos[-w:]] = ids[:, i:i + take][:, -w:]
            self.at = (self.at + take) % w
            self.filled = min(self.filled + take, w)
            self.since += take
            self.seen += take
            i += take
            if take == due:
                self.since = 0
                alerts += self._compare(int(et[i - 1]))
        return alerts

    def _compare(self, t: int) -> list[dict]:
        out = []
        ids = self._ids()
        for j, name in enumerate(self.names):
            if name in self.deferred:
                self.last.pop(name, None)
                continue
            keys, ref = self.bins[j], self.ref_hist[j]
            w = self.ring_q[:, j] / QUANTA
            counts = (np.bincount(ids[0, :, j], weights=1.0 - w, minlength=len(keys) + 1)
                      + np.bincount(ids[1, :, j], weights=w, minlength=len(keys) + 1))
            cur = counts / counts.sum()
            p, d = psi(ref, cur), jsd(ref, cur)
            self.last[name] = {"psi": p, "jsd": d}
            if p > self.cfg.psi_alert and name not in self.alerting:
                self.alerting.add(name)
                out.append({"alert": "feature_drift", "at": t, "feature": name, "psi": p, "jsd": d,
                            "threshold": self.cfg.psi_alert, "window": self.cfg.window,
                            "impressions_since_reference": self.seen, "reference_n": self.ref_n,
                            "reference": self.reference})
            elif p < self.cfg.psi_alert / 2 and name in self.alerting:
                self.alerting.discard(name)
                out.append({"alert": "feature_drift_cleared", "at": t, "feature": name, "psi": p, "jsd": d,
                            "threshold": self.cfg.psi_alert, "window": self.cfg.window,
                            "impressions_since_reference": self.seen, "reference_n": self.ref_n,
                            "reference": self.reference})
        return out

    def metrics(self) -> dict:
        return {"features": self.last, "alerting": sorted(self.alerting), "reference_n": self.ref_n,
                "reference": self.reference, "deferred": sorted(self.deferred)}
