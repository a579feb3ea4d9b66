"""A standalone Flink cluster from the pip-installed PyFlink, and job submission to it.

``up`` writes our own conf dir (every endpoint bound to 127.0.0.1, ``python.executable`` the
venv's interpreter) and starts one JobManager and one TaskManager with Flink's own daemon
scripts, their pid files in our folder; ``down`` stops exactly those processes and nothing
else. ``submit`` runs ``bin/flink run -py`` on the job's entry point (``runners/flink_job.py``)
with the job config, and returns the job id.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

JOB_ENTRY = Path(__file__).resolve().parent / "flink_job.py"
# how long the `flink` command line waits for the cluster (client.timeout in our conf)
CLIENT_TIMEOUT_S = 600
log = logging.getLogger(__name__)


def flink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).resolve().parent


@dataclass
class ClusterConfig:
    root: str = "runs/cluster"  # conf/, log/, pid/, checkpoints/ live here
    rest_port: int = 18081
    rpc_port: int = 16123
    slots: int = 2
    parallelism: int = 2
    python_executable: str = field(default_factory=lambda: sys.executable)
    taskmanager_memory: str = "2g"
    jobmanager_memory: str = "1g"
    # a lost TaskManager is noticed by missed heartbeats: 50 s by Flink's default, 10 s here
    heartbeat_interval_ms: int = 2_000
    heartbeat_timeout_ms: int = 10_000
    # in-flight data sized to ~1 s of each task's throughput: checkpoints and savepoints of a
    # back-pressured job in ~1-2 s instead of tens of seconds, for some throughput (write_conf)
    buffer_debloat: bool = True
    # Prometheus metrics of the JobManager and the TaskManager (the job's operators, the
    # Learner's among them) served on 127.0.0.1, each daemon on the first
    # free port of this range, e.g. "9250-9259" ("": none; driftline.flink.LoopbackPrometheus)
    prometheus_ports: str = ""
    extra_conf: dict = field(default_factory=dict)  # more Flink options, flat keys

    @property
    def path(self) -> Path:
        return Path(self.root).resolve()

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"


def write_conf(cfg: ClusterConfig) -> Path:
    conf_dir = cfg.path / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load((flink_home() / "conf" / "config.yaml").read_text())
    local = "127.0.0.1"
    base["jobmanager"].update({"bind-host": local, "rpc": {"address": local, "port": cfg.rpc_port},
                               "memory": {"process": {"size": cfg.jobmanager_memory}}})
    base["taskmanager"].update({"bind-host": local, "host": local, "numberOfTaskSlots": cfg.slots,
                                "memory": {"process": {"size": cfg.taskmanager_memory}}})
    base["parallelism"] = {"default": cfg.parallelism}
    base["rest"] = {"address": local, "bind-address": local, "port": cfg.rest_port}
    base["blob"] = {"server": {"port": "0"}}
    base["python"] = {"executable": cfg.python_executable, "client": {"executable": cfg.python_executable}}
    base["execution"] = {"checkpointing": {"dir": (cfg.path / "checkpoints").as_uri(),
                                           "savepoint-dir": (cfg.path / "savepoints").as_uri()}}
    base["heartbeat"] = {"interval": cfg.heartbeat_interval_ms, "timeout": cfg.heartbeat_timeout_ms}
    # the processes' working files (TaskManager/JobManager folders, blobs, the RPC system's jar)
    # in this folder, not /tmp: a killed TaskManager leaves its 41-163 MB behind, which `down`
    # removes with the cluster
    base["io"] = {"tmp": {"dirs": str(cfg.path / "tmp")}}
    # `flink stop`, `flink savepoint` and `flink run` wait this long for the cluster's answer
    # (Flink's default, 1 min, gave up on a savepoint that then completed: a paced job's first
    # checkpoints wait behind its start-up backlog, half a minute here, more on a loaded host)
    base["client"] = {"timeout": f"{CLIENT_TIMEOUT_S} s"}
    # in-flight data sized to about a second of what each task processes instead of a fixed
    # number of 32 KB buffers: a checkpoint barrier queues behind less data ahead of the slow
    # Python operators (a paced 30k-event job's first checkpoint and its savepoint took ~22 s,
    # with debloating ~1.6 s; an unpaced local job ran 6-18 % slower with it: README,
    # Submitting to a Flink cluster)
    base["taskmanager"]["network"] = {"memory": {"buffer-debloat": {"enabled": cfg.buffer_debloat}}}
    from runners.flink_job import prometheus_options

    base.update(prometheus_options(cfg.prometheus_ports))  # flat keys, as extra_conf's
    base.update(cfg.extra_conf)
    (conf_dir / "config.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    for name in ("log4j.properties", "log4j-cli.properties", "log4j-console.properties"):
        (conf_dir / name).write_text((flink_home() / "conf" / name).read_text())
    (conf_dir / "masters").write_text(f"{local}:{cfg.rest_port}\n")
    (conf_dir / "workers").write_text(f"{local}\n")
    return conf_dir


def _env(cfg: ClusterConfig) -> dict:
    from runners import jvm

    env = dict(os.environ)
    env.update({"FLINK_HOME": str(flink_home()), "FLINK_CONF_DIR": str(cfg.path / "conf"),
                "FLINK_LOG_DIR": str(cfg.path / "log"), "FLINK_PID_DIR": str(cfg.path / "pid"),
                "PATH": f"{Path(cfg.python_executable).parent}:{env.get('PATH', '')}"})
    try:  # our sink classes and loopback ServerFactory first on the class path (runners.jvm)
        env["FLINK_LIB_DIR"] = str(jvm.lib_dir(with_flink_python=True))
    except (FileNotFoundError, RuntimeError) as e:
        log.warning("driftline's JVM classes could not be built (jobs' sinks will fail): %s", e)
    return env


def _daemon(cfg: ClusterConfig, script: str, action: str) -> None:
    subprocess.run(["bash", str(flink_home() / "bin" / script), action], env=_env(cfg), check=True,
                   capture_output=True, text=True)


def _is_ours(pid: int, cfg: ClusterConfig) -> bool:
    """A pid from our pid files that is still a Flink process of this folder's conf (a pid
    file can outlive its process, and the pid be reused by someone else's)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "org.apache.flink" in cmd and str(cfg.path) in cmd


def pids(cfg: ClusterConfig) -> list[int]:
    """Live pids of the daemons this folder's ``up`` started, and only those."""
    out = []
    for f in sorted((cfg.path / "pid").glob("*.pid")) if (cfg.path / "pid").is_dir() else []:
        out += [int(x) for x in f.read_text().split() if x.strip().isdigit()]
    return [p for p in out if _is_ours(p, cfg)]


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, is not)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: trust the signal


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[8:-1])
    return out


def _addr(hex_addr: str) -> str:
    """An address of /proc/net/tcp{,6} ("0100007F:1F90") as text ("127.0.0.1:8080")."""
    import ipaddress

    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = ipaddress.IPv4Address(raw[::-1])
    else:  # four little-endian 32-bit words
        ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
        ip = ip.ipv4_mapped or ip
    return f"{ip}:{int(port, 16)}"


def listening(cfg: ClusterConfig) -> list[dict]:
    """Every TCP socket the cluster's processes (and their Python workers) listen on, with
    whether it is loopback-only: what the 127.0.0.1 binding promises, checked from the
    kernel's socket table."""
    return listening_of([d for p in pids(cfg) for d in descendants(p)])


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (a local job: its JVM, the Python workers)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def listening_of(process_ids: list[int]) -> list[dict]:
    """The listening TCP sockets of these processes (``listening``)."""
    import ipaddress

    inodes = {i: p for p in process_ids for i in _socket_inodes(p)}
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                addr = _addr(f[1])
                out.append({"pid": inodes[f[9]], "address": addr,
                            "loopback": ipaddress.ip_address(addr.rsplit(":", 1)[0]).is_loopback})
    return out


def _ports(spec: str) -> set[int]:
    """Flink's port-range syntax: "9250", "9250-9259", "9250,9260-9262".

    >>> sorted(_ports("9250,9260-9262"))
    [9250, 9260, 9261, 9262]
    """
    out: set[int] = set()
    for part in str(spec).split(","):
        lo, _, hi = part.strip().partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def metrics_endpoints(cfg: ClusterConfig) -> list[str]:
    """The Prometheus endpoints this folder's daemons serve (``prometheus_ports``, as written to
    its conf by ``up``), from the kernel's socket table: each daemon's port of the range."""
    from runners.flink_job import PROMETHEUS_PORT

    conf = cfg.path / "conf" / "config.yaml"
    spec = ((yaml.safe_load(conf.read_text()) if conf.is_file() else None) or {}).get(PROMETHEUS_PORT)
    if not spec:
        return []
    ports = _ports(spec)
    return sorted({f"http://{s['address']}/metrics" for s in listening(cfg)
                   if int(s["address"].rsplit(":", 1)[1]) in ports})


def status(cfg: ClusterConfig) -> dict:
    alive = [p for p in pids(cfg) if _alive(p)]
    try:
        with urllib.request.urlopen(f"{cfg.rest_url}/overview", timeout=2) as r:
            overview = json.loads(r.read())
    except OSError:
        overview = None
    is_up = bool(alive) and overview is not None and overview.get("taskmanagers", 0) > 0 \
        and overview.get("slots-total", 0) > 0
    # the socket table only once it is up (``up`` polls this every second)
    return {"rest": cfg.rest_url, "pids": alive, "overview": overview, "up": is_up,
            "metrics": metrics_endpoints(cfg) if is_up else []}


def up(cfg: ClusterConfig, timeout: float = 90) -> dict:
    if any(_alive(p) for p in pids(cfg)):
        raise RuntimeError(f"a cluster from {cfg.path} is already running: {status(cfg)}")
    write_conf(cfg)
    (cfg.path / "log").mkdir(parents=True, exist_ok=True)
    _daemon(cfg, "jobmanager.sh", "start")
    _daemon(cfg, "taskmanager.sh", "start")
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = status(cfg)
        if s["up"] and s["overview"]["slots-total"] >= cfg.slots:
            return s
        time.sleep(1)
    down(cfg)
    raise RuntimeError(f"cluster did not come up in {timeout:.0f}s; see {cfg.path / 'log'}")


def taskmanagers(cfg: ClusterConfig) -> list[int]:
    """Live pids of this folder's TaskManager JVMs."""
    out = []
    for p in pids(cfg):
        try:
            if "TaskManagerRunner" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace"):
                out.append(p)
        except OSError:
            pass
    return out


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_taskmanager(cfg: ClusterConfig) -> int:
    """SIGKILL this folder's TaskManager and the processes it started, its Python workers (a
    crash, as a container's: no shutdown hooks, no goodbye to the JobManager). Killing the JVM
    alone left its Python workers running, idle, orphaned (seen after CI runs: ~250-450 MB
    each). Returns the TaskManager's pid."""
    tms = taskmanagers(cfg)
    if not tms:
        raise RuntimeError("no TaskManager of this cluster is running")
    tree = [tms[0], *_descendants(tms[0])]
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    while any(_alive(p) for p in tree) and time.time() < deadline:
        time.sleep(0.1)
    return tms[0]


def start_taskmanager(cfg: ClusterConfig) -> None:
    """Start a TaskManager again (what a supervisor or Kubernetes does after a crash)."""
    _daemon(cfg, "taskmanager.sh", "start")


def checkpoints(cfg: ClusterConfig, job_id: str) -> dict:
    with urllib.request.urlopen(f"{cfg.rest_url}/jobs/{job_id}/checkpoints", timeout=5) as r:
        return json.loads(r.read())


def down(cfg: ClusterConfig, timeout: float = 30) -> list[int]:
    """Stop the processes this folder's ``up`` started (by their pid files); returns them."""
    mine = [p for p in pids(cfg) if _alive(p)]
    for p in mine:
        os.kill(p, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and any(_alive(p) for p in mine):
        time.sleep(0.5)
    for p in mine:
        if _alive(p):
            os.kill(p, signal.SIGKILL)
    for f in (cfg.path / "pid").glob("*.pid") if (cfg.path / "pid").is_dir() else []:
        f.unlink()
    if not any(_alive(p) for p in mine):  # the working files (write_conf), once nothing uses them
        shutil.rmtree(cfg.path / "tmp", ignore_errors=True)
    return mine


def flink_cli(cfg: ClusterConfig, *args: str, timeout: float | None = None) -> str:
    proc = subprocess.run(["bash", str(flink_home() / "bin" / "flink"), *args], env=_env(cfg),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"flink {' '.join(args[:1])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def run_args(cfg: ClusterConfig, job_json: Path, detached: bool = True, savepoint: str | None = None,
             allow_non_restored: bool = False) -> list[str]:
    """The ``flink run`` arguments of ``submit``."""
    args = ["run", "-m", f"127.0.0.1:{cfg.rest_port}", "-pyexec", cfg.python_executable,
            "-pyclientexec", cfg.python_executable]
    if detached:
        args.append("-d")
    if savepoint:
        args += ["-s", savepoint]
        if allow_non_restored:  # state of operators this build no longer has (their uids) is skipped
            args.append("--allowNonRestoredState")
    elif allow_non_restored:
        raise ValueError("allow_non_restored needs a savepoint to resume from")
    return [*args, "-py", str(JOB_ENTRY), str(Path(job_json).resolve())]


def submit(cfg: ClusterConfig, job_json: Path, detached: bool = True, savepoint: str | None = None,
           allow_non_restored: bool = False) -> str:
    """``flink run -py runners/flink_job.py JOB_JSON`` (resuming ``savepoint``: ``-s``; skipping
    its state that maps to no operator: ``--allowNonRestoredState``); returns the job id."""
    out = flink_cli(cfg, *run_args(cfg, job_json, detached, savepoint, allow_non_restored))
    m = re.search(r"JobID ([0-9a-f]{32})", out) or re.search(r"\b([0-9a-f]{32})\b", out)
    if not m:
        raise RuntimeError(f"no job id in flink's output:\n{out[-2000:]}")
    return m.group(1)


def stop_with_savepoint(cfg: ClusterConfig, job_id: str, timeout: float = CLIENT_TIMEOUT_S + 60) -> str:
    """``flink stop`` (a savepoint, then the job stops without draining); returns the savepoint path."""
    out = flink_cli(cfg, "stop", "-m", f"127.0.0.1:{cfg.rest_port}", "--savepointPath",
                    (cfg.path / "savepoints").as_uri(), job_id, timeout=timeout)
    m = re.search(r"Savepoint completed\. Path: (\S+)", out)
    if not m:
        raise RuntimeError(f"no savepoint path in flink's output:\n{out[-2000:]}")
    return m.group(1)


def job_state(cfg: ClusterConfig, job_id: str) -> str:
    with urllib.request.urlopen(f"{cfg.rest_url}/jobs/{job_id}", timeout=5) as r:
        return json.loads(r.read())["state"]


def wait(cfg: ClusterConfig, job_id: str, timeout: float | None = None) -> str:
    """The job's final state (FINISHED, FAILED, CANCELED) once it has one; ``timeout`` seconds
    at most (None: as long as it runs — a replay of days of events may take hours)."""
    deadline = None if timeout is None else time.time() + timeout
    while deadline is None or time.time() < deadline:
        state = job_state(cfg, job_id)
        if state in ("FINISHED", "FAILED", "CANCELED"):
            return state
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still running after {timeout:.0f}s")


def failure(cfg: ClusterConfig, job_id: str) -> str | None:
    """Why the job last failed, from the JobManager's exception history (REST
    ``/jobs/<id>/exceptions``): the failure, the task it happened in, and its chain of causes
    (each "Caused by" of its stack trace, at most 300 characters each: the message that names a
    bad record is usually in the middle); None without one."""
    with urllib.request.urlopen(f"{cfg.rest_url}/jobs/{job_id}/exceptions?maxExceptions=1", timeout=5) as r:
        entries = json.loads(r.read()).get("exceptionHistory", {}).get("entries", [])
    if not entries:
        return None
    e = entries[0]  # the newest
    trace = e.get("stacktrace") or ""
    lines = trace.splitlines()
    causes = [ln.strip()[:300] for ln in lines if ln.startswith("Caused by:")]
    where = f" in {e['taskName']}" if e.get("taskName") else ""
    head = (lines[0].strip()[:300] if lines else e.get("exceptionName", "")) + where
    return "\n".join([head, *causes])


def to_dict(cfg: ClusterConfig) -> dict:
    return asdict(cfg)
