"""Benchmark of the shared feature transforms: rows/s of the vectorized (numpy/pyarrow) apply
and of the TensorFlow path, on TalkingData (hashing and crosses included).

    python bench/transforms.py [--json] [--batch-rows N] [--repeat R] [--data-dir DIR]

Runs on one core (the TF path is pinned to one intra-op thread). Prints a table; with --json
the last line is one JSON object. Aggregate columns are computed once up front (they are
produced upstream by Flink SQL / Beam, not by apply).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# this file is named like the package it measures: import the package, not this script
_here = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _here]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--batch-rows", type=int, default=10_000, help="rows per apply call")
    ap.add_argument("--repeat", type=int, default=5, help="passes over the data (best is reported)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    import numpy as np
    import tensorflow as tf

    from pipelines.config import data_dir
    from pipelines.sources import talkingdata
    from transforms.aggregates import add_aggregates
    from transforms.apply import apply
    from transforms.artifact import fit
    from transforms.skew import tensors_of
    from transforms.spec import load_spec
    from transforms.tf_apply import transform_tensors

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    path = data_dir(args.data_dir, need=talkingdata.RELATIVE_PATH) / talkingdata.RELATIVE_PATH
    spec = load_spec("talkingdata")
    table = add_aggregates(spec, talkingdata.load(path).drain()["impression"])
    art = fit(spec, table)
    n = table.num_rows
    batches = [table.slice(i, args.batch_rows) for i in range(0, n, args.batch_rows)]

    def best(fn) -> float:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return n / min(times)

    np_rate = best(lambda: [apply(art, b) for b in batches])
    tf_inputs = [tensors_of(b.drop(["event_id"])) for b in batches]
    fn = tf.function(lambda x: transform_tensors(art, x))
    fn(tf_inputs[0])  # trace once
    tf_rate = best(lambda: [fn(x) for x in tf_inputs])
    tf_eager_rate = best(lambda: [transform_tensors(art, x) for x in tf_inputs[:3]]) * len(tf_inputs[:3]) / len(tf_inputs)

    result = {"data": "talkingdata", "rows": n, "batch_rows": args.batch_rows,
              "features_per_row": len(spec.sparse_features()),
              "numpy_rows_per_s": round(np_rate), "tf_graph_rows_per_s": round(tf_rate),
              "tf_eager_rows_per_s": round(tf_eager_rate), "goal_rows_per_s": 500_000,
              "numpy_meets_goal": bool(np_rate >= 500_000), "cpu_threads": 1}
    print(f"{'path':<22}{'rows/s':>14}")
    print(f"{'numpy/pyarrow apply':<22}{np_rate:>14,.0f}")
    print(f"{'TF (tf.function)':<22}{tf_rate:>14,.0f}")
    print(f"{'TF (eager)':<22}{tf_eager_rate:>14,.0f}")
    print(f"rows={n:,} batch_rows={args.batch_rows:,} features/row={result['features_per_row']} "
          f"goal >= 500,000 rows/s on one core: {'met' if result['numpy_meets_goal'] else 'NOT met'}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
