"""Windowed aggregates in Flink, and the DDL that reads an event directory's impressions as a
Flink table with a watermark.

The streaming job computes the aggregates with ``windowed_counts``: our Java keyed operator
(``runners/jvm/driftline/flink/WindowedCount.java``), O(1) per row. ``aggregates_sql`` is the
same definition in Flink SQL's own OVER windows, which scan every row a key holds on every
row (quadratic in a hot key's rows per window); tests hold the two, the Beam backfill and the
numpy reference equal.

Flink's ``RANGE BETWEEN INTERVAL w PRECEDING AND CURRENT ROW`` counts rows in [t - w, t],
*including* every row at exactly t (peers). ``transforms.aggregates`` defines the count over
[t - w, t), so each aggregate subtracts the peers, counted by a zero-width OVER window:

    count[t - w, t) = COUNT(*) OVER (RANGE w PRECEDING) - COUNT(*) OVER (RANGE 0 PRECEDING)

Flink requires one window definition per SELECT, so every window is one nesting level. The
OVER operator holds rows until the watermark passes them and emits them in event-time order;
rows that arrive behind the watermark are dropped by Flink, so the watermark delay must cover
the source's disorder (``watermark_delay_ms``; the DDL adds 1 ms so that ties are never late).
Our ``WindowedCount`` writes such rows as dead letters instead (``JavaRows.dead_letters``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.events import SourceSpec
from transforms.spec import FeatureSpec

ROWTIME = "ts"


def _q(name: str) -> str:
    return f"`{name}`"


def interval(ms: int) -> str:
    """A Flink SQL day-time interval literal of ``ms`` milliseconds (< 100 days)."""
    if not 0 <= ms < 100 * 86_400_000:
        raise ValueError(f"interval of {ms} ms is out of range [0, 100 days)")
    d, rest = divmod(int(ms), 86_400_000)
    h, rest = divmod(rest, 3_600_000)
    m, rest = divmod(rest, 60_000)
    sec, milli = divmod(rest, 1000)
    return f"INTERVAL '{d} {h:02d}:{m:02d}:{sec:02d}.{milli:03d}' DAY TO SECOND(3)"


def impressions_ddl(table: str, source: SourceSpec, path: str, watermark_delay_ms: int,
                    fmt: str = "json", connector: dict[str, str] | None = None) -> str:
    """CREATE TABLE for JSONL impressions (an event directory's ``impressions/`` folder, or with
    ``connector``, those table options instead of the folder's: a Kafka topic, ``runners.kafka``).

    The watermark trails the newest event time by ``watermark_delay_ms`` + 1 ms: Flink treats
    a row *at* the watermark as late, and a row that ties with the newest one is not late."""
    cols = [f"{_q('event_id')} STRING", f"{_q('event_time')} BIGINT"]
    cols += [f"{_q(n)} STRING" for n in source.string_fields]
    cols += [f"{_q(n)} DOUBLE" for n in source.numeric_fields]
    cols += [f"{ROWTIME} AS TO_TIMESTAMP_LTZ({_q('event_time')}, 3)",
             f"WATERMARK FOR {ROWTIME} AS {ROWTIME} - {interval(watermark_delay_ms + 1)}"]
    return (f"CREATE TABLE {table} (\n  " + ",\n  ".join(cols) + "\n) WITH ("
            f"{with_options(connector or {'connector': 'filesystem', 'path': path})}, 'format' = '{fmt}', "
            f"'json.fail-on-missing-field' = 'false', 'json.ignore-parse-errors' = 'false')")


def with_options(options: dict[str, str]) -> str:
    """Table options as a WITH clause's list (values checked by their callers: no quotes)."""
    return ", ".join(f"'{k}' = '{v}'" for k, v in options.items())


def aggregates_sql(spec: FeatureSpec, source_table: str, columns: list[str]) -> str:
    """SELECT that adds one BIGINT column per aggregate of ``spec`` to ``columns`` of
    ``source_table`` (which must have the rowtime attribute ``ts``, kept in the output)."""
    carry = list(dict.fromkeys(list(columns) + [k for a in spec.aggregates for k in a.keys]))
    keep = [_q(c) for c in carry] + [ROWTIME]
    sql = f"SELECT {', '.join(keep)} FROM {source_table}"
    for a in spec.aggregates:
        part = ", ".join(_q(k) for k in a.keys)
        ties, incl = f"_{a.name}_ties", f"_{a.name}_incl"
        sql = (f"SELECT *, COUNT(*) OVER (PARTITION BY {part} ORDER BY {ROWTIME} "
               f"RANGE BETWEEN {interval(0)} PRECEDING AND CURRENT ROW) AS {ties} FROM ({sql})")
        sql = (f"SELECT *, COUNT(*) OVER (PARTITION BY {part} ORDER BY {ROWTIME} RANGE BETWEEN "
               f"{interval(a.window_ms)} PRECEDING AND CURRENT ROW) AS {incl} "
               f"FROM ({sql})")
        sql = f"SELECT {', '.join(keep)}, {incl} - {ties} AS {_q(a.name)} FROM ({sql})"
        keep.append(_q(a.name))
    out = [_q(c) for c in columns] + [ROWTIME] + [_q(a.name) for a in spec.aggregates]
    return f"SELECT {', '.join(out)} FROM ({sql})"


def windowed_counts(t_env, name: str, table: str, columns: list[str], source: SourceSpec, aggregates) -> None:
    """Register view ``name``: ``columns`` of ``table``, its rowtime ``ts``, and one BIGINT per
    aggregate (``transforms.spec.Aggregate``): the rows of its key in [t - W, t), as
    ``aggregates_sql`` defines them in SQL. Computed by our Java
    ``driftline.flink.WindowedCount`` (one keyed operator per aggregate, O(1) per row), not
    the SQL RANGE OVERs, which scan all of a key's rows on every row (measured: 60 % of the
    job's JVM time on a dense stream; ``runners/jvm/driftline/flink/WindowedCount.java``).
    Goes through a DataStream, so every plan using the view shares one chain (as
    ``runners.flink_job.shared_view``). Our classes must be on Flink's class path
    (``runners.jvm.prepare_local`` before the gateway starts, or a cluster's lib)."""
    rows = windowed_count_rows(t_env, table, columns, source, aggregates)
    stream_view(t_env, name, rows.data_stream(), [*columns, *(a.name for a in aggregates)])


@dataclass
class JavaRows:
    """A Java DataStream of named rows (py4j), for chaining our keyed operators without a
    round trip through the Table API between them."""

    stream: object  # a py4j DataStream<Row>
    names: list[str]
    types: list  # PyFlink TypeInformation, one per name
    # py4j DataStreams of dead-letter lines (rows ``line``) the operators so far wrote: the
    # rows they could not process (behind the watermark); carried along by ``then``
    dead_letters: list = field(default_factory=list)

    def data_stream(self):
        from pyflink.datastream import DataStream

        return DataStream(self.stream)

    def key_selector(self, key: list[str]):
        """The rows' key by the fields ``key``, as one string (``driftline.flink.FieldsKey``)."""
        from pyflink.java_gateway import get_gateway

        jvm = get_gateway().jvm
        return jvm.driftline.flink.FieldsKey(java_array(jvm.int, [self.names.index(k) for k in key]),
                                             java_array(jvm.String, list(key)))

    def then(self, key: list[str], operator, fields: list[tuple[str, object]], op_name: str,
             append: bool = True) -> "JavaRows":
        """Key the rows by the fields ``key`` (``driftline.flink.FieldsKey``) and apply the keyed
        process function ``operator`` (py4j), whose rows are these with ``fields`` (name, type)
        appended, or (``append=False``) exactly ``fields``. ``op_name`` is its name and its uid
        (its state's id in checkpoints and savepoints)."""
        from pyflink.common import Types
        from pyflink.java_gateway import get_gateway

        names = [*(self.names if append else []), *(n for n, _ in fields)]
        types = [*(self.types if append else []), *(t for _, t in fields)]
        keyed = self.stream.keyBy(self.key_selector(key), Types.STRING().get_java_type_info())
        row_type = Types.ROW_NAMED(names, types).get_java_type_info()
        # Flink's KeyedProcessOperator, keeping its input's watermark across restores
        out = keyed.transform(op_name, row_type, get_gateway().jvm.driftline.flink.KeyedRowOperator(operator)) \
            .uid(op_name)
        return JavaRows(out, names, types, list(self.dead_letters))


def java_array(kind, xs: list):
    """A py4j Java array of ``kind`` (e.g. ``jvm.int``, ``jvm.String``) holding ``xs``."""
    from pyflink.java_gateway import get_gateway

    a = get_gateway().new_array(kind, len(xs))
    for i, x in enumerate(xs):
        a[i] = x
    return a


def table_rows(t_env, sql: str, names: list[str], types: list, uid: str) -> JavaRows:
    """The rows of a SQL query (its columns ``names`` of PyFlink ``types``) as ``JavaRows``,
    typed as plain rows (``driftline.flink.Identity``, chained): the Table runtime's own type
    for them converts each row to its internal format and back at every shuffle. Its operators
    (the query's sources among them) get uids under ``uid`` (``set_uids``)."""
    from pyflink.common import Types
    from pyflink.java_gateway import get_gateway

    stream = t_env.to_data_stream(t_env.sql_query(sql))._j_data_stream
    typed = stream.map(get_gateway().jvm.driftline.flink.Identity(),
                       Types.ROW_NAMED(list(names), list(types)).get_java_type_info()).name("as_rows")
    set_uids(typed, uid)
    return JavaRows(typed, list(names), list(types))


def set_uids(stream, prefix: str) -> None:
    """Give each operator upstream of the py4j DataStream ``stream`` (itself included) that has
    no uid one: ``prefix/`` and its name without the planner's node number (``Calc[2]`` ->
    ``prefix/Calc``; a repeated name gets ``#2``, ``#3``, ... in a walk from ``stream``).
    Why: an operator's id in checkpoints and savepoints is its uid's hash, or else a hash of
    its place in the whole graph, which changes whenever the job gains or loses an operator
    anywhere (a savepoint would then restore no state into it: the file sources' split
    positions here). The SQL planner sets uids only for compiled plans
    (``table.exec.uid.generation``), and its node numbers depend on the plan around it."""
    import re

    seen: set = set()
    used: dict[str, int] = {}
    todo = [stream.getTransformation()]
    while todo:
        t = todo.pop(0)
        if t.getId() in seen:
            continue
        seen.add(t.getId())
        if t.getUid() is None:
            base = prefix + "/" + re.sub(r"\[\d+\]", "", t.getName()).strip()
            used[base] = used.get(base, 0) + 1
            t.setUid(base if used[base] == 1 else f"{base}#{used[base]}")
        todo.extend(t.getInputs())


def windowed_count_rows(t_env, table: str, columns: list[str], source: SourceSpec, aggregates,
                        warm: str | None = None, uid: str | None = None) -> JavaRows:
    """``columns`` of ``table`` (and the aggregates' keys), its rowtime ``ts`` and one count
    per aggregate (``driftline.flink.WindowedCount``), as ``JavaRows``; the rows that came
    behind the watermark are in its ``dead_letters`` (reason ``behind_watermark``). ``warm``:
    a BOOLEAN column of ``table`` marking warm-up rows: counted in the windows like any row and
    output with it (the dedup takes them out). ``uid``: the source operators' uid prefix
    (default ``table``)."""
    from pyflink.common import Types
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    keys = [k for a in aggregates for k in a.keys if k not in columns]
    carry = list(dict.fromkeys([*columns, *keys, *([warm] if warm else [])]))
    kind = {c: Types.DOUBLE() if c in source.numeric_fields else Types.LONG() if c == "event_time"
            else Types.BOOLEAN() if c == warm else Types.STRING() for c in carry}
    rows = table_rows(t_env, f"SELECT {', '.join(_q(c) for c in carry)}, {ROWTIME} FROM {table}",
                      [*carry, ROWTIME], [kind[c] for c in carry] + [Types.INSTANT()], uid=uid or table)
    line_type = Types.ROW_NAMED(["line"], [Types.STRING()]).get_java_type_info()
    for a in aggregates:
        op = jvm.driftline.flink.WindowedCount(int(a.window_ms), java_array(jvm.String, rows.names),
                                               rows.stream.getType(), line_type,
                                               rows.names.index(warm) if warm else -1)
        rows = rows.then(list(a.keys), op, [(a.name, Types.LONG())], f"windowed_count_{a.name}")
        rows.dead_letters.append(rows.stream.getSideOutput(op.lateTag()))
    return rows


def stream_view(t_env, name: str, ds, columns: list[str]) -> None:
    """Register view ``name`` over DataStream ``ds``: its ``columns`` and, as rowtime ``ts``,
    the records' timestamps, with the stream's own watermark (``SOURCE_WATERMARK``)."""
    from pyflink.table import Schema

    t_env.create_temporary_view(f"{name}_stream", t_env.from_data_stream(ds, Schema.new_builder()
                                .column_by_metadata("rowtime_", "TIMESTAMP_LTZ(3)", "rowtime")
                                .watermark("rowtime_", "SOURCE_WATERMARK()").build()))
    t_env.create_temporary_view(name, t_env.sql_query(
        f"SELECT {', '.join(_q(c) for c in columns)}, rowtime_ AS {ROWTIME} FROM {name}_stream"))


def _run_in_this_process(spec: FeatureSpec, source: SourceSpec, impressions_path: str,
                         watermark_delay_ms: int, parallelism: int, engine: str = "java"):
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import EnvironmentSettings, StreamTableEnvironment

    from runners.jvm import prepare_local

    prepare_local()  # our classes on the class path, before the gateway starts
    conf = Configuration()
    conf.set_string("parallelism.default", str(parallelism))
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    t_env = StreamTableEnvironment.create(env, EnvironmentSettings.in_streaming_mode())
    t_env.execute_sql(impressions_ddl("impressions", source, impressions_path, watermark_delay_ms))
    names = ", ".join(_q(a.name) for a in spec.aggregates)
    if engine == "sql":
        sql = aggregates_sql(spec, "impressions", ["event_id", "event_time"])
    else:
        windowed_counts(t_env, "agg", "impressions", ["event_id", "event_time"], source, spec.aggregates)
        sql = "SELECT * FROM agg"
    return t_env.sql_query(f"SELECT `event_id`, `event_time`, {names} FROM ({sql})").to_pandas()


def run_aggregates(spec: FeatureSpec, source: SourceSpec, impressions_path: str,
                   watermark_delay_ms: int, parallelism: int = 1, engine: str = "java"):
    """Run the aggregates on a Flink mini-cluster over a folder of JSONL impressions; returns a
    pandas DataFrame ``event_id, event_time, <aggregates...>`` (fetched as Arrow batches).
    ``engine``: ``java`` (``windowed_counts``, what the streaming job runs) or ``sql``
    (``aggregates_sql``, Flink's own OVER windows: the definition it is tested against).

    The job runs in a child process (in tests, their warm one: ``runners.warm``): PyFlink
    registers its own operations in Beam's worker registry on import, which breaks Beam
    pipelines later in the same process. For tests and backfills; the streaming job embeds
    ``windowed_counts`` in its own plan."""
    import json
    import tempfile

    import pandas as pd

    from runners import warm

    with tempfile.TemporaryDirectory() as tmp:
        args = {"spec": spec.to_dict(), "source": source.to_dict(), "path": impressions_path,
                "delay": watermark_delay_ms, "parallelism": parallelism, "out": f"{tmp}/out.parquet",
                "engine": engine}
        proc = warm.run(["-m", "transforms.flink_sql", json.dumps(args)])
        if proc.returncode != 0:
            raise RuntimeError(f"Flink aggregates job failed:\n{proc.stderr[-5000:]}")
        return pd.read_parquet(f"{tmp}/out.parquet")


if __name__ == "__main__":
    import json
    import sys

    a = json.loads(sys.argv[1])
    df = _run_in_this_process(FeatureSpec.from_dict(a["spec"]), SourceSpec.from_dict(a["source"]),
                              a["path"], a["delay"], a["parallelism"], a["engine"])
    df.to_parquet(a["out"])
