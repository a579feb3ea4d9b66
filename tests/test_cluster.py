"""The same job on a real standalone cluster (started by this test from the pip PyFlink,
parallelism 2) gives the same joined examples and bit-identical weights as the mini-cluster;
the test stops the cluster and only its own processes. Also the operator's stop-and-resume
sequence through the ``driftline`` command line."""
import json
import time
import urllib.request

import pytest

from models.ftrl import FTRL
from pipelines.join import JoinConfig
from pipelines.sources.generator import GeneratorConfig
from runners import cluster
from runners.local import generate_event_dir
from runners.stream import prepare_run, read_output, run_stream, summarize

JOIN = JoinConfig(window_ms=600_000, late_horizon_ms=3_600_000, watermark_delay_ms=60_000)


def _weights(run_dir) -> FTRL:
    snaps = sorted((run_dir / "registry" / "delta").iterdir())
    return FTRL.from_bytes((snaps[-1] / "weights.npz").read_bytes())


def _examples(run_dir):
    return [(e["seq"], e["event_id"], e["label"], e["resolution_time"], e["features"])
            for e in sorted(read_output(run_dir, "examples"), key=lambda e: e["seq"])]


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    cfg = cluster.ClusterConfig(root=str(tmp_path_factory.mktemp("cluster")), rest_port=18391, rpc_port=16391,
                                prometheus_ports="18395-18399")
    try:
        s = cluster.up(cfg)
        assert s["overview"]["slots-total"] == 2
        yield cfg
    finally:
        stopped = cluster.down(cfg)
    assert stopped and not any(cluster._alive(p) for p in stopped)
    assert not cluster.status(cfg)["up"]
    assert not (cfg.path / "tmp").exists()  # its working files went with it


def test_cluster_binds_to_localhost_only(standalone):
    conf = (standalone.path / "conf" / "config.yaml").read_text()
    assert "0.0.0.0" not in conf and "bind-address: 127.0.0.1" in conf


def test_flink_runs_with_our_client_timeout_and_buffer_debloating(standalone):
    """Read back from the JobManager, not our file: the command line waits for a slow savepoint
    (Flink's 1-minute default made ``driftline savepoint --stop`` fail on a loaded machine while
    the savepoint went on) and checkpoint barriers wait behind about a second of data, not a
    fixed buffer count."""
    conf = {c["key"]: c["value"] for c in _rest(standalone, "/jobmanager/config")}
    assert conf["client.timeout"] == f"{cluster.CLIENT_TIMEOUT_S} s"
    assert conf["taskmanager.network.memory.buffer-debloat.enabled"] == "true"
    # its working files in the cluster's folder (not /tmp), where the TaskManager has its own
    assert conf["io.tmp.dirs"] == str(standalone.path / "tmp")
    assert any(p.name.startswith("tm_") for p in (standalone.path / "tmp").iterdir())


def test_buffer_debloating_can_be_turned_off(tmp_path):
    import yaml

    for on in (True, False):
        conf = cluster.write_conf(cluster.ClusterConfig(root=str(tmp_path / str(on)), buffer_debloat=on))
        tm = yaml.safe_load((conf / "config.yaml").read_text())["taskmanager"]
        assert tm["network"]["memory"]["buffer-debloat"]["enabled"] is on
        assert tm["bind-host"] == "127.0.0.1"  # the rest of the TaskManager's conf kept


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _metric(text: str, name: str) -> float | None:
    """The sum of a metric's samples in a Prometheus text page (None: absent)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if not line.startswith("#") and line.split("{", 1)[0].endswith(name)]
    return sum(values) if values else None


def test_prometheus_metrics_are_served_on_loopback(standalone):
    """Flink's Prometheus reporter binds every interface; ours (driftline.flink.LoopbackPrometheus)
    serves the same collectors from 127.0.0.1, one port of the range per daemon."""
    urls = cluster.metrics_endpoints(standalone)
    assert len(urls) == 2 and all(u.startswith("http://127.0.0.1:1839") for u in urls), urls
    pages = [_scrape(u) for u in urls]
    assert any(_metric(p, "flink_jobmanager_numRegisteredTaskManagers") == 1 for p in pages)
    assert any(_metric(p, "flink_taskmanager_Status_JVM_CPU_Time") for p in pages)
    assert cluster.status(standalone)["metrics"] == urls


def test_every_listening_socket_is_loopback(standalone):
    """Not just the config: the kernel's socket table for the cluster's processes (RPC, REST,
    blob server, data ports) shows no socket reachable from outside the machine."""
    socks = cluster.listening(standalone)
    assert len(socks) >= 3 and all(s["loopback"] for s in socks), socks
    assert any(s["address"].endswith(f":{standalone.rest_port}") for s in socks)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """A generated log and its run on the mini-cluster: what the cluster's runs must equal."""
    root = tmp_path_factory.mktemp("mini")
    generate_event_dir(root / "ev", GeneratorConfig(events=3_000, seed=21))
    return root, run_stream(root / "ev", root / "local", "generator", JOIN)


def test_standalone_cluster_equals_mini_cluster(standalone, mini, tmp_path):
    """Also: while the job runs, the TaskManager's servers for the Python operators (Beam Fn
    API control, data, state, logging) listen on loopback only, like the idle cluster."""
    root, local = mini
    idle = {s["address"] for s in cluster.listening(standalone)}
    # paced (outputs are the same at any pace) so that the Python operators run a while
    job = prepare_run(root / "ev", tmp_path / "remote", "generator", JOIN,
                      artifact=root / "local" / "transform", parallelism=2, replay_speedup=400.0)
    job_id = cluster.submit(standalone, tmp_path / "remote" / "job.json")
    running: dict[str, bool] = {}
    while cluster.job_state(standalone, job_id) not in ("FINISHED", "FAILED", "CANCELED"):
        running.update({s["address"]: s["loopback"] for s in cluster.listening(standalone)})
        time.sleep(0.5)
    assert cluster.wait(standalone, job_id, timeout=600) == "FINISHED"
    assert len(set(running) - idle) >= 4, running  # the job's own servers were seen
    assert all(running.values()), sorted(a for a, lo in running.items() if not lo)
    remote = summarize(tmp_path / "remote", json.loads((root / "ev" / "_manifest.json").read_text()))
    assert remote["reconciliation"]["reconciles"] and remote["counts"] == local["counts"]
    assert _examples(tmp_path / "remote") == _examples(root / "local")
    a, b = _weights(root / "local"), _weights(tmp_path / "remote")
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()


def test_the_cluster_reads_kafka_topics(standalone, mini, tmp_path):
    """The job submitted to the cluster (parallelism 2) over Kafka topics of two partitions on a
    real Kafka-compatible broker: the connector's jars go with the job (``pipeline.jars``),
    and it equals the mini-cluster's file run: counts, joined examples, weights."""
    from runners.kafka import KafkaConfig, local_broker, publish

    root, local = mini
    with local_broker(log=tmp_path / "tansu.log") as servers:
        kafka = KafkaConfig(servers)
        kafka.end_offsets = publish(root / "ev", kafka, partitions=2)
        prepare_run(root / "ev", tmp_path / "kafka", "generator", JOIN, artifact=root / "local" / "transform",
                    parallelism=2, kafka=kafka.to_dict())
        job_id = cluster.submit(standalone, tmp_path / "kafka" / "job.json")
        assert cluster.wait(standalone, job_id, timeout=600) == "FINISHED"
    remote = summarize(tmp_path / "kafka", json.loads((root / "ev" / "_manifest.json").read_text()))
    assert remote["reconciliation"]["reconciles"] and remote["counts"] == local["counts"]
    assert _examples(tmp_path / "kafka") == _examples(root / "local")
    a, b = _weights(root / "local"), _weights(tmp_path / "kafka")
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()


def test_a_failed_job_names_its_cause(standalone, mini, tmp_path):
    """A job that fails on the cluster (a part file corrupted after its validation; no
    restarts): ``cluster.failure`` gives the failure and its root cause from the JobManager's
    exception history — what ``driftline submit --wait`` prints before it exits 1."""
    import shutil

    root, _ = mini
    shutil.copytree(root / "ev", tmp_path / "ev")
    part = sorted((tmp_path / "ev" / "labels").glob("part-*"))[-1]
    part.write_bytes(part.read_bytes() + b'{"event_id": "e-broken", "label_time": \n')
    prepare_run(tmp_path / "ev", tmp_path / "broken", "generator", JOIN, artifact=root / "local" / "transform",
                parallelism=2, restart_attempts=0)
    job_id = cluster.submit(standalone, tmp_path / "broken" / "job.json")
    assert cluster.wait(standalone, job_id, timeout=600) == "FAILED"
    why = cluster.failure(standalone, job_id)
    assert why is not None and "Caused by:" in why and "e-broken" in why, why


def _rest(cfg, path: str) -> dict:
    with urllib.request.urlopen(f"{cfg.rest_url}{path}", timeout=5) as r:
        return json.loads(r.read())


def _until(cond, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def test_cli_stop_with_a_savepoint_and_resume_the_same_run(standalone, tmp_path):
    """The operator's sequence through the command line: ``driftline submit`` (waiting, then
    Ctrl-C: it stops waiting, the job runs on), ``driftline savepoint JOB --stop`` mid-stream,
    ``driftline submit --from-savepoint PATH`` into the same run folder. The resumed run keeps
    what the first part committed (before, re-preparing the folder deleted it) and the two parts
    give the uninterrupted run's outputs."""
    import re
    import signal
    import subprocess
    import sys

    from typer.testing import CliRunner

    from runners.cli import app

    cli = CliRunner()
    where = ["--root", standalone.root, "--rest-port", str(standalone.rest_port)]
    generate_event_dir(tmp_path / "ev", GeneratorConfig(events=30_000, seed=23))
    local = run_stream(tmp_path / "ev", tmp_path / "local", "generator")
    run, log = tmp_path / "run", tmp_path / "submit.log"
    waiting = subprocess.Popen([sys.executable, "-m", "runners.cli", "submit", "--data", str(tmp_path / "ev"),
                                "--out", str(run), "--speedup", "600", *where],
                               stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        _until(lambda: "job id: " in log.read_text() or waiting.poll() is not None, "the submitted job's id")
        found = re.search(r"job id: ([0-9a-f]{32})", log.read_text())
        assert found, log.read_text()
        job_id = found.group(1)
        _until(lambda: cluster.job_state(standalone, job_id) == "RUNNING", "the job running")
        waiting.send_signal(signal.SIGINT)  # Ctrl-C while `submit` waits for the job's end
        assert waiting.wait(60) == 130, log.read_text()
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert f"job {job_id} keeps running" in log.read_text() and "Traceback" not in log.read_text()

    def running_with_a_checkpoint() -> bool:
        job = _rest(standalone, f"/jobs/{job_id}")
        assert job["state"] not in ("FINISHED", "FAILED", "CANCELED"), job["state"]
        done = (cluster.checkpoints(standalone, job_id).get("latest") or {}).get("completed")
        return job["state"] == "RUNNING" and bool(done) and all(
            v["status"] in ("RUNNING", "FINISHED") for v in job["vertices"])  # a bounded source may be done

    _until(running_with_a_checkpoint, "the job running with a completed checkpoint")
    # the Learner's own metrics (Python counters) reach Prometheus through the TaskManager
    scored = lambda: max((_metric(_scrape(u), "impressions_scored") or 0)  # noqa: E731
                         for u in cluster.metrics_endpoints(standalone))
    _until(lambda: scored() > 0, "the Learner's impressions_scored in Prometheus")
    jobs = len(_rest(standalone, "/jobs/overview")["jobs"])
    r = cli.invoke(app, ["savepoint", job_id, "--stop", *where])
    assert r.exit_code == 0, r.output
    savepoint = re.search(r"savepoint: (\S+)", r.output).group(1)
    assert cluster.wait(standalone, job_id, timeout=60) == "FINISHED"
    before = {name: _lines(run, name) for name in ("predictions", "examples")}
    assert 0 < len(before["predictions"]) < local["counts"]["predictions"]  # stopped mid-stream
    # what the savepoint restores, read from its _metadata: every operator of this build
    r = cli.invoke(app, ["operators", str(run), "--savepoint", savepoint, "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    assert rows and not [o for o in rows if o["savepoint"].startswith(("new", "not restored"))]
    assert {o["uid"]: o["savepoint"] for o in rows}["dedup_join"].endswith(" B")  # keyed state
    # a build without the updates sink would drop its state: refused before anything is
    # submitted, and the run's job.json is left as it was
    job = (run / "job.json").read_text()
    r = cli.invoke(app, ["submit", "--out", str(run), "--from-savepoint", savepoint, "--no-updates", *where])
    assert r.exit_code == 2 and "sink_updates" in r.output and "--allow-non-restored-state" in r.output, r.output
    assert (run / "job.json").read_text() == job and len(_rest(standalone, "/jobs/overview")["jobs"]) == jobs
    # the job ran with 128 key groups (JobConfig.max_parallelism, set explicitly): a build with
    # another number would map no keyed state (Flink refuses it at submission), so it is refused
    # here first
    assert {v["maxParallelism"] for v in _rest(standalone, f"/jobs/{job_id}")["vertices"]} == {128}
    r = cli.invoke(app, ["submit", "--out", str(run), "--from-savepoint", savepoint, "--max-parallelism", "256",
                         *where])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "max parallelism 256 where the savepoint's is 128" in said, r.output
    assert (run / "job.json").read_text() == job and len(_rest(standalone, "/jobs/overview")["jobs"]) == jobs
    r = cli.invoke(app, ["submit", "--out", str(run), "--from-savepoint", savepoint, *where])
    assert r.exit_code == 0, r.output
    remote = json.loads((run / "summary.json").read_text())
    assert remote["reconciliation"]["reconciles"] and remote["counts"] == local["counts"]
    for name in ("predictions", "examples", "late_labels", "dead_letter", "updates"):
        assert _lines(run, name) == _lines(tmp_path / "local", name), name
    assert all(set(before[name]) <= set(_lines(run, name)) for name in before)  # the first part kept
    a, b = _weights(tmp_path / "local"), _weights(run)
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()


def _lines(run_dir, name) -> dict:
    from collections import Counter

    return Counter(json.dumps(r, sort_keys=True) for r in read_output(run_dir, name))
