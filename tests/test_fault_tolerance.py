"""Fault tolerance on a real standalone cluster (started by this test, parallelism 2,
checkpoints every 2 s): the TaskManager process is killed (SIGKILL) three times at random
points mid-stream and started again, Flink restarts the job from its last checkpoint each time,
and the outputs are exactly-once: joined examples, predictions and weight updates equal the
uninterrupted run's (no duplicates, none missing) and the final FTRL weights are bit-identical.
Then: stop with a savepoint, resume from it with a changed job build at another parallelism;
and a kill after the end of the bounded input, before the final checkpoint; and kills with the
events read from Kafka topics."""
import json
import random
import time
from collections import Counter

import pytest

from models.ftrl import FTRL
from pipelines.join import JoinConfig
from pipelines.sources.generator import GeneratorConfig
from runners import cluster
from runners.local import generate_event_dir
from runners.stream import prepare_run, read_output, run_stream, summarize

JOIN = JoinConfig(window_ms=600_000, late_horizon_ms=3_600_000, watermark_delay_ms=60_000)
# the cluster runs are paced (at most 600x event time: the 30k-event stream, ~30k s of event time,
# takes >= 50 s), so a kill or a stop lands mid-stream on a fast machine too; the end of the
# input has its own test. The reference run is not paced: outputs are the same at any pace
PACE = 600.0
OUTS = ("predictions", "updates", "examples", "late_labels", "dead_letter")


def _weights(run_dir) -> FTRL:
    snaps = sorted((run_dir / "registry" / "delta").iterdir())
    return FTRL.from_bytes((snaps[-1] / "weights.npz").read_bytes())


def _lines(run_dir, name) -> Counter:
    return Counter(json.dumps(r, sort_keys=True) for r in read_output(run_dir, name))


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    cfg = cluster.ClusterConfig(root=str(tmp_path_factory.mktemp("ftcluster")), rest_port=18591, rpc_port=16591)
    try:
        cluster.up(cfg)
        yield cfg
    finally:
        cluster.down(cfg)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    generate_event_dir(root / "ev", GeneratorConfig(events=30_000, seed=31))
    summary = run_stream(root / "ev", root / "local", "generator", JOIN)
    return root, summary


def _wait(cfg, job_id, cond, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = cluster.job_state(cfg, job_id)
        assert state not in ("FINISHED", "FAILED", "CANCELED"), f"job {state} while waiting for {what}"
        if cond(state):
            return
        time.sleep(0.5)
    raise TimeoutError(what)


def _exception_history(cfg, job_id) -> list[dict]:
    """The job's failures (root causes, newest first), from REST."""
    import urllib.request

    with urllib.request.urlopen(f"{cfg.rest_url}/jobs/{job_id}/exceptions", timeout=5) as r:
        return json.loads(r.read()).get("exceptionHistory", {}).get("entries", [])


def _failures(cfg, job_id) -> int:
    return len(_exception_history(cfg, job_id))


def _exceptions(cfg, job_id) -> str:
    """The exception history as text, for a failing assertion's message."""
    return "\n---\n".join(f"{e.get('taskName')} @ {e.get('location')}:\n{e.get('stacktrace', '')[:4000]}"
                            for e in _exception_history(cfg, job_id))


def _all_tasks_running(cfg, job_id) -> bool:
    """Every task deployed and running (or already finished): a kill then hits live tasks."""
    import urllib.request

    with urllib.request.urlopen(f"{cfg.rest_url}/jobs/{job_id}", timeout=5) as r:
        job = json.loads(r.read())
    return job["state"] == "RUNNING" and all(v["status"] in ("RUNNING", "FINISHED") for v in job["vertices"])


def _parallelism(cfg, job_id) -> dict[str, int]:
    """Each task's (job vertex's) parallelism, from REST."""
    import urllib.request

    with urllib.request.urlopen(f"{cfg.rest_url}/jobs/{job_id}", timeout=5) as r:
        return {v["name"]: v["parallelism"] for v in json.loads(r.read())["vertices"]}


def _completed(cfg, job_id) -> int:
    return ((cluster.checkpoints(cfg, job_id).get("latest") or {}).get("completed") or {}).get("id", 0)


def _log_sizes(cfg) -> dict:
    return {p: p.stat().st_size for p in (cfg.path / "log").glob("flink--taskexecutor-*.log")}


def _restored_positions(cfg, since: dict, folder) -> list[int]:
    """The rows the impressions source's reader was restored at (from the TaskManagers' logs
    written after ``since``): where each restore resumed reading ``folder``'s part file."""
    import re

    found = []
    for p in sorted((cfg.path / "log").glob("flink--taskexecutor-*.log")):
        with p.open("rb") as f:
            f.seek(since.get(p, 0))
            for line in f.read().decode("utf-8", "replace").splitlines():
                m = re.search(r"Adding split\(s\) to reader: \[FileSourceSplit: file:(\S+) .*recordsToSkip=(\d+)", line)
                if m and m.group(1).startswith(str(folder)):
                    found.append((line[:23], int(m.group(2))))
    return [n for _, n in sorted(found)]


def test_three_taskmanager_kills_lose_nothing_and_duplicate_nothing(standalone, reference):
    root, local = reference
    logs = _log_sizes(standalone)
    prepare_run(root / "ev", root / "remote", "generator", JOIN, artifact=root / "local" / "transform",
                parallelism=2, checkpoint_interval_ms=2_000, restart_attempts=20, replay_speedup=PACE)
    job_id = cluster.submit(standalone, root / "remote" / "job.json")
    rng = random.Random(8)
    kills = []
    # the first kill after a checkpoint completed (so a restore really restores state); each
    # kill at a random point 3-10 s after the job runs again: a restore replays from the last
    # checkpoint (under back-pressure one takes tens of seconds here), so the stream is mid-way
    _wait(standalone, job_id, lambda st: st == "RUNNING" and _completed(standalone, job_id) > 0, "a checkpoint")
    for _ in range(3):
        _wait(standalone, job_id, lambda st: _all_tasks_running(standalone, job_id), "all tasks running")
        time.sleep(rng.uniform(3.0, 10.0))
        assert cluster.job_state(standalone, job_id) == "RUNNING", "the job ended before the kill"
        before = _failures(standalone, job_id)
        kills.append((cluster.kill_taskmanager(standalone), _completed(standalone, job_id)))
        time.sleep(1.0)
        cluster.start_taskmanager(standalone)
        # the JobManager notices the loss (RPC failures, heartbeats) and restarts the job
        _wait(standalone, job_id, lambda st: _failures(standalone, job_id) > before, "the failure to register")
    assert cluster.wait(standalone, job_id, timeout=900) == "FINISHED"
    assert len(kills) == 3 and _failures(standalone, job_id) >= 3  # three restarts really happened
    restored = (cluster.checkpoints(standalone, job_id).get("latest") or {}).get("restored") or {}
    assert restored.get("id", 0) >= 1  # restarted from a checkpoint, not from scratch
    # the impressions source was still reading its file at two restores or more (what a second
    # restore re-read with Flink's own line reader: tests/test_file_source.py); with checkpoints
    # slower than the time between kills, or the file read ahead whole, this is not exercised
    at = _restored_positions(standalone, logs, root / "ev" / "impressions")
    assert len([n for n in at if n > 0]) >= 2 and at == sorted(at), at
    remote = summarize(root / "remote", json.loads((root / "ev" / "_manifest.json").read_text()))
    assert remote["reconciliation"]["reconciles"] and remote["counts"] == local["counts"]
    for name in OUTS:
        a, b = _lines(root / "local", name), _lines(root / "remote", name)
        assert max(b.values(), default=1) == 1 or max(a.values()) > 1, f"{name}: duplicates after restarts"
        assert a == b, name
    a, b = _weights(root / "local"), _weights(root / "remote")
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()


def test_stop_with_a_savepoint_and_resume_with_a_changed_build(standalone, reference):
    """``flink stop`` mid-stream, then the job resubmitted from the savepoint with a changed
    build (another metrics window, guard settings and pace: Python code and config; and an
    operator more: the updates output, off in the first run, is on) rescaled from parallelism 2
    to 1 (the sources' splits, the keyed state's key groups and the sinks' pending files of two
    subtasks restored into one): together the two runs give exactly the uninterrupted run's
    outputs, and the updates of every example learned after the restore."""
    from dataclasses import replace

    from models.online import OnlineConfig
    from runners.flink_job import JobConfig

    root, local = reference
    run = root / "resumed"
    prepare_run(root / "ev", run, "generator", JOIN, artifact=root / "local" / "transform", parallelism=2,
                checkpoint_interval_ms=2_000, replay_speedup=PACE, write_updates=False)
    job_id = cluster.submit(standalone, run / "job.json")
    _wait(standalone, job_id, lambda st: _all_tasks_running(standalone, job_id), "all tasks running")
    assert not any("sink_updates" in v for v in _parallelism(standalone, job_id))  # no updates operator
    assert max(_parallelism(standalone, job_id).values()) == 2
    time.sleep(5)
    savepoint = cluster.stop_with_savepoint(standalone, job_id)
    assert cluster.wait(standalone, job_id, timeout=60) == "FINISHED" or cluster.job_state(standalone, job_id)
    partial = sum(_lines(run, "predictions").values())
    assert 0 < partial < local["counts"]["predictions"]  # stopped mid-stream
    learned = max(e["seq"] for e in read_output(run, "examples"))  # the delta version at the stop
    assert not (run / "updates").exists() or not read_output(run, "updates")
    cfg = JobConfig.from_dict(json.loads((run / "job.json").read_text()))
    # the new build: a smaller metrics window (visible in the metrics output) and a higher
    # weight-norm limit for the guard (never reached: the served outputs stay the same)
    guard = {**cfg.online.guard.__dict__, "max_weight_norm": 2 * cfg.online.guard.max_weight_norm}
    changed = replace(cfg, metrics_window=cfg.metrics_window // 2, replay_speedup=0.0, parallelism=1,
                      online=OnlineConfig.from_dict({**cfg.online.to_dict(), "guard": guard}), write_updates=True)
    (run / "job.json").write_text(json.dumps(changed.to_dict(), indent=1) + "\n")
    resumed = cluster.submit(standalone, run / "job.json", savepoint=savepoint)
    assert cluster.wait(standalone, resumed, timeout=900) == "FINISHED"
    vertices = _parallelism(standalone, resumed)
    assert set(vertices.values()) == {1} and any("sink_updates" in v for v in vertices)  # the operator added
    for name in ("predictions", "examples", "late_labels", "dead_letter"):
        assert _lines(root / "local", name) == _lines(run, name), name
    after = Counter({line: n for line, n in _lines(root / "local", "updates").items() if json.loads(line)["seq"] > learned})
    assert 0 < sum(after.values()) < local["counts"]["updates"] and _lines(run, "updates") == after
    # the changed build took effect on the restored state
    last = max(read_output(run, "metrics"), key=lambda m: m["examples_seen"])
    ref = max(read_output(root / "local", "metrics"), key=lambda m: m["examples_seen"])
    assert ref["window_n"] == cfg.metrics_window and last["window_n"] == changed.metrics_window
    a, b = _weights(root / "local"), _weights(run)
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()


def _trigger_checkpoint(cfg, job_id) -> None:
    """``POST /jobs/:id/checkpoints``: a checkpoint now (the periodic ones are 10 min apart here)."""
    import urllib.request

    req = urllib.request.Request(f"{cfg.rest_url}/jobs/{job_id}/checkpoints", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def _written_lines(folder) -> int:
    """Lines written to an output so far, committed or not (the FileSink writes in-progress
    part files under hidden names and renames them on commit)."""
    return sum(p.read_bytes().count(b"\n") for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


def test_a_kill_after_the_end_of_input_loses_nothing(standalone, reference):
    """The window Flink's filesystem *table* sink got wrong (it committed every file at end of
    input, before the final checkpoint, so a restart duplicated or lost the tail): the whole
    input has been read and every prediction written, the job waits for its final checkpoint,
    and the TaskManager dies. Periodic checkpoints are 10 min apart and the test triggers its
    own (REST): one mid-stream, none between the end of input and the kill. Outputs go through
    the FileSink, which commits only when a checkpoint completes: after the restart from the
    mid-stream checkpoint, outputs and weights equal the uninterrupted run's."""
    root, local = reference
    run = root / "end_of_input"
    prepare_run(root / "ev", run, "generator", JOIN, artifact=root / "local" / "transform", parallelism=2,
                checkpoint_interval_ms=600_000, restart_attempts=5, replay_speedup=PACE)
    job_id = cluster.submit(standalone, run / "job.json")
    total = local["counts"]["predictions"]
    # the mid-stream checkpoint once a quarter of the predictions are written (it commits them)
    _wait(standalone, job_id, lambda st: _written_lines(run / "predictions") >= total // 4,
          "a quarter of the predictions", timeout=600)
    _trigger_checkpoint(standalone, job_id)
    _wait(standalone, job_id, lambda st: _completed(standalone, job_id) >= 1, "the mid-stream checkpoint")
    _wait(standalone, job_id, lambda st: _written_lines(run / "predictions") >= total,
          "every prediction written", timeout=600)
    visible = sum(_lines(run, "predictions").values())
    before = _failures(standalone, job_id)
    cluster.kill_taskmanager(standalone)
    assert 0 < visible < total  # the mid-stream commit only: the end of input is not committed
    time.sleep(1.0)
    cluster.start_taskmanager(standalone)
    _wait(standalone, job_id, lambda st: _failures(standalone, job_id) > before, "the failure to register")
    deadline = time.time() + 900
    while cluster.job_state(standalone, job_id) not in ("FINISHED", "FAILED", "CANCELED") and time.time() < deadline:
        time.sleep(5)
        try:  # the restarted job reads its tail again, then finishes on a checkpoint
            _trigger_checkpoint(standalone, job_id)
        except OSError:  # not running at this moment (restarting, or finished meanwhile)
            pass
    state = cluster.job_state(standalone, job_id)
    assert state == "FINISHED", _exceptions(standalone, job_id)
    assert ((cluster.checkpoints(standalone, job_id).get("latest") or {}).get("restored") or {}).get("id", 0) >= 1
    for name in OUTS:
        assert _lines(root / "local", name) == _lines(run, name), name
    a, b = _weights(root / "local"), _weights(run)
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()


def test_taskmanager_kills_with_kafka_sources_lose_nothing_and_duplicate_nothing(standalone, reference, tmp_path):
    """The same log from Kafka topics (two partitions each, a real Kafka-compatible broker; a
    replay bounded at the published end offsets), paced, the TaskManager killed twice after a
    checkpoint: the Kafka sources' offsets come back from the checkpoint (their readers restart
    at the checkpoint's offsets, not at the beginning), the job still ends by itself (a restore
    after a failure, unlike one from a savepoint, does not hit FLINK-31006: README, Kafka), and
    every output and the weights equal the uninterrupted file run's."""
    import re

    from runners.kafka import KafkaConfig, local_broker, publish

    root, local = reference
    run, logs = root / "kafka_kills", _log_sizes(standalone)
    with local_broker(log=tmp_path / "tansu.log") as servers:
        kafka = KafkaConfig(servers)
        kafka.end_offsets = publish(root / "ev", kafka, partitions=2)
        prepare_run(root / "ev", run, "generator", JOIN, artifact=root / "local" / "transform", parallelism=2,
                    checkpoint_interval_ms=2_000, restart_attempts=20, replay_speedup=PACE, kafka=kafka.to_dict())
        job_id = cluster.submit(standalone, run / "job.json")
        _wait(standalone, job_id, lambda st: st == "RUNNING" and _completed(standalone, job_id) > 0, "a checkpoint")
        for _ in range(2):
            _wait(standalone, job_id, lambda st: _all_tasks_running(standalone, job_id), "all tasks running")
            time.sleep(3.0)
            assert cluster.job_state(standalone, job_id) == "RUNNING", "the job ended before the kill"
            before = _failures(standalone, job_id)
            cluster.kill_taskmanager(standalone)
            time.sleep(1.0)
            cluster.start_taskmanager(standalone)
            _wait(standalone, job_id, lambda st: _failures(standalone, job_id) > before, "the failure to register")
        state = cluster.wait(standalone, job_id, timeout=600)
    assert state == "FINISHED", _exceptions(standalone, job_id)
    assert ((cluster.checkpoints(standalone, job_id).get("latest") or {}).get("restored") or {}).get("id", 0) >= 1
    starts = []  # where each impressions reader (re)started: -2 is "earliest", at the first start
    for p in sorted((standalone.path / "log").glob("flink--taskexecutor-*.log")):
        with p.open("rb") as f:
            f.seek(logs.get(p, 0))
            starts += [int(n) for n in re.findall(r"Partition: impressions-\d+, StartingOffset: (-?\d+)",
                                                  f.read().decode("utf-8", "replace"))]
    assert starts.count(-2) == 2 and any(n > 0 for n in starts), starts  # restored mid-topic
    remote = summarize(run, json.loads((root / "ev" / "_manifest.json").read_text()))
    assert remote["reconciliation"]["reconciles"] and remote["counts"] == local["counts"]
    for name in OUTS:
        assert _lines(root / "local", name) == _lines(run, name), name
    a, b = _weights(root / "local"), _weights(run)
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()
