"""Offline metrics of progressive predictions: log loss, AUC, normalized entropy, calibration,
per time window, and paired block-bootstrap confidence intervals for the difference between
two strategies scored on the same impressions.

Vectorized numpy (a bootstrap recomputes them hundreds of times); equal to scikit-learn's
``log_loss`` / ``roc_auc_score`` (tests/test_metrics.py).

>>> import numpy as np
>>> y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
>>> round(auc(y, p), 4), round(logloss(y, p), 4), round(calibration(y, p), 4)
(0.75, 0.4723, 0.825)
"""
from __future__ import annotations

import numpy as np

EPS = 1e-15


def logloss(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    y = np.asarray(y, np.float64)
    return float(np.average(-(y * np.log(p) + (1 - y) * np.log1p(-p)), weights=w))


def auc(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """Area under the ROC curve (ties count one half); NaN when one class is absent."""
    y = np.asarray(y) > 0.5
    w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)
    pos, neg = w[y].sum(), w[~y].sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(p)  # any order within ties: they are summed per distinct score
    return auc_sorted(np.asarray(p)[order], y[order], w[order], pos, neg)


def auc_sorted(ps: np.ndarray, ys: np.ndarray, ws: np.ndarray, pos: float, neg: float) -> float:
    """``auc`` of scores sorted ascending (any order within ties), their labels (bool) and
    weights, with the positives' and negatives' total weights (both > 0)."""
    # per distinct score (runs of the sorted scores: no second sort, as np.unique would do):
    # weight of negatives strictly below + half of the tied negatives
    first = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    neg_w = np.where(ys, 0.0, ws)
    neg_group = np.add.reduceat(neg_w, first)
    neg_below = np.cumsum(neg_group) - neg_group
    pos_group = np.add.reduceat(np.where(ys, ws, 0.0), first)
    return float(np.sum(pos_group * (neg_below + 0.5 * neg_group)) / (pos * neg))


def normalized_entropy(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """Log loss / the entropy of the observed rate (He et al. 2014): < 1 beats the base rate."""
    rate = float(np.average(np.asarray(y, np.float64), weights=w))
    if rate <= 0 or rate >= 1:
        return float("nan")
    h = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    return logloss(y, p, w) / h


def calibration(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """Mean predicted / observed rate (1 is calibrated); NaN without positives."""
    rate = float(np.average(np.asarray(y, np.float64), weights=w))
    return float(np.average(p, weights=w)) / rate if rate > 0 else float("nan")


METRICS = {"logloss": logloss, "auc": auc, "ne": normalized_entropy, "calibration": calibration}


def summary(y: np.ndarray, p: np.ndarray) -> dict:
    return {"n": int(len(y)), "positives": int(np.sum(np.asarray(y) > 0.5)), "rate": float(np.mean(y)) if len(y) else None,
            **{name: f(y, p) for name, f in METRICS.items()}}


def by_window(t: np.ndarray, y: np.ndarray, p: np.ndarray, window_ms: int) -> list[dict]:
    """``summary`` per event-time window [k * window_ms, (k + 1) * window_ms) that has rows."""
    k = np.asarray(t) // window_ms
    return [{"start": int(b * window_ms), **summary(y[k == b], p[k == b])} for b in np.unique(k)]


def paired_bootstrap(t: np.ndarray, y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, metric: str,
                     block_ms: int, n: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """metric(a) - metric(b) on the same impressions, with a percentile interval from a block
    bootstrap: whole ``block_ms`` windows of event time are resampled (consecutive impressions
    are not independent). Deterministic in ``seed``."""
    f = METRICS[metric]
    blocks = np.asarray(t) // block_ms
    ids, inverse = np.unique(blocks, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(ids))]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(ids), len(ids))])
        d = f(y[rows], p_a[rows]) - f(y[rows], p_b[rows])
        if np.isfinite(d):
            diffs.append(d)
    lo, hi = (np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2]) if diffs else (np.nan, np.nan))
    return {"metric": metric, "diff": f(y, p_a) - f(y, p_b), "low": float(lo), "high": float(hi),
            "level": level, "resamples": len(diffs), "blocks": len(ids),
            "excludes_zero": bool(diffs) and (lo > 0 or hi < 0)}
