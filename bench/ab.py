"""A/B of the streaming job between two git revisions, in alternating runs.

    .venv/bin/python bench/ab.py c2ef04f HEAD [--pairs 2] [--events 300000] [--json]
    .venv/bin/python bench/ab.py HEAD HEAD --env-b JDK_JAVA_OPTIONS=-XX:+UseParallelGC
    .venv/bin/python bench/ab.py HEAD HEAD --job-b write_updates=false

One generated event log (sparse, seed 7) is replayed by each revision in turn, from its own git
worktree (under ``--work``; removed at the end) with this checkout's venv: the job's processes
start in the worktree, so the client, the JVM's classes and the Python workers all run that
revision's code. Per run: wall seconds of the job, CPU seconds of the JVM and of the Python
workers (each process's, from psutil), the Learner's busy seconds (Flink REST), the progressive
log loss and a digest of every output's sorted lines (equal digests: the same outputs). Runs
alternate (A B A B ...), since this machine's speed drifts by more than most changes between
minutes. ``--env-a`` / ``--env-b KEY=VALUE`` (repeatable) add environment variables to one
arm's runs: the same revision under two JVM or worker settings; ``--job-a`` / ``--job-b
KEY=JSON`` set a ``JobConfig`` field (the digest then leaves out an output an arm does not
write). Last line with ``--json``: one JSON object.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.path and Path(sys.path[0]).resolve() == HERE:
    sys.path[0] = str(HERE.parent)  # run as a script: this checkout's packages, bench/ included

from bench.stream import Poller  # noqa: E402

OUTPUTS = ("predictions", "updates", "examples", "metrics", "late_labels", "dead_letter", "alerts")

# what each run executes inside its worktree (cwd): one job over the shared event log
RUN = """
import json, sys
from pathlib import Path
import bench.stream as b  # from the worktree: python -c puts the cwd first on the path
from pipelines.join import JoinConfig
events, run_dir, job = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
with b.BusyProfile() as prof:
    s = b.run_stream(events, run_dir, "generator", JoinConfig(), flink_conf=prof.conf(), **job)
learner = [r for r in prof.table() if r["operator"].startswith("learner")]
print(json.dumps({"seconds": s["seconds"], "logloss": s["progressive"]["logloss"],
                  "reconciles": s["reconciliation"].get("reconciles"),
                  "learner_busy_s": learner[0]["busy_s"] if learner else None}))
"""


def outputs_digest(run_dir: Path, skip: tuple = ()) -> str:
    """One digest of every output's lines (but ``skip``), sorted (part files and their order vary by run)."""
    h = hashlib.sha256()
    for name in (n for n in OUTPUTS if n not in skip):
        lines = sorted(line for f in sorted((run_dir / name).rglob("part-*"))
                       for line in f.read_bytes().splitlines())
        h.update(name.encode() + b"\0" + b"\n".join(lines) + b"\0")
    return h.hexdigest()[:16]


class ProcessCpu(Poller):
    """CPU seconds of every descendant of ``pid``, by kind (the JVM, Python workers), sampled
    every 0.5 s inside a ``with``: the last reading of each process counts."""

    def __init__(self, pid: int) -> None:
        super().__init__(every_s=0.5)
        self.pid, self.last = pid, {}

    def poll_once(self) -> None:
        import psutil

        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:  # ended
            return
        for c in children:
            try:
                cmd = " ".join(c.cmdline())
                t = c.cpu_times()
            except psutil.Error:
                continue
            kind = "jvm" if "java" in c.name() else "worker" if "fn_execution" in cmd else "other"
            self.last[c.pid] = (kind, t.user + t.system)

    def totals(self) -> dict[str, float]:
        out = {"jvm": 0.0, "worker": 0.0}
        for kind, secs in self.last.values():
            if kind in out:
                out[kind] += secs
        return {k: round(v, 1) for k, v in out.items()}


def run_once(worktree: Path, events: Path, run_dir: Path, env: dict[str, str] | None = None,
             job: dict | None = None, skip: tuple = ()) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(events), str(run_dir), json.dumps(job or {})], cwd=worktree,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    with ProcessCpu(proc.pid) as cpu:
        out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"run in {worktree} failed (exit {proc.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "cpu_s": cpu.totals(), "outputs": outputs_digest(run_dir, skip)}


def _env(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` arguments as a dict (the value may contain ``=``)."""
    bad = [p for p in pairs if "=" not in p or not p.split("=", 1)[0]]
    if bad:
        raise SystemExit(f"--env-a/--env-b take KEY=VALUE, got {bad}")
    return dict(p.split("=", 1) for p in pairs)


def _job(pairs: list[str]) -> dict:
    """``KEY=JSON`` arguments as JobConfig fields (``write_updates=false``, ``learn_tick_ms=300000``)."""
    bad = [p for p in pairs if "=" not in p or not p.split("=", 1)[0]]
    if bad:
        raise SystemExit(f"--job-a/--job-b take KEY=JSON, got {bad}")
    return {k: json.loads(v) for k, v in (p.split("=", 1) for p in pairs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="revision A (e.g. the base)")
    ap.add_argument("b", help="revision B (e.g. HEAD)")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--work", default=None, help="folder for the worktrees and runs (default: a temporary one)")
    ap.add_argument("--env-a", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable for arm A's runs (repeatable)")
    ap.add_argument("--env-b", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable for arm B's runs (repeatable)")
    ap.add_argument("--job-a", action="append", default=[], metavar="KEY=JSON",
                    help="a JobConfig field for arm A's runs (repeatable)")
    ap.add_argument("--job-b", action="append", default=[], metavar="KEY=JSON",
                    help="a JobConfig field for arm B's runs (repeatable)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    envs = {"A": _env(args.env_a), "B": _env(args.env_b)}
    jobs = {"A": _job(args.job_a), "B": _job(args.job_b)}
    skip = ("updates",) if any(j.get("write_updates") is False for j in jobs.values()) else ()

    from runners.local import prepare_events

    repo = Path(subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip())
    work = Path(args.work or tempfile.mkdtemp(prefix="driftline-ab-"))
    events, _ = prepare_events("generator", work / "log", args.events, 7)
    trees = {}
    try:
        for arm, rev in (("A", args.a), ("B", args.b)):
            trees[arm] = work / f"tree_{arm}"
            subprocess.run(["git", "-C", str(repo), "worktree", "add", "-f", "--detach", str(trees[arm]), rev],
                           check=True, capture_output=True)
        runs = []
        for arm in "AB":
            if envs[arm]:
                print(f"arm {arm} environment: {envs[arm]}")
            if jobs[arm]:
                print(f"arm {arm} job settings: {jobs[arm]}")
        print(f"{'run':>4} {'rev':>10} {'seconds':>8} {'JVM cpu':>8} {'worker cpu':>10} {'learner busy':>12}  outputs")
        for i in range(args.pairs):
            for arm, rev in (("A", args.a), ("B", args.b)):
                r = {"arm": arm, "rev": rev, "pair": i + 1,
                     **({"env": envs[arm]} if envs[arm] else {}), **({"job": jobs[arm]} if jobs[arm] else {}),
                     **run_once(trees[arm], events, work / "runs" / f"{arm}{i + 1}", envs[arm], jobs[arm], skip)}
                runs.append(r)
                print(f"{arm}{i + 1:>3} {rev:>10} {r['seconds']:8.1f} {r['cpu_s']['jvm']:8.1f} "
                      f"{r['cpu_s']['worker']:10.1f} {r['learner_busy_s'] or 0:12.1f}  {r['outputs']}", flush=True)
        mean = {arm: round(sum(r["seconds"] for r in runs if r["arm"] == arm) / args.pairs, 2) for arm in "AB"}
        faster = sum(b["seconds"] < a["seconds"] for a, b in zip(runs[::2], runs[1::2]))
        same = len({r["outputs"] for r in runs}) == 1
        print(f"mean seconds A {mean['A']} / B {mean['B']}; B faster in {faster} of {args.pairs} pairs; "
              f"outputs {'identical' if same else 'DIFFER'}")
        if args.json:
            print(json.dumps({"a": args.a, "b": args.b, "env_a": envs["A"], "env_b": envs["B"],
                              "job_a": jobs["A"], "job_b": jobs["B"], "digest_skips": list(skip),
                              "events": args.events, "runs": runs, "mean_seconds": mean,
                              "b_faster_pairs": faster, "same_outputs": same}))
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], capture_output=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
