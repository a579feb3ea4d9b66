"""The same job on a real standalone cluster (started by this test from the pip PyFlink,
parallelism 2) gives the same joined examples and bit-identical weights as the mini-cluster;
the test stops the cluster and only its own processes."""
import json
import time

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
    cfg = cluster.ClusterConfig(root=str(tmp_path_factory.mktemp("cluster")), rest_port=18391, rpc_port=16391)
    try:
        s = cluster.up(cfg)
        assert s["overview"]["slots-total"] == 2
        yield cfg
    finally:
        stopped = cluster.down(cfg)
    assert stopped and not any(cluster._alive(p) for p in stopped)
    assert not cluster.status(cfg)["up"]


def test_cluster_binds_to_localhost_only(standalone):
    conf = (standalone.path / "conf" / "config.yaml").read_text()
    assert "0.0.0.0" not in conf and "bind-address: 127.0.0.1" in conf


def test_every_listening_socket_is_loopback(standalone):
    """Not just the config: the kernel's socket table for the cluster's processes (RPC, REST,
    blob server, data ports) shows no socket reachable from outside the machine."""
    socks = cluster.listening(standalone)
    assert len(socks) >= 3 and all(s["loopback"] for s in socks), socks
    assert any(s["address"].endswith(f":{standalone.rest_port}") for s in socks)


def test_standalone_cluster_equals_mini_cluster(standalone, tmp_path):
    """Also: while the job runs, the TaskManager's servers for the Python operators (Beam Fn
    API control, data, state, logging) listen on loopback only, like the idle cluster."""
    generate_event_dir(tmp_path / "ev", GeneratorConfig(events=3_000, seed=21))
    local = run_stream(tmp_path / "ev", tmp_path / "local", "generator", JOIN)
    idle = {s["address"] for s in cluster.listening(standalone)}
    # paced (outputs are the same at any pace) so that the Python operators run a while
    job = prepare_run(tmp_path / "ev", tmp_path / "remote", "generator", JOIN,
                      artifact=tmp_path / "local" / "transform", parallelism=2, replay_speedup=400.0)
    job_id = cluster.submit(standalone, tmp_path / "remote" / "job.json")
    running: dict[str, bool] = {}
    while cluster.job_state(standalone, job_id) not in ("FINISHED", "FAILED", "CANCELED"):
        running.update({s["address"]: s["loopback"] for s in cluster.listening(standalone)})
        time.sleep(0.5)
    assert cluster.wait(standalone, job_id, timeout=600) == "FINISHED"
    assert len(set(running) - idle) >= 4, running  # the job's own servers were seen
    assert all(running.values()), sorted(a for a, lo in running.items() if not lo)
    remote = summarize(tmp_path / "remote", json.loads((tmp_path / "ev" / "_manifest.json").read_text()))
    assert remote["reconciliation"]["reconciles"] and remote["counts"] == local["counts"]
    assert _examples(tmp_path / "remote") == _examples(tmp_path / "local")
    a, b = _weights(tmp_path / "local"), _weights(tmp_path / "remote")
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()
