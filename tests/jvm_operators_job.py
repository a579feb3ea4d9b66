"""A small Flink job over our Java keyed operators, run by ``tests/test_jvm_operators.py`` in a
child process (PyFlink's import breaks Beam pipelines later in the same process):

    python tests/jvm_operators_job.py '{"op": "dedup"|"join", ...}' OUT.json

Inputs are JSONL files with a watermark ``delay`` ms behind the newest time, as the job's
sources; prints nothing, writes the collected rows as JSON.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _env():
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import EnvironmentSettings, StreamTableEnvironment

    from runners.jvm import prepare_local

    prepare_local()
    conf = Configuration()
    conf.set_string("parallelism.default", "1")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    return StreamTableEnvironment.create(env, EnvironmentSettings.in_streaming_mode())


def _collect(table) -> list[list]:
    with table.execute().collect() as rows:
        return [list(r) for r in rows]


def _dedup_join(t_env, a: dict, join_cfg) -> tuple:
    """``runners.flink_job.dedup_join`` over the impressions ``a["impressions"]`` (event_id,
    event_time; one input, ``tag``: the event_id again) and the labels ``a["labels"]``."""
    from pyflink.common import Types

    from runners.flink_job import dedup_join, labels_join_ddl
    from transforms.flink_sql import interval, table_rows

    D = join_cfg.watermark_delay_ms
    t_env.execute_sql(
        "CREATE TABLE impressions (`event_id` STRING, `event_time` BIGINT, ts AS TO_TIMESTAMP_LTZ(`event_time`, 3), "
        f"WATERMARK FOR ts AS ts - {interval(D + 1)}) WITH ('connector' = 'filesystem', "
        f"'path' = '{a['impressions']}', 'format' = 'json')")
    t_env.execute_sql(labels_join_ddl("labels", a["labels"], D))
    imps = table_rows(t_env, "SELECT `event_id`, `event_time`, `event_id` AS tag, ts FROM impressions",
                      ["event_id", "event_time", "tag", "ts"], [Types.STRING(), Types.LONG(), Types.STRING(), Types.INSTANT()],
                      uid="impressions")
    labels = table_rows(t_env, "SELECT `event_id`, `label_time`, label, jts FROM labels",
                        ["event_id", "label_time", "label", "jts"],
                        [Types.STRING(), Types.LONG(), Types.INT(), Types.INSTANT()], uid="labels")
    return dedup_join(imps, labels, None, {"tag": "string"}, join_cfg, a.get("retention_ms", 2 * 86_400_000))


def dedup(a: dict) -> list[list]:
    """The first occurrences (event_id, event_time, null) and the duplicates' dead-letter lines
    (null, null, line) of impressions ``a["impressions"]`` and labels ``a["labels"]``."""
    from pyflink.datastream import DataStream

    from pipelines.join import JoinConfig
    from transforms.flink_sql import stream_view

    t_env = _env()
    first, _, dups = _dedup_join(t_env, a, JoinConfig(watermark_delay_ms=a["delay"]))
    stream_view(t_env, "first", first.data_stream(), ["event_id", "event_time"])
    stream_view(t_env, "dups", DataStream(dups), ["line"])
    return _collect(t_env.sql_query("SELECT `event_id`, `event_time`, CAST(NULL AS STRING) AS line FROM `first` "
                                    "UNION ALL SELECT CAST(NULL AS STRING), CAST(NULL AS BIGINT), line FROM dups"))


def join(a: dict) -> list[list]:
    """The join's outcome rows (``runners.flink_job.JOIN_OUTPUT``) for impressions
    ``a["impressions"]`` and labels ``a["labels"]``."""
    from pipelines.join import JoinConfig
    from runners.flink_job import JOIN_OUTPUT
    from transforms.flink_sql import stream_view

    t_env = _env()
    _, resolved, _ = _dedup_join(t_env, a, JoinConfig(**a["join"]))
    stream_view(t_env, "resolved", resolved.data_stream(), JOIN_OUTPUT)
    return _collect(t_env.sql_query(f"SELECT {', '.join(f'`{c}`' for c in JOIN_OUTPUT)} FROM resolved"))


def json_time(a: dict) -> list:
    """``driftline.flink.JsonTime`` (the validated Kafka sources' watermark time) of each of
    the messages in the JSON file ``a["lines"]`` (hex of their bytes, or null) for the field
    ``a["field"]`` within ``a["min"]``, ``a["max"]``: as the job calls it, on BYTES."""
    from pyflink.table import DataTypes

    lines = [None if h is None else bytes.fromhex(h) for h in json.loads(Path(a["lines"]).read_text())]
    t_env = _env()
    t_env.create_java_temporary_system_function("json_time", "driftline.flink.JsonTime")
    rows = t_env.from_elements([(i, None if line is None else bytearray(line)) for i, line in enumerate(lines)],
                               DataTypes.ROW([DataTypes.FIELD("i", DataTypes.INT()),
                                              DataTypes.FIELD("line", DataTypes.BYTES())]))
    t_env.create_temporary_view("lines", rows)
    got = _collect(t_env.sql_query(f"SELECT i, json_time(line, '{a['field']}', CAST({a['min']} AS BIGINT), "
                                   f"CAST({a['max']} AS BIGINT)) FROM lines"))
    by_index = dict(got)  # rows come back in any order: each line's time, in input order
    return [by_index[i] for i in range(len(lines))]


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    Path(sys.argv[2]).write_text(json.dumps({"dedup": dedup, "join": join, "json_time": json_time}[args["op"]](args)))
