"""Progressive validation: replay a log's joined examples in event time through the online layer
the streaming job runs (``models.online.OnlineLayer``), scoring every impression before any
label that reaches the model after it.

The replay keeps the job's tick semantics exactly (``runners.learner``): time is cut into
ticks of ``tick_ms``; in each tick, first the base models due are swapped in (with the rebase),
then the tick's impressions are scored with the weights learned so far, then the examples
resolved in the tick are learned, in learning order. An impression at ``event_time`` is in
tick ``event_time // tick_ms``; an example resolved at ``resolution_time`` (its label's
arrival, or its window's close for a negative) in tick ``(resolution_time + 1) // tick_ms``:
a label is never used before it arrived, nor for its own impression. ``tick_ms=1`` is
per-event progressive validation.

A ``Strategy`` says which base models serve when (``BaseSwap``: a model, the event time it
goes live, its training cutoff) and whether the online delta is served: a static base, a
periodic base, online only (no base models: the job's constant prior underneath) and the
hybrid are all this one loop.

>>> from models.ftrl import FTRLParams
>>> rows = [{"event_id": "a", "event_time": 0, "resolution_time": 5, "label": 1, "label_time": 5,
...          "kind": "label", "weight": 1.0, "features": '{"indices": [1], "values": [1.0]}'},
...         {"event_id": "b", "event_time": 7, "resolution_time": 600, "label": 0, "label_time": None,
...          "kind": "expired", "weight": 1.0, "features": '{"indices": [1], "values": [1.0]}'}]
>>> online = Strategy("online", online=OnlineConfig(ftrl=FTRLParams(l1=0.0)))
>>> out = replay(Examples.from_rows(rows), online, dimension=4, window_ms=600, tick_ms=1)
>>> out.event_id, out.delta_version.tolist(), out.label.astype(int).tolist()
(['a', 'b'], [0, 1], [1, 0])
>>> bool(out.p[1] > out.p[0])  # b was scored after a's positive label arrived (t=5 < 7)
True
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np

from models.online import OnlineConfig, OnlineLayer


@dataclass(frozen=True)
class BaseSwap:
    """A base model serving from ``live_at`` (event time); the rebase re-learns the examples
    with event time >= ``train_end`` (those the model did not train on)."""

    live_at: int
    version: str
    model: object  # models.base.BaseModel
    train_end: int


@dataclass(frozen=True)
class Strategy:
    name: str
    swaps: tuple[BaseSwap, ...] = ()
    serve_delta: bool = True  # False: base only (the delta still learns, as in the job)
    online: OnlineConfig = field(default_factory=OnlineConfig)


@dataclass
class Examples:
    """Joined examples in learning order, as columns (the job's example records)."""

    event_id: list[str]
    event_time: np.ndarray
    resolution_time: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    correction: np.ndarray  # bool: a late label's correction (not an impression of its own)
    indices: np.ndarray  # [n, k]
    values: np.ndarray  # [n, k]

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "Examples":
        feats = [json.loads(r["features"]) for r in rows]
        return cls(event_id=[r["event_id"] for r in rows],
                   event_time=np.array([r["event_time"] for r in rows], np.int64),
                   resolution_time=np.array([r["resolution_time"] for r in rows], np.int64),
                   label=np.array([r["label"] for r in rows], np.float64),
                   weight=np.array([r["weight"] for r in rows], np.float64),
                   correction=np.array([r["kind"] == "correction" for r in rows], bool),
                   indices=np.array([f["indices"] for f in feats], np.int64).reshape(len(rows), -1),
                   values=np.array([f["values"] for f in feats], np.float32).reshape(len(rows), -1))


@dataclass
class Scored:
    """One row per impression, in scoring order: the probability served, the final label
    (a late label's correction included), the versions that served it."""

    event_id: list[str]
    event_time: np.ndarray
    p: np.ndarray
    label: np.ndarray
    base_logit: np.ndarray
    delta_logit: np.ndarray
    base_version: list[str]
    delta_version: np.ndarray


def replay(ex: Examples, strategy: Strategy, dimension: int, window_ms: int, tick_ms: int,
           spec_fingerprint: str = "") -> Scored:
    """Score every impression of ``ex`` progressively under ``strategy`` (see the module). The
    rebase at a swap re-learns every example learned so far from the model's ``train_end``
    on (the job's replay buffer keeps ``replay_buffer_ms`` of them)."""
    online = strategy.online if strategy.serve_delta else replace(strategy.online, enabled=False)
    layer = OnlineLayer(online, dimension, spec_fingerprint)
    imp = np.flatnonzero(~ex.correction)
    imp = imp[np.argsort(ex.event_time[imp], kind="stable")]
    score_tick = ex.event_time[imp] // tick_ms
    learn_tick = (ex.resolution_time + 1) // tick_ms
    if np.any(np.diff(learn_tick) < 0):
        raise ValueError("examples must be in learning order (resolution time)")
    swaps = sorted(strategy.swaps, key=lambda s: s.live_at)
    # due before the first tick whose key (its last millisecond, as in the job) is >= live_at
    swap_tick = np.array([s.live_at // tick_ms for s in swaps], np.int64)
    ticks = np.unique(np.concatenate([score_tick, learn_tick, swap_tick]))
    s_lo = np.searchsorted(score_tick, ticks, "left")
    s_hi = np.searchsorted(score_tick, ticks, "right")
    l_lo = np.searchsorted(learn_tick, ticks, "left")
    l_hi = np.searchsorted(learn_tick, ticks, "right")
    n = len(imp)
    p, base, delta = np.empty(n), np.empty(n), np.empty(n)
    base_version, delta_version = [""] * n, np.empty(n, np.int64)
    next_swap, learned = 0, 0  # examples [0, learned) have been learned
    for k, tick in enumerate(ticks):
        while next_swap < len(swaps) and swap_tick[next_swap] <= tick:
            s = swaps[next_swap]
            done = np.arange(learned)
            done = done[ex.event_time[done] >= s.train_end]
            layer.swap_base(s.model, s.version, {
                "resolution_time": ex.resolution_time[done], "indices": ex.indices[done],
                "values": ex.values[done], "label": ex.label[done], "weight": ex.weight[done]})
            next_swap += 1
        if s_hi[k] > s_lo[k]:
            rows = imp[s_lo[k]:s_hi[k]]
            r = layer.score_batch(ex.indices[rows], ex.values[rows], [""] * len(rows))
            p[s_lo[k]:s_hi[k]] = r["p"]
            base[s_lo[k]:s_hi[k]] = r["base_logit"]
            delta[s_lo[k]:s_hi[k]] = r["delta_logit"]
            base_version[s_lo[k]:s_hi[k]] = [r["base_version"]] * len(rows)
            delta_version[s_lo[k]:s_hi[k]] = r["delta_version"]
        if l_hi[k] > l_lo[k]:
            j = slice(l_lo[k], l_hi[k])
            layer.learn_batch(ex.resolution_time[j], ex.indices[j], ex.values[j], ex.label[j], ex.weight[j],
                              ex.event_time[j] + window_ms)
            learned = l_hi[k]
    final = {e: y for e, y in zip(ex.event_id, ex.label)}  # the last label of each event wins
    return Scored(event_id=[ex.event_id[i] for i in imp], event_time=ex.event_time[imp], p=p,
                  label=np.array([final[ex.event_id[i]] for i in imp], np.float64), base_logit=base,
                  delta_logit=delta, base_version=base_version, delta_version=delta_version)
