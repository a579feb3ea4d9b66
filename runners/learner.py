"""The Learner: the one Python operator of the streaming job (parallelism 1, one key).

Impressions are scored at once with the weights learned so far. Examples and label outcomes
wait in keyed state until the watermark passes their resolution time (event-time timers on a
grid of ``learn_tick_ms``: one PyFlink timer costs a few milliseconds, so rows share them),
then are handled in ``example_order``; so the weights depend only on the event log, never on
arrival interleaving. The online layer lives in a ValueState (checkpointed with the job).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, OutputTag
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from models.online import OnlineConfig, OnlineLayer
from pipelines.join import JoinConfig
from transforms.apply import unpack

MAX_TIME = 2**62  # beyond any event; below the final watermark, which joins hold back by their intervals


def _tag(name: str):
    from runners.flink_job import COLUMNS, row_type

    return OutputTag(name, row_type(COLUMNS[name]))


OUTPUT_TAGS = {name: _tag(name) for name in ("updates", "examples", "late_labels", "dead_letter")}


def write_snapshot(registry: Path, layer: OnlineLayer, event_time: int) -> Path:
    """A full FTRL snapshot as ``registry/delta/<seq>/`` (npz + manifest, no pickle), published
    atomically. Idempotent: the same sequence number always holds the same weights."""
    seq = layer.ftrl.updates
    final = registry / "delta" / f"{seq:012d}"
    if final.exists():
        return final
    tmp = registry / "delta" / f".{seq:012d}.inprogress-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "weights.npz").write_bytes(layer.ftrl.to_bytes())
    (tmp / "manifest.json").write_text(json.dumps({
        "kind": "ftrl_delta", "version": seq, "updates": seq, "event_time": event_time,
        "spec_fingerprint": layer.spec_fingerprint, "dimension": layer.ftrl.dimension,
        "params": layer.ftrl.params_dict(), "base_version": layer.base_version,
        "created_unix": time.time()}, indent=1, sort_keys=True) + "\n")
    try:
        os.rename(tmp, final)
    except OSError:  # another attempt published it first
        pass
    return final


def _hour(t: int) -> tuple[str, str]:
    g = time.gmtime(t // 1000)
    return time.strftime("%Y-%m-%d", g), time.strftime("%H", g)


class Learner(KeyedProcessFunction):
    def __init__(self, cfg_json: str):
        self.cfg_json = cfg_json

    def open(self, runtime_context):
        c = json.loads(self.cfg_json)
        self.online = OnlineConfig.from_dict(c["job"]["online"])
        self.join = JoinConfig(**c["job"]["join"])
        self.dimension = c["dimension"]
        self.fingerprint = c["spec_fingerprint"]
        self.registry = Path(c["registry"])
        self.snapshot_every = int(c["job"].get("snapshot_every") or 0)
        self.tick_ms = max(1, int(c["job"].get("learn_tick_ms") or 1))
        self.layer_state = runtime_context.get_state(ValueStateDescriptor("online", Types.PICKLED_BYTE_ARRAY()))
        self.buffer = runtime_context.get_map_state(
            MapStateDescriptor("buffer", Types.LONG(), Types.PICKLED_BYTE_ARRAY()))
        self.layer = None
        self.end_timer = False
        g = runtime_context.get_metrics_group()
        self.m_scored = g.counter("impressions_scored")
        self.m_learned = g.counter("examples_learned")
        self.m_late = g.counter("late_labels")
        self.m_dead = g.counter("dead_letters")

    def _layer(self) -> OnlineLayer:
        if self.layer is None:
            self.layer = self.layer_state.value() or OnlineLayer(self.online, self.dimension, self.fingerprint)
        return self.layer

    def process_element(self, r, ctx):
        layer = self._layer()
        timers = ctx.timer_service()
        if not self.end_timer:
            timers.register_event_time_timer(MAX_TIME)  # end of a bounded input: final snapshot
            self.end_timer = True
        if r.kind == "imp":
            idx, vals = unpack(r.feat)
            self.m_scored.inc()
            yield Row(*layer.score(r.event_id, r.event_time, idx, vals, r.unit).values())
            return
        # one timer per tick of event time, not per row: each PyFlink timer costs a round trip
        tick = -(-r.t // self.tick_ms) * self.tick_ms
        pending = self.buffer.get(tick) or []
        pending.append((r.t, r.kind, r.event_id, r.event_time, r.feat, r.label, r.label_time, r.info))
        self.buffer.put(tick, pending)
        timers.register_event_time_timer(tick)

    def on_timer(self, t, ctx):
        layer = self._layer()
        if t == MAX_TIME:
            write_snapshot(self.registry, layer, -1)
            return
        rows = self.buffer.get(t)
        if not rows:
            return
        self.buffer.remove(t)
        rows.sort(key=lambda x: (x[0], x[2], 0 if x[1] == "ex" else 1))  # example_order
        for resolution, kind, eid, event_time, feat, label, label_time, info in rows:
            if kind == "ex":
                yield from self._learn(layer, eid, resolution, event_time, feat, label, label_time, info, 1.0)
            elif info == "late":
                self.m_late.inc()
                yield OUTPUT_TAGS["late_labels"], Row(eid, event_time, label_time, label,
                                                      label_time - event_time, self.join.late_policy)
                if self.join.late_policy == "correction" and feat is not None:
                    yield from self._learn(layer, eid, resolution, event_time, feat, label, label_time, "correction",
                                           self.join.correction_weight)
            else:
                self.m_dead.inc()
                raw = json.dumps({"event_id": eid, "label_time": label_time, "label": label,
                                  "impression_time": event_time})
                yield OUTPUT_TAGS["dead_letter"], Row(info, f"label at {label_time}", "label", "flink:labels", raw)
        self.layer_state.update(layer)

    def _learn(self, layer, eid, t, event_time, feat, label, label_time, kind, weight):
        idx, vals = unpack(feat)
        before = layer.ftrl.updates
        upd = layer.learn(eid, t, idx, vals, int(label), weight, window_close=event_time + self.join.window_ms)
        self.m_learned.inc()
        yield OUTPUT_TAGS["updates"], Row(*upd.values())
        dt, hr = _hour(event_time)
        feats = json.dumps({"indices": idx.tolist(), "values": vals.tolist()})
        delay = None if label_time is None else label_time - event_time
        yield OUTPUT_TAGS["examples"], Row(eid, event_time, t, int(label), label_time, delay, kind, weight,
                                           feats, layer.spec_fingerprint, upd["seq"], dt, hr)
        if self.snapshot_every and before // self.snapshot_every != layer.ftrl.updates // self.snapshot_every:
            write_snapshot(self.registry, layer, t)


