"""Unbounded mode: the job monitors an event directory continuously and serves part files that
appear after it started (committed on checkpoints), while impressions whose window is still
open stay pending."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from pipelines.join import JoinConfig
from pipelines.run_report import build_run_report
from pipelines.sources.generator import GeneratorConfig
from runners.flink_job import DEBLOAT, JobConfig, local_options, warm_cut as cut_of
from runners.local import free_port, generate_event_dir
from runners.savepoints import trigger
from runners.stream import fit_warmup_artifact, prepare_run, read_output, summarize
from tests_helpers import rest as _rest, wait_for as _wait_for


TICK = 10_000


def _publish(src, dst_dir):
    """Atomically, as the event-directory writer does: hidden temp name, then rename."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    tmp = dst_dir / f".{src.name}.inprogress"
    shutil.copy(src, tmp)
    os.replace(tmp, dst_dir / src.name)


def test_follow_mode_picks_up_new_files(tmp_path):
    generate_event_dir(tmp_path / "ev", GeneratorConfig(events=2_000, seed=4, duplicate_rate=0.0,
                                                       out_of_order_rate=0.0))
    live = tmp_path / "live"
    (live / "impressions").mkdir(parents=True)
    (live / "labels").mkdir()
    shutil.copy(tmp_path / "ev" / "_manifest.json", live / "_manifest.json")
    join = JoinConfig(window_ms=600_000, late_horizon_ms=3_600_000, watermark_delay_ms=10_000)
    fit_warmup_artifact(tmp_path / "ev", "generator", tmp_path / "art")
    prepare_run(live, tmp_path / "run", "generator", join, artifact=tmp_path / "art", follow=True,
                checkpoint_interval_ms=2_000, monitor_interval_ms=500, learn_tick_ms=TICK)

    proc = subprocess.Popen([sys.executable, "-m", "runners.flink_job", str(tmp_path / "run" / "job.json")],
                            stdout=open(tmp_path / "flink.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        time.sleep(15)  # the job is up and watching an empty directory
        # a report of the running job, nothing served yet (builds; says its figures are not final)
        assert "Not final" in build_run_report(tmp_path / "run", tmp_path / "r0.html").read_text()
        for stream in ("impressions", "labels"):
            for part in sorted((tmp_path / "ev" / stream).glob("part-*")):
                _publish(part, live / stream)
        times = [json.loads(line)["event_time"] for line in open(next((tmp_path / "ev" / "impressions").glob("part-*")))]
        # served once the watermark (newest event time - delay - 1 ms) passes the end of their
        # tick: the OVER aggregates are point-in-time and impressions reach the scorer in ticks,
        # so the newest impressions wait for more input
        watermark = max(times) - join.watermark_delay_ms - 1
        n_imp = sum(t // TICK * TICK + TICK - 1 <= watermark for t in times)
        deadline = time.time() + 240
        s = None
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "flink.log").read_text()[-3000:]
            s = summarize(tmp_path / "run", json.loads((live / "_manifest.json").read_text()), write=False)
            if s["counts"]["predictions"] == n_imp and s["counts"]["examples"] > 0:
                break
            time.sleep(3)
        assert s["counts"]["predictions"] == n_imp, s["counts"]
        # the stream never ends: the newest impressions are still inside their window, and
        # nothing beyond the watermark was served
        assert max(p["event_time"] for p in read_output(tmp_path / "run", "predictions")) <= watermark
        assert 0 < s["counts"]["examples"] < n_imp and s["counts"]["pending"] == n_imp - s["counts"]["examples"]
        # a second report of the running job: what it has committed now, not the first report's
        page = build_run_report(tmp_path / "run", tmp_path / "r1.html").read_text()
        assert "Not final" in page and f"<td>predictions</td><td>{n_imp:,}</td>" in page
        assert f"<td>pending (served, not yet resolved)</td><td>{s['counts']['pending']:,}</td>" in page
        assert not (tmp_path / "run" / "summary.json").exists()  # reports of a running job write none
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def test_lateness_survives_a_restore(tmp_path):
    """A job stopped with a savepoint and resumed keeps judging lateness by the watermarks it
    had reached: an impression and a label more out of order than the watermark delay, the
    first rows published after the restore, are ``behind_watermark`` dead letters as in an
    uninterrupted run. (Flink does not checkpoint watermarks: without our operators keeping
    their inputs' watermarks in state, both would be taken as on time, and the result of a
    log would depend on where the job was restored.) The job is warmed up with the traffic
    before the stream (``warmup_dir``, a bounded source beside the followed ones): its windowed
    counts are the ones over warm-up and stream together, before and after the restore (a
    warm-up read again after the restore would count twice)."""
    import numpy as np

    from transforms.aggregates import window_counts

    generate_event_dir(tmp_path / "ev", GeneratorConfig(events=2_000, seed=5, duplicate_rate=0.0,
                                                       out_of_order_rate=0.0))
    imps = [json.loads(x) for p in sorted((tmp_path / "ev" / "impressions").glob("part-*")) for x in open(p)]
    labels = [json.loads(x) for p in sorted((tmp_path / "ev" / "labels").glob("part-*")) for x in open(p)]
    cut = imps[len(imps) * 3 // 5]["event_time"]
    warm_cut = imps[len(imps) // 5]["event_time"]
    warm = [r for r in imps if r["event_time"] < warm_cut]
    warm_ids = {r["event_id"] for r in warm}
    (tmp_path / "warm" / "impressions").mkdir(parents=True)
    (tmp_path / "warm" / "impressions" / "part-000000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in warm))
    shutil.copy(tmp_path / "ev" / "_manifest.json", tmp_path / "warm" / "_manifest.json")
    imps = [r for r in imps if r["event_id"] not in warm_ids]
    labels = [r for r in labels if r["event_id"] not in warm_ids]
    first = [r for r in imps if r["event_time"] < cut]
    join = JoinConfig(window_ms=600_000, late_horizon_ms=3_600_000, watermark_delay_ms=10_000)
    late_imp = {**first[-1], "event_id": "late-impression", "user_id": "late-user",
                "event_time": first[-1]["event_time"] - 300_000}  # 30 watermark delays back
    labelled = {r["event_id"] for r in labels}
    label_time = first[-1]["event_time"] - 120_000  # inside its impression's window: a positive if on time
    target = next(r for r in reversed(first) if r["event_id"] not in labelled and r["event_time"] < label_time)
    assert label_time - target["event_time"] < join.window_ms
    late_label = {"event_id": target["event_id"], "label_time": label_time, "label": 1, "label_type": "click"}
    parts = {("impressions", 0): first, ("impressions", 1): [late_imp, *(r for r in imps if r["event_time"] >= cut)],
             ("labels", 0): [r for r in labels if r["label_time"] < cut],
             ("labels", 1): [late_label, *(r for r in labels if r["label_time"] >= cut)]}
    src = tmp_path / "parts"
    for (stream, i), rows in parts.items():
        (src / stream).mkdir(parents=True, exist_ok=True)
        (src / stream / f"part-00000{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    live = tmp_path / "live"
    (live / "impressions").mkdir(parents=True)
    (live / "labels").mkdir()
    shutil.copy(tmp_path / "ev" / "_manifest.json", live / "_manifest.json")
    fit_warmup_artifact(tmp_path / "ev", "generator", tmp_path / "art")
    port = free_port()
    rest = {"rest.port": str(port), "rest.bind-port": str(port)}
    cfg = prepare_run(live, tmp_path / "run", "generator", join, artifact=tmp_path / "art", follow=True,
                      checkpoint_interval_ms=2_000, monitor_interval_ms=500, learn_tick_ms=TICK, flink_conf=rest,
                      warmup=tmp_path / "warm")
    assert cfg.warmup_dir and cfg.warmup_cut_ms == cut_of(cfg) > 0
    # a job.json without the cut (an older build's) takes the warm-up's own
    assert cut_of(JobConfig.from_dict({**cfg.to_dict(), "warmup_cut_ms": 0})) == cfg.warmup_cut_ms
    log = tmp_path / "flink.log"

    def start():
        return subprocess.Popen([sys.executable, "-m", "runners.flink_job", str(tmp_path / "run" / "job.json")],
                                stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)

    def predicted() -> dict:
        return {p["event_id"]: p["event_time"] for p in read_output(tmp_path / "run", "predictions")}

    proc = start()
    try:
        for stream in ("impressions", "labels"):
            _publish(src / stream / "part-000000.jsonl", live / stream)
        # served past both late rows' times: every operator's watermark had passed them
        _wait_for(proc, log, lambda: max(predicted().values(), default=0) > label_time, "the first part served")
        # a followed stream's mini-cluster debloats its buffers (runners.flink_job.local_options)
        assert {c["key"]: c["value"] for c in _rest(port, "/jobmanager/config")}.get(DEBLOAT) == "true"
        savepoint = trigger(f"http://127.0.0.1:{port}", tmp_path / "savepoints", stop=True)
        proc.wait(timeout=120)
        for stream in ("impressions", "labels"):
            _publish(src / stream / "part-000001.jsonl", live / stream)
        resumed = json.loads((tmp_path / "run" / "job.json").read_text())
        resumed["flink_conf"]["execution.state-recovery.path"] = savepoint
        (tmp_path / "run" / "job.json").write_text(json.dumps(resumed))
        proc = start()
        n_first = len(predicted())
        _wait_for(proc, log, lambda: len(predicted()) >= n_first + 300, "the second part served")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    dead = [d for d in read_output(tmp_path / "run", "dead_letter") if d["reason"] == "behind_watermark"]
    got = {(d["kind"], json.loads(d["raw"])["event_id"]) for d in dead}
    assert got == {("impression", "late-impression"), ("label", target["event_id"])}, dead
    assert "late-impression" not in predicted()
    # the counts over warm-up and stream (the late impression counted nowhere), on both sides of the restore
    rows = [*warm, *imps]
    ref = dict(zip([r["event_id"] for r in rows], window_counts(
        [[r["user_id"] for r in rows]], np.array([r["event_time"] for r in rows]), 3_600_000).tolist()))
    examples = read_output(tmp_path / "run", "examples")
    got = {e["event_id"]: (json.loads(e["inputs"]) if isinstance(e["inputs"], str) else e["inputs"])["user_count_1h"]
           for e in examples}
    served = predicted()
    restored_at = min(served[r["event_id"]] for r in parts[("impressions", 1)] if r["event_id"] in served)
    assert {i for i in got if served[i] >= restored_at} and {i for i in got if served[i] < restored_at}
    assert got and all(got[i] == ref[i] for i in got), [(i, got[i], ref[i]) for i in got if got[i] != ref[i]][:5]
    cold = dict(zip([r["event_id"] for r in imps], window_counts(
        [[r["user_id"] for r in imps]], np.array([r["event_time"] for r in imps]), 3_600_000).tolist()))
    assert sum(got[i] != cold[i] for i in got) > 50  # the warm-up counted


def test_paced_and_followed_streams_debloat_their_buffers_on_the_mini_cluster(tmp_path):
    """Buffer debloating shortens checkpoints where the Python operators lag behind a source that
    read ahead (paced or followed streams); an unpaced replay keeps its throughput without it.
    The mini-cluster's options only: under ``flink run`` the cluster's conf decides."""
    cfg = lambda **kw: JobConfig(event_dir=str(tmp_path), out=str(tmp_path), artifact=str(tmp_path), **kw)  # noqa: E731
    assert DEBLOAT not in local_options(cfg())
    assert local_options(cfg(follow=True))[DEBLOAT] == local_options(cfg(replay_speedup=60.0))[DEBLOAT] == "true"
    assert local_options(cfg())["rest.bind-address"] == "127.0.0.1"


def test_cli_stop_a_local_run_with_a_savepoint_and_resume_it(tmp_path):
    """The local operator's sequence, all through the command line: ``driftline run --speedup
    600 --rest-port P`` (its own process) stopped by ``driftline savepoint --run RUN_DIR
    --stop`` once a checkpoint has completed; ``driftline run --out RUN_DIR --from-savepoint
    PATH --speedup 600`` stopped by Ctrl-C (SIGINT: a savepoint, then the job stops); resumed
    again to the end at parallelism 2. A stopped run ends without an error, says how to
    resume, and its summary is not final (its input was not all read); each resume checks the
    savepoint against the build and keeps what came before; the three parts give exactly the
    uninterrupted run's outputs and FTRL weights."""
    import signal as signals
    from collections import Counter

    from typer.testing import CliRunner

    from models.ftrl import FTRL
    from runners.cli import app
    from runners.stream import run_stream

    def lines(run_dir, name) -> Counter:
        return Counter(json.dumps(r, sort_keys=True) for r in read_output(run_dir, name))

    def weights(run_dir) -> FTRL:
        return FTRL.from_bytes((sorted((run_dir / "registry" / "delta").iterdir())[-1] / "weights.npz").read_bytes())

    def checkpointed(port: int) -> bool:
        try:
            jobs = [j["id"] for j in _rest(port, "/jobs")["jobs"] if j["status"] == "RUNNING"]
            return bool(jobs) and _rest(port, f"/jobs/{jobs[0]}/checkpoints")["counts"]["completed"] > 0
        except OSError:
            return False

    def port_of(run) -> int:
        return int(json.loads((run / "job.json").read_text())["flink_conf"]["rest.port"])

    def stopped_part(proc, log) -> str:
        """The stopped part's process: ended without an error, said where it stopped."""
        assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
        said = " ".join(log.read_text().split())
        savepoint = said.split("stopped with a savepoint: ", 1)[1].split()[0]
        assert f"driftline run --out {run} --from-savepoint {savepoint}" in said
        summary = json.loads((run / "summary.json").read_text())
        assert not summary["final"] and 0 < summary["counts"]["predictions"] < local["counts"]["predictions"]
        return savepoint

    generate_event_dir(tmp_path / "ev", GeneratorConfig(events=20_000, seed=23))
    local = run_stream(tmp_path / "ev", tmp_path / "local", "generator")
    run, cli = tmp_path / "run", [sys.executable, "-m", "runners.cli", "run"]
    # part 1: stopped by `driftline savepoint --run RUN_DIR --stop`
    log1 = tmp_path / "part1.log"
    proc = subprocess.Popen([*cli, "--data", str(tmp_path / "ev"), "--out", str(run), "--speedup", "600", "--no-report"],
                            stdout=open(log1, "w"), stderr=subprocess.STDOUT)
    try:
        _wait_for(proc, log1, lambda: (run / "job.json").is_file() and checkpointed(port_of(run)), "a checkpoint")
        r = CliRunner().invoke(app, ["savepoint", "--run", str(run), "--stop"])
        assert r.exit_code == 0, r.output
        first = stopped_part(proc, log1)
        assert r.output.split("savepoint: ", 1)[1].split()[0] == first
    finally:
        if proc.poll() is None:
            proc.terminate()  # driftline run ends its job's processes too
    part1 = lines(run, "predictions")
    # part 2: resumed, paced again, stopped by Ctrl-C
    log2 = tmp_path / "part2.log"
    proc = subprocess.Popen([*cli, "--out", str(run), "--from-savepoint", first, "--speedup", "600", "--no-report"],
                            stdout=open(log2, "w"), stderr=subprocess.STDOUT)
    try:
        _wait_for(proc, log2, lambda: "operators restored, 0 new, 0 states dropped" in log2.read_text()
                  and checkpointed(port_of(run)), "the resumed job's checkpoint")
        proc.send_signal(signals.SIGINT)
        second = stopped_part(proc, log2)
    finally:
        if proc.poll() is None:
            proc.terminate()  # driftline run ends its job's processes too
    assert second != first and "stopping the job with a savepoint" in log2.read_text()
    part2 = lines(run, "predictions")
    assert set(part1) < set(part2)  # the first part kept, more served
    # part 3: to the end, rescaled from parallelism 1 to 2 (the keyed state's key groups split
    # between two subtasks of each SQL operator)
    r = CliRunner().invoke(app, ["run", "--out", str(run), "--from-savepoint", second, "--no-report",
                                 "--parallelism", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "job.json").read_text())["parallelism"] == 2
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["final"] and resumed["reconciliation"]["reconciles"] and resumed["counts"] == local["counts"]
    for name in ("predictions", "examples", "late_labels", "dead_letter", "updates"):
        assert lines(run, name) == lines(tmp_path / "local", name), name
    assert set(part2) <= set(lines(run, "predictions"))
    a, b = weights(tmp_path / "local"), weights(run)
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()
    # the stopped parts' logs kept
    assert not (run / "stopped.json").exists() and {p.name for p in run.glob("flink.*.log")} == {"flink.1.log", "flink.2.log"}


def test_a_terminated_local_run_ends_its_jobs_processes(tmp_path):
    """``driftline run --follow`` runs its job in a session of its own (so that Ctrl-C is its
    to handle): SIGTERM to ``driftline run`` (a supervisor's stop) must still end the job's
    Python client, its gateway JVM and the Python workers, not leave them running."""
    import psutil

    generate_event_dir(tmp_path / "ev", GeneratorConfig(events=2_000, seed=5))
    run, log = tmp_path / "run", tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "runners.cli", "run", "--data", str(tmp_path / "ev"), "--out",
                             str(run), "--follow", "--no-report"], stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def job_processes() -> list:
        return [p for p in psutil.Process(proc.pid).children(recursive=True) if p.is_running()]

    family: list = []
    try:
        _wait_for(proc, log, lambda: (run / "job.json").is_file() and _running(run), "the followed job running")
        family = job_processes()
        assert any(p.name() == "java" for p in family) and len(family) >= 3  # client, JVM, a worker
        proc.terminate()
        assert proc.wait(timeout=90) != 0
        gone, alive = psutil.wait_procs(family, timeout=60)
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:  # nothing left behind, whatever failed
        for p in family + (job_processes() if proc.poll() is None else []):
            try:
                p.kill()
            except psutil.Error:
                pass
        if proc.poll() is None:
            proc.kill()


def _running(run) -> bool:
    port = int(json.loads((run / "job.json").read_text())["flink_conf"]["rest.port"])
    try:
        return any(j["status"] == "RUNNING" for j in _rest(port, "/jobs")["jobs"]) and bool(read_output(run, "metrics"))
    except OSError:
        return False
