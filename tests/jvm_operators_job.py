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


def dedup(a: dict) -> list[list]:
    """(event_id, event_time, nth) of the rows of ``a["events"]``."""
    from pyflink.common import Types

    from runners.flink_job import first_occurrences
    from transforms.flink_sql import interval, stream_view, table_rows

    t_env = _env()
    t_env.execute_sql(
        "CREATE TABLE ev (`event_id` STRING, `event_time` BIGINT, ts AS TO_TIMESTAMP_LTZ(`event_time`, 3), "
        f"WATERMARK FOR ts AS ts - {interval(a['delay'] + 1)}) WITH ('connector' = 'filesystem', "
        f"'path' = '{a['events']}', 'format' = 'json')")
    rows = table_rows(t_env, "SELECT `event_id`, `event_time`, ts FROM ev", ["event_id", "event_time", "ts"],
                      [Types.STRING(), Types.LONG(), Types.INSTANT()])
    stream_view(t_env, "nth", first_occurrences(rows, a["retention_ms"]).data_stream(), ["event_id", "event_time", "nth"])
    return _collect(t_env.sql_query("SELECT `event_id`, `event_time`, nth FROM nth"))


def join(a: dict) -> list[list]:
    """The join's outcome rows (``runners.flink_job.JOIN_OUTPUT``) for impressions
    ``a["impressions"]`` and labels ``a["labels"]``."""
    from pipelines.join import JoinConfig
    from runners.flink_job import (JOIN_INPUT, JOIN_OUTPUT, JOIN_TYPES, _types, example_join, join_labels,
                                   labels_join_ddl)
    from transforms.flink_sql import interval, stream_view, table_rows

    t_env = _env()
    cfg = JoinConfig(**a["join"])
    D = cfg.watermark_delay_ms
    t_env.execute_sql(
        "CREATE TABLE impressions (`event_id` STRING, `event_time` BIGINT, ts AS TO_TIMESTAMP_LTZ(`event_time`, 3), "
        f"WATERMARK FOR ts AS ts - {interval(D + 1)}) WITH ('connector' = 'filesystem', "
        f"'path' = '{a['impressions']}', 'format' = 'json')")
    # the impressions' join rows as the job's ImpressionRows makes them (k 0, at t)
    imps = table_rows(t_env, "SELECT `event_id`, 0 AS k, `event_time`, CONCAT('[', `event_id`, ']') AS inputs, "
                      "CAST(NULL AS BIGINT) AS `label_time`, CAST(NULL AS INT) AS label, ts AS rt FROM impressions",
                      [*JOIN_INPUT, "rt"], _types(JOIN_TYPES))
    t_env.execute_sql(labels_join_ddl("labels_j", a["labels"], D))
    rows = imps.data_stream().union(join_labels(t_env).data_stream())._j_data_stream
    stream_view(t_env, "resolved", example_join(rows, cfg).data_stream(), JOIN_OUTPUT)
    return _collect(t_env.sql_query(f"SELECT {', '.join(f'`{c}`' for c in JOIN_OUTPUT)} FROM resolved"))


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    Path(sys.argv[2]).write_text(json.dumps({"dedup": dedup, "join": join}[args["op"]](args)))
