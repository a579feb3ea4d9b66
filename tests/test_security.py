"""Security basics (README: threat model): nothing read from the registry or the inputs can
make the job leave its folders, run code, or use unbounded memory; config paths cannot inject
SQL options into the job's DDL."""
import os
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from models.registry import Registry, RegistryError
from pipelines.events import SOURCES
from pipelines.sources.files import read_files
from runners.flink_job import JobConfig

ROOT = Path(__file__).resolve().parent.parent


def test_registry_names_cannot_leave_the_registry(tmp_path):
    reg = Registry(tmp_path / "reg")
    v = reg.publish("delta", {"weights.npz": b"w"}, {"spec_fingerprint": "fp"}).version
    (tmp_path / "secret").write_text("s")
    for bad in ("../../secret", "/etc", "..", "a/b", ""):
        with pytest.raises(RegistryError, match="invalid version name"):
            reg.verify("delta", bad)
    with pytest.raises(RegistryError, match="leaves the version folder"):
        reg.publish("delta", {"../../escaped": b"x"}, {}, version="000000000009")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "reg" / "escaped").exists()
    # a tampered manifest naming a file outside its folder is refused, not read
    m = tmp_path / "reg" / "delta" / v / "manifest.json"
    m.write_text(m.read_text().replace('"weights.npz"', '"../../../secret"'))
    with pytest.raises(RegistryError, match="leaves the version folder"):
        reg.verify("delta", v)
    # a tampered CURRENT pointer too
    (tmp_path / "reg" / "delta" / "CURRENT").write_text("../../../secret\n")
    with pytest.raises(RegistryError, match="invalid version name"):
        reg.verify("delta", reg.current("delta"))


def test_a_huge_line_costs_bounded_memory_and_is_a_dead_letter(tmp_path):
    good = b'{"kind":"label","event_id":"e1","label_time":900000000000,"label":1,"label_type":"price_up"}'
    f = tmp_path / "in.jsonl"
    with open(f, "wb") as out:
        out.write(good + b"\n")
        out.write(b"x" * (64 << 20))  # a 64 MB line
        out.write(b"\n" + good.replace(b"e1", b"e2") + b"\n")
    (tmp_path / "warm.jsonl").write_bytes(good + b"\n")
    list(read_files([tmp_path / "warm.jsonl"], SOURCES["elec2"]))  # first-use allocations (imports)
    tracemalloc.start()
    tables = list(read_files([f], SOURCES["elec2"]))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} B while reading a 64 MB line"
    labels = [r for t in tables for r in t["label"].to_pylist()]
    dead = [r for t in tables for r in t["dead_letter"].to_pylist()]
    assert [r["event_id"] for r in labels] == ["e1", "e2"]
    assert [r["reason"] for r in dead] == ["oversize_record"] and len(dead[0]["raw"]) <= 64 * 1024


def test_config_paths_cannot_inject_sql_or_leave_the_roots(tmp_path):
    ok = dict(event_dir=str(tmp_path / "ev"), out=str(tmp_path / "run"), artifact=str(tmp_path / "art"))
    JobConfig(**ok, roots=[str(tmp_path)])
    with pytest.raises(ValueError, match="quote"):
        JobConfig(**{**ok, "out": str(tmp_path / "x', 'sink.parallelism' = '9")})
    with pytest.raises(ValueError, match="outside the configured roots"):
        JobConfig(**{**ok, "out": str(tmp_path / ".." / "elsewhere")}, roots=[str(tmp_path)])
    (tmp_path / "link").symlink_to("/")
    with pytest.raises(ValueError, match="outside the configured roots"):
        JobConfig(**{**ok, "event_dir": str(tmp_path / "link" / "etc")}, roots=[str(tmp_path)])


def test_no_pickle_or_eval_on_files_or_inputs():
    """The code never unpickles, evals or yaml-loads unsafely (Flink's own checkpoint state is
    the one pickled thing, written and read by the job itself; see the threat model)."""
    bad = re.compile(r"pickle\.loads?\(|\beval\(|\bexec\(|allow_pickle=True|yaml\.load\(|marshal\.loads?\(")
    hits = [f"{p.relative_to(ROOT)}:{i}" for d in ("models", "pipelines", "runners", "transforms")
            for p in (ROOT / d).rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if bad.search(line)]
    assert hits == []


def _exe(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:  # gone meanwhile
        return ""


def test_the_local_job_listens_on_loopback_only(tmp_path):
    """The mini-cluster job (``make run``'s): the py4j gateway, the mini-cluster's RPC, blob,
    data and REST ports, the Beam Fn API servers (control, data, state, logging) that the JVM
    opens for each Python operator, and the Python workers. Every listening socket of the
    job's process tree, sampled while the Python workers run (the replay is paced so that they
    run for a while), is loopback-only. Flink's own ``ServerFactory`` binds those servers on
    all interfaces and PyFlink's loopback worker pool listens on ``[::]``: ``runners.jvm``
    replaces the first and chooses process mode for the second; ``LOCAL_ENDPOINTS`` binds the
    mini-cluster's ports (two of them listened on all interfaces). The job's Prometheus endpoint
    (``prometheus_ports``) too: Flink's reporter would bind all interfaces, ours loopback."""
    from pipelines.join import JoinConfig
    from pipelines.sources.generator import GeneratorConfig
    from runners import cluster
    from runners.local import generate_event_dir
    from runners.stream import prepare_run

    generate_event_dir(tmp_path / "ev", GeneratorConfig(events=3_000, seed=5))  # ~3,000 s of event time
    prepare_run(tmp_path / "ev", tmp_path / "run", "generator", JoinConfig(window_ms=600_000),
                replay_speedup=400.0, prometheus_ports=PROMETHEUS)
    with open(tmp_path / "flink.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "runners.flink_job", str(tmp_path / "run" / "job.json")],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    samples, scored = [], 0.0
    try:
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            tree = cluster.descendants(proc.pid)
            if any("python" in _exe(p) for p in tree[1:]):  # the JVM's Python workers
                samples.append(cluster.listening_of(tree))
                scored = max(scored, _scored(samples[-1]))
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.wait() == 0, (tmp_path / "flink.log").read_text()[-3000:]
    socks = [s for sample in samples for s in sample]
    # really observed: the gateway, the mini-cluster's ports and the Python operators' servers
    assert len(samples) >= 3 and len({s["address"] for s in socks}) >= 6, samples
    bad = sorted({(s["pid"] == proc.pid and "driver" or "other", s["address"]) for s in socks if not s["loopback"]})
    assert bad == []
    # the job's metrics for Prometheus (prometheus_ports: our loopback reporter), the Learner's included
    assert any(s["address"].startswith("127.0.0.1:1849") for s in socks) and scored > 0


PROMETHEUS = "18495-18499"


def _scored(sockets: list[dict]) -> float:
    """The Learner's impressions_scored from the job's Prometheus endpoint, if it is up yet."""
    import urllib.request

    for s in sockets:
        if s["address"].startswith("127.0.0.1:1849"):
            try:
                with urllib.request.urlopen(f"http://{s['address']}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                return 0.0
            return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
                       if x.startswith("flink_taskmanager_job_task_operator_impressions_scored{"))
    return 0.0
