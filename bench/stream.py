"""Benchmark the streaming job on the Flink mini-cluster.

    python bench/stream.py [--json] [--data-dir DIR] [--events N] [--dense-events M] [--dense-rate R]
    python bench/stream.py --only-checkpoint | --only-floor | --only-paced [--json]
    python bench/stream.py --only-kafka [--events N] [--kafka-rounds R] [--kafka-modes M,...] [--json]

Runs a tiny generated stream (start-up cost), TalkingData replayed at full speed, a
generated stream of N impressions (default 2M) at 1 per second of event time (sparse: ~60 per
tick), and M (default 300k) at R per second (dense, default 1,000: per-row costs dominate, as
in a busy production stream, rather than per-tick ones); prints impressions/s end to end and
with start-up subtracted, peak memory (RSS of the job's processes), checkpoints (count,
duration, size), checkpoint bytes per pending impression, the label -> weight visibility lag in
event time (from a label's resolution to the first prediction served with a delta version
that includes it), and Flink's own floor on the dense stream (its source alone and with a
native keyed dedup: what the machine allows before any operator of ours). Last line: one
JSON object. ``--only-kafka``: the generated stream from files, from Kafka topics and from
Kafka topics validated in the stream, on a local broker (``kafka_cost``).
"""
from __future__ import annotations

import argparse
import bisect
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path.pop(0)  # run as a script: import the installed packages, not bench/

import numpy as np  # noqa: E402

from pipelines.eventlog import read_manifest  # noqa: E402
from pipelines.join import JoinConfig  # noqa: E402
from runners.flink_job import DEBLOAT  # noqa: E402
from runners.local import prepare_events  # noqa: E402
from runners.stream import prepare_run, read_output, run_job, run_stream, summarize  # noqa: E402


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


def _checkpoint_files(chk: Path) -> dict[str, int]:
    """Bytes of every file a checkpoint consists of: its own folder, plus (incremental RocksDB
    checkpoints) the job's ``shared`` folder, whose files only the retained checkpoint and the
    one in flight reference."""
    files = [f for f in chk.rglob("*") if f.is_file()]
    files += [f for f in (chk.parent / "shared").rglob("*") if f.is_file()]
    return {str(f.relative_to(chk.parent)): f.stat().st_size for f in files}


def _settled_checkpoint(root: Path) -> dict[str, int]:
    """The files of the newest completed checkpoint, read while it still exists (a newer one
    replaces it every interval: a listing it outlived is taken)."""
    for _ in range(20):
        chk = _latest_checkpoint(root)
        try:
            files = _checkpoint_files(chk) if chk else {}
        except FileNotFoundError:
            continue
        if files and (chk / "_metadata").exists():
            return files
        time.sleep(0.5)
    raise RuntimeError(f"no completed checkpoint under {root}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _operator_state(rest: str) -> dict[str, int]:
    """State bytes per operator chain of the running job's newest completed checkpoint, from
    Flink's REST API (``/jobs/<id>/checkpoints/details/<n>``)."""
    import urllib.request

    def get(path: str) -> dict:
        with urllib.request.urlopen(rest + path, timeout=10) as r:
            return json.load(r)

    job = next(j["id"] for j in get("/jobs")["jobs"] if j["status"] == "RUNNING")
    names = {v["id"]: v["name"] for v in get(f"/jobs/{job}")["vertices"]}
    done = get(f"/jobs/{job}/checkpoints")["latest"]["completed"]
    tasks = get(f"/jobs/{job}/checkpoints/details/{done['id']}")["tasks"]
    return {names[v]: t["state_size"] for v, t in tasks.items()}


def _latest_checkpoint(root: Path) -> Path | None:
    chks = [p for p in root.rglob("chk-*") if p.is_dir() and (p / "_metadata").exists()]
    return max(chks, key=lambda p: int(p.name.split("-")[1])) if chks else None


def checkpoint_bytes_per_pending(root: Path, events: int = 14_400, flink_conf: dict | None = None) -> dict:
    """Marginal checkpoint bytes per pending impression: a follow-mode job with a window so
    long that nothing resolves; publish half the impressions, let checkpoints settle, measure
    the newest checkpoint; publish the rest, measure again; divide the growth by the growth in
    pending impressions. 14,400 generated events span ~4 h: both measurements see the 1-h
    aggregate windows full (their state does not grow with pending impressions; with 6,000
    events, ~100 min, their filling was counted too)."""
    import os
    import shutil
    import signal
    import subprocess
    import time

    from models.online import OnlineConfig
    from pipelines.sources.generator import GeneratorConfig
    from runners.local import generate_event_dir
    from runners.stream import fit_warmup_artifact, prepare_run, summarize

    generate_event_dir(root / "ev", GeneratorConfig(events=events, seed=3, duplicate_rate=0.0,
                                                   out_of_order_rate=0.0))
    lines = next((root / "ev" / "impressions").glob("part-*")).read_text().splitlines(keepends=True)
    labels = next((root / "ev" / "labels").glob("part-*")).read_text().splitlines(keepends=True)
    live = root / "live"
    (live / "impressions").mkdir(parents=True)
    (live / "labels").mkdir()
    shutil.copy(root / "ev" / "_manifest.json", live / "_manifest.json")
    fit_warmup_artifact(root / "ev", "generator", root / "art")
    day = 86_400_000
    join = JoinConfig(window_ms=30 * day, late_horizon_ms=30 * day, watermark_delay_ms=1_000)
    # W = 30 days: without the hold after the start, which would keep every positive's gradient
    # (state of the Learner, not of the join) for the whole window
    port = _free_port()  # Flink's REST API on localhost: state per operator
    conf = {"rest.port": str(port), "rest.address": "127.0.0.1", "rest.bind-address": "127.0.0.1",
            **(flink_conf or {})}
    cfg = prepare_run(live, root / "run", "generator", join, OnlineConfig(hold_after_reset=False),
                      artifact=root / "art", follow=True,
                      checkpoint_interval_ms=2_000, monitor_interval_ms=500, learn_tick_ms=10_000,
                      flink_conf=conf)
    proc = subprocess.Popen([cfg.python_executable, "-m", "runners.flink_job", str(root / "run" / "job.json")],
                            stdout=open(root / "flink.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    sizes, ops = [], []

    def publish(kind: str, i: int, chunk: list[str]) -> None:
        tmp = live / kind / f".part-{i:06d}.jsonl.inprogress"
        tmp.write_text("".join(chunk))
        os.replace(tmp, live / kind / f"part-{i:06d}.jsonl")

    try:
        time.sleep(10)
        half = len(lines) // 2
        cut = json.loads(lines[half])["event_time"]
        for i, chunk in enumerate((lines[:half], lines[half:])):
            # the labels of these impressions too: the Learner scores a tick once the watermark
            # (also the label stream's) passes it; with W = 30 days only positives resolve
            publish("labels", i, [x for x in labels if (json.loads(x)["label_time"] < cut) == (i == 0)])
            publish("impressions", i, chunk)
            deadline, seen = time.time() + 300, []
            while time.time() < deadline:  # until the served count settles
                seen.append(summarize(root / "run")["counts"])
                if len(seen) > 3 and seen[-1]["predictions"] > 0.8 * half * (i + 1) and \
                        seen[-1]["predictions"] == seen[-4]["predictions"]:
                    break
                time.sleep(2)
            time.sleep(8)  # a few more checkpoints with the state settled
            sizes.append((summarize(root / "run")["counts"]["pending"], _settled_checkpoint(root / "run" / "checkpoints")))
            ops.append(_operator_state(f"http://127.0.0.1:{port}"))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    (n1, f1), (n2, f2) = sizes
    s1, s2 = sum(f1.values()), sum(f2.values())
    # growth per state file (a full snapshot writes one file per operator state; the files carry
    # no operator names: matched by size rank), to show where the bytes per pending impression are
    r1, r2 = sorted(f1.values(), reverse=True), sorted(f2.values(), reverse=True)
    per_file = [round((b - a) / (n2 - n1), 1) for a, b in zip(r1, r2)][:6] \
        if n2 > n1 and len(r1) == len(r2) else []
    return {"pending_1": n1, "checkpoint_bytes_1": s1, "pending_2": n2, "checkpoint_bytes_2": s2,
            "bytes_per_pending_impression": round((s2 - s1) / (n2 - n1), 1) if n2 > n1 else None,
            "largest_files_bytes_per_pending": per_file, "flink_conf": flink_conf or {},
            # REST's state size per operator chain (its own accounting: not the bytes on disk)
            "operators_bytes_per_pending": {name: round((ops[1].get(name, 0) - ops[0].get(name, 0)) / (n2 - n1), 1)
                                            for name in ops[1]} if n2 > n1 else {}}


def print_checkpoint(ckpt: dict) -> None:
    print(f"checkpoint: {ckpt['checkpoint_bytes_1']:,} B with {ckpt['pending_1']:,} pending impressions, "
          f"{ckpt['checkpoint_bytes_2']:,} B with {ckpt['pending_2']:,}: "
          f"{ckpt['bytes_per_pending_impression']} B per pending impression (goal <= 200)")
    ops = sorted(ckpt.get("operators_bytes_per_pending", {}).items(), key=lambda kv: -kv[1])
    for name, b in ops[:6]:
        print(f"  {b:>8,.1f} B per pending impression (REST state size) in {name[:90]}")
    if ckpt.get("largest_files_bytes_per_pending"):
        print("  growth of the largest state files (B per pending impression): "
              + ", ".join(f"{b:,}" for b in ckpt["largest_files_bytes_per_pending"]))


class Poller:
    """A daemon thread calling ``poll_once`` every ``every_s`` seconds inside a ``with``."""

    def __init__(self, every_s: float) -> None:
        import threading

        self.every_s = every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def poll_once(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self.stop.is_set():
            self.poll_once()
            self.stop.wait(self.every_s)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


class BusyProfile(Poller):
    """Where the time goes, per operator chain: a thread polls Flink's REST API (localhost) for
    each vertex's accumulated busy / back-pressured / idle time (summed over subtasks) and
    keeps the last values seen before the job ends."""

    METRICS = ("accumulateBusyTimeMs", "accumulateBackPressuredTimeMs", "accumulateIdleTimeMs")

    def __init__(self) -> None:
        super().__init__(every_s=2.0)
        self.port = _free_port()
        self.last: dict[str, dict[str, float]] = {}
        self.checkpoints: dict = {}  # the job's last checkpoint statistics seen (REST)

    def conf(self) -> dict:
        return {"rest.port": str(self.port), "rest.address": "127.0.0.1", "rest.bind-address": "127.0.0.1"}

    def _get(self, path: str):
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return json.load(r)

    def poll_once(self) -> None:
        try:
            for job in self._get("/jobs")["jobs"]:
                if job["status"] != "RUNNING":
                    continue
                self.checkpoints = self._get(f"/jobs/{job['id']}/checkpoints")
                for v in self._get(f"/jobs/{job['id']}")["vertices"]:
                    got = self._get(f"/jobs/{job['id']}/vertices/{v['id']}/subtasks/metrics"
                                    f"?get={','.join(self.METRICS)}&agg=sum")
                    vals = {m["id"]: float(m["sum"]) / 1000 for m in got if "sum" in m}
                    if vals:
                        self.last[v["name"]] = vals
        except Exception:  # noqa: BLE001 - not up yet, or gone: keep the last values
            pass

    def checkpoint_stats(self) -> dict:
        """Completed checkpoints, their end-to-end duration (median, max) and size (last, max)."""
        c = self.checkpoints
        summary = c.get("summary", {})
        dur, size = summary.get("end_to_end_duration", {}), summary.get("checkpointed_size", {})
        return {"completed": c.get("counts", {}).get("completed", 0), "failed": c.get("counts", {}).get("failed", 0),
                "duration_ms_p50": dur.get("p50"), "duration_ms_max": dur.get("max"),
                "size_bytes_last": ((c.get("latest") or {}).get("completed") or {}).get("checkpointed_size"),
                "size_bytes_max": size.get("max")}

    def table(self) -> list[dict]:
        """Operator chains by busy seconds, most first."""
        rows = [{"operator": name[:120], "busy_s": round(v.get("accumulateBusyTimeMs", 0), 1),
                 "backpressured_s": round(v.get("accumulateBackPressuredTimeMs", 0), 1),
                 "idle_s": round(v.get("accumulateIdleTimeMs", 0), 1)} for name, v in self.last.items()]
        return sorted(rows, key=lambda r: -r["busy_s"])


class PeakMemory(Poller):
    """Peak resident memory of the job: every process this one started (the job's PyFlink
    client, the mini-cluster's JVM, the Python workers; not this process, which generates the
    events and reads the outputs back), sampled every 0.2 s with psutil: total, JVM and Python
    workers (RSS, so pages shared between processes count once per process); a local Kafka
    broker's apart, not in the total."""

    def __init__(self, every_s: float = 0.2) -> None:
        super().__init__(every_s)
        self.peak = {"total": 0, "jvm": 0, "python_workers": 0, "broker": 0}

    def _sample(self) -> dict[str, int]:
        import psutil

        out = {"total": 0, "jvm": 0, "python_workers": 0, "broker": 0}
        for child in psutil.Process().children(recursive=True):
            try:
                rss, name, cmd = child.memory_info().rss, child.name(), " ".join(child.cmdline())
            except psutil.Error:  # gone meanwhile
                continue
            if name.startswith("tansu"):  # a local Kafka broker (--only-kafka): not the job's
                out["broker"] += rss
                continue
            out["total"] += rss
            if name == "java":
                out["jvm"] += rss
            elif "pyflink.fn_execution" in cmd:  # a Python worker (beam_boot), not the client
                out["python_workers"] += rss
        return out

    def poll_once(self) -> None:
        for k, v in self._sample().items():
            self.peak[k] = max(self.peak[k], v)

    def mib(self) -> dict[str, float]:
        return {k: round(v / 2**20, 1) for k, v in self.peak.items()}


def one(data: str, root: Path, events: int, data_dir: str | None, rate_per_s: float | None = None) -> dict:
    """One run of the job; ``rate_per_s``: the generated stream's impressions per second of
    event time (a dense stream has many rows per tick and per key: per-row costs, not per-tick)."""
    run_dir = root / (data if rate_per_s is None else f"{data}_{rate_per_s:g}")
    event_dir, source = prepare_events(data, run_dir, events, 7, data_dir, rate_per_s)
    return measure(event_dir, source, run_dir, data if rate_per_s is None else f"{data}@{rate_per_s:g}/s")


def measure(event_dir: Path, source: str, run_dir: Path, label: str, **job) -> dict:
    """One run of the job over ``event_dir`` (``job``: more JobConfig settings, e.g. ``kafka``),
    profiled: time, throughput, visibility lag, peak memory, checkpoints, busy time per chain."""
    with BusyProfile() as prof, PeakMemory() as mem:
        s = run_stream(event_dir, run_dir, source, JoinConfig(), flink_conf=prof.conf(), **job)
    n = s["counts"]["predictions"]
    return {"data": label, "impressions": n, "seconds": round(s["seconds"], 2),
            "impressions_per_s_incl_startup": round(n / s["seconds"], 1),
            "reconciles": s["reconciliation"].get("reconciles"),
            "progressive_logloss": s["progressive"]["logloss"], "visibility_lag": visibility_lag(run_dir),
            "peak_memory_mib": mem.mib(), "checkpoints": prof.checkpoint_stats(), "profile": prof.table()}


# mode -> KafkaConfig settings (None: the event directory)
JOB = "_job"  # in a mode's settings: JobConfig settings of its own, not Kafka's
_TO_TOPICS = {"output_topics": {o: f"out_{o}" for o in ("predictions", "examples", "updates", "late_labels",
                                                        "dead_letter", "metrics", "alerts")}}
KAFKA_MODES = {"files": None, "kafka": {}, "kafka + validate": {"validate": True},
               # every output also to a topic (keyed by event_id): at least once, or in transactions
               "kafka + outputs": _TO_TOPICS, "kafka + outputs exactly-once": {**_TO_TOPICS, "exactly_once": True},
               # the same with checkpoints every 30 s instead of the job's 5 s: a transaction (and,
               # with Flink's default naming, a new producer per sink) per checkpoint, so fewer of
               # them; the outputs then become visible to read_committed consumers up to 30 s later
               "kafka + outputs exactly-once (30-s checkpoints)": {**_TO_TOPICS, "exactly_once": True,
                                                                  JOB: {"checkpoint_interval_ms": 30_000}}}


def kafka_cost(root: Path, events: int, rate_per_s: float | None = None, rounds: int = 1,
               modes: tuple[str, ...] = tuple(KAFKA_MODES)) -> dict:
    """What Kafka costs the job: the same generated stream read from its event directory, from
    Kafka topics (a local Tansu broker, two partitions per topic, bounded at the published end
    offsets: ``--kafka-replay``), from the same topics validated in the stream
    (``--kafka-validate``), and with every output also written to topics (``--kafka-output``, at
    least once or ``--kafka-exactly-once``), the modes alternating for ``rounds`` rounds. Each
    mode's run has a broker of its own, the log published to it first: the broker keeps every
    record in memory (Tansu's memory storage), and one that held earlier runs' outputs ran later
    runs up to 2x slower (session 40). Each mode's start-up is a 200-impression run of its own
    (its own topics, the same broker), subtracted once per mode and round. Also the publisher's
    rate (``runners.kafka.publish``: kafka-python, acks=all), per broker."""
    from runners.kafka import KafkaConfig, local_broker, publish

    ev, source = prepare_events("generator", root / "big", events, 7, None, rate_per_s)
    small, _ = prepare_events("generator", root / "small", 200, 7)
    out: dict = {"impressions": events, "rate_per_s": rate_per_s, "runs": [], "publish": []}
    for r in range(rounds):
        for mode, settings in ((m, KAFKA_MODES[m]) for m in modes):
            tag = f"{mode.replace(' + ', '_')}_{r}"
            if settings is None:  # the event directory: no broker
                runs = {name: measure(event_dir, source, root / f"{name}_{tag}", mode)
                        for name, event_dir in (("startup", small), ("run", ev))}
            else:
                kafka = {k: v for k, v in settings.items() if k != JOB}
                with local_broker(log=root / f"tansu_{tag}.log") as servers:
                    t0 = time.time()
                    big = KafkaConfig(servers, end_offsets=publish(ev, KafkaConfig(servers), partitions=2))
                    secs = time.time() - t0
                    records = sum(sum(v.values()) for v in big.end_offsets.values())
                    out["publish"].append({"records": records, "seconds": round(secs, 1),
                                           "records_per_s": round(records / secs)})
                    tiny = KafkaConfig(servers, impressions_topic="imp_small", labels_topic="lab_small")
                    tiny.end_offsets = publish(small, tiny, partitions=2)
                    runs = {name: measure(event_dir, source, root / f"{name}_{tag}", mode,
                                          kafka={**cfg.to_dict(), **kafka}, **settings.get(JOB, {}))
                            for name, event_dir, cfg in (("startup", small, tiny), ("run", ev, big))}
            run, busy = runs["run"], runs["run"]["seconds"] - runs["startup"]["seconds"]
            out["runs"].append({**run, "round": r, "startup_seconds": runs["startup"]["seconds"],
                                "impressions_per_s_excl_startup": round(run["impressions"] / busy, 1)
                                if busy > 0 else None})
    return out


def print_kafka(k: dict) -> None:
    p = k["publish"]
    if p:
        took = ", ".join(f"{x['seconds']:.1f}" for x in p)
        print(f"publish (kafka-python, acks=all, 2 partitions; a broker per run): {p[0]['records']:,} records in "
              f"{took} s, {max(x['records_per_s'] for x in p):,}/s at best; the brokers' peak RSS "
              f"{max(r['peak_memory_mib'].get('broker', 0) for r in k['runs']):,.0f} MiB (not in the runs' peak)")
    print(f"{'mode':<17} {'round':>5} {'impressions':>11} {'seconds':>8} {'start-up':>9} {'imp/s (-startup)':>17} "
          f"{'peak MiB':>9} {'reconciles':>10} {'logloss':>8}")
    for r in k["runs"]:
        print(f"{r['data']:<17} {r['round']:>5} {r['impressions']:>11,} {r['seconds']:>8.1f} {r['startup_seconds']:>9.1f} "
              f"{r['impressions_per_s_excl_startup'] or 0:>17,.0f} {r['peak_memory_mib']['total']:>9,.0f} "
              f"{str(r['reconciles']):>10} {r['progressive_logloss']:>8.5f}")
    for r in k["runs"][:len({r["data"] for r in k["runs"]})]:
        print_profile(r)


def paced_checkpoints(root: Path, events: int = 30_000, speedup: float = 600.0, pairs: int = 2) -> list[dict]:
    """Checkpoints of a paced replay on the mini-cluster with and without buffer debloating,
    alternating (``pairs`` runs each; debloating first in each pair): the generated stream at
    ``speedup`` times event-time speed, a checkpoint every 5 s. Paced (like a followed stream),
    the Python operators lag behind a source that reads ahead into the network buffers, and each
    barrier queues behind that data; ``runners.flink_job.local_options`` turns debloating on
    for such runs, this measures why."""
    event_dir, source = prepare_events("generator", root, events, 7)
    out = []
    for i in range(pairs):
        for on in (True, False):
            prof = BusyProfile()
            run_dir = root / f"paced_{'on' if on else 'off'}_{i}"
            cfg = prepare_run(event_dir, run_dir, source, JoinConfig(), replay_speedup=speedup,
                              flink_conf={**prof.conf(), DEBLOAT: str(on).lower()})
            with prof:
                secs = run_job(cfg, run_dir)
            done = [h for h in prof.checkpoints.get("history", []) if h.get("status") == "COMPLETED"]
            out.append({"debloat": on, "run": i, "seconds": round(secs, 1), **prof.checkpoint_stats(),
                        "first_in_history_ms": min(done, key=lambda h: h["id"])["end_to_end_duration"] if done else None,
                        "reconciles": summarize(run_dir, read_manifest(event_dir), write=False)["reconciliation"]
                        .get("reconciles")})
    return out


def print_paced(rows: list[dict]) -> None:
    print(f"{'debloat':<8} {'run':>3} {'seconds':>8} {'completed':>10} {'failed':>7} {'dur p50 ms':>11} "
          f"{'dur max ms':>11} {'reconciles':>11}")
    for r in rows:
        print(f"{'on' if r['debloat'] else 'off':<8} {r['run']:>3} {r['seconds']:>8.1f} {r['completed']:>10} "
              f"{r['failed']:>7} {r['duration_ms_p50'] or 0:>11,.0f} {r['duration_ms_max'] or 0:>11,.0f} "
              f"{str(r['reconciles']):>11}")


FLOOR_QUERIES = {
    "source": "INSERT INTO floor_sink SELECT {cols} FROM impressions",
    "source + keyed dedup": ("INSERT INTO floor_sink SELECT {cols} FROM (SELECT *, ROW_NUMBER() OVER "
                             "(PARTITION BY `event_id` ORDER BY ts) AS rn FROM impressions) WHERE rn = 1"),
}


def _floor_child(a: dict) -> None:
    """One floor query (``FLOOR_QUERIES``) on the job's own impression source (same DDL, same
    Flink configuration), into a blackhole; prints its seconds."""
    from pipelines.eventlog import read_manifest
    from pipelines.events import SourceSpec
    from runners.flink_job import JobConfig, add_source, configure
    from transforms.flink_sql import _q, impressions_ddl

    ev = Path(a["event_dir"])
    source = SourceSpec.from_dict(read_manifest(ev)["source"])
    env, t_env = configure(JobConfig(event_dir=str(ev), out=a["out"], artifact=str(ev)))
    add_source(t_env, "impressions", ev / "impressions",
               lambda n, path: impressions_ddl(n, source, path, JoinConfig().watermark_delay_ms), False)
    fields = [("event_id", "STRING"), ("event_time", "BIGINT"), *((c, "STRING") for c in source.string_fields),
              *((c, "DOUBLE") for c in source.numeric_fields)]
    t_env.execute_sql(f"CREATE TABLE floor_sink ({', '.join(f'{_q(c)} {t}' for c, t in fields)}) "
                      "WITH ('connector' = 'blackhole')")
    t0 = time.time()
    t_env.execute_sql(FLOOR_QUERIES[a["query"]].format(cols=", ".join(_q(c) for c, _ in fields))).wait()
    print(json.dumps({"seconds": time.time() - t0}))


def flink_floor(root: Path, events: int, rate_per_s: float) -> dict:
    """What Flink itself costs on this machine, without any operator of ours: the job's
    impression source alone, and with Flink SQL's native keyed dedup (one shuffle by event_id,
    keyed state per row), each into a blackhole over the same dense generated stream, in a
    child process; impressions/s with a 200-impression run's time subtracted."""
    import subprocess

    out = {}
    for query in FLOOR_QUERIES:
        secs = {}
        for n in (200, events):
            ev, _ = prepare_events("generator", root / f"floor_{n}", n, 7, None, rate_per_s)
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--floor-child",
                                   json.dumps({"event_dir": str(ev), "out": str(root / "floor_out"), "query": query})],
                                  capture_output=True, text=True, cwd=HERE.parent)
            if proc.returncode != 0:
                raise RuntimeError(f"floor run failed:\n{proc.stderr[-3000:]}")
            secs[n] = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
        busy = secs[events] - secs[200]
        out[query] = {"impressions": events, "seconds": round(secs[events], 2), "startup_seconds": round(secs[200], 2),
                      "impressions_per_s_excl_startup": round(events / busy) if busy > 0 else None}
    return out


def print_floor(floor: dict) -> None:
    print("Flink's own floor here (dense generated stream, no operator of ours, into a blackhole):")
    for q, r in floor.items():
        print(f"  {q:<22} {r['impressions']:>9,} impressions {r['seconds']:>6.1f} s "
              f"(start-up {r['startup_seconds']:.1f} s): {r['impressions_per_s_excl_startup'] or 0:>9,} imp/s")


def print_profile(r: dict) -> None:
    print(f"{r['data']}: busy / back-pressured / idle seconds per operator chain (Flink REST, summed over subtasks)")
    for row in r["profile"][:8]:
        print(f"  {row['busy_s']:>7.1f} {row['backpressured_s']:>7.1f} {row['idle_s']:>7.1f}  {row['operator'][:100]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--events", type=int, default=2_000_000, help="impressions of the generated (sparse) run")
    ap.add_argument("--dense-events", type=int, default=300_000,
                    help="impressions of the dense generated run and of the floor runs (a dense stream "
                         "holds every impression of the join's window pending: memory)")
    ap.add_argument("--dense-rate", type=float, default=1000.0,
                    help="impressions per second of event time of the dense generated run (0: skip it)")
    ap.add_argument("--only-checkpoint", action="store_true", help="only the checkpoint bytes per pending impression")
    ap.add_argument("--only-floor", action="store_true",
                    help="only Flink's own floor: the impression source alone and with a native keyed dedup")
    ap.add_argument("--only-paced", action="store_true",
                    help="only checkpoint durations of a paced replay (30,000 generated events at 600x) with and "
                         "without buffer debloating, two alternating pairs")
    ap.add_argument("--only-kafka", action="store_true",
                    help="only Kafka's cost: the --events generated stream from files, from Kafka topics and from "
                         "Kafka topics validated in the stream (a local Tansu broker; needs the dev extra)")
    ap.add_argument("--kafka-rounds", type=int, default=1, help="rounds of the --only-kafka modes, alternating")
    ap.add_argument("--kafka-modes", default="files,kafka,kafka + validate",
                    help=f"the --only-kafka modes, comma-separated, of: {', '.join(KAFKA_MODES)} "
                         "(default: the first three)")
    ap.add_argument("--floor-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--flink-conf", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Flink option for the checkpoint run (repeatable), e.g. state.backend.type=rocksdb")
    args = ap.parse_args()
    conf = dict(kv.split("=", 1) for kv in args.flink_conf)
    if args.floor_child:
        _floor_child(json.loads(args.floor_child))
        return
    if args.only_floor:
        with tempfile.TemporaryDirectory() as tmp:
            floor = flink_floor(Path(tmp), args.dense_events, args.dense_rate or 1000.0)
        print_floor(floor)
        print(json.dumps({"flink_floor": floor}))
        return
    if args.only_kafka:
        with tempfile.TemporaryDirectory() as tmp:
            modes = tuple(m.strip() for m in args.kafka_modes.split(","))
            if set(modes) - set(KAFKA_MODES):
                ap.error(f"--kafka-modes: of {', '.join(KAFKA_MODES)}")
            k = kafka_cost(Path(tmp), args.events, rounds=args.kafka_rounds, modes=modes)
        print_kafka(k)
        print(json.dumps({"kafka": k}))
        return
    if args.only_paced:
        with tempfile.TemporaryDirectory() as tmp:
            paced = paced_checkpoints(Path(tmp))
        print_paced(paced)
        print(json.dumps({"paced_checkpoints": paced}))
        return
    if args.only_checkpoint:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = checkpoint_bytes_per_pending(Path(tmp) / "ckpt", flink_conf=conf)
        print_checkpoint(ckpt)
        print(json.dumps({"checkpoint": ckpt}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        startup = one("generator", root / "startup", 200, None)
        rows = [one("talkingdata", root, 0, args.data_dir), one("generator", root, args.events, None)]
        if args.dense_rate:
            rows.append(one("generator", root, args.dense_events, None, args.dense_rate))
        ckpt = checkpoint_bytes_per_pending(root / "ckpt", flink_conf=conf)
        floor = flink_floor(root, args.dense_events, args.dense_rate or 1000.0)
    for r in rows:
        busy = r["seconds"] - startup["seconds"]
        r["startup_seconds"] = startup["seconds"]
        r["impressions_per_s_excl_startup"] = round(r["impressions"] / busy, 1) if busy > 0 else None
    print(f"{'data':<16} {'impressions':>11} {'seconds':>8} {'imp/s (all)':>12} {'imp/s (-startup)':>17} "
          f"{'lag p50 s':>10} {'lag p99 s':>10}")
    for r in rows:
        lag = r["visibility_lag"]
        print(f"{r['data']:<16} {r['impressions']:>11,} {r['seconds']:>8.1f} {r['impressions_per_s_incl_startup']:>12,.0f} "
              f"{r['impressions_per_s_excl_startup'] or 0:>17,.0f} {lag.get('p50_ms', float('nan')) / 1000:>10.1f} "
              f"{lag.get('p99_ms', float('nan')) / 1000:>10.1f}")
    print(f"start-up (200-impression run): {startup['seconds']:.1f}s; goal >= 50,000 impressions/s steady state")
    print(f"{'data':<16} {'peak MiB':>9} {'JVM':>7} {'workers':>8} {'checkpoints':>12} {'dur p50 ms':>11} "
          f"{'dur max ms':>11} {'size last MiB':>14}")
    for r in rows:
        m, c = r["peak_memory_mib"], r["checkpoints"]
        last = (c["size_bytes_last"] or 0) / 2**20
        print(f"{r['data']:<16} {m['total']:>9,.0f} {m['jvm']:>7,.0f} {m['python_workers']:>8,.0f} "
              f"{c['completed']:>12} {c['duration_ms_p50'] or 0:>11,.0f} {c['duration_ms_max'] or 0:>11,.0f} "
              f"{last:>14.1f}")
    for r in rows:
        print_profile(r)
    print_checkpoint(ckpt)
    print_floor(floor)
    result = {"startup_seconds": startup["seconds"], "runs": rows, "goal_impressions_per_s": 50_000,
              "checkpoint": ckpt, "checkpoint_bytes_per_pending_impression": ckpt["bytes_per_pending_impression"],
              "flink_floor": floor}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
