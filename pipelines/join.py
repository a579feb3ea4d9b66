"""Delayed-label join semantics, engine-free. The Flink job implements them with native
event-time operators (``runners.flink_job``); ``reference_join`` states them in plain Python for
tests and replays.

For an impression ``i`` at event time ``t`` and the attribution window ``W``:

* duplicates: the first impression of an ``event_id`` (by event time, then arrival) is *the*
  impression; later ones go to the dead-letter output as ``duplicate_event_id``. The first
  label of an ``event_id`` (by label time, then arrival) is *the* label; later ones are
  ``duplicate_label`` dead letters: a label counts once.
* the label at ``lt`` with ``t <= lt < t + W`` makes a positive (or its 0/1 value) example,
  resolved at ``lt``; no such label: a negative example resolved at ``t + W`` (emitted when the
  watermark passes it). Every impression gives exactly one example.
* the label is ``late`` when ``lt >= t + W`` and the impression is within the late horizon
  ``H`` (``t >= lt - H``): policy ``sink`` writes it to the late-label output; ``correction``
  also emits a correction example (the label, resolved at ``lt``, weight ``correction_weight``).
* ``label_before_impression`` when ``lt < t`` (the impression found up to ``W`` after the
  label); ``unknown_impression`` when no impression with that id lies in ``[lt - H, lt + W]``.
* examples are learned in ``(resolution_time, event_id)`` order (``example_order``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from pipelines.events import Reason

LATE_POLICIES = ("sink", "correction")


@dataclass(frozen=True)
class JoinConfig:
    window_ms: int = 3_600_000  # attribution window W
    late_horizon_ms: int = 86_400_000  # H: how long a late label can still find its impression
    late_policy: str = "sink"
    correction_weight: float = 1.0
    watermark_delay_ms: int = 60_000  # bounded out-of-orderness of both streams

    def __post_init__(self) -> None:
        if self.late_policy not in LATE_POLICIES:
            raise ValueError(f"late_policy must be one of {LATE_POLICIES}, got {self.late_policy!r}")
        if not 0 < self.window_ms <= self.late_horizon_ms:
            raise ValueError("need 0 < window_ms <= late_horizon_ms")
        if self.watermark_delay_ms < 0:
            raise ValueError("watermark_delay_ms must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def _first_by_time(rows: list[dict], time_key: str) -> tuple[dict[str, dict], list[dict]]:
    first: dict[str, dict] = {}
    dups: list[dict] = []
    for r in sorted(rows, key=lambda r: r[time_key]):  # stable: ties keep arrival order
        if r["event_id"] in first:
            dups.append(r)
        else:
            first[r["event_id"]] = r
    return first, dups


KIND_RANK = {"label": 0, "expired": 0, "correction": 1}


def example_order(e: dict) -> tuple:
    """The learning order: resolution time, event id; a correction after the negative it fixes."""
    return e["resolution_time"], e["event_id"], KIND_RANK[e["kind"]]


def reference_join(impressions: list[dict], labels: list[dict], cfg: JoinConfig) -> dict:
    """Impressions ``{event_id, event_time}`` and labels ``{event_id, label_time, label}`` in
    arrival order -> ``examples`` (sorted by resolution time, event id), ``late`` labels and
    ``dead_letter`` (reason, event id) records."""
    W, H = cfg.window_ms, cfg.late_horizon_ms
    imps, dup_imps = _first_by_time(impressions, "event_time")
    labs, dup_labs = _first_by_time(labels, "label_time")
    dead = [(Reason.DUPLICATE_EVENT_ID.value, r["event_id"]) for r in dup_imps]
    dead += [(Reason.DUPLICATE_LABEL.value, r["event_id"]) for r in dup_labs]
    examples, late = [], []
    for eid, i in imps.items():
        t = i["event_time"]
        lab = labs.get(eid)
        if lab is not None and t <= lab["label_time"] < t + W:
            examples.append({"event_id": eid, "resolution_time": lab["label_time"], "label": int(lab["label"]),
                             "label_time": lab["label_time"], "kind": "label", "weight": 1.0})
        else:
            examples.append({"event_id": eid, "resolution_time": t + W, "label": 0, "label_time": None,
                             "kind": "expired", "weight": 1.0})
    for eid, lab in labs.items():
        lt = lab["label_time"]
        i = imps.get(eid)
        if i is None or not lt - H <= i["event_time"] <= lt + W:
            dead.append((Reason.UNKNOWN_IMPRESSION.value, eid))
        elif lt < i["event_time"]:
            dead.append((Reason.LABEL_BEFORE_IMPRESSION.value, eid))
        elif lt >= i["event_time"] + W:
            late.append({"event_id": eid, "label_time": lt, "event_time": i["event_time"]})
            if cfg.late_policy == "correction":
                examples.append({"event_id": eid, "resolution_time": lt, "label": int(lab["label"]),
                                 "label_time": lt, "kind": "correction", "weight": cfg.correction_weight})
    examples.sort(key=example_order)
    return {"examples": examples, "late": late, "dead_letter": sorted(dead)}
