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
>>> from models.guard import GuardConfig
>>> cfg = OnlineConfig(ftrl=FTRLParams(l1=0.0), hold_after_reset=False,  # see models.online
...                    guard=GuardConfig(enabled=False))  # serve the delta from the first example
>>> online = Strategy("online", online=cfg)
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
from tqdm import tqdm

from models.online import OnlineConfig, OnlineLayer


@dataclass(frozen=True)
class BaseSwap:
    """A base model serving from ``live_at`` (event time); the rebase re-learns the examples
    with event time >= ``train_end`` (those the model did not train on)."""

    live_at: int
    version: str
    model: object  # models.base.BaseModel
    train_end: int


FEEDBACK = ("wait", "fake_negative", "fnw")


@dataclass(frozen=True)
class Strategy:
    """``feedback``: how the online layer learns from delayed labels (see ``feedback_stream``).
    ``replay_mix``: with each tick's new examples (just before them), also learn
    ``replay_mix`` times as many older ones drawn (seeded) from a reservoir of ``replay_capacity`` learned examples, at
    weight ``replay_weight`` (forgetting mitigation)."""

    name: str
    swaps: tuple[BaseSwap, ...] = ()
    serve_delta: bool = True  # False: base only (the delta still learns, as in the job)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    feedback: str = "wait"
    replay_mix: float = 0.0
    replay_capacity: int = 20_000
    replay_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.feedback not in FEEDBACK:
            raise ValueError(f"feedback must be one of {FEEDBACK}, got {self.feedback!r}")
        if self.replay_mix < 0 or self.replay_capacity < 1:
            raise ValueError("replay_mix must be >= 0 and replay_capacity >= 1")


@dataclass
class Examples:
    """Joined examples in learning order, as columns (the job's example records)."""

    event_id: list[str]
    event_time: np.ndarray
    resolution_time: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    correction: np.ndarray  # bool: a late label's correction (not an impression of its own)
    label_time: np.ndarray  # the label's arrival (event time), -1 for none
    indices: np.ndarray  # [n, k]
    values: np.ndarray  # [n, k]

    def take(self, order: np.ndarray, **replace_columns) -> "Examples":
        cols = {k: (replace_columns[k] if k in replace_columns else
                    [v[i] for i in order] if isinstance(v, list) else v[order]) for k, v in vars(self).items()}
        return Examples(**cols)

    def truth(self) -> dict[str, float]:
        """The final label of every event (a late label's correction wins)."""
        return {e: y for e, y in zip(self.event_id, self.label)}

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "Examples":
        feats = [json.loads(r["features"]) for r in rows]
        return cls(event_id=[r["event_id"] for r in rows],
                   event_time=np.array([r["event_time"] for r in rows], np.int64),
                   resolution_time=np.array([r["resolution_time"] for r in rows], np.int64),
                   label=np.array([r["label"] for r in rows], np.float64),
                   weight=np.array([r["weight"] for r in rows], np.float64),
                   correction=np.array([r["kind"] == "correction" for r in rows], bool),
                   label_time=np.array([-1 if r.get("label_time") is None else r["label_time"] for r in rows],
                                       np.int64),
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
    # with a mixture (models.mixer): each expert's weight when the impression was scored [n, K]
    mix_weights: np.ndarray | None = None


def feedback_stream(ex: Examples, policy: str) -> Examples:
    """The examples the online layer learns under a delayed-feedback ``policy``, in learning
    order. ``ex`` is the job's joined stream (its late-label policy included).

    * ``wait``: the job's stream: a negative only when its attribution window closes (fresh
      negatives cost a window of staleness), a positive when its label arrives.
    * ``fake_negative``: every impression is learned at once as a negative (at its event
      time), and every label again as a positive when it arrives (Ktena et al. 2019): fresh,
      but the model learns p / (1 + p), biased low.
    * ``fnw``: the same stream with fake-negative weighting (Ktena et al. 2019), an importance
      weighting that makes the biased stream's expected gradient the true one's: weight
      (1 + p) on positives, (1 - p)(1 + p) on negatives, p the model's current prediction (set
      in ``replay`` at learning time, with the weights before the tick's updates).

    >>> rows = [{"event_id": "a", "event_time": 0, "resolution_time": 5, "label": 1, "label_time": 5,
    ...          "kind": "label", "weight": 1.0, "features": '{"indices": [1], "values": [1.0]}'},
    ...         {"event_id": "b", "event_time": 3, "resolution_time": 603, "label": 0, "label_time": None,
    ...          "kind": "expired", "weight": 1.0, "features": '{"indices": [2], "values": [1.0]}'}]
    >>> fn = feedback_stream(Examples.from_rows(rows), "fake_negative")
    >>> list(zip(fn.event_id, fn.resolution_time.tolist(), fn.label.tolist(), fn.correction.tolist()))
    [('a', 0, 0.0, False), ('b', 3, 0.0, False), ('a', 5, 1.0, True)]
    """
    if policy not in FEEDBACK:
        raise ValueError(f"feedback must be one of {FEEDBACK}, got {policy!r}")
    if policy == "wait":
        return ex
    imp = np.flatnonzero(~ex.correction)
    pos = np.flatnonzero((ex.label > 0) & (ex.label_time >= 0))
    order = np.concatenate([imp, pos])
    n_imp = len(imp)
    res = np.concatenate([ex.event_time[imp], ex.label_time[pos]])
    is_pos = np.arange(len(order)) >= n_imp
    # learning order: resolution time, then the impression's negative before any positive
    sort = np.lexsort((is_pos, res))
    order, res, is_pos = order[sort], res[sort], is_pos[sort]
    return ex.take(order, resolution_time=res, correction=is_pos, label=is_pos.astype(np.float64),
                   weight=np.ones(len(order)))


def fnw_weights(p: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Fake-negative weights (Ktena et al. 2019, eq. 8), ``p`` held fixed (no gradient).

    >>> fnw_weights(np.array([0.5, 0.5]), np.array([1.0, 0.0])).tolist()
    [1.5, 0.75]
    """
    return np.where(label > 0, 1.0 + p, (1.0 - p) * (1.0 + p))


def replay(ex: Examples, strategy: Strategy, dimension: int, window_ms: int, tick_ms: int,
           spec_fingerprint: str = "", progress: bool = False) -> Scored:
    """Score every impression of ``ex`` progressively under ``strategy`` (see the module). The
    rebase at a swap re-learns every example learned so far from the model's ``train_end``
    on (the job's replay buffer keeps ``replay_buffer_ms`` of them)."""
    online = strategy.online if strategy.serve_delta else replace(strategy.online, enabled=False)
    # the hold after a reset is the wait policy's (models.online); the others learn at once
    layer = OnlineLayer(online, dimension, spec_fingerprint, window_ms if strategy.feedback == "wait" else 0)
    truth = ex.truth()
    ex = feedback_stream(ex, strategy.feedback)
    learned_weight = ex.weight.copy()  # fnw: the weights actually used (the rebase re-uses them)
    rng = np.random.default_rng(strategy.seed)
    reservoir: list[int] = []  # replay_mix: a uniform sample of the examples learned so far
    seen, carry = 0, 0.0
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
    mix = None if layer.mixer.trivial else np.empty((n, len(layer.mixer.weights)))
    next_swap, learned = 0, 0  # examples [0, learned) have been learned
    for k, tick in enumerate(tqdm(ticks, desc=f"replay {strategy.name}", unit="tick", disable=not progress,
                                  mininterval=2.0, leave=False)):
        while next_swap < len(swaps) and swap_tick[next_swap] <= tick:
            s = swaps[next_swap]
            done = np.arange(learned)
            done = done[ex.event_time[done] >= s.train_end]
            layer.swap_base(s.model, s.version, {
                "resolution_time": ex.resolution_time[done], "indices": ex.indices[done],
                "values": ex.values[done], "label": ex.label[done], "weight": learned_weight[done],
                "event_time": ex.event_time[done]}, at=(int(tick) + 1) * tick_ms - 1)  # the job's tick key
            next_swap += 1
        if s_hi[k] > s_lo[k]:
            rows = imp[s_lo[k]:s_hi[k]]
            r = layer.score_batch(ex.indices[rows], ex.values[rows], [""] * len(rows),
                                  at=(int(tick) + 1) * tick_ms - 1)  # the job's tick key
            p[s_lo[k]:s_hi[k]] = r["p"]
            base[s_lo[k]:s_hi[k]] = r["base_logit"]
            delta[s_lo[k]:s_hi[k]] = r["delta_logit"]
            base_version[s_lo[k]:s_hi[k]] = [r["base_version"]] * len(rows)
            delta_version[s_lo[k]:s_hi[k]] = r["delta_version"]
            if mix is not None:
                mix[s_lo[k]:s_hi[k]] = layer.mixer.weights
        if l_hi[k] > l_lo[k]:
            j = slice(l_lo[k], l_hi[k])
            if strategy.feedback == "fnw":
                z = layer.base_logits(ex.indices[j], ex.values[j]) + layer.ftrl.predict_logits(ex.indices[j],
                                                                                               ex.values[j])
                learned_weight[j] = ex.weight[j] * fnw_weights(1.0 / (1.0 + np.exp(-z)), ex.label[j])
            if strategy.replay_mix > 0 and reservoir:
                carry += strategy.replay_mix * (l_hi[k] - l_lo[k])
                m, carry = int(carry), carry - int(carry)
                _learn_replayed(layer, ex, learned_weight, np.array(reservoir)[rng.integers(0, len(reservoir), m)],
                                strategy.replay_weight)
            layer.learn_batch(ex.resolution_time[j], ex.indices[j], ex.values[j], ex.label[j], learned_weight[j],
                              ex.event_time[j] + window_ms, ~ex.correction[j])
            learned = l_hi[k]
            if strategy.replay_mix > 0:
                for i in range(l_lo[k], l_hi[k]):  # reservoir sampling (Algorithm R), seeded
                    seen += 1
                    if len(reservoir) < strategy.replay_capacity:
                        reservoir.append(i)
                    else:
                        slot = int(rng.integers(0, seen))
                        if slot < strategy.replay_capacity:
                            reservoir[slot] = i
    return Scored(event_id=[ex.event_id[i] for i in imp], event_time=ex.event_time[imp], p=p,
                  label=np.array([truth[ex.event_id[i]] for i in imp], np.float64), base_logit=base,
                  delta_logit=delta, base_version=base_version, delta_version=delta_version, mix_weights=mix)


def _learn_replayed(layer: OnlineLayer, ex: Examples, weight: np.ndarray, rows: np.ndarray, scale: float) -> None:
    """Re-learn older examples ``rows`` on the current base's residual. They do not count as
    new stream examples: ``delta_version`` (the update sequence) and the prior are untouched."""
    layer.relearn(ex.indices[rows], ex.values[rows], ex.label[rows], weight[rows] * scale)
