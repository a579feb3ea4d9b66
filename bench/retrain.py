"""Benchmark TFX retrains and base-model swaps.

    python bench/retrain.py [--json] [--data-dir DIR] [--swap-events N]

1. TalkingData replayed through the streaming job (no retrains): impressions/s.
2. TFX retrain wall time on that run's joined examples (LocalDagRunner, every component), cold
   and warm-started; the goal is <= 2 min on this machine.
3. The same replay while TFX retrains run back to back in another process: impressions/s
   while a retrain runs (2 cores shared).
4. A generated stream with scheduled retrains (`--retrain-every 2h`, like `make run`): swap
   latency from the push (registry promote) to live in the job, and the load + rebase time.
5. Watched mode: a follow-mode job fed a live generated stream (one 60-s tick of event time
   every `--pace` wall seconds); `driftline retrain --run` in another process pushes a model
   into the job's registry; latency from its promote to live in the running job.
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path.pop(0)  # run as a script: import the installed packages, not bench/

from pipelines.join import JoinConfig  # noqa: E402
from pipelines.retrain import RetrainConfig, retrain  # noqa: E402
from runners.local import prepare_events  # noqa: E402
from runners.stream import run_stream  # noqa: E402


def _rate(summary: dict) -> float:
    return summary["counts"]["predictions"] / summary["seconds"]


def watched_swap_latency(root: Path, events: int, pace_s: float) -> dict:
    """Push a retrained model into a running follow-mode job's registry; push -> live."""
    import os
    import signal

    from pipelines.sources.generator import GeneratorConfig
    from runners.local import generate_event_dir
    from runners.stream import fit_warmup_artifact, prepare_run

    generate_event_dir(root / "ev", GeneratorConfig(events=events, seed=11, malformed_rate=0.0))
    imps = [json.loads(x) for x in next((root / "ev" / "impressions").glob("part-*")).read_text().splitlines()]
    labs = [json.loads(x) for x in next((root / "ev" / "labels").glob("part-*")).read_text().splitlines()]
    live = root / "live"
    for kind in ("impressions", "labels"):
        (live / kind).mkdir(parents=True)
    (live / "_manifest.json").write_bytes((root / "ev" / "_manifest.json").read_bytes())
    fit_warmup_artifact(root / "ev", "generator", root / "art")
    run = root / "run"
    cfg = prepare_run(live, run, "generator", JoinConfig(), artifact=root / "art", follow=True,
                      checkpoint_interval_ms=2_000, retrain={"eval_hours": 0.5})
    proc = subprocess.Popen([cfg.python_executable, "-m", "runners.flink_job", str(run / "job.json")],
                            stdout=open(root / "flink.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    tick, start = 60_000, min(e["event_time"] for e in imps)
    end = max(e["event_time"] for e in imps)
    fed = {"until": start}
    stop = threading.Event()

    def publish(kind: str, i: int, rows: list[dict]) -> None:
        tmp = live / kind / f".part-{i:06d}.jsonl.inprogress"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, live / kind / f"part-{i:06d}.jsonl")

    def feed() -> None:  # one tick of event time (impressions and the labels by then) per pace_s
        i, t = 0, start
        while t <= end and not stop.is_set():
            publish("labels", i, [x for x in labs if t <= x["label_time"] < t + tick])
            publish("impressions", i, [x for x in imps if t <= x["event_time"] < t + tick])
            i, t = i + 1, t + tick
            fed["until"] = t
            time.sleep(pace_s)

    feeder = threading.Thread(target=feed)
    feeder.start()
    out: dict = {"pace_s_per_tick": pace_s}
    try:
        while fed["until"] < start + 3 * 3_600_000:  # 3 h of event time: enough to train on
            time.sleep(1)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "runners.cli", "retrain", "--run", str(run)],
                           capture_output=True, text=True)
        out["retrain_s"] = round(time.perf_counter() - t0, 1)
        if r.returncode != 0:
            raise RuntimeError(f"retrain failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
        deadline = time.time() + 300
        while time.time() < deadline:
            swaps = [json.loads(x) for x in (run / "swaps.jsonl").read_text().splitlines()] \
                if (run / "swaps.jsonl").exists() else []
            done = [s for s in swaps if s.get("mode") == "watched" and s["outcome"] in ("live", "refused")]
            if done:
                out.update({k: done[0].get(k) for k in ("version", "outcome", "latency_s", "swap_seconds",
                                                       "relearned", "live_at")})
                break
            time.sleep(0.5)
        else:
            out["outcome"] = "no swap within 300 s"
    finally:
        stop.set()
        feeder.join()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--swap-events", type=int, default=20_000)
    ap.add_argument("--pace", type=float, default=0.5, help="wall seconds per 60-s tick fed to the watched job")
    ap.add_argument("--only-watched", action="store_true", help="just part 5")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-retrain-"))
    out: dict = {}
    if args.only_watched:
        out["watched"] = watched_swap_latency(tmp / "watch", 30_000, args.pace)
        print(f"watched swap: {out['watched']}", flush=True)
        print(json.dumps(out, sort_keys=True))
        return

    ev, source = prepare_events("talkingdata", tmp / "td", data_dir_opt=args.data_dir)
    alone = run_stream(ev, tmp / "td", source, JoinConfig())
    out["talkingdata_impressions"] = alone["counts"]["predictions"]
    out["stream_alone_imp_per_s"] = round(_rate(alone), 1)
    print(f"stream alone: {out['stream_alone_imp_per_s']} imp/s ({alone['seconds']:.1f} s)", flush=True)

    # TalkingData's sample spans ~4 days: train on all but the last 12 h, evaluate on those
    cfg = RetrainConfig(train_hours=96, eval_hours=12)
    for name in ("cold", "warm"):
        t0 = time.perf_counter()
        o = retrain(tmp / "td", cfg=cfg)
        wall = time.perf_counter() - t0
        out[f"retrain_{name}_s"] = round(wall, 1)
        out[f"retrain_{name}"] = {"status": o["status"], "pushed": o["pushed"], "counts": o["counts"],
                                  "evaluation": {k: (o.get("evaluation") or {}).get(k)
                                                 for k in ("candidate", "champion", "blessed", "reasons")}}
        print(f"TFX retrain ({name}) on TalkingData examples: {wall:.1f} s, {o['status']}, "
              f"pushed={o['pushed']}, counts={o['counts']}", flush=True)

    stop = threading.Event()
    busy = []

    def retrain_loop() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "runners.cli", "retrain", "--run", str(tmp / "td"),
                            "--train-hours", "96", "--eval-hours", "12"], capture_output=True)
            busy.append(time.perf_counter() - t0)

    th = threading.Thread(target=retrain_loop)
    th.start()
    time.sleep(5)  # the retrain process is importing TensorFlow by now
    try:
        during = run_stream(ev, tmp / "td2", source, JoinConfig())
    finally:
        stop.set()
        th.join()
    out["stream_during_retrain_imp_per_s"] = round(_rate(during), 1)
    out["retrains_during_stream"] = len(busy)
    print(f"stream while TFX retrains run: {out['stream_during_retrain_imp_per_s']} imp/s "
          f"({during['seconds']:.1f} s; {len(busy)} retrains ran meanwhile)", flush=True)

    gen, _ = prepare_events("generator", tmp / "sw", events=args.swap_events, seed=7)
    sched = run_stream(gen, tmp / "sw", "generator", JoinConfig(), retrain={"eval_hours": 0.5},
                       retrain_every_ms=2 * 3_600_000, swap_delay_ms=1_800_000, replay_buffer_ms=6 * 3_600_000)
    swaps = [s for s in sched["swaps"] if s["outcome"] == "live"]
    out["scheduled_run_s"] = round(sched["seconds"], 1)
    out["swaps"] = [{k: s.get(k) for k in ("version", "live_at", "latency_s", "swap_seconds", "relearned")}
                    for s in swaps]
    out["retrains"] = [{k: r.get(k) for k in ("cutoff", "status", "pushed", "seconds")} for r in sched["retrains"]]
    for s in swaps:
        print(f"swap to {s['version']}: push -> live {s['latency_s']} s (load + rebase {s['swap_seconds']} s, "
              f"re-learned {s['relearned']:,})", flush=True)
    out["watched"] = watched_swap_latency(tmp / "watch", 30_000, args.pace)
    print(f"watched swap (follow-mode job, registry push from another process): {out['watched']}", flush=True)
    if args.json:
        print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
