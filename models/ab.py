"""A/B analysis of served predictions: the hybrid arm against the base-only arm.

The job assigns each unit (the source's first entity field, e.g. a user) to an arm by a hash of
its id (``models.online.arm_of``, ``--hybrid-share``); the base arm is served the base model
alone, the hybrid arm base + delta (unless the guard falls back to base only). Units, not
impressions, are what was randomized, and one unit's impressions share its behaviour, so the
interval of a difference between arms comes from a **unit bootstrap**: whole units are
resampled within each arm (resampling impressions would understate the doubt).

Two comparisons: between the arms (what an A/B test measures; the arms hold different units,
so their populations differ too, and with heavy users that difference can dominate), and within
the hybrid arm the served prediction against the base model's own on the same impressions (the
delta's effect alone; offline, predictions do not change what users do, so the two agree in
expectation).

Engine-free: rows in, figures out (``runners.stream`` reads them from a run's outputs).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> units = np.repeat(np.arange(400), 20).astype(str)
>>> y = (rng.random(8000) < 0.3).astype(float)
>>> arm = np.where(units.astype(int) % 2 == 0, "hybrid", "base")
>>> p = np.where(arm == "hybrid", np.where(y > 0, 0.6, 0.2), 0.3)  # the hybrid arm ranks
>>> d = arm_difference(units, y, p, arm == "hybrid", "logloss", n=100)
>>> d["diff"] < 0 and d["excludes_zero"], d["units"]
(True, [200, 200])
"""
from __future__ import annotations

import numpy as np

from models.metrics import METRICS, summary


class _Units:
    """The rows of each distinct unit (in sorted unit order: deterministic), and draws of whole
    units with replacement as one index array (vectorized: 16k units x 200 resamples)."""

    def __init__(self, units: np.ndarray, rows: np.ndarray | None = None):
        rows = np.arange(len(units)) if rows is None else np.asarray(rows)
        _, inverse = np.unique(np.asarray(units)[rows], return_inverse=True)
        self.rows = rows[np.argsort(inverse, kind="stable")]
        self.lens = np.bincount(inverse) if len(rows) else np.zeros(0, np.int64)
        self.starts = np.cumsum(self.lens) - self.lens

    def __len__(self) -> int:
        return len(self.lens)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        pick = rng.integers(0, len(self), len(self))
        lens = self.lens[pick]
        return self.rows[np.arange(lens.sum()) + np.repeat(self.starts[pick] - (np.cumsum(lens) - lens), lens)]


def _interval(metric: str, point: float, diffs: list[float], level: float, **extra) -> dict:
    """A difference and its percentile interval from bootstrap resamples' differences."""
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2]) if diffs else (np.nan, np.nan)
    return {"metric": metric, "diff": float(point), "low": float(lo), "high": float(hi), "level": level,
            "resamples": len(diffs), **extra, "excludes_zero": bool(diffs) and bool(lo > 0 or hi < 0)}


def arm_difference(units: np.ndarray, y: np.ndarray, p: np.ndarray, in_a: np.ndarray, metric: str,
                   n: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """metric(arm A) - metric(arm B) (A: rows where ``in_a``), with a percentile interval from a
    bootstrap that resamples whole units within each arm. Deterministic in ``seed``."""
    f = METRICS[metric]
    units, y, p, in_a = np.asarray(units), np.asarray(y, np.float64), np.asarray(p, np.float64), np.asarray(in_a, bool)
    arms = [np.flatnonzero(in_a), np.flatnonzero(~in_a)]
    groups = [_Units(units, rows) for rows in arms]
    point = f(y[arms[0]], p[arms[0]]) - f(y[arms[1]], p[arms[1]]) if all(len(r) for r in arms) else float("nan")
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n if all(len(g) for g in groups) else 0):
        a, b = (g.draw(rng) for g in groups)
        d = f(y[a], p[a]) - f(y[b], p[b])
        if np.isfinite(d):
            diffs.append(d)
    return _interval(metric, point, diffs, level, units=[len(g) for g in groups])


def paired_difference(units: np.ndarray, y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, metric: str,
                      n: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """metric(p_a) - metric(p_b) on the same impressions, with a percentile interval from a
    bootstrap over whole units. Deterministic in ``seed``."""
    f = METRICS[metric]
    y, p_a, p_b = np.asarray(y, np.float64), np.asarray(p_a, np.float64), np.asarray(p_b, np.float64)
    groups = _Units(units)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n if len(groups) else 0):
        rows = groups.draw(rng)
        d = f(y[rows], p_a[rows]) - f(y[rows], p_b[rows])
        if np.isfinite(d):
            diffs.append(d)
    point = f(y, p_a) - f(y, p_b) if len(y) else float("nan")
    return _interval(metric, point, diffs, level, units=len(groups))


def analyze(units: np.ndarray, arm: np.ndarray, served: np.ndarray, base_version: np.ndarray, y: np.ndarray,
            p: np.ndarray, base_p: np.ndarray, n: int = 200, seed: int = 0) -> dict:
    """Per arm (and per arm and base version): ``models.metrics.summary`` of the served
    predictions and how many were served hybrid; hybrid arm - base arm per metric with its unit
    bootstrap interval (``arm_difference``: what an A/B test measures, the arms' different
    units included); and within the hybrid arm, served - base only (``base_p``, the base
    model's own prediction) on the same impressions (``paired_difference``: the delta's effect,
    without the arms' population difference)."""
    arm, served, base_version = np.asarray(arm), np.asarray(served), np.asarray(base_version)
    y, p, base_p = np.asarray(y, np.float64), np.asarray(p, np.float64), np.asarray(base_p, np.float64)
    out: dict = {"arms": {}, "by_base_version": {}, "hybrid_minus_base": {}, "hybrid_arm_served_minus_base_only": {}}
    for a in sorted(set(arm.tolist())):
        rows = arm == a
        out["arms"][a] = {**summary(y[rows], p[rows]), "units": int(len(np.unique(np.asarray(units)[rows]))),
                          "served_hybrid": int((served[rows] == "hybrid").sum())}
    for v in sorted(set(base_version.tolist())):
        out["by_base_version"][v] = {a: summary(y[(arm == a) & (base_version == v)], p[(arm == a) & (base_version == v)])
                                     for a in out["arms"] if ((arm == a) & (base_version == v)).any()}
    if {"hybrid", "base"} <= set(out["arms"]):
        for metric in METRICS:
            out["hybrid_minus_base"][metric] = arm_difference(units, y, p, arm == "hybrid", metric, n=n, seed=seed)
    h = arm == "hybrid"
    if h.any():
        for metric in METRICS:
            out["hybrid_arm_served_minus_base_only"][metric] = paired_difference(
                np.asarray(units)[h], y[h], p[h], base_p[h], metric, n=n, seed=seed)
    return out
