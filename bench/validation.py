"""Where the in-stream validation of raw Kafka records spends its time: the generated
impressions published raw to one Kafka topic (a local Tansu broker, one partition), then read by
a small Flink job into a blackhole sink, one job per variant, each adding one piece of
``runners.flink_job.validated_kafka_sources``:

* ``source``: the Kafka source alone (``'format' = 'raw'``, partition and offset metadata);
* ``watermark``: + the rowtime and watermark from ``driftline.flink.JsonTime`` (the job's);
* ``watermark_sql``: + the rowtime from a ``CASE`` over ``TRY_CAST(JSON_VALUE(…))`` instead
  (the job's before 2026-12-07: Flink's generated code parses the record three times);
* ``udf_noop``: + a pandas UDF of the validation's result type that returns nulls without
  looking at the records (the exchange with the Python worker alone);
* ``udf``: + the validation itself (``runners.kafka.CheckRecords``).

Per variant: wall seconds of the job and CPU seconds of the JVM and of the Python worker
(psutil, every process this one started). ``--bundle N`` sets the Python bundle and Arrow batch
size (Flink's default 1,000; the job uses 10,000 unpaced).

    .venv/bin/python bench/validation.py [--events 300000] [--variants source,udf] [--bundle 1000] [--json]

Prints a table, and with ``--json`` one JSON object as its last line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path[0] = str(HERE.parent)  # run as a script: this checkout's packages, bench/ included

from bench.ab import ProcessCpu  # noqa: E402

VARIANTS = ("source", "watermark", "watermark_sql", "udf_noop", "udf")


class _Nulls:
    """The validation's result shape, all nulls: what the exchange alone costs."""

    def __init__(self, names: list[str]):
        self.names = names

    def __call__(self, lines, partitions, offsets):
        import pandas as pd

        n = len(lines)
        return pd.DataFrame({k: pd.Series([None] * n, dtype=object) for k in ["dl", *self.names]})


def job(variant: str, event_dir: Path, source: str, kafka, out: Path, bundle: int | None) -> dict:
    """One variant's job, in this process (one PyFlink job per process: run by ``main`` in a
    child for each)."""
    from pyflink.table import DataTypes, Schema, TableDescriptor
    from pyflink.table.udf import udf

    from pipelines.events import SOURCES
    from pipelines.validate import ValidationConfig
    from runners.flink_job import JobConfig, configure, with_options
    from runners.kafka import CheckRecords, checked_columns

    spec, bounds = SOURCES[source], ValidationConfig()
    _, t_env = configure(JobConfig(event_dir=str(event_dir), artifact="", out=str(out), kafka=kafka.to_dict(),
                                   parallelism=1))
    if bundle:
        for key in ("python.fn-execution.bundle.size", "python.fn-execution.arrow.batch.size"):
            t_env.get_config().set(key, str(bundle))
    t_env.create_java_temporary_system_function("driftline_json_time", "driftline.flink.JsonTime")
    t = "TRY_CAST(JSON_VALUE(CAST(`line` AS STRING), '$.event_time') AS BIGINT)"
    rowtime = {"source": "",
               "watermark_sql": f"rt AS TO_TIMESTAMP_LTZ(CASE WHEN {t} >= {bounds.min_time_ms} AND "
                                f"{t} < {bounds.max_time_ms} THEN {t} ELSE 0 END, 3), "}.get(
        variant, f"rt AS TO_TIMESTAMP_LTZ(driftline_json_time(`line`, 'event_time', "
                 f"CAST({bounds.min_time_ms} AS BIGINT), CAST({bounds.max_time_ms} AS BIGINT)), 3), ")
    watermark = "WATERMARK FOR rt AS rt - INTERVAL '1' MINUTE, " if rowtime else ""
    t_env.execute_sql(f"CREATE TABLE raw_records (`line` BYTES, `_part` INT METADATA FROM 'partition' VIRTUAL, "
                      f"`_off` BIGINT METADATA FROM 'offset' VIRTUAL, {rowtime}{watermark}`one` AS 1) "
                      f"WITH ({with_options(kafka.options('impressions'))}, 'format' = 'raw')")
    if variant.startswith("udf"):
        cols = checked_columns(spec, "impression")
        sql_types = {"STRING": DataTypes.STRING(), "BIGINT": DataTypes.BIGINT(), "DOUBLE": DataTypes.DOUBLE(),
                     "INT": DataTypes.INT()}
        row = DataTypes.ROW([DataTypes.FIELD("dl", DataTypes.STRING()),
                             *(DataTypes.FIELD(n, sql_types[ty]) for n, ty in cols)])
        fn = CheckRecords(spec.to_dict(), "impression", kafka.impressions_topic) if variant == "udf" \
            else _Nulls([n for n, _ in cols])
        t_env.create_temporary_function("check_records", udf(fn, result_type=row, func_type="pandas"))
        table = t_env.sql_query("SELECT check_records(`line`, `_part`, `_off`) AS r FROM raw_records")
    else:
        table = t_env.sql_query("SELECT `line`, `_part`, `_off` FROM raw_records")
    t_env.create_temporary_table("sink", TableDescriptor.for_connector("blackhole").schema(
        Schema.new_builder().from_row_data_type(table.get_schema().to_row_data_type()).build()).build())
    before = ProcessCpu(os.getpid())  # this process's gateway JVM (and any worker) before the job
    before.poll_once()
    with ProcessCpu(os.getpid()) as cpu:  # a worker's CPU is read while it lives
        t0 = time.time()
        table.execute_insert("sink").wait()
        seconds = time.time() - t0
        cpu.poll_once()
    used = {k: v - before.totals()[k] for k, v in cpu.totals().items()}
    return {"variant": variant, "seconds": round(seconds, 1), "jvm_cpu_s": round(used["jvm"], 1),
            "python_cpu_s": round(used["worker"], 1)}


def main() -> None:
    import subprocess
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--bundle", type=int, default=10_000, help="Python bundle and Arrow batch size (0: Flink's)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:  # one variant: {"variant", "event_dir", "source", "kafka", "out", "bundle"}
        from runners.kafka import KafkaConfig

        c = json.loads(a._child)
        print(json.dumps(job(c["variant"], Path(c["event_dir"]), c["source"], KafkaConfig(**c["kafka"]),
                             Path(c["out"]), c["bundle"])))
        return
    from runners.kafka import KafkaConfig, local_broker, publish
    from runners.local import prepare_events

    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if set(variants) - set(VARIANTS):
        ap.error(f"variants are {', '.join(VARIANTS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="driftline-validation-") as tmp:
        ev, source = prepare_events("generator", Path(tmp) / "events", a.events, 7)
        with local_broker() as servers:
            kafka = KafkaConfig(servers, validate=True)
            kafka.end_offsets = publish(ev, kafka, partitions=1)
            records = sum(kafka.end_offsets["impressions"].values())
            for v in variants:
                child = {"variant": v, "event_dir": str(ev), "source": source, "kafka": kafka.to_dict(),
                         "out": str(Path(tmp) / v), "bundle": a.bundle or None}
                proc = subprocess.run([sys.executable, __file__, "--_child", json.dumps(child)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"variant {v} failed:\n{proc.stderr[-3000:]}")
                rows.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "records": records})
    print(f"{'variant':<14} {'records':>9} {'seconds':>8} {'JVM CPU-s':>10} {'Python CPU-s':>13} "
          f"{'CPU µs/record':>14}")
    for r in rows:
        per = (r["jvm_cpu_s"] + r["python_cpu_s"]) / r["records"] * 1e6
        print(f"{r['variant']:<14} {r['records']:>9,} {r['seconds']:>8.1f} {r['jvm_cpu_s']:>10.1f} "
              f"{r['python_cpu_s']:>13.1f} {per:>14.1f}")
    if a.json:
        print(json.dumps({"events": a.events, "bundle": a.bundle, "variants": rows}))


if __name__ == "__main__":
    main()
