"""A seeded synthetic CTR stream with drift, delayed labels and the dirt of real logs.

What it models (all seeded by one PCG64 generator; the same config gives the same bytes):

* impressions as a Poisson process; users, items and sites with Zipf popularity; catalogs that
  grow over time (new items and users keep appearing; the newest items are the most popular);
* a ground-truth logistic model: intercept + user, item, site, device, format effects +
  bid and position terms. It drifts gradually (item effects and the intercept move linearly)
  and suddenly (at each drift point site and format effects are redrawn);
* positives get a label after a heavy-tailed delay: a mixture of log-normals, some of which
  land after any sensible attribution window;
* bounded disorder (a fraction of impressions arrive late by up to ``max_disorder_ms``),
  exact duplicates of impressions and labels, and malformed lines of every validation class.

The ground truth (true CTR per impression, drift points, which lines are malformed and why)
is returned beside the stream so tests can check learners and validators against it.

>>> s = generate(GeneratorConfig(events=200, seed=1))
>>> len(s.truth) == 200 and s.lines[0].startswith(b'{"kind":')
True
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from pipelines.events import GENERATOR, Reason

START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


@dataclass(frozen=True)
class DelayComponent:
    weight: float
    median_s: float
    sigma: float  # of the log-delay


@dataclass(frozen=True)
class GeneratorConfig:
    events: int = 100_000
    seed: int = 7
    start_ms: int = START_MS
    rate_per_s: float = 1.0  # mean impressions per second of event time
    n_users: int = 20_000  # at the start; the catalog grows by user_growth x over the stream
    user_growth: float = 0.5
    n_items: int = 500
    item_growth: float = 1.0
    n_sites: int = 50
    zipf_a: float = 1.3
    base_ctr: float = 0.05
    effect_scale: float = 0.6  # std of categorical effects (logit units)
    gradual_drift: float = 0.8  # how far item effects and the intercept move over the stream
    drift_points: tuple[float, ...] = (0.5,)  # fractions of the stream with a sudden shift
    # also shift the feature distribution at each drift point (site popularity reshuffled, the
    # two main device types swapped): covariate drift for the drift monitor; off by default
    covariate_shift: bool = False
    delay: tuple[DelayComponent, ...] = (
        DelayComponent(0.6, 60.0, 1.0),  # most clicks within minutes
        DelayComponent(0.3, 1_200.0, 1.0),  # tens of minutes
        DelayComponent(0.1, 4 * 3_600.0, 0.8),  # hours: mostly after a 1 h window
    )
    out_of_order_rate: float = 0.02
    max_disorder_ms: int = 60_000
    duplicate_rate: float = 0.005
    malformed_rate: float = 0.01  # fraction of all raw lines that are malformed

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        d = dict(d)
        if "delay" in d:
            d["delay"] = tuple(DelayComponent(**c) if isinstance(c, dict) else DelayComponent(*c)
                               for c in d["delay"])
        if "drift_points" in d:
            d["drift_points"] = tuple(d["drift_points"])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def delay_quantile(cfg: GeneratorConfig, q: float) -> float:
    """The q-quantile (seconds) of the configured delay mixture, by bisection on its CDF."""
    from math import erf, log, sqrt

    def cdf(x: float) -> float:
        return sum(c.weight * 0.5 * (1 + erf((log(x) - log(c.median_s)) / (c.sigma * sqrt(2))))
                   for c in cfg.delay) / sum(c.weight for c in cfg.delay)

    lo, hi = 1e-3, 1e8
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return math.sqrt(lo * hi)


# Malformed-line classes the generator plants, with the reason the validator must give.
MALFORMED_CLASSES = (
    Reason.MALFORMED_JSON, Reason.INVALID_UTF8, Reason.OVERSIZE_RECORD, Reason.UNKNOWN_EVENT_KIND,
    Reason.MISSING_FIELD, Reason.WRONG_TYPE, Reason.NON_FINITE, Reason.NEGATIVE_TIMESTAMP,
    Reason.TIMESTAMP_TOO_OLD, Reason.FUTURE_TIMESTAMP, Reason.OVERSIZE_STRING, Reason.EMPTY_EVENT_ID,
    Reason.INVALID_LABEL,
)

TRUTH_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("event_time", pa.int64()), ("true_logit", pa.float64()),
    ("true_ctr", pa.float64()), ("clicked", pa.int8()), ("label_time", pa.int64()),
    ("phase", pa.int32()), ("displaced", pa.bool_()), ("duplicated", pa.bool_()),
    ("item_id", pa.string()), ("user_id", pa.string()),
])


@dataclass
class GeneratedStream:
    lines: list[bytes]  # the raw stream in arrival order, one JSON line each (with "kind")
    truth: pa.Table  # one row per unique impression (TRUTH_SCHEMA)
    malformed: list[tuple[int, str]]  # (line index, expected reason)
    drift_points_ms: list[int]
    counts: dict = field(default_factory=dict)


def _zipf_rank(rng: np.random.Generator, a: float, size: int, n: np.ndarray) -> np.ndarray:
    """0-based Zipf ranks folded into [0, n) (n may differ per draw: growing catalogs)."""
    return (rng.zipf(a, size) - 1) % n


def generate(cfg: GeneratorConfig) -> GeneratedStream:
    """Generate the stream described by ``cfg``. Deterministic in ``cfg``."""
    if cfg.events <= 0:
        raise ValueError("events must be positive")
    rng = np.random.default_rng(cfg.seed)
    n = cfg.events
    t = cfg.start_ms + np.floor(np.cumsum(rng.exponential(1000.0 / cfg.rate_per_s, n))).astype(np.int64)
    span = max(int(t[-1] - cfg.start_ms), 1)
    frac = (t - cfg.start_ms) / span
    drift_ms = [cfg.start_ms + int(round(p * span)) for p in cfg.drift_points]
    phase = np.searchsorted(np.array(drift_ms, dtype=np.int64), t, side="right").astype(np.int32)
    n_phases = len(drift_ms) + 1

    n_users_t = np.maximum(1, (cfg.n_users * (1 + cfg.user_growth * frac)).astype(np.int64))
    n_items_t = np.maximum(1, (cfg.n_items * (1 + cfg.item_growth * frac)).astype(np.int64))
    user = _zipf_rank(rng, cfg.zipf_a, n, n_users_t)
    item = n_items_t - 1 - _zipf_rank(rng, cfg.zipf_a, n, n_items_t)  # newest items most popular
    site = _zipf_rank(rng, cfg.zipf_a, n, np.full(n, cfg.n_sites))
    device = rng.choice(4, n, p=[0.6, 0.3, 0.08, 0.02])
    fmt = rng.integers(0, 3, n)
    bid = np.round(rng.lognormal(0.0, 0.5, n), 4)
    position = (np.minimum(rng.geometric(0.35, n), 10)).astype(np.float64)
    age = np.round(rng.exponential(200.0, n), 1)
    if cfg.covariate_shift:  # its own seeded stream: the draws above and below stay the same
        srng = np.random.default_rng([cfg.seed, 17])
        perms = np.stack([np.arange(cfg.n_sites)] + [srng.permutation(cfg.n_sites) for _ in range(n_phases - 1)])
        site = perms[phase, site]
        device = np.where(phase % 2 == 1, np.array([1, 0, 3, 2])[device], device)

    s = cfg.effect_scale
    max_users = int(cfg.n_users * (1 + cfg.user_growth)) + 1
    max_items = int(cfg.n_items * (1 + cfg.item_growth)) + 1
    w_user = rng.normal(0, s * 0.5, max_users)
    w_item = rng.normal(0, s, max_items)
    w_item_drift = rng.normal(0, 1, max_items)
    w_site = rng.normal(0, s, (n_phases, cfg.n_sites))
    w_fmt = rng.normal(0, s, (n_phases, 3))
    w_dev = np.array([0.0, -0.3, 0.2, -0.6])
    intercept = math.log(cfg.base_ctr / (1 - cfg.base_ctr))
    logit = (intercept - 0.5 * cfg.gradual_drift * frac + w_user[user]
             + w_item[item] + cfg.gradual_drift * frac * w_item_drift[item]
             + w_site[phase, site] + w_fmt[phase, fmt] + w_dev[device]
             + 0.3 * np.log(bid) - 0.15 * (position - 1))
    ctr = 1.0 / (1.0 + np.exp(-logit))
    clicked = rng.random(n) < ctr

    weights = np.array([c.weight for c in cfg.delay])
    comp = rng.choice(len(cfg.delay), n, p=weights / weights.sum())
    med = np.array([c.median_s for c in cfg.delay])[comp]
    sig = np.array([c.sigma for c in cfg.delay])[comp]
    delay_ms = np.maximum(1, np.round(np.exp(np.log(med) + sig * rng.standard_normal(n)) * 1000))
    label_time = np.where(clicked, t + delay_ms.astype(np.int64), -1)

    displaced = rng.random(n) < cfg.out_of_order_rate
    arrival = t + np.where(displaced, rng.integers(1, cfg.max_disorder_ms + 1, n), 0)
    dup_imp = rng.random(n) < cfg.duplicate_rate
    dup_lab = (rng.random(n) < cfg.duplicate_rate) & clicked
    dup_lag = rng.integers(1, 5_000, n)  # a duplicate arrives a little later, within the bound

    ids = [f"imp-{i:09d}" for i in range(n)]
    users = [f"u{u}" for u in user.tolist()]
    items = [f"i{x}" for x in item.tolist()]
    sites = [f"s{x}" for x in site.tolist()]
    devices = ["mobile", "desktop", "tablet", "tv"]
    formats = ["banner", "native", "video"]

    records: list[tuple[int, dict]] = []  # (arrival ms, record); sorted stably below
    tl, dl, fl, bl, pl, al = (t.tolist(), device.tolist(), fmt.tolist(), bid.tolist(),
                              position.tolist(), age.tolist())
    for i in range(n):
        rec = {"kind": "impression", "event_id": ids[i], "event_time": tl[i],
               "user_id": users[i], "item_id": items[i], "site": sites[i],
               "device_type": devices[dl[i]], "ad_format": formats[fl[i]],
               "bid": bl[i], "position": pl[i], "user_age_days": al[i]}
        records.append((int(arrival[i]), rec))
        if dup_imp[i]:
            records.append((min(int(arrival[i] + dup_lag[i]), tl[i] + cfg.max_disorder_ms), rec))
    lt = label_time.tolist()
    for i in np.flatnonzero(clicked).tolist():
        rec = {"kind": "label", "event_id": ids[i], "label_time": lt[i], "label": 1,
               "label_type": "click"}
        records.append((lt[i], rec))
        if dup_lab[i]:
            records.append((lt[i] + min(int(dup_lag[i]), cfg.max_disorder_ms), rec))
    order = sorted(range(len(records)), key=lambda k: records[k][0])  # stable: ties keep order
    good = [records[k][1] for k in order]

    n_good = len(good)
    n_bad = int(round(cfg.malformed_rate * n_good / (1 - cfg.malformed_rate))) if cfg.malformed_rate else 0
    bad_pos = np.sort(rng.choice(n_good + n_bad, n_bad, replace=False)) if n_bad else np.array([], int)
    bad_cls = rng.integers(0, len(MALFORMED_CLASSES), n_bad)
    bad_src = rng.integers(0, n_good, n_bad)
    lines: list[bytes] = []
    malformed: list[tuple[int, str]] = []
    gi = 0
    bad_set = dict(zip(bad_pos.tolist(), range(n_bad)))
    for pos in range(n_good + n_bad):
        if pos in bad_set:
            j = bad_set[pos]
            reason = MALFORMED_CLASSES[bad_cls[j]]
            lines.append(_corrupt(good[bad_src[j]], reason))
            malformed.append((pos, reason.value))
        else:
            lines.append(_dump(good[gi]))
            gi += 1

    truth = pa.table({
        "event_id": ids, "event_time": t, "true_logit": logit, "true_ctr": ctr,
        "clicked": clicked.astype(np.int8),
        "label_time": pa.array(label_time, mask=~clicked),
        "phase": phase, "displaced": displaced, "duplicated": dup_imp,
        "item_id": items, "user_id": users,
    }, schema=TRUTH_SCHEMA)
    counts = {"impressions": n, "labels": int(clicked.sum()), "duplicate_impressions": int(dup_imp.sum()),
              "duplicate_labels": int(dup_lab.sum()), "displaced": int(displaced.sum()),
              "malformed": n_bad, "lines": len(lines)}
    return GeneratedStream(lines=lines, truth=truth, malformed=malformed,
                           drift_points_ms=drift_ms, counts=counts)


def _dump(rec: dict) -> bytes:
    return json.dumps(rec, separators=(",", ":")).encode()


def _corrupt(rec: dict, reason: Reason) -> bytes:
    """A malformed line derived from a good record; the validator must give ``reason``."""
    r = dict(rec)
    is_imp = r["kind"] == "impression"
    tkey = "event_time" if is_imp else "label_time"
    if reason is Reason.MALFORMED_JSON:
        line = _dump(r)
        return line[: len(line) // 2]
    if reason is Reason.INVALID_UTF8:
        return _dump(r).replace(b'"event_id":"', b'"event_id":"\xff\xfe', 1)
    if reason is Reason.OVERSIZE_RECORD:
        r["padding"] = "p" * 70_000
    elif reason is Reason.UNKNOWN_EVENT_KIND:
        r["kind"] = "purchase"
    elif reason is Reason.MISSING_FIELD:
        del r[tkey]
    elif reason is Reason.WRONG_TYPE:
        r[tkey] = "2024-01-01T00:00:00Z"
    elif reason is Reason.NON_FINITE:
        if is_imp:
            return _dump(r).replace(f'"bid":{json.dumps(r["bid"])}'.encode(), b'"bid":NaN', 1)
        r[tkey] = "x"  # labels have no float field: an infinite timestamp
        return _dump(r).replace(b'"x"', b"Infinity", 1)
    elif reason is Reason.NEGATIVE_TIMESTAMP:
        r[tkey] = -1_000
    elif reason is Reason.TIMESTAMP_TOO_OLD:
        r[tkey] = 86_400_000  # 1970-01-02
    elif reason is Reason.FUTURE_TIMESTAMP:
        r[tkey] = 4_102_444_800_000  # 2100-01-01
    elif reason is Reason.OVERSIZE_STRING:
        r["event_id"] = r["event_id"] + "x" * 5_000
    elif reason is Reason.EMPTY_EVENT_ID:
        r["event_id"] = ""
    elif reason is Reason.INVALID_LABEL:
        if is_imp:  # impressions have no label: mark it as a label with a bad value
            r = {"kind": "label", "event_id": r["event_id"], "label_time": r["event_time"],
                 "label": 2, "label_type": "click"}
        else:
            r["label"] = 2
    return _dump(r)
