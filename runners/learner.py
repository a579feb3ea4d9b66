"""The Learner: the one Python operator of the streaming job (parallelism 1, one key).

It receives *ticks*, not rows (``runners.packing``): every ``learn_tick_ms`` of event time,
one packed batch of impressions and one of the native join's rows, stamped with their
resolution time: resolved examples and label outcomes (late labels, learned as corrections
under the ``correction`` policy, and labels without an impression: dead letters). A tick waits in keyed state until the watermark passes its end (the window
operators emit before they forward the watermark, so by then every tick up to it is here);
then, tick by tick in event-time order:

* its impressions are scored, as a batch, with the weights learned from every example
  resolved before the tick (``OnlineLayer.score_batch``; never from their own tick, so no
  label can leak into its own prediction) -> one value of JSON-lines predictions;
* its examples are learned in ``example_order`` with the compiled kernel
  (``OnlineLayer.learn_batch``).

So weights *and* predictions depend only on the event log, never on arrival interleaving,
and a label is visible to the scorer at most one tick after its resolution (event time).
The online layer lives in a ValueState (checkpointed with the job).

Base-model swaps (``models.hotswap``): before a tick is scored, a scheduled retrain whose
live time has come, or (without a schedule) a newly promoted registry version, is verified
and swapped in, and the delta is rebased from the **replay buffer**: the tick-keyed MapState of
the examples learned over the last ``replay_buffer_ms`` of event time (their JSON lines). At a
scheduled boundary, or at a drift alert (or ``triggered_retrain_delay_ms`` after it: one per
kind of alert at a time, with a cooldown), the learner also writes the examples since the
previous segment as a Parquet segment and starts the TFX retrain (``pipelines.retrain.launch``);
it goes on streaming until the swap's live time. Every swap or refusal is logged to ``RUN_DIR/swaps.jsonl``.
From a swap on, the feature-drift monitor compares with the new model's own training span
(its manifest's ``feature_reference``), when it has one.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, OutputTag
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from models.hotswap import DriftAlert, Schedule, load_base, pushed_unix, record, replay_columns
from models.monitor import WindowMetrics
from models.feature_drift import DriftConfig, FeatureDrift
from models.ftrl import FTRL
from models.online import OnlineConfig, OnlineLayer
from models.registry import Registry, RegistryError
from pipelines.join import JoinConfig
from runners.flink_job import LABEL_INFO
from runners.packing import NO_TIME, json_lines, pack_table, pylist, unpack
from transforms.apply import apply, inputs_objects, inputs_table, parse_inputs
from transforms.artifact import TransformArtifact

MAX_TIME = 2**62  # beyond any event; below the final watermark
CARRY = -2**62  # buffer key of label outcomes carried over to the next tick

LINE = Types.ROW_NAMED(["line"], [Types.STRING()])
PARTITIONED_LINE = Types.ROW_NAMED(["line", "dt", "hr"], [Types.STRING(), Types.STRING(), Types.STRING()])
OUTPUT_TAGS = {"updates": OutputTag("updates", LINE), "examples": OutputTag("examples", PARTITIONED_LINE),
               "late_labels": OutputTag("late_labels", LINE), "dead_letter": OutputTag("dead_letter", LINE),
               "metrics": OutputTag("metrics", LINE), "alerts": OutputTag("alerts", LINE)}
EXAMPLE_RANK = {"ex": 0, "lab": 1}  # a correction after the negative it fixes (example_order)


def write_snapshot(registry: Path, layer: OnlineLayer, event_time: int) -> Path:
    """A full FTRL snapshot as the registry's ``delta/<seq>/`` (npz + manifest, no pickle),
    published atomically. Idempotent: the same sequence number always holds the same weights."""
    seq = layer.ftrl.updates
    return Registry(registry).publish("delta", {"weights.npz": layer.ftrl.to_bytes()}, {
        "model": "ftrl_delta", "updates": seq, "event_time": event_time,
        "spec_fingerprint": layer.spec_fingerprint, "dimension": layer.ftrl.dimension,
        "params": layer.ftrl.params_dict(), "base_version": layer.base_version}, version=f"{seq:012d}").path


def _hours(ms: np.ndarray) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The UTC hours (date, hour) of epoch milliseconds, each formatted once: (the distinct
    hours in order, each row's position among them).

    >>> _hours(np.array([3_600_000 * 30 + 5, 0, 3_600_000 * 30]))
    ([('1970-01-01', '00'), ('1970-01-02', '06')], array([1, 0, 1]))
    >>> _hours(np.array([3_600_000 * 30 + 5, 3_600_000 * 31 - 1]))
    ([('1970-01-02', '06')], array([0, 0]))
    """
    if len(ms) and ms.min() // 3_600_000 == ms.max() // 3_600_000:  # one hour: a tick's rows, mostly
        s = np.datetime_as_string(np.datetime64(int(ms.min()), "ms").astype("datetime64[h]"), unit="h")
        return [(s[:10], s[11:13])], np.zeros(len(ms), np.int64)
    hours, row = np.unique(ms.astype("datetime64[ms]").astype("datetime64[h]"), return_inverse=True)
    return [(s[:10], s[11:13]) for s in np.datetime_as_string(hours, unit="h")], row


def _why_not(outcome: dict) -> str:
    """Why a retrain pushed nothing, in a line."""
    ev = outcome.get("evaluation") or {}
    if ev and not ev.get("blessed"):
        return "not blessed: " + "; ".join(ev.get("reasons") or [])
    infra = outcome.get("infra") or {}
    if infra and not infra.get("blessed"):
        return "infra check failed: " + str(infra.get("reason"))
    return f"{outcome.get('status')}: {outcome.get('reason', '')}"


def _opt(a: np.ndarray) -> list:
    return [None if v == NO_TIME else v for v in a.tolist()]


class Count:
    """A count since the operator (re)started, reported to Flink as an integer gauge. Not a
    PyFlink counter: PyFlink 2.3 loses counters incremented in ``on_timer`` of a function with
    side outputs (the Learner: six side outputs, its work in timers; reproduced by
    ``tools/repro_timer_counters.py``, 2026-12-07); gauges are read from the Python worker at
    every bundle's end."""

    def __init__(self, group, name: str):
        self.value = 0
        group.gauge(name, lambda: self.value)

    def inc(self, n: int = 1) -> None:
        self.value += int(n)


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
        # resolved examples carry their raw inputs, not their features (smaller join state):
        # recomputed with the artifact that served them
        self.artifact = TransformArtifact.from_dict(c["artifact"])
        self.input_types = c["input_types"]
        self.snapshot_every = int(c["job"].get("snapshot_every") or 0)
        self.write_updates = bool(c["job"].get("write_updates", True))
        self.layer_state = runtime_context.get_state(ValueStateDescriptor("online", Types.PICKLED_BYTE_ARRAY()))
        # ticks waiting for the watermark, {tick: [(kind, packed)]}: a handful at any time, so
        # one value (cached in the Python worker) beats a MapState round trip per tick
        self.pending = runtime_context.get_state(ValueStateDescriptor("pending", Types.PICKLED_BYTE_ARRAY()))
        self.metrics_state = runtime_context.get_state(ValueStateDescriptor("metrics", Types.PICKLED_BYTE_ARRAY()))
        self.metrics_window = int(c["job"]["metrics_window"])
        self.speedup = float(c["job"].get("replay_speedup") or 0.0)
        self.pace_origin = None  # (tick, monotonic seconds) of the first tick served by this run
        job = c["job"]
        self.out = Path(job["out"])
        # warmed-up counts (JobConfig.warmup_dir) were counted from the warm-up's first impression
        self.warm_origin = int(job["warmup_origin_ms"]) if job.get("warmup_dir") else None
        self.schedule = Schedule(int(job.get("retrain_every_ms") or 0), int(job.get("swap_delay_ms") or 0))
        self.drift = DriftAlert(float(job.get("drift_retrain_ratio") or 0.0),
                                int(job.get("drift_min_examples") or 2_000),
                                int(job.get("drift_cooldown_ms") or 6 * 3_600_000))
        # retrains started by the job (schedule or drift alert) swap at their live time; otherwise
        # the job follows the registry
        # feature drift of the served traffic against the artifact's fit span (models.feature_drift)
        self.fd_cfg = DriftConfig.from_dict(job.get("feature_drift") or {})
        self.fd_state = runtime_context.get_state(ValueStateDescriptor("feature_drift", Types.PICKLED_BYTE_ARRAY()))
        self.fd = None
        self.fd_trigger = None  # a tick whose feature-drift alert starts a retrain
        self.self_retraining = bool(self.schedule.every_ms or self.drift.ratio or self.fd_cfg.retrain)
        self.trigger_delay = int(job.get("triggered_retrain_delay_ms") or 0)
        self.buffer_ms = int(job.get("replay_buffer_ms") or 0)
        self.retrain_timeout = float(job.get("retrain_timeout_s") or 1800)
        self.python = job.get("python_executable") or "python"
        # the replay buffer: {tick: that tick's example lines}, and the small control record
        self.replay = runtime_context.get_map_state(MapStateDescriptor("replay", Types.LONG(), Types.STRING()))
        self.control_state = runtime_context.get_state(ValueStateDescriptor("control", Types.PICKLED_BYTE_ARRAY()))
        self.control = None
        self.procs: dict[int, subprocess.Popen] = {}  # running retrains (not state: relaunched if lost)
        self.tick_lines: list[str] = []
        self.layer = None
        self.window = None
        self.end_timer = False
        g = runtime_context.get_metrics_group()
        self.m_scored = Count(g, "impressions_scored")
        self.m_learned = Count(g, "examples_learned")
        self.m_late = Count(g, "late_labels")
        self.m_dead = Count(g, "dead_letters")
        self.m_ticks = Count(g, "ticks_learned")
        self.m_swaps = Count(g, "base_swaps")
        self.m_alerts = Count(g, "guard_alerts")
        g.gauge("delta_served", lambda: int(self.layer.guard.serving) if self.layer is not None else 0)
        g.gauge("feature_drift_max_psi_micro", lambda: int(round(1e6 * max(
            (v["psi"] for v in (self.fd.last.values() if self.fd is not None else [])), default=0.0))))
        g.gauge("delta_version", lambda: self.layer.ftrl.updates if self.layer is not None else 0)
        # progressive quality of the last `metrics_window` examples (Flink gauges are integers:
        # micro-units), and the label-delay histogram as one count per bucket
        g.gauge("window_logloss_micro", lambda: self._micro("window_logloss"))
        g.gauge("window_auc_micro", lambda: self._micro("window_auc"))
        delays = g.add_group("label_delay")
        self.m_delay = {b: Count(delays, b) for b in WindowMetrics().delay_histogram()}
        self.last_metrics: dict = {}

    def _micro(self, key: str) -> int:
        v = self.last_metrics.get(key)
        return -1 if v is None else int(round(v * 1e6))

    def _window(self) -> WindowMetrics:
        if self.window is None:
            self.window = self.metrics_state.value() or WindowMetrics(self.metrics_window)
            self.window.size = self.metrics_window  # this build's setting, also after a restore
        return self.window

    def _feature_drift(self) -> FeatureDrift:
        if self.fd is None:
            lo, hi = self.artifact.event_time_range
            cfg = self.fd_cfg if lo is not None and hi is not None else DriftConfig(enabled=False)
            names = [n for n, _ in self.artifact.spec.sparse_features()]
            # windowed aggregates (and their buckets) count the job's own past events: judged only
            # against a reference span that starts a window after the job's first impression
            warmup = {n: a.window_ms for a in self.artifact.spec.aggregates for n in (a.name, f"{a.name}_bucket")
                      if n in names}
            self.fd = self.fd_state.value() or FeatureDrift(cfg, names, (int(lo or 0), int(hi or 0)), warmup=warmup,
                                                            first_at=self.warm_origin)
        return self.fd

    def _layer(self) -> OnlineLayer:
        if self.layer is None:
            restored = self.layer_state.value()
            if restored is not None:
                restored.reconfigure(self.online)  # a changed build's settings apply from now on
            self.layer = restored or OnlineLayer(self.online, self.dimension, self.fingerprint,
                                                 window_ms=self.join.window_ms)
        return self.layer

    def process_element(self, r, ctx):
        timers = ctx.timer_service()
        if not self.end_timer:
            timers.register_event_time_timer(MAX_TIME)  # end of a bounded input: final snapshot
            self.end_timer = True
        # every tick waits for the watermark: then all ticks up to it have arrived and are
        # handled in event-time order (one timer per tick, shared by impressions and examples)
        tick = ctx.timestamp()
        pending = self.pending.value() or {}
        pending.setdefault(tick, []).append((r.kind, r.payload))
        self.pending.update(pending)
        timers.register_event_time_timer(tick)

    def _pace(self, tick: int) -> None:
        """``replay_speedup``: wait until ``tick`` is due at that many times event-time speed."""
        if not self.speedup or tick == MAX_TIME:
            return
        now = time.monotonic()
        if self.pace_origin is None:
            self.pace_origin = (tick, now)
            return
        wait = self.pace_origin[1] + (tick - self.pace_origin[0]) / 1000.0 / self.speedup - now
        if wait > 1.0:  # a gap in event time: wait 1 s, then pace from here
            time.sleep(1.0)
            self.pace_origin = (tick, time.monotonic())
        elif wait > 0:
            time.sleep(wait)

    def _featurize(self, imps: list, batches: list):
        """The features of impression tables (their raw inputs) and of resolved rows' tables
        (their pending impressions' inputs, a JSON array each), in one vectorized apply of the
        artifact for all the ticks a timer handles: its fixed cost (~0.7 ms for 60 rows of the
        generator's spec) once, not once or twice per tick. Row-wise, so each row gets the
        features it would get alone (the artifact is fixed: a swapped base model has the same
        spec). Returns ([(indices, values)] per impression table, [(indices, values, parsed
        inputs)] per resolved table; rows without inputs get unused features)."""
        names = list(self.input_types)
        parts = [t.select(["event_time", *names]) for t in imps]
        values: list = []
        if batches:
            values = parse_inputs([x or "null" for tab in batches for x in pylist(tab.column("inputs"))])
            raw = inputs_table([v if v is not None else [None] * len(names) for v in values], self.input_types)
            et = pa.array([x for tab in batches for x in pylist(tab.column("event_time"))], pa.int64())
            parts.append(pa.Table.from_arrays([et, *raw.columns], ["event_time", *names]))
        if not parts:
            return [], []
        schema = parts[-1].schema
        f = apply(self.artifact, pa.concat_tables([p if p.schema == schema else p.cast(schema) for p in parts]))
        idx, vals = f.indices, f.values.astype(np.float64)
        scored, resolved, at = [], [], 0  # row offsets: the impressions, then the resolved rows
        for tab in imps:
            scored.append((idx[at:at + tab.num_rows], vals[at:at + tab.num_rows]))
            at += tab.num_rows
        first = at  # the resolved rows' first row (``values`` holds theirs only)
        for tab in batches:
            v = at - first
            resolved.append((idx[at:at + tab.num_rows], vals[at:at + tab.num_rows], values[v:v + tab.num_rows]))
            at += tab.num_rows
        return scored, resolved

    def _score(self, layer: OnlineLayer, t, tick: int, features):
        n = t.num_rows
        if n == 0:
            return
        idx, vals = features  # from the tick's raw inputs (``_featurize``)
        s = layer.score_batch(idx, vals, pylist(t.column("unit")), at=tick)
        yield from self._alerts(layer)
        drift = self._feature_drift().observe(t.column("event_time").to_numpy().astype(np.int64), idx, vals)
        if drift:
            self.m_alerts.inc(len(drift))
            yield OUTPUT_TAGS["alerts"], Row("".join(json.dumps({**a, "base_version": layer.base_version},
                                                                sort_keys=True) + "\n" for a in drift))
            if self.fd_cfg.retrain and any(a["alert"] == "feature_drift" for a in drift):
                self.fd_trigger = tick
        self.m_scored.inc(n)
        yield Row(json_lines({
            "event_id": pylist(t.column("event_id")), "event_time": pylist(t.column("event_time")),
            "p": s["p"].tolist(), "base_logit": s["base_logit"], "delta_logit": s["delta_logit"].tolist(),
            "base_version": s["base_version"], "delta_version": s["delta_version"],
            "spec_fingerprint": s["spec_fingerprint"], "arm": s["arm"], "served": s["served"],
            "base_only_reason": s["base_only_reason"]}, n))

    def on_timer(self, t, ctx):
        """Ticks up to the watermark (at least up to ``t``) in order: score the tick's
        impressions with the weights learned from examples resolved before the tick (never
        from their own tick: no leakage), then learn the tick's examples. Predictions, too,
        depend only on the event log. Features for all of them at once (``_featurize``): they
        depend on the inputs and the artifact only, not on the weights."""
        # Every tick the watermark has passed, not only this timer's (their rows all arrived
        # before the watermark did): the timers of the others then find nothing to do. At full
        # speed a watermark releases ~100-500 sparse ticks at once: one call for them all costs
        # a quarter less Python CPU (measured). A paced replay keeps one tick per call, so its
        # bundles (and checkpoints) can finish between the ticks it waits for.
        upto = t if self.speedup else max(t, ctx.timer_service().current_watermark() or t)
        pending = self.pending.value() or {}
        if t != MAX_TIME and not any(k <= upto for k in pending if k != CARRY):
            return
        layer = self._layer()
        carry = [(kind, unpack(p)) for kind, p in pending.pop(CARRY, [])]
        ticks = []
        for key in sorted(k for k in pending if k <= upto):  # CARRY (below every tick) popped above
            items = [(kind, unpack(p)) for kind, p in pending.pop(key)]
            ticks.append((key, [tab for kind, tab in items if kind == "imp"],
                          [(kind, tab) for kind, tab in items if kind != "imp"]))
        imp_f, row_f = self._featurize([tab for _, imps, _ in ticks for tab in imps],
                                       [tab for _, tab in carry] + [tab for _, _, rows in ticks for _, tab in rows])
        imp_f, row_f = iter(imp_f), iter(row_f)  # in the order given: the carry, then tick by tick
        carry = [(kind, tab, next(row_f)) for kind, tab in carry]
        for i, (key, imps, rows) in enumerate(ticks):
            self._pace(key)
            self._before_tick(layer, key, poll=i == 0 or bool(self.speedup))
            carry += [(kind, tab, next(row_f)) for kind, tab in rows]
            for tab in imps:
                yield from self._score(layer, tab, key, next(imp_f))
            if carry:
                carry = yield from self._learn_rows(layer, carry, key)
                yield from self._report(layer, key)
            self._after_tick(key, bool(imps))
        if carry and t == MAX_TIME:  # the input has ended: nothing else can come before them
            carry = yield from self._learn_rows(layer, carry, MAX_TIME)
            yield from self._report(layer, MAX_TIME)
        if t == MAX_TIME:
            self._at_end()
        if carry:  # label outcomes resolved at the tick's last millisecond: with the next tick
            pending[CARRY] = [(kind, pack_table(tab)) for kind, tab, _ in carry]
        self.pending.update(pending)
        self.layer_state.update(layer)
        if self.window is not None:
            self.metrics_state.update(self.window)
        if self.fd is not None:
            self.fd_state.update(self.fd)
        if self.control is not None:
            self.control_state.update(self.control)
        self.m_ticks.inc(len(ticks))
        if t == MAX_TIME:
            write_snapshot(self.registry, layer, -1)

    # ---- base-model swaps, the replay buffer, scheduled retrains ------------------------------
    def _control(self) -> dict:
        if self.control is None:
            self.control = self.control_state.value() or {
                "ticks": [], "pruned_until": None, "segment_from": None, "next_boundary": None, "pending": [],
                "refused": [], "started": None}
        return self.control

    def _follow_delta_rollback(self, layer: OnlineLayer, tick: int) -> None:
        """An operator's ``driftline models rollback --kind delta VERSION`` while the job runs:
        serve that snapshot from this tick (verified: checksums, feature spec, dimension, and
        learned on the base served now; otherwise refused and logged)."""
        c = self._control()
        history = Registry(self.registry).history("delta")
        if c.get("delta_history") is None:  # actions before the job started are not replayed
            c["delta_history"] = len(history)
        new, c["delta_history"] = history[c["delta_history"]:], len(history)
        for h in [h for h in new if h.get("action") == "rollback"][-1:]:
            version = h["version"]
            entry = {"kind": "delta", "version": version, "live_at": tick, "mode": "rollback",
                     "previous_delta_version": layer.ftrl.updates}
            try:
                ref = Registry(self.registry).verify("delta", version, self.fingerprint)
                ftrl = FTRL.from_bytes((ref.path / "weights.npz").read_bytes())
                layer.restore_delta(ftrl, str(ref.manifest.get("base_version")))
            except (RegistryError, OSError, ValueError) as e:
                record(self.out, {**entry, "outcome": "refused", "reason": str(e)})
                continue
            record(self.out, {**entry, "outcome": "live", "snapshot_updates": ref.manifest.get("updates")})

    def _before_tick(self, layer: OnlineLayer, tick: int, poll: bool = True) -> None:
        """Swap in the base model due at this tick, before the tick is scored. ``poll``: read
        the registry (an operator's rollback, a newly promoted base) before this tick; the job
        polls it before the first tick of each timer call (at full speed one call handles
        hundreds of ticks in a fraction of a second: reading the registry before each of them
        was ~3.5 % of the Learner's Python; a paced replay polls before every tick)."""
        c = self._control()
        if poll:
            self._follow_delta_rollback(layer, tick)
        if c.get("started", -1) is None:  # the job's first tick (state of older builds: started)
            c["started"] = tick
            # a job that retrains itself starts from the registry's base model, if it has one
            # (``driftline run --base-registry``: a model bootstrapped offline); a job without a
            # schedule swaps it in below, as any version it finds there
            current = Registry(self.registry).current("base") if self.self_retraining else None
            if current and current not in c["refused"]:
                self._swap(layer, current, tick, "start", None)
        if self.self_retraining:
            for p in [p for p in c["pending"] if p["live_at"] <= tick]:
                c["pending"].remove(p)
                outcome = self._await(p["cutoff"])
                if outcome.get("pushed") and outcome.get("version"):
                    self._swap(layer, outcome["version"], tick, "scheduled", p)
                else:
                    record(self.out, {"outcome": "kept", "cutoff": p["cutoff"], "live_at": tick,
                                      "version": layer.base_version, "reason": _why_not(outcome)})
            return
        if not poll:
            return
        current = Registry(self.registry).current("base")
        if current and current != layer.base_id and current not in c["refused"]:
            self._swap(layer, current, tick, "watched", None)

    def _swap(self, layer: OnlineLayer, version: str, tick: int, mode: str, scheduled: dict | None) -> None:
        c = self._control()
        t0 = time.time()
        entry = {"version": version, "live_at": tick, "mode": mode,
                 "cutoff": scheduled["cutoff"] if scheduled else None, "previous": layer.base_version}
        try:
            model, manifest = load_base(self.registry, version, self.fingerprint, self.dimension, self.artifact.version)
        except RegistryError as e:  # keep serving the current base
            c["refused"].append(version)
            record(self.out, {**entry, "outcome": "refused", "reason": str(e)})
            return
        lines = [x for t in c["ticks"] for x in (self.replay.get(t) or "").split("\n") if x]
        train_end = int(manifest.get("train_end", tick))
        relearned = layer.swap_base(model, version, replay_columns(lines, train_end), at=tick)
        # feature drift from now on against the new model's own training span, if it has one
        ref = manifest.get("feature_reference")
        reference = bool(ref and self.fd_cfg.enabled and self._feature_drift().use_reference(ref, version))
        live = time.time()
        pushed = pushed_unix(self.registry, version)
        self.m_swaps.inc()
        record(self.out, {**entry, "outcome": "live", "train_end": train_end, "relearned": relearned,
                          "buffered": len(lines), "buffer_complete": c["pruned_until"] is None
                          or c["pruned_until"] <= train_end, "delta_version": layer.ftrl.updates,
                          "pushed_unix": pushed, "live_unix": live, "swap_seconds": round(live - t0, 3),
                          "feature_reference": (ref or {}).get("n") if reference else None,
                          "latency_s": None if pushed is None else round(live - pushed, 3)})

    def _await(self, cutoff: int) -> dict:
        """The outcome of the retrain with this cutoff, waiting for it if it still runs (a
        retrain lost in a failover is started again)."""
        from pipelines.retrain import launch, outcome_for

        found = outcome_for(self.out, cutoff)
        if found is not None:
            return found
        proc = self.procs.pop(cutoff, None) or launch(self.out, cutoff, self.python)
        try:
            proc.wait(timeout=self.retrain_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return {"status": "timeout", "reason": f"no outcome within {self.retrain_timeout:.0f} s"}
        return outcome_for(self.out, cutoff) or {"status": "failed", "reason": f"retrain exited {proc.returncode} "
                                                 f"without an outcome (see retrain/logs/{cutoff}.log)"}

    def _after_tick(self, tick: int, traffic: bool) -> None:
        """Buffer the tick's examples; at a boundary, write the segment and start the retrain.
        A boundary is taken at a tick with impressions (the stream passes it; a bounded input
        that has ended only resolves its last windows, and trains nothing new)."""
        c = self._control()
        if self.tick_lines:
            self.replay.put(tick, "\n".join(self.tick_lines))
            c["ticks"].append(tick)
            self.tick_lines = []
        if self.schedule.every_ms:
            if c["next_boundary"] is None:
                c["next_boundary"] = self.schedule.first_boundary(tick)
            if tick >= c["next_boundary"] and traffic:
                cutoff = tick // self.schedule.every_ms * self.schedule.every_ms
                c["next_boundary"] = cutoff + self.schedule.every_ms
                self._start_retrain(c, tick, cutoff, "schedule")
        if self.drift.ratio and traffic:
            w = self._window()
            ne = w.normalized_entropy()
            best = c.setdefault("drift", {}).get("best")
            if self.drift.check(c["drift"], ne, w.n, tick) and not any(p["cutoff"] == tick for p in c["pending"]):
                self._triggered(c, tick, "drift", {"outcome": "drift_alert", "window_ne": ne, "best_ne": best,
                                                   "window_n": w.n, "ratio": self.drift.ratio})
        if self.fd_trigger is not None and traffic:
            if not any(p["cutoff"] == tick for p in c["pending"]):
                self._triggered(c, tick, "feature_drift", {
                    "outcome": "feature_drift_alert",
                    "alerting": sorted(self.fd.alerting) if self.fd is not None else []})
            self.fd_trigger = None
        for w in [w for w in c.get("waiting", []) if w["due"] <= tick] if traffic else []:
            c["waiting"].remove(w)  # a delayed triggered retrain, due: its cutoff is this tick
            shared = any(p["cutoff"] == tick for p in c["pending"])  # one started here already
            record(self.out, {"outcome": "retrain_started", "cutoff": tick, "why": w["why"],
                              "alert_at": w["alert_at"], **({"shared": True} if shared else {})})
            c.setdefault("triggered", {})[w["why"]] = tick
            if not shared:
                self._start_retrain(c, tick, tick, w["why"])
        while c["ticks"] and c["ticks"][0] < tick - self.buffer_ms:
            old = c["ticks"].pop(0)
            self.replay.remove(old)
            c["pruned_until"] = old

    def _triggered(self, c: dict, tick: int, why: str, entry: dict) -> None:
        """A drift alert at ``tick``: its retrain starts now, or ``triggered_retrain_delay_ms``
        later. One per kind of alert at a time: an alert while one waits, or within
        ``drift_cooldown_ms`` of the last one its kind started, starts none (each new feature
        of one shift alerts on its own: without this, one shift started a retrain per feature)."""
        entry = {**entry, "cutoff": None, "alert_at": tick}
        waiting = c.setdefault("waiting", [])
        due = next((w["due"] for w in waiting if w["why"] == why), None)
        last = c.setdefault("triggered", {}).get(why)
        if due is not None:
            record(self.out, {**entry, "retrain_due": due})
        elif last is not None and tick < last + self.drift.cooldown_ms:
            record(self.out, {**entry, "retrain": "cooldown", "last_retrain": last})
        elif not self.trigger_delay:
            record(self.out, {**entry, "cutoff": tick})
            c["triggered"][why] = tick
            self._start_retrain(c, tick, tick, why)
        else:
            waiting.append({"due": tick + self.trigger_delay, "why": why, "alert_at": tick})
            record(self.out, {**entry, "retrain_due": tick + self.trigger_delay})

    def _start_retrain(self, c: dict, tick: int, cutoff: int, why: str) -> None:
        """Write the examples since the last segment as a segment, start the TFX retrain with
        this cutoff in its own process, and schedule its swap."""
        from pipelines.retrain import launch, write_segment

        lines = [x for t in c["ticks"] if c["segment_from"] is None or t > c["segment_from"]
                 for x in (self.replay.get(t) or "").split("\n") if x]
        if lines:
            write_segment(self.out, f"{tick:013d}", lines)
        c["segment_from"] = tick
        c["pending"].append({"cutoff": cutoff, "live_at": cutoff + self.schedule.swap_delay_ms, "why": why})
        self.procs[cutoff] = launch(self.out, cutoff, self.python)

    def _at_end(self) -> None:
        """The input ended: retrains still running finish (their models are for the next run)."""
        c = self._control()
        for p in c["pending"]:
            outcome = self._await(p["cutoff"])
            record(self.out, {"outcome": "after_end", "cutoff": p["cutoff"], "live_at": p["live_at"],
                              "version": outcome.get("version"), "pushed": bool(outcome.get("pushed")),
                              "reason": "" if outcome.get("pushed") else _why_not(outcome)})
        c["pending"] = []

    def _alerts(self, layer: OnlineLayer):
        """The guard's alerts (models.guard): the delta disabled, enabled again, or frozen."""
        alerts = layer.drain_alerts()
        if alerts:
            self.m_alerts.inc(len(alerts))
            yield OUTPUT_TAGS["alerts"], Row("".join(json.dumps(a, sort_keys=True) + "\n" for a in alerts))

    def _report(self, layer: OnlineLayer, tick: int):
        """One metrics line per tick that learned something: the sliding window's progressive
        logloss/AUC and the label-delay histogram (also the Flink gauges and counters)."""
        seen = self.last_metrics.get("examples_seen")
        if self.window is None or self.window.seen == seen:
            return
        before = self.last_metrics.get("label_delay_hist", {})
        g = layer.guard
        self.last_metrics = {"tick": None if tick == MAX_TIME else tick, "delta_version": layer.ftrl.updates,
                             **self.window.as_dict(),
                             "guard": {**g.stats(), "serving": g.serving, "reason": g.reason, "frozen": g.frozen},
                             "feature_drift": self.fd.metrics() if self.fd is not None else None}
        for b, c in self.last_metrics["label_delay_hist"].items():
            self.m_delay[b].inc(c - before.get(b, 0))
        yield OUTPUT_TAGS["metrics"], Row(json.dumps(self.last_metrics, sort_keys=True) + "\n")

    def _learn_rows(self, layer: OnlineLayer, batches, t: int):
        """Learn the rows resolved before ``t`` in ``example_order``; returns the rest (only
        label outcomes can be resolved at ``t`` itself: an example at ``t`` is in the next
        tick). ``batches``: (kind, table, its features from ``_featurize``)."""
        cols = ("event_id", "resolution_time", "event_time", "label", "label_time", "info", "inputs")
        rows = {c: [] for c in (*cols, "kind")}
        for _, tab, _ in batches:
            for c in cols:
                rows[c] += pylist(tab.column(c))
        features = (np.concatenate([f[0] for _, _, f in batches]), np.concatenate([f[1] for _, _, f in batches]),
                    [v for _, _, f in batches for v in f[2]])
        # the join's one stream: examples ("ex") and label outcomes ("lab"), told by their info
        rows["kind"] = ["ex" if info in LABEL_INFO else "lab" for info in rows["info"]]
        order = sorted(range(len(rows["event_id"])),
                       key=lambda j: (rows["resolution_time"][j], rows["event_id"][j], EXAMPLE_RANK[rows["kind"][j]]))
        now = [j for j in order if rows["resolution_time"][j] < t]
        later = [j for j in order if rows["resolution_time"][j] >= t]
        deferred = []
        for kind in ("ex", "lab"):
            sel = [j for j in later if rows["kind"][j] == kind]
            if sel:
                deferred.append((kind, pa.table({c: pa.array([rows[c][j] for j in sel], type=batches[0][1].schema.field(c).type)
                                                 for c in cols}),
                                 (features[0][sel], features[1][sel], [features[2][j] for j in sel])))
        if not now:
            return deferred
        learn, late, dead = [], [], []
        for j in now:
            kind, info = rows["kind"][j], rows["info"][j]
            if kind == "ex":
                learn.append((j, info, 1.0))
            elif info == "late":
                late.append(j)
                if self.join.late_policy == "correction" and rows["inputs"][j]:
                    learn.append((j, "correction", self.join.correction_weight))
            else:
                dead.append(j)
        if late:
            self.m_late.inc(len(late))
            yield OUTPUT_TAGS["late_labels"], Row(json_lines({
                "event_id": [rows["event_id"][j] for j in late], "event_time": [rows["event_time"][j] for j in late],
                "label_time": [rows["label_time"][j] for j in late], "label": [rows["label"][j] for j in late],
                "delay_ms": [rows["label_time"][j] - rows["event_time"][j] for j in late],
                "policy": self.join.late_policy}, len(late)))
        if dead:
            self.m_dead.inc(len(dead))
            yield OUTPUT_TAGS["dead_letter"], Row(json_lines({
                "reason": [rows["info"][j] for j in dead],
                "detail": [f"label at {rows['label_time'][j]}" for j in dead], "kind": "label",
                "origin": "flink:labels",
                "raw": [json.dumps({"event_id": rows["event_id"][j], "label_time": rows["label_time"][j],
                                    "label": rows["label"][j],
                                    "impression_time": None if rows["event_time"][j] == NO_TIME else rows["event_time"][j]})
                        for j in dead]}, len(dead)))
        if learn:
            yield from self._learn(layer, rows, learn, features)
        return deferred

    def _learn(self, layer: OnlineLayer, rows: dict, learn: list, features):
        js = [j for j, _, _ in learn]
        m = len(js)
        before = layer.ftrl.updates
        res = np.array([rows["resolution_time"][j] for j in js], np.int64)
        et = np.array([rows["event_time"][j] for j in js], np.int64)
        # recomputed from the pending impression's inputs with the artifact that served it
        # (``_featurize``, aligned with ``rows``): the features it was scored with
        sel = np.array(js, np.int64)
        idx, vals = features[0][sel], features[1][sel]
        values = [features[2][j] for j in js]
        inputs = inputs_objects(values, list(self.input_types))  # objects, for the retrains
        lt = np.array([rows["label_time"][j] for j in js], np.int64)
        y = np.array([rows["label"][j] for j in js], np.float64)
        wts = np.array([w for _, _, w in learn], np.float64)
        kinds = [k for _, k, _ in learn]
        first = np.array([k != "correction" for k in kinds])  # a correction repeats its event
        u = layer.learn_batch(res, idx, vals, y, wts, et + self.join.window_ms, first)
        self.m_learned.inc(m)
        seq = u["seq"].tolist()
        eids = [rows["event_id"][j] for j in js]
        idx_rows = list(np.ascontiguousarray(idx, np.int64))  # rows as arrays: orjson writes them
        if self.write_updates:  # off: no records made (the job has no updates sink then)
            yield OUTPUT_TAGS["updates"], Row(json_lines({
                "seq": seq, "event_id": eids, "resolution_time": res.tolist(), "p_before": u["p_before"].tolist(),
                "label": y.astype(int).tolist(), "indices": idx_rows,
                "weights": list(np.ascontiguousarray(u["weights"], np.float64))}, m, arrays=True))
        self._window().update(u["p_before"][first], y[first], np.where(lt == NO_TIME, -1, lt - et)[first])
        label_time = _opt(lt)
        delay = [None if x is None else x - e for x, e in zip(label_time, et.tolist())]
        opt = orjson.OPT_SERIALIZE_NUMPY  # int64 and float64 rows: the text of their tolist()
        feats = [orjson.dumps({"indices": i, "values": v}, option=opt).decode()
                 for i, v in zip(idx_rows, np.ascontiguousarray(vals, np.float64))]
        cols = {"event_id": eids, "event_time": et.tolist(), "resolution_time": res.tolist(),
                "label": y.astype(int).tolist(), "label_time": label_time, "label_delay_ms": delay, "kind": kinds,
                "weight": wts.tolist(), "features": feats, "inputs": inputs,
                "spec_fingerprint": layer.spec_fingerprint, "seq": seq}
        hours, row_hour = _hours(et)
        for h, part in enumerate(hours):  # one value per event-time hour partition, in order
            sel = np.flatnonzero(row_hour == h).tolist()
            sub = {k: ([v[i] for i in sel] if isinstance(v, list) else v) for k, v in cols.items()}
            text = json_lines(sub, len(sel))
            self.tick_lines.append(text)  # the replay buffer (JSON escapes newlines in values)
            yield OUTPUT_TAGS["examples"], Row(text, part[0], part[1])
        if self.snapshot_every and before // self.snapshot_every != layer.ftrl.updates // self.snapshot_every:
            write_snapshot(self.registry, layer, int(res[-1]))
