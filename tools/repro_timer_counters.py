"""Reproducer of a PyFlink 2.3 metrics bug: a counter incremented in ``on_timer`` of a
``KeyedProcessFunction`` that has side outputs never reaches Flink; the same counter in
``process_element`` does, and so does one in ``on_timer`` of a function without side outputs.
(The Learner has six side outputs and does its work in timers: its counters were lost, so its
counts are gauges, ``runners.learner.Count``; README, "The streaming job".)

    .venv/bin/python tools/repro_timer_counters.py

Runs one small job per variant (a child process each, ~30 s) on the mini-cluster with our
loopback Prometheus reporter, 200 rows at 20 rows/s through a keyed function that counts each
row in ``process_element`` and fires one timer per row; prints the last counter values
scraped while it ran (every 0.5 s). Measured 2026-12-07: without side outputs
``element_counter`` 140, ``timer_counter`` 139; with them ``element_counter`` 200 and no
``timer_counter`` at all. Why (read in ``pyflink/fn_execution/beam/beam_operations_fast.pyx``,
not proven): ``StatefulFunctionOperation.process_timer`` runs the timer's function outside the
operation's ``scoped_process_state``, where Beam's counters find their metrics container; its
side-output branch iterates the function's results itself, the other hands them on.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORTS = "18591-18595"
ROWS = 200


def job(side_output: bool) -> dict:
    """The job of one variant; returns the last values Prometheus showed for its counters."""
    sys.path.insert(0, str(ROOT))
    from runners.flink_job import prometheus_options
    from runners.jvm import LOCAL_ENDPOINTS, prepare_local

    prepare_local()
    from pyflink.common import Configuration, Types, WatermarkStrategy
    from pyflink.common.watermark_strategy import TimestampAssigner
    from pyflink.datastream import KeyedProcessFunction, OutputTag, StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    conf = Configuration()
    for k, v in {**LOCAL_ENDPOINTS, **prometheus_options(PORTS)}.items():
        conf.set_string(k, v)
    conf.set_string("python.executable", sys.executable)
    conf.set_string("python.metric.enabled", "true")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    tag = OutputTag("side", Types.LONG())

    class Counting(KeyedProcessFunction):
        def open(self, ctx):
            group = ctx.get_metrics_group().add_group("repro")
            self.on_element, self.on_timer_ = group.counter("element_counter"), group.counter("timer_counter")

        def process_element(self, value, ctx):
            self.on_element.inc()
            ctx.timer_service().register_event_time_timer(ctx.timestamp() + 1)
            yield value

        def on_timer(self, timestamp, ctx):
            self.on_timer_.inc()
            yield (tag, timestamp) if side_output else timestamp

    class Millis(TimestampAssigner):
        def extract_timestamp(self, value, record_timestamp):
            return value * 1000

    t_env = StreamTableEnvironment.create(env)
    t_env.execute_sql("CREATE TABLE src (x BIGINT) WITH ('connector'='datagen', 'rows-per-second'='20', "
                      f"'fields.x.kind'='sequence', 'fields.x.start'='0', 'fields.x.end'='{ROWS - 1}')")
    rows = t_env.to_data_stream(t_env.from_path("src")).map(lambda r: r[0], output_type=Types.LONG())
    rows = rows.assign_timestamps_and_watermarks(
        WatermarkStrategy.for_monotonous_timestamps().with_timestamp_assigner(Millis()))
    out = rows.key_by(lambda x: x % 3, key_type=Types.LONG()).process(Counting(), output_type=Types.LONG())
    out.map(lambda x: x, output_type=Types.LONG()).filter(lambda x: False).print()
    if side_output:
        out.get_side_output(tag).filter(lambda x: False).print()
    seen: dict = {}

    def scrape() -> None:
        lo, hi = map(int, PORTS.split("-"))
        while True:
            time.sleep(0.5)
            for port in range(lo, hi + 1):
                try:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                except OSError:
                    continue
                for m in re.finditer(r"^\S*repro_(\w+)\{[^}]*\} (\S+)$", body, re.M):
                    seen[m.group(1)] = float(m.group(2))

    threading.Thread(target=scrape, daemon=True).start()
    env.execute("repro")
    return seen


def main() -> None:
    results = {}
    for side in (False, True):
        proc = subprocess.run([sys.executable, __file__, "--job", json.dumps(side)], capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        results[side] = json.loads(line[-1]) if line else {"error": proc.stderr[-2000:]}
    for side, seen in results.items():
        print(f"side outputs: {'yes' if side else 'no ':3}  "
              f"element_counter {seen.get('element_counter', 'missing')}  timer_counter {seen.get('timer_counter', 'missing')}"
              + (f"\n{seen['error']}" if "error" in seen else ""))
    print(json.dumps({("with" if s else "without") + "_side_outputs": v for s, v in results.items()}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--job":
        print(json.dumps(job(json.loads(sys.argv[2]))))
    else:
        main()
