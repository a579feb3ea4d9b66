"""Benchmark the streaming job on the Flink mini-cluster.

    python bench/stream.py [--json] [--data-dir DIR] [--events N]

Runs a tiny generated stream (start-up cost), TalkingData replayed at full speed, and a
generated stream of N impressions; prints impressions/s end to end and with start-up
subtracted, and the label -> weight visibility lag in event time (from a label's resolution to
the first prediction served with a delta version that includes it). Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import bisect
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path.pop(0)  # run as a script: import the installed packages, not bench/

import numpy as np  # noqa: E402

from pipelines.join import JoinConfig  # noqa: E402
from runners.local import prepare_events  # noqa: E402
from runners.stream import read_output, run_stream  # noqa: E402


def visibility_lag(run_dir: Path) -> dict:
    preds = sorted((p["delta_version"], p["event_time"]) for p in read_output(run_dir, "predictions"))
    versions = [v for v, _ in preds]
    # earliest event time served with version >= v: suffix minimum over the sorted versions
    suffix_min = np.minimum.accumulate([t for _, t in preds][::-1])[::-1] if preds else []
    lags = []
    for e in read_output(run_dir, "examples"):
        if e["kind"] != "label":
            continue
        i = bisect.bisect_left(versions, e["seq"])
        if i < len(preds):
            lags.append(max(0, int(suffix_min[i]) - e["resolution_time"]))
    if not lags:
        return {}
    return {"n": len(lags), "p50_ms": float(np.percentile(lags, 50)), "p99_ms": float(np.percentile(lags, 99))}


def one(data: str, root: Path, events: int, data_dir: str | None) -> dict:
    run_dir = root / data
    event_dir, source = prepare_events(data, run_dir, events, 7, data_dir)
    s = run_stream(event_dir, run_dir, source, JoinConfig())
    n = s["counts"]["predictions"]
    return {"data": data, "impressions": n, "seconds": round(s["seconds"], 2),
            "impressions_per_s_incl_startup": round(n / s["seconds"], 1),
            "reconciles": s["reconciliation"].get("reconciles"),
            "progressive_logloss": s["progressive"]["logloss"], "visibility_lag": visibility_lag(run_dir)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--events", type=int, default=50_000, help="generated impressions")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        startup = one("generator", root / "startup", 200, None)
        rows = [one("talkingdata", root, 0, args.data_dir), one("generator", root, args.events, None)]
    for r in rows:
        busy = r["seconds"] - startup["seconds"]
        r["startup_seconds"] = startup["seconds"]
        r["impressions_per_s_excl_startup"] = round(r["impressions"] / busy, 1) if busy > 0 else None
    print(f"{'data':<12} {'impressions':>11} {'seconds':>8} {'imp/s (all)':>12} {'imp/s (-startup)':>17} "
          f"{'lag p50 s':>10} {'lag p99 s':>10}")
    for r in rows:
        lag = r["visibility_lag"]
        print(f"{r['data']:<12} {r['impressions']:>11,} {r['seconds']:>8.1f} {r['impressions_per_s_incl_startup']:>12,.0f} "
              f"{r['impressions_per_s_excl_startup'] or 0:>17,.0f} {lag.get('p50_ms', float('nan')) / 1000:>10.1f} "
              f"{lag.get('p99_ms', float('nan')) / 1000:>10.1f}")
    print(f"start-up (200-impression run): {startup['seconds']:.1f}s; goal >= 50,000 impressions/s steady state")
    result = {"startup_seconds": startup["seconds"], "runs": rows, "goal_impressions_per_s": 50_000,
              "checkpoint_bytes_per_pending_impression": None}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
