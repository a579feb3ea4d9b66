"""Run the streaming job locally (Flink mini-cluster) and summarize a run folder.

``run_stream`` prepares the inputs (an event directory, a fitted transform artifact, the job
config) in ``RUN_DIR`` and runs ``python -m runners.flink_job RUN_DIR/job.json`` in a child
process: the same entry point ``flink run -py`` uses on a cluster (and PyFlink must not share
a process with Beam). ``summarize`` reads the outputs back and writes ``RUN_DIR/summary.json``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from pipelines.join import JoinConfig
from models.online import OnlineConfig
from models.hotswap import read_swaps
from runners import warm
from runners.flink_job import OUTPUTS, TMP_DIR, JobConfig
from runners.savepoints import STOPPED


def output_files(folder: Path) -> list[Path]:
    """Committed part files of a Flink filesystem sink (skips in-progress/hidden files)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))


def read_output(run_dir: str | Path, name: str) -> list[dict]:
    rows = []
    for p in output_files(Path(run_dir) / name):
        with open(p, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def fit_warmup_artifact(event_dir: Path, spec_name: str, out_dir: Path, warmup_fraction: float = 0.1):
    """Fit the transform artifact on the first ``warmup_fraction`` of impressions (by event
    time), so the job never normalizes with statistics from its own future."""
    from pipelines.eventlog import read_stream
    from transforms.aggregates import add_aggregates
    from transforms.artifact import fit
    from transforms.spec import load_spec

    spec = load_spec(spec_name)
    imps = read_stream(event_dir, "impression").sort_by("event_time")
    n = max(1, int(imps.num_rows * warmup_fraction))
    art = fit(spec, add_aggregates(spec, imps).slice(0, n))
    art.save(out_dir)
    return art


def run_job(cfg: JobConfig, run_dir: Path, timeout: float | None = None) -> float:
    """Run the job of ``run_dir/job.json`` to completion in a child process; returns seconds.
    (In a test suite, in its warm process instead when that takes the job: ``runners.warm``.)
    Ctrl-C (SIGINT) stops a job with a REST port (``rest.port`` in ``flink_conf``) with a
    savepoint into ``run_dir/savepoints``, as ``driftline savepoint --run RUN_DIR --stop``
    does, and waits for it to end; a second Ctrl-C, or a job without a REST port, ends it at
    once (its last checkpoint, if any, stays in ``run_dir/checkpoints``), and so does SIGTERM
    to this process (a supervisor's stop: the job's processes do not outlive it)."""
    import signal
    import threading

    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    t0 = time.perf_counter()
    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, terminated) if main else None
    try:
        rc = None
        if warm.eligible(cfg):  # a test suite's warm process (runners.warm), if it takes the job
            rc = warm.call(["-m", "runners.flink_job", str(run_dir / "job.json")], run_dir / "flink.log",
                           python=cfg.python_executable, timeout=timeout)
        if rc is None:
            rc = _run_cold(cfg, run_dir, timeout)
    finally:
        if main:
            signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)
        # Flink's working files (runners.flink_job.local_options), however the job ended
        shutil.rmtree(Path(cfg.out).resolve() / TMP_DIR, ignore_errors=True)
    if rc != 0:
        tail = (run_dir / "flink.log").read_text()[-4000:]
        raise RuntimeError(f"streaming job failed (exit {rc}); log {run_dir / 'flink.log'}:\n{tail}")
    return time.perf_counter() - t0


def _run_cold(cfg: JobConfig, run_dir: Path, timeout: float | None) -> int:
    """The job in a child process of its own (``run_job``); returns its exit code."""
    import os
    import signal

    from runners.savepoints import stop_local

    port = int(cfg.flink_conf.get("rest.port", 0))
    restored = port and cfg.flink_conf.get("execution.state-recovery.path")
    drain = draining_restored_kafka_replay(cfg, run_dir, f"http://127.0.0.1:{port}") if restored else nullcontext()
    with open(run_dir / "flink.log", "w") as log, drain:
        # its own session: a terminal's Ctrl-C reaches this process only, which decides
        proc = subprocess.Popen([cfg.python_executable, "-m", "runners.flink_job", str(run_dir / "job.json")],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                proc.wait(timeout=timeout)
            except KeyboardInterrupt:
                if not port:
                    raise
                print(f"stopping the job with a savepoint into {run_dir / 'savepoints'} (Ctrl-C again: at once)",
                      flush=True)
                try:
                    stop_local(run_dir, f"http://127.0.0.1:{port}")
                except (OSError, RuntimeError, TimeoutError):
                    raise KeyboardInterrupt from None
                proc.wait()
        except BaseException:  # a timeout, a second Ctrl-C, SIGTERM: the job's whole process group ends
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
            raise
    return proc.returncode


@contextmanager
def draining_restored_kafka_replay(cfg: JobConfig, run_dir: Path, rest_url: str, job_id: str | None = None):
    """While its body waits for a job resumed from a savepoint: a ``--kafka-replay`` job (Kafka
    end offsets) is drained at its end offsets (``end_restored_kafka_replay``); other jobs as they are."""
    import threading

    done = threading.Event()
    if (cfg.kafka or {}).get("end_offsets"):
        threading.Thread(target=end_restored_kafka_replay, args=(cfg, run_dir, rest_url, done),
                         kwargs={"job_id": job_id}, daemon=True).start()
    try:
        yield
    finally:
        done.set()


def end_restored_kafka_replay(cfg: JobConfig, run_dir: Path, rest_url: str, done, poll_s: float = 2.0,
                              job_id: str | None = None) -> None:
    """A bounded Kafka replay restored from a savepoint never ends by itself: the restored Kafka
    enumerator finds its partitions already assigned and never tells the readers that no more
    splits come (FLINK-31006, open in the connector we use), so they wait after their stopping
    offsets. Here, once the job's Kafka sources have emitted the record before every end offset
    (their ``currentOffset`` metrics), the job is stopped with ``drain``: its input ends there,
    as the unrestored replay's does (every timer fires; a savepoint lands in RUN_DIR/savepoints),
    so the resumed run gives the uninterrupted run's outputs. ``job_id``: that job (a cluster's),
    else the one running job (a local run's mini-cluster)."""
    import urllib.request

    from runners.kafka import KafkaConfig
    from runners.savepoints import trigger

    kafka = KafkaConfig(**cfg.kafka)
    want = {f"KafkaSourceReader.topic.{getattr(kafka, f'{s}_topic')}.partition.{int(p)}.currentOffset": int(o) - 1
            for s, ends in kafka.end_offsets.items() for p, o in ends.items() if int(o) > 0}

    def get(path: str):
        with urllib.request.urlopen(f"{rest_url}{path}", timeout=10) as r:
            return json.loads(r.read() or b"{}")

    while not done.wait(poll_s):
        try:
            jobs = [j["id"] for j in get("/jobs")["jobs"] if j["status"] == "RUNNING" and j["id"] == (job_id or j["id"])]
            if len(jobs) != 1:
                continue
            seen = {}
            for v in get(f"/jobs/{jobs[0]}")["vertices"]:
                if v["status"] != "RUNNING" or not v["name"].startswith("Source: KafkaSource"):
                    continue
                ids = [m["id"] for m in get(f"/jobs/{jobs[0]}/vertices/{v['id']}/metrics")
                       if m["id"].endswith(".currentOffset")]
                for m in get(f"/jobs/{jobs[0]}/vertices/{v['id']}/metrics?get={','.join(ids)}") if ids else []:
                    name = m["id"][m["id"].index("KafkaSourceReader."):]
                    seen[name] = max(seen.get(name, -1), int(float(m["value"])))
            if all(seen.get(k, -1) >= last for k, last in want.items()):
                trigger(rest_url, run_dir / "savepoints", jobs[0], stop=True, drain=True)
                return
        except (OSError, ValueError, KeyError, RuntimeError):
            continue  # the job is starting, restarting or ending: ask again


def job_operators(job_json: str | Path) -> list[dict]:
    """``runners.flink_job.operators`` of the job ``job_json`` (built, not run), from a child
    process: each operator's name, uid and operator id (its state's id in savepoints)."""
    cfg = JobConfig.from_dict(json.loads(Path(job_json).read_text()))
    proc = warm.run(["-m", "runners.flink_job", "--operators", str(job_json)], python=cfg.python_executable,
                    cold=not warm.eligible(cfg))
    if proc.returncode != 0:
        raise RuntimeError(f"building the job failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]


def _logloss_auc(p: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    from sklearn.metrics import log_loss, roc_auc_score

    if len(y) == 0:
        return None, None
    ll = float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]))
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None
    return ll, auc


def _retrains(run_dir: Path) -> list[dict]:
    p = run_dir / "retrain" / "outcomes.jsonl"
    keep = ("cutoff", "status", "pushed", "version", "champion", "seconds", "counts", "reason")
    out = []
    for line in (p.read_text().splitlines() if p.exists() else []):
        if line.strip():
            o = json.loads(line)
            ev = o.get("evaluation") or {}
            out.append({**{k: o.get(k) for k in keep}, "blessed": ev.get("blessed"),
                        "candidate": ev.get("candidate"), "champion_metrics": ev.get("champion")})
    return out


def _kafka_messages_read(run_dir: Path) -> int | None:
    """The messages a Kafka replay of this run folder read (``runners.kafka.messages_read``),
    None for other runs."""
    try:
        kafka = json.loads((run_dir / "job.json").read_text()).get("kafka") or {}
    except (OSError, ValueError):
        return None
    if not kafka.get("start_offsets"):
        return None
    from runners.kafka import KafkaConfig, messages_read

    return messages_read(KafkaConfig(**kafka))


def summarize(run_dir: str | Path, manifest: dict | None = None, seconds: float | None = None,
              final: bool = False, write: bool = True) -> dict:
    """Counts (and whether they reconcile), progressive logloss/AUC of the served predictions
    against their eventual labels, the label-delay distribution; written to summary.json
    (``write``). ``final``: the job has ended, so the figures will not change (a report then
    reads them back; a summary of a running job is only what it had committed then)."""
    run_dir = Path(run_dir)
    out = {name: read_output(run_dir, name) for name in OUTPUTS}
    preds, examples = out["predictions"], out["examples"]
    dead = Counter(r["reason"] for r in out["dead_letter"])
    kinds = Counter(e["kind"] for e in examples)
    first_examples = {e["event_id"]: e for e in examples if e["kind"] != "correction"}
    served = {p["event_id"] for p in preds}
    y = np.array([first_examples[p["event_id"]]["label"] for p in preds if p["event_id"] in first_examples])
    pp = np.array([p["p"] for p in preds if p["event_id"] in first_examples])
    ll, auc = _logloss_auc(pp, y)
    base_p = 1 / (1 + np.exp(-np.array([p["base_logit"] for p in preds if p["event_id"] in first_examples])))
    base_ll, base_auc = _logloss_auc(base_p, y)
    delays = np.array([e["label_delay_ms"] for e in examples if e["label_delay_ms"] is not None], dtype=float)
    counts = {
        "predictions": len(preds), "examples": len(examples), "examples_by_kind": dict(kinds),
        "positives": int(sum(e["label"] for e in examples if e["kind"] != "correction")),
        "updates": len(out["updates"]), "late_labels": len(out["late_labels"]),
        "dead_letter": dict(dead),
        # impressions served but not yet resolved into an example (0 once a bounded replay ends)
        "pending": len(served - set(first_examples)),
        # examples of the warm-up's impressions still pending at its cut (never served here)
        "warmup_examples": len(set(first_examples) - served),
    }
    label_reasons = ("duplicate_label", "unknown_impression", "label_before_impression")
    # records that came behind the watermark, by kind: dead letters of either stream
    behind = Counter(r["kind"] for r in out["dead_letter"] if r["reason"] == "behind_watermark")
    rec = {}
    imps_out = len(preds) + dead["duplicate_event_id"] + behind["impression"]
    labels_out = (kinds.get("label", 0) + counts["late_labels"] + sum(dead[r] for r in label_reasons)
                  + behind["label"])
    if manifest:
        valid = manifest["counts"]["valid"]
        imp_in, lab_in = valid.get("impression", 0), valid.get("label", 0)
        rec = {"impressions_in": imp_in, "labels_in": lab_in,
               "impressions_out": imps_out, "labels_out": labels_out,
               "every_impression_one_example": len(served) == len(preds)
                   and len(first_examples) == len(preds) + counts["warmup_examples"],
               "reconciles": imp_in == imps_out and lab_in == labels_out}
    read = _kafka_messages_read(run_dir)
    if read is not None:
        # a Kafka replay's messages: each a valid record (counted above) or a validation dead letter
        kafka_dead = sum(1 for r in out["dead_letter"] if str(r.get("origin", "")).startswith("kafka:"))
        rec.update(kafka_messages_in=read, kafka_messages_out=imps_out + labels_out + kafka_dead)
        rec["reconciles"] = rec.get("reconciles", True) and read == rec["kafka_messages_out"]
    summary = {
        "run_dir": str(run_dir), "seconds": seconds, "final": final, "counts": counts, "reconciliation": rec,
        "progressive": {"logloss": ll, "auc": auc, "base_only_logloss": base_ll, "base_only_auc": base_auc,
                        "n": int(len(y)), "positive_rate": float(y.mean()) if len(y) else None},
        "label_delay_ms": {f"p{q}": float(np.percentile(delays, q)) for q in (50, 90, 99)} if len(delays) else {},
        # the last update's sequence number (also without the updates output: the metrics carry it)
        "final_delta_version": max([u["seq"] for u in out["updates"]] + [m.get("delta_version") or 0 for m in out["metrics"]],
                                   default=0),
        # base models: what served when (predictions per version), the retrains and the swaps
        "base_versions": dict(Counter(p["base_version"] for p in preds)),
        "retrains": _retrains(run_dir),
        "swaps": read_swaps(run_dir),
        # the learner's last report: progressive logloss/AUC of its sliding window (p before
        # each update), the label-delay histogram; the same figures are Flink metrics
        "window": max(out["metrics"], key=lambda m: m["examples_seen"], default={}),
        "warmup": _warmup_of(run_dir),
        "outputs": {**{name: str(run_dir / name) for name in OUTPUTS},
                    "examples_parquet": str(run_dir / "examples_parquet")},
    }
    if write:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


def _warmup_of(run_dir: Path) -> dict | None:
    """What warmed the run's windowed counts and dedup up (``JobConfig.warmup_dir``), or None."""
    job = json.loads((run_dir / "job.json").read_text()) if (run_dir / "job.json").is_file() else {}
    if not job.get("warmup_dir"):
        return None
    return {"dir": job["warmup_dir"], "from_ms": job["warmup_from_ms"], "origin_ms": job.get("warmup_origin_ms"),
            "cut_ms": job.get("warmup_cut_ms")}


def ab_report(run_dir: str | Path, n: int = 200, seed: int = 0, predictions: list[dict] | None = None,
              examples: list[dict] | None = None) -> dict:
    """The A/B analysis of a run's served predictions (``models.ab.analyze``), each with the
    label of its first example (as ``summarize``) and its unit as the job assigned its arm: the
    source's first entity field, read from the example's inputs (the event id without one).
    ``arms_check`` recomputes every arm from its unit (``arm_of``): a unit the analysis got
    wrong would show there. Written to ``RUN_DIR/ab.json``. ``predictions`` / ``examples``:
    the run's outputs when the caller has read them already."""
    from models.ab import analyze
    from models.online import arm_of

    run_dir = Path(run_dir)
    job = json.loads((run_dir / "job.json").read_text())
    source = json.loads((Path(job["event_dir"]) / "_manifest.json").read_text()).get("source") or {}
    field = (source.get("entity_fields") or [None])[0]
    examples = read_output(run_dir, "examples") if examples is None else examples
    first = {e["event_id"]: e for e in examples if e["kind"] != "correction"}
    rows = [r for r in (read_output(run_dir, "predictions") if predictions is None else predictions)
            if r["event_id"] in first]
    rows.sort(key=lambda r: (r["event_time"], r["event_id"]))
    inputs = [json.loads(first[r["event_id"]]["inputs"] or "null") or {} for r in rows]
    lost = field is not None and any(field not in i for i in inputs)  # the unit is not a model input:
    units = [r["event_id"] if field is None or lost else str(i.get(field) or "")  # impressions stand in
             for r, i in zip(rows, inputs)]
    share = float(job["online"].get("hybrid_share", 1.0))
    expected = ["hybrid" if share >= 1.0 else "base" if share <= 0.0 else arm_of(u, share) for u in units]
    col = lambda k: np.array([r[k] for r in rows])  # noqa: E731
    out = {"run_dir": str(run_dir), "hybrid_share": share,
           "unit": f"event_id ({field} is not among the inputs)" if lost else field or "event_id",
           "arms_check": {"rows": len(rows), "mismatched": None if lost else sum(
               e != r["arm"] for e, r in zip(expected, rows))},
           **analyze(np.array(units), col("arm"), col("served"), col("base_version"),
                     np.array([first[r["event_id"]]["label"] for r in rows], np.float64), col("p"),
                     1.0 / (1.0 + np.exp(-col("base_logit").astype(np.float64))), n=n, seed=seed),
           "bootstrap": {"resamples": n, "seed": seed, "by": "unit"}}
    (run_dir / "ab.json").write_text(json.dumps(out, indent=1, sort_keys=True, default=float) + "\n")
    return out


def seed_base(source: str | Path, run_dir: str | Path, artifact) -> str:
    """Copy the current base model of the registry ``source`` (e.g. ``driftline bootstrap``'s)
    into the run's registry and promote it there: the job serves it from its first tick. It must
    have been trained on ``artifact``'s features (same spec fingerprint and artifact version);
    ``RegistryError`` otherwise, before any job starts. Returns the version.

    The joined examples of the folder the registry belongs to (a bootstrap's history, a run's
    segments: ``<folder>/retrain/segments``, same artifact) become the run's first segments, so
    the run's scheduled retrains train on them and the stream's own examples together."""
    from models.registry import MANIFEST, Registry, RegistryError
    from pipelines.retrain import SEGMENTS

    src = Registry(source)
    version = src.current("base")
    if version is None:
        raise RegistryError(f"{source}: no current base model to start from")
    ref = src.verify("base", version, fingerprint=artifact.spec.fingerprint())
    if ref.manifest.get("artifact_version") != artifact.version:
        raise RegistryError(f"base {version} of {source} was trained on transform artifact "
                            f"{ref.manifest.get('artifact_version')}, the run serves {artifact.version}: "
                            "run with the artifact it was trained on (--artifact)")
    files = {str(f.relative_to(ref.path)): f.read_bytes() for f in sorted(ref.path.rglob("*"))
             if f.is_file() and f != ref.path / MANIFEST}  # the payload (a SavedModel tree, the npz)
    keep = {k: v for k, v in ref.manifest.items() if k not in ("kind", "version", "files")}
    dst = Registry(Path(run_dir) / "registry")
    dst.publish("base", files, {**keep, "seeded_from": str(Path(source).resolve())}, version=version)
    dst.promote("base", version, fingerprint=artifact.spec.fingerprint(), reason="seed")
    segments = Path(run_dir) / SEGMENTS
    for f in sorted((Path(source).parent / SEGMENTS).glob("*.parquet")):
        segments.mkdir(parents=True, exist_ok=True)  # before the job's own (named by their tick)
        shutil.copyfile(f, segments / f"{0:013d}-{f.name}")
    return version


def prepare_run(event_dir: str | Path, run_dir: str | Path, spec: str, join: JoinConfig | None = None,
                online: OnlineConfig | None = None, artifact: str | Path | None = None,
                retrain: dict | None = None, base_registry: str | Path | None = None,
                warmup: str | Path | None = None, **job) -> JobConfig:
    """Clear a run folder's outputs, fit (or take) the transform artifact, and write
    ``RUN_DIR/job.json`` (everything a job needs, locally or submitted to a cluster) and the
    retrain settings ``RUN_DIR/retrain/config.json`` (``pipelines.retrain.RetrainConfig``).
    ``base_registry``: start from that registry's current base model (``seed_base``).
    ``warmup``: an event directory of the events before this stream (a bootstrap's history)
    whose end fills the windowed counts, the dedup's memory and the join (``warmup_job``)."""
    if warmup is not None:
        retention = job.get("dedup_retention_ms", JobConfig.__dataclass_fields__["dedup_retention_ms"].default)
        job.update(warmup_job(warmup, event_dir, artifact, spec, retention, join))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (*OUTPUTS, "examples_parquet", "registry", "checkpoints", "summary.json", "retrain",
                 "swaps.jsonl", STOPPED):  # Flink sinks only add files
        p = run_dir / name
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if artifact is None:
        fit_warmup_artifact(Path(event_dir), spec, run_dir / "transform")
        artifact = run_dir / "transform"
    kafka = job.get("kafka") or {}
    if kafka.get("end_offsets") and not kafka.get("start_offsets") \
            and kafka.get("startup_mode", "earliest-offset") == "earliest-offset":
        from runners.kafka import KafkaConfig, beginning_offsets

        # where the replay starts, for its summary's message count
        job["kafka"] = {**kafka, "start_offsets": beginning_offsets(KafkaConfig(**kafka))}
    cfg = JobConfig(event_dir=str(Path(event_dir).resolve()), out=str(run_dir.resolve()),
                    artifact=str(Path(artifact).resolve()), join=join or JoinConfig(),
                    online=online or OnlineConfig(), **job)
    if base_registry is not None:
        from transforms.artifact import TransformArtifact

        seed_base(base_registry, run_dir, TransformArtifact.load(cfg.artifact))
    (run_dir / "job.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    if retrain:
        from pipelines.retrain import CONFIG, RetrainConfig

        (run_dir / CONFIG).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG).write_text(json.dumps(RetrainConfig.from_dict(retrain).to_dict(), indent=1) + "\n")
    return cfg


def warmup_job(warmup: str | Path, event_dir: str | Path, artifact: str | Path | None, spec: str,
               retention_ms: int = 0, join: JoinConfig | None = None) -> dict:
    """The job settings that warm the job up with ``warmup``'s events (the history before the
    stream): its folder; its cut (``pipelines.eventlog.cut_time``: the join's outcomes resolved
    from it on are the stream's, the earlier ones the history's); and the first event time that
    can still count, be repeated or be joined in the stream: its last impression's time minus
    the longest window, the dedup's retention, or the late horizon plus the attribution window
    (an impression still pending at the cut, or one a late label may still find). Refused if its
    impressions reach past the stream's first one (an impression in both would be counted twice)."""
    from pipelines.eventlog import cut_time, event_time_span
    from transforms.artifact import TransformArtifact
    from transforms.spec import load_spec

    join = join or JoinConfig()
    aggs = (TransformArtifact.load(artifact).spec if artifact is not None else load_spec(spec)).aggregates
    span = event_time_span(warmup)
    if span is None:  # nothing to warm up with
        return {}
    live = event_time_span(event_dir)
    if live is not None and live[0] < span[1]:
        raise ValueError(f"warm-up {warmup} ends at {span[1]}, after the stream's first impression ({live[0]}): "
                         "the warm-up must be the traffic before the stream")
    back = max([a.window_ms for a in aggs] + [retention_ms, join.late_horizon_ms + join.window_ms + 2])
    return {"warmup_dir": str(Path(warmup).resolve()), "warmup_from_ms": span[1] - back,
            "warmup_origin_ms": span[0], "warmup_cut_ms": cut_time(warmup)}


def run_stream(event_dir: str | Path, run_dir: str | Path, spec: str, join: JoinConfig | None = None,
               online: OnlineConfig | None = None, artifact: str | Path | None = None,
               retrain: dict | None = None, **job) -> dict:
    """Prepare ``run_dir``, run the job over ``event_dir`` on the mini-cluster, summarize."""
    from pipelines.eventlog import read_manifest
    from pipelines.examples import export_parquet

    cfg = prepare_run(event_dir, run_dir, spec, join, online, artifact, retrain, **job)
    secs = run_job(cfg, Path(run_dir))
    export_parquet(run_dir)  # the joined examples, as the TFX retrain reads them
    # a job stopped with a savepoint (`driftline savepoint --run RUN_DIR --stop`) has not ended
    return summarize(run_dir, read_manifest(event_dir), secs, final=not (Path(run_dir) / STOPPED).is_file())
