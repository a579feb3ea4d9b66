"""The streaming job on PyFlink: one plan for the embedded mini-cluster and a standalone cluster.

Plan (state-heavy work in Java keyed operators of ours, ``runners/jvm/driftline/flink``,
Python only where it must be, and rows cross into Python in batches: one packed value per
event-time tick, ``runners.packing``):

    impressions ─ windowed counts (Java, per key) ─┐
    labels (stamped at lt+1) ──────────────────────┴─ dedup + join per event_id (Java, one
        operator), in event time: an impression's or label's occurrence number (duplicates ─▶
        dead letter); first impressions ─ tick pack (Java) ──────────────────────────────────┐
        the join (its own deadline timers at t+W+1 and lt+W+1): positive at the first label  │
        in [t, t+W), negative at the deadline otherwise; late / unknown impression / label   │
        before impression for the first label otherwise; stamped at resolution time (no      │
        hold-back) ─ tick pack (Java: Arrow IPC, one value per tick) ─────────────────────────┤
                                                                                             ▼
    key 0 (in Java) ─▶ Learner (Python, parallelism 1): featurize the ticks the watermark passed at once
        (the artifact's vectorized apply), then per tick score the impressions (base + delta, A/B
        arm) and learn the examples in (resolution_time, event_id) order with the compiled FTRL
        kernel (late labels too, as corrections, under that policy) ─▶ predictions, weight
        updates, joined examples, late labels, dead letters, snapshots, each as JSON lines,
        one value per tick

Pending impressions live in the join's keyed state (``driftline.flink.DedupJoin``, freed in
event time); the Learner's state is the online layer (FTRL z/n arrays). Outputs are Flink
FileSinks (the JSON lines as written; joined examples bucketed by event-time date and hour),
committed on checkpoints: exactly-once.
"""
from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models.online import OnlineConfig
from pipelines.events import SourceSpec
from pipelines.join import JoinConfig
from runners.packing import NO_TIME
from transforms.flink_sql import (JavaRows, _q, impressions_ddl, interval, java_array, table_rows,
                                  windowed_count_rows, with_options)

WORKER_SITE = Path(__file__).resolve().parent / "worker_site"  # on the Python workers' path only
OUTPUTS = ("predictions", "updates", "examples", "late_labels", "dead_letter", "metrics", "alerts")


@dataclass
class JobConfig:
    event_dir: str
    out: str
    artifact: str  # a fitted transform artifact (transform_artifact.json or its folder)
    join: JoinConfig = field(default_factory=JoinConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    parallelism: int = 1  # of the SQL operators; the Learner always runs with 1
    # the keyed state's key groups (Flink's pipeline.max-parallelism): the highest parallelism
    # the job can ever be rescaled to, fixed for its life (a savepoint restores only into the
    # same). Explicit, as Flink's production checklist asks: its derived default depends on the
    # parallelism of the first start (128 up to parallelism 85, then more), which every later
    # resume inherits. 128 is that default for the parallelisms run so far, so their savepoints
    # restore into it
    max_parallelism: int = 128
    checkpoint_interval_ms: int = 5_000
    # Snappy-compressed state snapshots: the pending join state is mostly repeated keys and
    # input values; measured 723.2 -> 169.8 B per pending impression (bench/stream.py
    # --only-checkpoint), restored transparently
    snapshot_compression: bool = True
    follow: bool = False  # keep monitoring the event directory for new part files
    monitor_interval_ms: int = 1_000
    # follow mode: a source quiet this long stops holding the watermark back (0: never). Off by
    # default: with an idle impression source the label source alone drives the join's
    # watermark, which can pass impressions still inside a Python function (then dropped late)
    idle_timeout_ms: int = 0
    restart_attempts: int = 5  # consecutive restarts (backing off) before the job fails; 0: none
    # idle-state retention (processing time) of keyed Flink SQL state, a safety bound: the
    # job's keyed state (dedup, join) lives in our Java operators, freed in event time
    dedup_ttl_ms: int = 2 * 86_400_000
    # how long (event time) the dedup remembers an event_id after its last occurrence: a
    # duplicate impression or label further apart than this is not recognized as one. Event
    # time, so every run of a log decides the same (driftline.flink.DedupJoin)
    dedup_retention_ms: int = 2 * 86_400_000
    learn_tick_ms: int = 60_000  # rows reach Python in batches of this much event time
    snapshot_every: int = 0  # write a full FTRL snapshot every N updates (0: only at the end)
    # the per-event weight-update records (``updates/``: each learned example's changed coordinates,
    # the largest output). Off: not made, and the job has no updates sink (an operator less:
    # resuming a savepoint of a job with it needs --allow-non-restored-state; the reverse does not)
    write_updates: bool = True
    metrics_window: int = 10_000  # progressive logloss/AUC over the last N learned examples
    # replay pacing: serve at most this many times event-time speed (0: as fast as possible), for
    # demos, shadow runs and tests that must act mid-stream. Processing time only: outputs are the
    # same at any pace; after a restore the pace restarts from the restored tick; one wait is at
    # most 1 s (a gap in event time is not slept through)
    replay_speedup: float = 0.0
    python_executable: str = field(default_factory=lambda: sys.executable)
    flink_conf: dict = field(default_factory=dict)  # extra Flink options, e.g. python.fn-execution.*
    # base-model swaps (models.hotswap): scheduled TFX retrains every N ms of event time (0: none;
    # then the job watches the registry), live N ms after their boundary; the replay buffer
    # keeps this much event time of learned examples for the rebase
    retrain_every_ms: int = 0
    swap_delay_ms: int = 1_800_000
    replay_buffer_ms: int = 6 * 3_600_000
    retrain_timeout_s: float = 1800.0
    # drift alerts (models.hotswap.DriftAlert) also start retrains: 0 is off
    drift_retrain_ratio: float = 0.0
    drift_min_examples: int = 2_000
    drift_cooldown_ms: int = 6 * 3_600_000
    # a retrain a drift alert (either kind) starts waits this much event time after the alert,
    # so that its span can hold the traffic the alert is about: its train split ends W + E
    # before its cutoff, so from W + E + K on it is all post-alert (0: at the alert's tick)
    triggered_retrain_delay_ms: int = 0
    # feature-drift monitor (models.feature_drift.DriftConfig fields; {} = the defaults)
    feature_drift: dict = field(default_factory=dict)
    # an event directory of the events before the stream (a bootstrap's history): its impressions
    # from warmup_from_ms on fill the windowed counts before the stream's first impression is
    # counted, so the stream's first window is not counted from empty (driftline.flink.WindowedCount);
    # they and its labels fill the dedup's memory of ids (a stream impression repeating one is a
    # duplicate) and the join: an impression still pending at the warm-up's cut (warmup_cut_ms)
    # joins its label in the stream, a late label finds its impression. Never served; the join's
    # outcomes resolved before the cut are the warm-up's (a bootstrap trained on them), never
    # emitted or learned; the later ones are the stream's ("": none; runners.stream.warmup_job)
    warmup_dir: str = ""
    warmup_from_ms: int = 0
    warmup_cut_ms: int = 0
    # where the warm-up's counting began (its first impression; a backfill over it counted from
    # there): the feature-drift monitor's origin for the windowed aggregates
    warmup_origin_ms: int = 0
    # local runs: serve the job's Flink metrics (the Learner's among them) in Prometheus' text
    # format on 127.0.0.1, on the first free port of this range, e.g. "9250-9259" ("": none;
    # driftline.flink.LoopbackPrometheus; on a cluster its conf decides: cluster up --prometheus-ports)
    prometheus_ports: str = ""
    # security: when set, event_dir, out and artifact must lie under one of these folders
    roots: list = field(default_factory=list)
    # the impressions and labels from Kafka topics instead of event_dir's folders
    # (runners.kafka.KafkaConfig fields; {} = the event directory). event_dir still names the
    # run's log for its summary: the directory a bounded replay's topics were published from
    kafka: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_paths({"event_dir": self.event_dir, "out": self.out, "artifact": self.artifact,
                     **({"warmup_dir": self.warmup_dir} if self.warmup_dir else {})}, self.roots)
        from models.feature_drift import DriftConfig

        DriftConfig(**self.feature_drift)  # fails early on a bad setting
        if self.kafka:
            from runners.kafka import KafkaConfig

            KafkaConfig(**self.kafka)
            if self.follow:
                raise ValueError("follow is for event directories: a Kafka source reads on until stopped "
                                 "(unless its end offsets are given)")
            if self.warmup_dir:
                raise ValueError("a warm-up is not supported before a Kafka stream (only before a file stream)")
        if not 1 <= self.parallelism <= self.max_parallelism <= 32_768:
            raise ValueError(f"need 1 <= parallelism ({self.parallelism}) <= max_parallelism "
                             f"({self.max_parallelism}) <= 32768 (Flink's bound on key groups)")
        if self.checkpoint_interval_ms < 10:
            raise ValueError("checkpoint_interval_ms must be >= 10 (Flink's minimum)")
        if self.dedup_retention_ms <= 0:
            raise ValueError("dedup_retention_ms must be > 0")
        if self.replay_speedup < 0:
            raise ValueError("replay_speedup must be >= 0 (0: as fast as possible)")
        if min(self.retrain_every_ms, self.swap_delay_ms, self.replay_buffer_ms, self.triggered_retrain_delay_ms) < 0:
            raise ValueError("retrain_every_ms, swap_delay_ms, replay_buffer_ms and triggered_retrain_delay_ms "
                             "must be >= 0")
        if self.retrain_every_ms and self.retrain_every_ms % self.learn_tick_ms:
            raise ValueError(f"retrain_every_ms must be a multiple of learn_tick_ms ({self.learn_tick_ms})")
        if self.drift_retrain_ratio and self.drift_retrain_ratio <= 1.0:
            raise ValueError("drift_retrain_ratio must be > 1 (or 0: off)")
        if self.retrain_every_ms and self.replay_buffer_ms < self.retrain_every_ms:
            raise ValueError("replay_buffer_ms must cover retrain_every_ms: the buffer holds the examples "
                             "written as the next retrain's segment")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JobConfig":
        d = dict(d)
        d["join"] = JoinConfig(**d.get("join", {}))
        d["online"] = OnlineConfig.from_dict(d.get("online", {}))
        return cls(**d)


def check_paths(paths: dict[str, str], roots: list[str]) -> None:
    """Paths from a job config go into Flink SQL DDL as quoted strings and name the folders the
    job reads and writes: refuse quotes, backticks and control characters (no SQL option
    injection), and with ``roots``, any path that resolves (symlinks and ``..`` followed) outside
    all of them."""
    allowed = [Path(r).resolve() for r in roots]
    for name, value in paths.items():
        text = str(value)
        if any(c in text for c in "'`\\") or any(ord(c) < 32 for c in text):
            raise ValueError(f"{name}: path {text!r} contains a quote, backslash or control character")
        if allowed and not any(Path(text).resolve().is_relative_to(r) for r in allowed):
            raise ValueError(f"{name}: {text} is outside the configured roots {[str(r) for r in allowed]}")


# ---- SQL ------------------------------------------------------------------------------------

PREDICTION_COLUMNS = [("event_id", "STRING"), ("event_time", "BIGINT"), ("p", "DOUBLE"),
                      ("base_logit", "DOUBLE"), ("delta_logit", "DOUBLE"), ("base_version", "STRING"),
                      ("delta_version", "BIGINT"), ("spec_fingerprint", "STRING"), ("arm", "STRING"),
                      ("served", "STRING"), ("base_only_reason", "STRING")]
UPDATE_COLUMNS = [("seq", "BIGINT"), ("event_id", "STRING"), ("resolution_time", "BIGINT"),
                  ("p_before", "DOUBLE"), ("label", "INT"), ("indices", "ARRAY<BIGINT>"),
                  ("weights", "ARRAY<DOUBLE>")]
EXAMPLE_COLUMNS = [("event_id", "STRING"), ("event_time", "BIGINT"), ("resolution_time", "BIGINT"),
                   ("label", "INT"), ("label_time", "BIGINT"), ("label_delay_ms", "BIGINT"),
                   ("kind", "STRING"), ("weight", "DOUBLE"), ("features", "STRING"), ("inputs", "STRING"),
                   ("spec_fingerprint", "STRING"), ("seq", "BIGINT"), ("dt", "STRING"), ("hr", "STRING")]
LATE_COLUMNS = [("event_id", "STRING"), ("event_time", "BIGINT"), ("label_time", "BIGINT"),
                ("label", "INT"), ("delay_ms", "BIGINT"), ("policy", "STRING")]
DEAD_COLUMNS = [("reason", "STRING"), ("detail", "STRING"), ("kind", "STRING"), ("origin", "STRING"),
                ("raw", "STRING")]
COLUMNS = {"predictions": PREDICTION_COLUMNS, "updates": UPDATE_COLUMNS, "examples": EXAMPLE_COLUMNS,
           "late_labels": LATE_COLUMNS, "dead_letter": DEAD_COLUMNS}


# ---- the job --------------------------------------------------------------------------------

DEBLOAT = "taskmanager.network.memory.buffer-debloat.enabled"
PROMETHEUS_PORT = "metrics.reporter.prom.port"


def prometheus_options(ports: str) -> dict[str, str]:
    """Flink options of our loopback Prometheus reporter (``runners/jvm/driftline/flink/
    LoopbackPrometheus.java``) on the first free port of ``ports`` ({} for ""): a local job's
    (``local_options``) and our cluster's (``runners.cluster.write_conf``)."""
    return {"metrics.reporter.prom.factory.class": "driftline.flink.LoopbackPrometheusFactory",
            PROMETHEUS_PORT: ports} if ports else {}


TMP_DIR = ".flink-tmp"  # a local job's Flink working files, in its run folder (local_options)


def local_options(cfg: JobConfig) -> dict[str, str]:
    """The mini-cluster's own options (a cluster's conf decides them under ``flink run``): every
    endpoint on 127.0.0.1, and buffer debloating for a paced or followed stream. There the
    Python operators lag behind a source that has read ahead into the network buffers, and a
    checkpoint barrier queues behind that data: 30,000 generated events at 600x, checkpoints
    every 5 s, took p50 16.1 s per checkpoint (3 completed in ~104 s) without it, 1.2 s (10-11
    completed) with it, the job as long (README, "Slow savepoints"). An unpaced bounded replay
    leaves it off (it cost throughput there). With ``prometheus_ports``, our loopback Prometheus
    reporter (the mini-cluster finds reporters on its class path, not in plugins/). Flink's
    working files (``io.tmp.dirs``: the TaskManager's and JobManager's folders, blobs, the RPC
    system's jar) in the run folder's ``TMP_DIR``, which ``runners.stream.run_job`` removes once
    the job's process has ended: in /tmp a process that ends without Flink's shutdown (a kill,
    a terminated run, the PyFlink gateway's end) left 41-163 MB of them each time (this
    machine's /tmp held 14 GB). ``flink_conf`` overrides either way."""
    from runners.jvm import LOCAL_ENDPOINTS

    return {**LOCAL_ENDPOINTS, **({DEBLOAT: "true"} if cfg.follow or cfg.replay_speedup else {}),
            **prometheus_options(cfg.prometheus_ports), "io.tmp.dirs": str(Path(cfg.out).resolve() / TMP_DIR)}


def _restart_backoff(conf, attempts: int) -> None:
    """Exponential-delay restarts: ``attempts`` in a row (1 s, 2 s, 4 s, ... at most 1 min
    apart; reset after an hour without a failure)."""
    conf.set_string("restart-strategy.type", "exponential-delay")
    conf.set_string("restart-strategy.exponential-delay.attempts-before-reset-backoff", str(attempts))
    conf.set_string("restart-strategy.exponential-delay.initial-backoff", "1 s")
    conf.set_string("restart-strategy.exponential-delay.backoff-multiplier", "2.0")
    conf.set_string("restart-strategy.exponential-delay.max-backoff", "1 min")
    conf.set_string("restart-strategy.exponential-delay.reset-backoff-threshold", "1 h")
    conf.set_string("restart-strategy.exponential-delay.jitter-factor", "0.1")


def configure(cfg: JobConfig):
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import EnvironmentSettings, StreamTableEnvironment

    from runners.jvm import prepare_local, under_flink_run

    # before anything starts the gateway JVM (Configuration() does): the Python operators'
    # endpoints on 127.0.0.1 (a no-op under `flink run`)
    prepare_local()
    conf = Configuration()
    if not under_flink_run():
        for key, value in local_options(cfg).items():
            conf.set_string(key, value)
    conf.set_string("python.executable", cfg.python_executable)
    conf.set_string("python.client.executable", cfg.python_executable)
    # the workers' start-up hook (runners/worker_site/sitecustomize.py: Beam's state sampler
    # stops in <= 5 ms at a bundle's end instead of up to 200 ms; README, where the time goes)
    conf.set_string("python.pythonpath", str(WORKER_SITE))
    conf.set_string("parallelism.default", str(cfg.parallelism))
    conf.set_string("pipeline.max-parallelism", str(cfg.max_parallelism))
    conf.set_string("python.metric.enabled", "true")  # the Learner's gauges and counters
    jars = []
    if cfg.kafka:  # Flink's Kafka connector (not part of PyFlink: runners.kafka.connector_jars)
        from runners.kafka import connector_jars

        jars = [j.as_uri() for j in connector_jars()]
        conf.set_string("pipeline.jars", ";".join(jars))
    conf.set_string("execution.checkpointing.interval", f"{cfg.checkpoint_interval_ms} ms")
    # the JobManager's memory storage caps state at 5 MB: checkpoints go to the run folder
    conf.set_string("execution.checkpointing.storage", "filesystem")
    conf.set_string("execution.checkpointing.dir", (Path(cfg.out).resolve() / "checkpoints").as_uri())
    conf.set_string("execution.checkpointing.snapshot-compression", str(cfg.snapshot_compression).lower())
    # a fault restarts from the last checkpoint a few times; a deterministic failure then fails
    # the job instead of looping. Backing off (1 s, 2 s, 4 s, ... at most 1 min; reset after an
    # hour without a failure): failures in a burst while a TaskManager comes back (its tasks
    # and Python workers deploying on a loaded machine) spread over half a minute with the
    # default 5 attempts instead of using them up in 5 s
    if cfg.restart_attempts <= 0:  # fail at the first failure (Flink refuses 0 attempts to back off)
        conf.set_string("restart-strategy.type", "none")
    else:
        _restart_backoff(conf, cfg.restart_attempts)
    if cfg.replay_speedup:
        # a checkpoint barrier waits until the Python worker finished its current bundle: at a
        # paced rate a default bundle (up to 100k rows) takes minutes, so a paced job keeps its
        # bundles to about one second of paced input (two rows per tick at the Learner)
        rows_per_s = 2 * cfg.replay_speedup * 1000 / cfg.learn_tick_ms
        conf.set_string("python.fn-execution.bundle.size", str(max(1, math.ceil(rows_per_s))))
        conf.set_string("python.fn-execution.bundle.time", "200")
    for key, value in cfg.flink_conf.items():  # the user's own Flink options win
        conf.set_string(key, str(value))
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    if jars:  # the gateway's own class loader too: the job's Kafka sink is built through it
        from pyflink.util.java_utils import add_jars_to_context_class_loader

        add_jars_to_context_class_loader(jars)
    t_env = StreamTableEnvironment.create(env, EnvironmentSettings.in_streaming_mode())
    if cfg.follow and cfg.idle_timeout_ms > 0:
        t_env.get_config().set("table.exec.source.idle-timeout", f"{cfg.idle_timeout_ms} ms")
    # keyed SQL state expires after this much processing time (a bound; see JobConfig)
    t_env.get_config().set("table.exec.state.ttl", f"{cfg.dedup_ttl_ms} ms")
    return env, t_env


def labels_join_ddl(table: str, path: str, watermark_delay_ms: int, monitor: str = "",
                    connector: dict[str, str] | None = None) -> str:
    """The labels for the join, stamped at label time + 1 ms (rowtime ``jts``): a label at
    exactly the impression time comes after its impression. ``connector``: these table options
    instead of the folder's (a Kafka topic)."""
    return (f"CREATE TABLE {table} (`event_id` STRING, `label_time` BIGINT, `label` INT, "
            f"jts AS TO_TIMESTAMP_LTZ(`label_time` + 1, 3), "
            f"WATERMARK FOR jts AS jts - {interval(watermark_delay_ms + 1)}) WITH ("
            f"{with_options(connector or {'connector': 'filesystem', 'path': path})}, 'format' = 'json', "
            f"'json.fail-on-missing-field' = 'false'{monitor})")


LABEL_INFO = ("label", "expired")  # resolved examples; every other ``info`` is a label outcome


JOIN_OUTPUT = ["event_id", "resolution_time", "event_time", "label", "label_time", "info", "inputs"]


def _types(names) -> list:
    from pyflink.common import Types

    return [getattr(Types, n)() for n in names]


def dedup_join(imps: JavaRows, labels: JavaRows, unit: str | None, input_types: dict[str, str],
               join: JoinConfig, retention_ms: int, warm: str | None = None, cut_ms: int = 0):
    """The dedup and the delayed-label join, in one Java operator per event_id
    (``driftline.flink.DedupJoin``), over the impressions ``imps`` (the windowed counts' rows)
    and the ``labels`` (event_id, label_time, label, stamped at label time + 1). Returns the
    first occurrences (``JavaRows`` event_id, event_time, unit, the inputs), the join's
    outcomes (``JOIN_OUTPUT``, timestamped with the deciding row's time) and the dead-letter
    lines (duplicate impressions and labels, and rows that came behind the watermark), each in
    event time.

    The dedup numbers each id's occurrences in event time (ties: arrival order); an id is
    forgotten ``retention_ms`` of event time after its last occurrence, so every run of a log
    decides the same. The join states ``pipelines.join`` (``reference_join`` in plain Python;
    tests hold the job to it): no watermark hold-back, a positive is out at its label, a
    negative at its deadline. A pending impression keeps only its raw inputs (a JSON array of
    values), not its features: the Learner computes those with the same artifact
    (``transforms.apply.inputs_table``); they are dropped at its deadline unless late labels
    become corrections (``late_policy``), the rest of the join's state in event time after the
    late horizon (expired for every later row; freed by the sweeps of the ids' memory, every
    retention / 16 of event time: no timer per key). Measured with
    ``bench/stream.py --only-checkpoint``. ``warm``: the warm-up flag column of the impressions
    (and of the labels, if they have it): those rows take their occurrence numbers (a stream
    impression repeating one is a duplicate) and go into the join, never out as first
    occurrences or dead letters; the join's outcomes of keys with only warm-up rows are out
    only if resolved at or after ``cut_ms`` (the warm-up's cut: the earlier ones are the
    warm-up's), so warm-up and stream give the stream's part of the whole log streamed."""
    from pyflink.common import Types
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    line_type = Types.ROW_NAMED(["line"], [Types.STRING()]).get_java_type_info()
    out = [Types.STRING(), Types.LONG(), Types.LONG(), Types.INT(), Types.LONG(), Types.STRING(), Types.STRING()]
    join_type = Types.ROW_NAMED(JOIN_OUTPUT, out).get_java_type_info()
    op = jvm.driftline.flink.DedupJoin(int(retention_ms), int(join.window_ms), int(join.late_horizon_ms),
                                       join.late_policy == "correction", int(NO_TIME),
                                       java_array(jvm.String, imps.names), unit,
                                       java_array(jvm.String, list(input_types)), imps.stream.getType(),
                                       labels.stream.getType(), join_type, line_type)
    if warm:
        op.warmField(warm, int(cut_ms))
        if warm in labels.names:
            op.warmLabels(labels.names.index(warm))
    names = ["event_id", "event_time", "unit", *input_types]
    types = [Types.STRING(), Types.LONG(), Types.STRING(), *_types(INPUT_TYPES[t] for t in input_types.values())]
    key_type = Types.STRING().get_java_type_info()
    first = (imps.stream.keyBy(imps.key_selector(["event_id"]), key_type)
             .connect(labels.stream.keyBy(labels.key_selector(["event_id"]), key_type))
             .transform("dedup_join", Types.ROW_NAMED(names, types).get_java_type_info(),
                        jvm.driftline.flink.SweepingCoProcessOperator(op)).uid("dedup_join"))
    return (JavaRows(first, names, types), JavaRows(first.getSideOutput(op.joinTag()), JOIN_OUTPUT, out),
            first.getSideOutput(op.deadLettersTag()))


PACK_KINDS = {"event_id": "string", "event_time": "long", "resolution_time": "long", "label": "int",
              "label_time": "long", "info": "string", "inputs": "string"}  # the join's outcomes
INPUT_KINDS = {"double": "double", "string": "string", "bigint": "long"}  # input type -> TickPack kind
INPUT_TYPES = {"double": "DOUBLE", "string": "STRING", "bigint": "LONG"}  # input type -> PyFlink type


def tick_pack(rows: JavaRows, kind: str, tick_ms: int, kinds: dict[str, str]) -> JavaRows:
    """One row ``(kind, payload)`` per tick of event time holding the columns ``kinds`` (name ->
    string | long | int | double | bytes) of all of its ``rows`` as an Arrow IPC stream
    (``runners.packing.unpack``), timestamped at the tick's last millisecond, by our Java
    ``driftline.flink.TickPack``."""
    from pyflink.common import Types
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    op = jvm.driftline.flink.TickPack(kind, int(tick_ms), java_array(jvm.String, rows.names),
                                      java_array(jvm.String, list(kinds)),
                                      java_array(jvm.String, list(kinds.values())), rows.stream.getType())
    return rows.then([], op, [("kind", Types.STRING()), ("payload", Types.PRIMITIVE_ARRAY(Types.BYTE()))],
                     f"tick_pack_{kind}", append=False)


def json_object(cols: list[str]) -> str:
    return "JSON_OBJECT(" + ", ".join(f"'{c}' VALUE {_q(c)}" for c in cols) + ")"


def json_array(cols: list[str]) -> str:
    """The values only, nulls kept in place (``transforms.apply.inputs_table`` reads it back)."""
    return "JSON_ARRAY(" + ", ".join(_q(c) for c in cols) + " NULL ON NULL)"


def add_source(t_env, name: str, folder: Path, ddl, follow: bool) -> None:
    """Register ``name`` over an event folder. Flink's file source reads the part files of a
    folder in an order of its own (not by name), and one watermark over all of them would
    make whole earlier parts late (dropped). So a bounded replay reads each part as its own
    source and unions them: the union's watermark is the minimum, every part stays in order.
    A followed folder is one monitored source: parts must be published in event-time order.
    (Watermark alignment would read the parts one after another, but the filesystem connector
    ignores the SQL watermark options: it does not implement SupportsWatermarkPushDown; nor
    can a quiet label folder be marked idle per table, only all sources, ``idle_timeout_ms``.)"""
    parts = sorted(p for p in folder.glob("part-*") if p.is_file())
    if follow or len(parts) <= 1:
        t_env.execute_sql(ddl(name, str(folder)))
        return
    for i, p in enumerate(parts):
        t_env.execute_sql(ddl(f"{name}_p{i}", str(p)))
    t_env.create_temporary_view(name, t_env.sql_query(
        " UNION ALL ".join(f"SELECT * FROM {name}_p{i}" for i in range(len(parts)))))


def build(env, t_env, cfg: JobConfig, source: SourceSpec, artifact) -> None:
    """Add the whole job to ``env``/``t_env`` (executed by the caller)."""
    from pyflink.common import Types
    from pyflink.datastream import DataStream

    from runners.learner import LINE, OUTPUT_TAGS, Learner

    spec = artifact.spec
    ev = Path(cfg.event_dir).resolve()
    out = Path(cfg.out).resolve()
    D = cfg.join.watermark_delay_ms
    monitor = f", 'source.monitor-interval' = '{cfg.monitor_interval_ms} ms'" if cfg.follow else ""

    def imp_ddl(name: str, path: str) -> str:
        ddl = impressions_ddl(name, source, path, D)
        return ddl[:-1] + monitor + ")" if monitor else ddl

    outputs: dict[str, list] = defaultdict(list)  # each output's Java streams of line rows (to Kafka)
    if cfg.kafka:  # one source per topic: Kafka's watermarks are per partition, each in event-time order
        from runners.kafka import KafkaConfig

        kafka = KafkaConfig(**cfg.kafka)
        if kafka.validate:  # raw records: validated in the stream, the invalid ones dead letters
            if not cfg.replay_speedup:  # (a paced job keeps its small bundles: configure)
                # the validation's pandas UDF in bundles and Arrow batches of 10,000 records, not
                # Flink's 1,000: its exchange with Python ~1/4 cheaper (README, Kafka's cost). Set
                # in the table's config, which PyFlink merges into every Python operator's that
                # does not set its own: the Learner's bundles too (measured with it)
                for key in ("python.fn-execution.bundle.size", "python.fn-execution.arrow.batch.size"):
                    if key not in cfg.flink_conf:
                        t_env.get_config().set(key, "10000")
            for stream, rows in validated_kafka_sources(t_env, kafka, source, D):
                DataStream(rows.stream).sink_to(file_sink(str(out / "dead_letter"))) \
                    .name(f"sink_dead_letter_{stream}").uid(f"sink_dead_letter_{stream}")
                outputs["dead_letter"].append(rows.stream)
        else:
            t_env.execute_sql(impressions_ddl("impressions", source, "", D, connector=kafka.options("impressions")))
            t_env.execute_sql(labels_join_ddl("labels", "", D, connector=kafka.options("labels")))
    else:
        add_source(t_env, "impressions", ev / "impressions", imp_ddl, cfg.follow)
        add_source(t_env, "labels", ev / "labels", lambda n, p: labels_join_ddl(n, p, D, monitor), cfg.follow)

    raw_cols = ["event_id", "event_time", *source.string_fields, *source.numeric_fields]
    agg_names = [a.name for a in spec.aggregates]
    feature_cols = [*source.string_fields, *source.numeric_fields, *agg_names]
    # the inputs as the transforms see them (the Learner applies the artifact to each tick's
    # impressions, and to the join's inputs arrays of resolved ones)
    input_types = {c: "double" if c in source.numeric_fields else "string" if c in source.string_fields
                   else "bigint" for c in feature_cols}
    # The impressions' windowed counts, then the dedup and the join in one of our Java operators
    # per event_id (each impression buffered and shuffled once; the labels read once), without
    # Table round trips: the first occurrences for the Learner, the join's outcomes (examples
    # and label outcomes: late, unknown impression, label before impression) and the
    # dead letters, with their reason: duplicates (they never reach the Learner), and rows that
    # came behind the watermark (more out of order than watermark_delay_ms: the keyed operators
    # cannot process them in event time; an impression is caught by the first windowed count)
    label_cols = ["event_id", "label_time", "label", "jts"]
    label_types = [Types.STRING(), Types.LONG(), Types.INT(), Types.INSTANT()]
    label_sql = "SELECT `event_id`, `label_time`, label, jts FROM labels"
    counted_from, warm = "impressions", None
    if cfg.warmup_dir:
        # the warm-up's impressions go through the windowed counts first (the union's watermark
        # waits for them), and with its labels into the dedup's memory and the join, flagged
        warm_dir = Path(cfg.warmup_dir).resolve()
        add_source(t_env, "warmup", warm_dir / "impressions", lambda n, p: impressions_ddl(n, source, p, D), False)
        t_env.create_temporary_view("impressions_warmed", t_env.sql_query(
            "SELECT *, FALSE AS `_warm` FROM impressions UNION ALL "
            f"SELECT *, TRUE AS `_warm` FROM warmup WHERE `event_time` >= {int(cfg.warmup_from_ms)}"))
        counted_from, warm = "impressions_warmed", "_warm"
        if (warm_dir / "labels").is_dir():
            add_source(t_env, "warmup_labels", warm_dir / "labels", lambda n, p: labels_join_ddl(n, p, D), False)
            # a label before its impression still finds it as one (label_before_impression)
            label_sql = ("SELECT `event_id`, `label_time`, label, jts, FALSE AS `_warm` FROM labels UNION ALL "
                         "SELECT `event_id`, `label_time`, label, jts, TRUE AS `_warm` FROM warmup_labels "
                         f"WHERE `label_time` >= {int(cfg.warmup_from_ms - cfg.join.window_ms)}")
            label_cols, label_types = [*label_cols, "_warm"], [*label_types, Types.BOOLEAN()]
    labels = table_rows(t_env, label_sql, label_cols, label_types, uid="labels")
    counted = windowed_count_rows(t_env, counted_from, raw_cols, source, spec.aggregates, warm=warm,
                                  uid="impressions")
    imps, resolved, dead = dedup_join(counted,
                                      labels, source.entity_fields[0] if source.entity_fields else None,
                                      input_types, cfg.join, cfg.dedup_retention_ms, warm=warm,
                                      cut_ms=warm_cut(cfg))
    # The Learner learns the join's outcomes in order (corrections too) and writes late labels
    # and dead letters. Impressions and outcomes reach it packed, one value per tick (Java
    # TickPack): impressions with their raw inputs, featurized in the Learner per tick (no
    # Python operator before it: each was measured as the busiest chain on a dense stream)
    tick = cfg.learn_tick_ms
    imp_kinds = {"event_id": "string", "event_time": "long", "unit": "string",
                 **{c: INPUT_KINDS[input_types[c]] for c in feature_cols}}
    ticks = [tick_pack(imps, "imp", tick, imp_kinds),
             tick_pack(resolved, "ex", tick, {c: PACK_KINDS[c] for c in JOIN_OUTPUT})]

    learner = Learner(json.dumps({"job": cfg.to_dict(), "dimension": spec.dimension,
                                  "spec_fingerprint": spec.fingerprint(), "registry": str(out / "registry"),
                                  "artifact": artifact.to_dict(), "input_types": input_types}))
    preds = (keyed_by_constant(ticks).process(learner, output_type=LINE).name("learner").uid("learner")
             .set_parallelism(1))
    # every output through Flink's FileSink (sink v2): part files are committed when a
    # checkpoint completes, the final one of a bounded job included, so a restart never
    # duplicates or drops them (the table filesystem sink committed all at end of input)
    preds.sink_to(file_sink(str(out / "predictions"))).name("sink_predictions").uid("sink_predictions")
    outputs["predictions"].append(preds._j_data_stream)
    # each side output straight from the Learner's operator: PyFlink's ``get_side_output`` adds an
    # identity Python map (``map(lambda i: i)``), i.e. every updates/examples/metrics line would
    # cross into a Python worker and back (measured: nearly half of the JVM's exchange with Python;
    # re-encoding those strings alone ~4 % of the JVM's samples)
    for name, tag in OUTPUT_TAGS.items():
        if name == "updates" and not cfg.write_updates:
            continue
        side = preds._j_data_stream.getSideOutput(tag.get_java_output_tag())
        DataStream(side).sink_to(file_sink(str(out / name), partitioned=name == "examples")).name(f"sink_{name}") \
            .uid(f"sink_{name}")
        outputs[name].append(side)
    dead = DataStream(dead)
    if counted.dead_letters:
        dead = dead.union(*(DataStream(d) for d in counted.dead_letters))
    dead.sink_to(file_sink(str(out / "dead_letter"))).name("sink_dead_letter_keyed").uid("sink_dead_letter_keyed")
    outputs["dead_letter"].append(dead._j_data_stream)
    if cfg.kafka:
        kafka_outputs(KafkaConfig(**cfg.kafka), outputs)


def kafka_outputs(kafka, outputs: dict[str, list]) -> None:
    """Each output of ``kafka.output_topics`` also to its topic: each of its streams (rows whose
    first field is the text of one or more JSON lines) split into one record per message in the
    JVM (``driftline.flink.SplitLines``), united, into a Kafka sink (at least once, or exactly
    once with ``kafka.exactly_once``)."""
    from pyflink.common import Types
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    from runners.kafka import output_sink

    for name, topic in kafka.output_topics.items():
        lines = [DataStream(s.flatMap(get_gateway().jvm.driftline.flink.SplitLines(),
                                      Types.STRING().get_java_type_info())).name(f"split_{name}")
                 .uid(f"split_{name}" + (f"_{i}" if i else "")) for i, s in enumerate(outputs[name])]
        (lines[0].union(*lines[1:]) if len(lines) > 1 else lines[0]) \
            .sink_to(output_sink(kafka, topic, name)).name(f"sink_{name}_kafka").uid(f"sink_{name}_kafka")


def validated_kafka_sources(t_env, kafka, source: SourceSpec, delay_ms: int) -> list[tuple[str, JavaRows]]:
    """The ``impressions`` and ``labels`` views over topics of producers' raw records: each
    message validated by ``runners.kafka.CheckRecords`` (``pipelines.validate``'s rules, a
    vectorized Python function), the valid ones typed from the validated record (the columns,
    rowtime and watermark of the file sources); returns the dead letters of each topic (their
    JSON lines). The watermark is taken from the raw record's time before validation (Flink
    needs it at the source; ``driftline.flink.JsonTime``), a time the validation would refuse
    (out of its bounds, not a JSON integer, in a malformed record) counting as 0: an invalid
    record can never move the watermark by such a time."""
    from pyflink.common import Types
    from pyflink.table import DataTypes, Schema
    from pyflink.table.udf import udf

    from pipelines.validate import ValidationConfig
    from runners.kafka import CheckRecords, checked_columns
    from transforms.flink_sql import ROWTIME, set_uids

    sql_types = {"STRING": DataTypes.STRING(), "BIGINT": DataTypes.BIGINT(), "DOUBLE": DataTypes.DOUBLE(),
                 "INT": DataTypes.INT()}
    bounds = ValidationConfig()
    # the record's time for the watermark, read in the JVM once per record (driftline.flink.JsonTime)
    t_env.create_java_temporary_system_function("driftline_json_time", "driftline.flink.JsonTime")
    dead = []
    for stream, kind, time_field, shift, rt in (("impressions", "impression", "event_time", 0, ROWTIME),
                                                ("labels", "label", "label_time", 1, "jts")):
        t = (f"driftline_json_time(`line`, '{time_field}', CAST({bounds.min_time_ms} AS BIGINT), "
             f"CAST({bounds.max_time_ms} AS BIGINT))")
        opts = kafka.options(stream)
        t_env.execute_sql(
            f"CREATE TABLE {stream}_raw (`line` BYTES, `_part` INT METADATA FROM 'partition' VIRTUAL, "
            f"`_off` BIGINT METADATA FROM 'offset' VIRTUAL, "
            f"{rt} AS TO_TIMESTAMP_LTZ({t} + {shift}, 3), "
            f"WATERMARK FOR {rt} AS {rt} - {interval(delay_ms + 1)}) WITH ({with_options(opts)}, 'format' = 'raw')")
        cols = checked_columns(source, kind)
        row = DataTypes.ROW([DataTypes.FIELD("dl", DataTypes.STRING()),
                             *(DataTypes.FIELD(n, sql_types[t]) for n, t in cols)])
        t_env.create_temporary_function(f"check_{kind}", udf(CheckRecords(source.to_dict(), kind, opts["topic"]),
                                                             result_type=row, func_type="pandas"))
        # validated once: the checked rows leave the planner as one DataStream (their rowtime as
        # its timestamps, the source's watermarks), which both views below read (a view over the
        # query itself would be planned again, Kafka source and validation included, per use)
        checked = t_env.to_data_stream(t_env.sql_query(
            f"SELECT check_{kind}(`line`, `_part`, `_off`) AS r, {rt} AS `_t` FROM {stream}_raw"))
        set_uids(checked._j_data_stream, f"{stream}_checked")
        t_env.create_temporary_view(f"{stream}_checked", t_env.from_data_stream(
            checked, Schema.new_builder().column("r", row).column("_t", DataTypes.TIMESTAMP_LTZ(3))
            .column_by_metadata(rt, DataTypes.TIMESTAMP_LTZ(3), "rowtime").watermark(rt, "SOURCE_WATERMARK()")
            .build()))
        t_env.create_temporary_view(stream, t_env.sql_query(
            f"SELECT {', '.join(f'r.{_q(n)} AS {_q(n)}' for n, _ in cols)}, {rt} FROM {stream}_checked "
            "WHERE r.dl IS NULL"))
        dead.append((stream, table_rows(t_env, f"SELECT r.dl AS line FROM {stream}_checked WHERE r.dl IS NOT NULL",
                                        ["line"], [Types.STRING()], uid=f"{stream}_dead")))
    return dead


def warm_cut(cfg: JobConfig) -> int:
    """The warm-up's cut: the job's, else (a job.json of a build before 2026-12-06 had none, and
    0 would emit every warm-up outcome again) the warm-up directory's own."""
    if cfg.warmup_cut_ms or not cfg.warmup_dir:
        return cfg.warmup_cut_ms
    from pipelines.eventlog import cut_time

    return cut_time(cfg.warmup_dir) or 0


def keyed_by_constant(parts: list[JavaRows]):
    """The union of ``parts`` as a PyFlink ``KeyedStream`` with one key (0), keyed in the JVM:
    what ``DataStream.key_by(lambda r: 0)`` gives, without its Python map operator (each row
    wrapped as ``(0, row)`` by our ``driftline.flink.ConstantKey``, chained to its producer,
    then Flink's ``KeyByKeySelector``, as PyFlink's key_by does)."""
    from pyflink.common import Types
    from pyflink.common.typeinfo import _from_java_type
    from pyflink.datastream import DataStream, KeyedStream
    from pyflink.java_gateway import get_gateway

    gateway = get_gateway()
    row_type = _from_java_type(parts[0].stream.getType())
    wrapped = [DataStream(p.stream.map(gateway.jvm.driftline.flink.ConstantKey(),
                                       Types.ROW([Types.INT(), row_type]).get_java_type_info())
                               .name("constant_key").uid(f"{p.stream.getTransformation().getUid()}/constant_key"))
               for p in parts]
    union = wrapped[0].union(*wrapped[1:])
    keyed = union._j_data_stream.keyBy(gateway.jvm.KeyByKeySelector(), Types.ROW([Types.INT()]).get_java_type_info())
    return KeyedStream(keyed, row_type, DataStream(parts[0].stream))


def file_sink(path: str, partitioned: bool = False):
    """A FileSink of one output: each row's ``line`` field (one or more JSON lines) written
    verbatim, part files rolled at every checkpoint and visible when it completes; the
    examples bucketed by their own event-time partition (``dt=…/hr=…``, the rows' 2nd and 3rd
    fields). The encoder and bucket assigner are ours (``runners/jvm/driftline/flink``)."""
    from pyflink.common.serialization import Encoder
    from pyflink.datastream.connectors.file_system import BucketAssigner, FileSink, RollingPolicy
    from pyflink.java_gateway import get_gateway

    classes = get_gateway().jvm.driftline.flink
    try:
        encoder = classes.LineEncoder()
        assigner = BucketAssigner(classes.PartitionBucketAssigner()) if partitioned \
            else BucketAssigner.base_path_bucket_assigner()
    except TypeError as e:  # py4j: a JavaPackage, not a class, when the jar is missing
        raise RuntimeError("driftline's JVM classes are not on Flink's class path "
                           "(runners.jvm.lib_dir: FLINK_LIB_DIR; a JDK is needed to build them)") from e
    return (FileSink.for_row_format(path, Encoder(encoder)).with_bucket_assigner(assigner)
            .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy()).build())


def built(cfg: JobConfig):
    """A configured environment holding the whole job of ``cfg`` (not executed yet); returns
    (env, source name)."""
    from pipelines.eventlog import read_manifest
    from transforms.artifact import TransformArtifact

    source = SourceSpec.from_dict(read_manifest(cfg.event_dir)["source"])  # as read_stream does
    artifact = TransformArtifact.load(cfg.artifact)
    if artifact.spec.source != source.name:
        raise ValueError(f"artifact is for source {artifact.spec.source!r}, events are {source.name!r}")
    env, t_env = configure(cfg)
    build(env, t_env, cfg, source, artifact)
    return env, source.name


def run(cfg: JobConfig) -> str:
    """Build and execute the job (blocks until a bounded replay ends); returns the job id."""
    env, name = built(cfg)
    result = env.execute(f"driftline {name}")
    from runners.jvm import after_local_job

    after_local_job()
    return str(result.get_job_id()) if hasattr(result, "get_job_id") else ""


def operators(cfg: JobConfig) -> list[dict]:
    """The job's operators as Flink would run them (built, not executed), in the stream graph's
    order: each one's ``name``, ``uid`` and ``id``, the operator id its state has in checkpoints
    and savepoints (a hash of its uid: every operator of the job has one, ``set_uids``). A
    savepoint restores into a build whose stateful operators have the same ids; compare two
    builds' before resuming one (``driftline operators``)."""
    return graph(cfg)[0]


def graph(cfg: JobConfig) -> tuple[list[dict], list[dict]]:
    """``operators`` and the job graph's vertices (the chains Flink deploys as tasks): each
    vertex's ``id``, ``name``, ``parallelism``, ``max_parallelism``, ``operators`` (operator
    ids) and ``inputs`` (the producing vertex and the edge's distribution pattern), what Flink
    checks a savepoint's operators against (``runners.savepoints``)."""
    from pyflink.java_gateway import get_gateway

    env, _ = built(cfg)
    stream_graph = env._generate_stream_graph(clear_transformations=True)  # what execute() submits
    jvm = get_gateway().jvm
    ids = jvm.org.apache.flink.streaming.api.graph.StreamGraphHasherV2().traverseStreamGraphAndGenerateHashes(
        stream_graph)
    ops = []
    for node in sorted(stream_graph.getStreamNodes().toArray(), key=lambda n: n.getId()):
        ops.append({"name": node.getOperatorName(), "uid": node.getTransformationUID(),
                    "id": bytes(ids.get(node.getId())).hex()})
    vertices = []
    for v in stream_graph.getJobGraph().getVerticesSortedTopologicallyFromSources().toArray():
        vertices.append({"id": v.getID().toHexString(), "name": v.getName(),
                         "parallelism": v.getParallelism(), "max_parallelism": v.getMaxParallelism(),
                         "operators": [p.getGeneratedOperatorID().toHexString() for p in v.getOperatorIDs()],
                         "inputs": [{"from": e.getSource().getProducer().getID().toHexString(),
                                     "pattern": e.getDistributionPattern().name()} for e in v.getInputs()]})
    return ops, vertices


if __name__ == "__main__":  # `python -m runners.flink_job CONFIG.json`, also what `flink run -py` runs
    if sys.argv[1] == "--operators":  # `python -m runners.flink_job --operators CONFIG.json`: JSON lines
        for op in operators(JobConfig.from_dict(json.loads(Path(sys.argv[2]).read_text()))):
            print(json.dumps(op))
    else:
        print(run(JobConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))))
