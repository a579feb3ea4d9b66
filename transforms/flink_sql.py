"""Windowed aggregates natively in Flink SQL (event-time OVER windows), and the DDL that
reads an event directory's impressions as a Flink table with a watermark.

Flink's ``RANGE BETWEEN INTERVAL w PRECEDING AND CURRENT ROW`` counts rows in [t - w, t],
*including* every row at exactly t (peers). ``transforms.aggregates`` defines the count over
[t - w, t), so each aggregate subtracts the peers, counted by a zero-width OVER window:

    count[t - w, t) = COUNT(*) OVER (RANGE w PRECEDING) - COUNT(*) OVER (RANGE 0 PRECEDING)

Flink requires one window definition per SELECT, so every window is one nesting level. The
OVER operator holds rows until the watermark passes them and emits them in event-time order;
rows that arrive behind the watermark are dropped by Flink, so the watermark delay must cover
the source's disorder (``watermark_delay_ms``; the DDL adds 1 ms so that ties are never late).
"""
from __future__ import annotations

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
                    fmt: str = "json") -> str:
    """CREATE TABLE for JSONL impressions (an event directory's ``impressions/`` folder).

    The watermark trails the newest event time by ``watermark_delay_ms`` + 1 ms: Flink treats
    a row *at* the watermark as late, and a row that ties with the newest one is not late."""
    cols = [f"{_q('event_id')} STRING", f"{_q('event_time')} BIGINT"]
    cols += [f"{_q(n)} STRING" for n in source.string_fields]
    cols += [f"{_q(n)} DOUBLE" for n in source.numeric_fields]
    cols += [f"{ROWTIME} AS TO_TIMESTAMP_LTZ({_q('event_time')}, 3)",
             f"WATERMARK FOR {ROWTIME} AS {ROWTIME} - {interval(watermark_delay_ms + 1)}"]
    return (f"CREATE TABLE {table} (\n  " + ",\n  ".join(cols) + "\n) WITH ("
            f"'connector' = 'filesystem', 'path' = '{path}', 'format' = '{fmt}', "
            f"'json.fail-on-missing-field' = 'false', 'json.ignore-parse-errors' = 'false')")


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


def _run_in_this_process(spec: FeatureSpec, source: SourceSpec, impressions_path: str,
                         watermark_delay_ms: int, parallelism: int):
    from pyflink.table import EnvironmentSettings, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    env.get_config().set("parallelism.default", str(parallelism))
    env.execute_sql(impressions_ddl("impressions", source, impressions_path, watermark_delay_ms))
    sql = aggregates_sql(spec, "impressions", ["event_id", "event_time"])
    names = ", ".join(_q(a.name) for a in spec.aggregates)
    return env.sql_query(f"SELECT `event_id`, `event_time`, {names} FROM ({sql})").to_pandas()


def run_aggregates(spec: FeatureSpec, source: SourceSpec, impressions_path: str,
                   watermark_delay_ms: int, parallelism: int = 1):
    """Run the aggregates on a Flink mini-cluster over a folder of JSONL impressions; returns a
    pandas DataFrame ``event_id, event_time, <aggregates...>`` (fetched as Arrow batches).

    The job runs in a child process: PyFlink registers its own operations in Beam's worker
    registry on import, which breaks Beam pipelines later in the same process. For tests and
    backfills; the streaming job embeds ``aggregates_sql`` in its own plan."""
    import json
    import subprocess
    import sys
    import tempfile

    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        args = {"spec": spec.to_dict(), "source": source.to_dict(), "path": impressions_path,
                "delay": watermark_delay_ms, "parallelism": parallelism, "out": f"{tmp}/out.parquet"}
        proc = subprocess.run([sys.executable, "-m", "transforms.flink_sql", json.dumps(args)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"Flink aggregates job failed:\n{proc.stderr[-5000:]}")
        return pd.read_parquet(f"{tmp}/out.parquet")


if __name__ == "__main__":
    import json
    import sys

    a = json.loads(sys.argv[1])
    df = _run_in_this_process(FeatureSpec.from_dict(a["spec"]), SourceSpec.from_dict(a["source"]),
                              a["path"], a["delay"], a["parallelism"])
    df.to_parquet(a["out"])
