"""What a savepoint restores into a build of the job, known before the job is submitted.

Flink maps a savepoint's state to operators by operator id (a hash of the operator's uid). At
submission it fails a job whose savepoint has state for an operator the build lacks (unless
``--allowNonRestoredState``: that state is then dropped), and it starts an operator the
savepoint has no state for with empty state, silently. For most operators that is what a new
operator should do; for a source it means reading its input from the start (a build that adds
a warm-up labels source, resumed from a savepoint taken without one, would feed the history's
labels once more). And it refuses, whatever the flags, a build that chains a new operator
to a finished one (a bounded replay's sources finish early). ``check`` says all of it before
anything is submitted: ``driftline submit --from-savepoint`` refuses the first (unless asked)
and the last, and warns of the second; ``driftline operators RUN --savepoint PATH`` shows the
whole mapping.

The savepoint's ``_metadata`` is read by Flink's own ``Checkpoints.loadCheckpointMetadata``
(a JVM through PyFlink's gateway, so in a child process: PyFlink and Beam are not mixed in
one process here). ``trigger`` takes a savepoint of a running job through Flink's REST API
(a local run's mini-cluster, ``driftline savepoint --run RUN_DIR``).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

# written into a local run's folder by `driftline savepoint --run RUN_DIR --stop`: the job that
# then ends was stopped (its summary is not final), and where to resume it from
STOPPED = "stopped.json"


def local_path(savepoint: str) -> Path:
    """The folder of a savepoint given as a path or a ``file:`` URI (``flink savepoint``
    prints ``file:/...``). Other file systems are not readable from here."""
    parsed = urlparse(savepoint)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"only a local savepoint can be checked, not {savepoint!r}")
    folder = Path(parsed.path if parsed.scheme else savepoint)
    if not (folder / "_metadata").is_file():
        raise ValueError(f"no savepoint at {savepoint!r} (no {folder / '_metadata'})")
    return folder


def states(savepoint: str) -> list[dict]:
    """Every operator state in the savepoint: ``id`` (hex), ``uid`` and ``name`` (as recorded),
    ``bytes`` (its state's size), ``parallelism`` and ``max_parallelism`` (its key groups),
    ``has_state`` (Flink's own rule for refusing to drop it: a coordinator state or a subtask
    with state), ``finished`` (a fully finished operator, e.g. a bounded source at its end) and
    ``partly_finished`` (some of its subtasks finished). Needs PyFlink's gateway (starts a JVM)."""
    from pyflink.java_gateway import get_gateway

    folder = local_path(savepoint)
    jvm = get_gateway().jvm
    stream = jvm.java.io.DataInputStream(jvm.java.io.FileInputStream(str(folder / "_metadata")))
    try:
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        metadata = jvm.org.apache.flink.runtime.checkpoint.Checkpoints.loadCheckpointMetadata(
            stream, loader, str(folder))
    finally:
        stream.close()
    out = []
    for s in metadata.getOperatorStates().toArray():
        subtasks = s.getStates().toArray()
        has_state = s.getCoordinatorState() is not None or any(t.hasState() for t in subtasks)
        out.append({"id": s.getOperatorID().toHexString(), "uid": s.getOperatorUid().orElse(None),
                    "name": s.getOperatorName().orElse(None), "bytes": int(s.getStateSize()),
                    "parallelism": int(s.getParallelism()), "max_parallelism": int(s.getMaxParallelism()),
                    "has_state": bool(has_state), "finished": bool(s.isFullyFinished()),
                    "partly_finished": any(t.isFinished() for t in subtasks)})
    return sorted(out, key=lambda s: (s["uid"] or "", s["id"]))


@dataclass
class ResumeCheck:
    """A build's operators against a savepoint's states. ``operators``: the build's, in its
    graph's order, each with the savepoint's ``state`` for it (``None``: the savepoint knows
    nothing of it, so it starts empty); ``unmapped``: savepoint states with state and no operator
    in the build (Flink refuses them without allow-non-restored-state); ``refused``: finished
    operators the build cannot take (``finished_state_errors``), refused whatever the flags."""

    operators: list[dict] = field(default_factory=list)
    unmapped: list[dict] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why Flink would refuse the restore at all

    @property
    def restored(self) -> list[dict]:
        return [o for o in self.operators if o["state"] is not None]

    @property
    def new(self) -> list[dict]:
        return [o for o in self.operators if o["state"] is None]

    @property
    def new_sources(self) -> list[dict]:
        """New sources: with no position in the savepoint they read their input from the start."""
        return [o for o in self.new if o["name"].startswith("Source:")]


def compare(operators: list[dict], saved: list[dict], vertices: list[dict] | None = None) -> ResumeCheck:
    """Pure: the mapping of ``saved`` (``states``) onto a build's ``operators``
    (``runners.flink_job.operators``), by operator id as Flink maps them; with the build's
    ``vertices`` (``runners.flink_job.graph``) also Flink's checks of finished operators and
    of parallelism."""
    by_id = {s["id"]: s for s in saved}
    ids = {o["id"] for o in operators}
    return ResumeCheck(operators=[{**o, "state": by_id.get(o["id"])} for o in operators],
                       unmapped=[s for s in saved if s["id"] not in ids and s["has_state"]],
                       refused=parallelism_errors(vertices or [], saved) + finished_state_errors(vertices or [], saved))


def parallelism_errors(vertices: list[dict], saved: list[dict]) -> list[str]:
    """Flink's checks of a savepoint's operators against the build's vertices (at submission,
    ``Checkpoints.loadAndValidateCheckpoint`` and ``StateAssignmentOperation``), which refuse a
    restore whatever the flags: an operator's state has as many key groups as its max
    parallelism when it was taken, so a vertex may not run at a higher parallelism, and a vertex
    whose max parallelism is set (every vertex of this job: ``JobConfig.max_parallelism``) must
    have the savepoint's (Flink adopts the savepoint's only where none is set). One line per
    kind of mismatch, naming its vertices; vertices or states without these figures (older
    callers) are not checked."""
    by_id = {s["id"]: s for s in saved}
    found: dict[tuple, list[str]] = {}
    for v in vertices:
        saved_max = sorted({by_id[i]["max_parallelism"] for i in v["operators"]
                            if i in by_id and by_id[i].get("max_parallelism")})
        if not saved_max or not v.get("parallelism"):
            continue
        if v["parallelism"] > saved_max[0]:
            found.setdefault(("above", v["parallelism"], saved_max[0]), []).append(v["name"])
        elif v.get("max_parallelism", 0) > 0 and saved_max != [v["max_parallelism"]]:
            found.setdefault(("changed", v["max_parallelism"], saved_max[0]), []).append(v["name"])

    def which(names: list[str]) -> str:
        return f"{len(names)} vertices, e.g. {names[0]!r}" if len(names) > 1 else f"vertex {names[0]!r}"

    return [f"parallelism {n} is above the savepoint's max parallelism {m}, the key groups its state has "
            f"({which(names)})" if kind == "above" else
            f"max parallelism {n} where the savepoint's is {m} ({which(names)}): key groups cannot change "
            f"(set max_parallelism to {m}, what the job started with)"
            for (kind, n, m), names in found.items()]


RUNNING, PARTLY, FINISHED = "all running", "partly finished", "fully finished"


def finished_state_errors(vertices: list[dict], saved: list[dict]) -> list[str]:
    """Flink's ``VertexFinishedStateChecker`` rules, which refuse a restore whatever the flags:
    the operators of one vertex (a chain) must all have the same finished state (an operator
    the savepoint lacks counts as running: a new operator chained to a finished source is
    refused); a fully finished vertex needs fully finished predecessors; a partly finished one
    needs fully finished predecessors over all-to-all edges and not all-running ones over
    pointwise edges. A bounded replay's sources finish early, so this happens here."""
    by_id = {s["id"]: s for s in saved}

    def op_state(op_id: str) -> str:
        s = by_id.get(op_id)
        return RUNNING if s is None else FINISHED if s["finished"] else PARTLY if s["partly_finished"] else RUNNING

    errors, state = [], {}
    for v in vertices:
        kinds = {op_state(i) for i in v["operators"]}
        if len(kinds) > 1:
            errors.append(f"vertex {v['name']!r} mixes {' and '.join(sorted(kinds))} operators")
        state[v["id"]] = kinds.pop() if len(kinds) == 1 else None
    for v in vertices:
        for edge in v["inputs"]:
            before = state.get(edge["from"])
            if state[v["id"]] is None or before is None:
                continue  # already an error
            if state[v["id"]] == FINISHED and before != FINISHED:
                errors.append(f"vertex {v['name']!r} is fully finished but its input is {before}")
            elif state[v["id"]] == PARTLY and (before != FINISHED if edge["pattern"] == "ALL_TO_ALL"
                                               else before == RUNNING):
                errors.append(f"vertex {v['name']!r} is partly finished but its input is {before}")
    return errors


def check(job_json: str | Path, savepoint: str) -> ResumeCheck:
    """``compare`` of the job ``job_json`` (built, not run) and ``savepoint``, from a child
    process with the job's interpreter (in tests, their warm one: ``runners.warm``)."""
    from runners import warm
    from runners.flink_job import JobConfig

    local_path(savepoint)  # a clear error before a JVM starts
    cfg = JobConfig.from_dict(json.loads(Path(job_json).read_text()))
    proc = warm.run(["-m", "runners.savepoints", str(job_json), savepoint], python=cfg.python_executable,
                    cold=not warm.eligible(cfg))
    if proc.returncode != 0:
        raise RuntimeError(f"checking the savepoint failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    got = json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][-1])
    return compare(got["operators"], got["states"], got["vertices"])


def _mark_stopped(run_dir: Path, savepoint: str | None) -> None:
    """``RUN_DIR/stopped.json`` (atomically): the local job is being stopped (``savepoint``
    None: its savepoint is still being taken)."""
    tmp = Path(run_dir) / f".{STOPPED}.tmp"
    tmp.write_text(json.dumps({"savepoint": savepoint}) + "\n")
    tmp.replace(Path(run_dir) / STOPPED)


def stop_local(run_dir: Path, rest_url: str, job_id: str | None = None) -> str:
    """Stop a local run's job with a savepoint into ``RUN_DIR/savepoints`` (``trigger``);
    returns its path. ``RUN_DIR/stopped.json`` is written before the stop, so that the run's
    ``driftline run`` reports a stop and not an end, then holds the path; removed if the stop
    fails."""
    _mark_stopped(run_dir, None)
    try:
        path = trigger(rest_url, Path(run_dir) / "savepoints", job_id, stop=True)
    except BaseException:
        (Path(run_dir) / STOPPED).unlink(missing_ok=True)
        raise
    _mark_stopped(run_dir, path)
    return path


def trigger(rest_url: str, target: Path, job_id: str | None = None, stop: bool = False,
            timeout: float = 300.0, drain: bool = False) -> str:
    """A savepoint of a running job through Flink's REST API (a local job's mini-cluster has no
    ``flink`` client of its own): ``POST /jobs/:id/stop`` (``stop``: the job ends after it) or
    ``/jobs/:id/savepoints``, into ``target``; waits for it and returns its path. ``job_id``:
    default the one running job. ``drain`` (with ``stop``): the sources end their input first
    (the maximal watermark: every event-time timer fires), as if it had ended."""
    import time
    import urllib.request

    def call(path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"{rest_url}{path}", method="POST" if body is not None else "GET",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    if job_id is None:
        running = [j["id"] for j in call("/jobs")["jobs"] if j["status"] == "RUNNING"]
        if len(running) != 1:
            raise RuntimeError(f"{len(running)} running jobs at {rest_url}: name one")
        job_id = running[0]
    target = Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    before = set(target.glob("savepoint-*"))
    request = (call(f"/jobs/{job_id}/stop", {"drain": drain, "targetDirectory": target.as_uri()}) if stop else
               call(f"/jobs/{job_id}/savepoints", {"target-directory": target.as_uri(), "cancel-job": False}))
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status = call(f"/jobs/{job_id}/savepoints/{request['request-id']}")
        except OSError:
            # a stopped local job's mini-cluster can exit before the last poll: the savepoint
            # was complete by then, and is the one new folder with its metadata
            done = [p for p in set(target.glob("savepoint-*")) - before if (p / "_metadata").is_file()]
            if stop and len(done) == 1:
                return str(done[0])
            raise
        if status["status"]["id"] == "COMPLETED":
            if "location" not in status["operation"]:
                raise RuntimeError(f"savepoint failed: {status['operation'].get('failure-cause', status)}")
            return status["operation"]["location"]
        time.sleep(0.5)
    raise TimeoutError(f"no savepoint of job {job_id} after {timeout:.0f} s")


if __name__ == "__main__":  # `python -m runners.savepoints JOB.json SAVEPOINT`: one JSON object
    from runners.flink_job import JobConfig, graph

    ops, vertices = graph(JobConfig.from_dict(json.loads(Path(sys.argv[1]).read_text())))
    print(json.dumps({"operators": ops, "vertices": vertices, "states": states(sys.argv[2])}))
