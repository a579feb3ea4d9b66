"""Local Flink jobs one after another in one long-lived Python process: a warm gateway JVM.

A local job in a new process (``python -m runners.flink_job JOB.json``) pays for a new gateway
JVM every time: its start, ~16,000 classes loaded and the planner's and operators' code
compiled again, ~12 CPU-s of a small job's ~16 (README, Timings). A test suite runs dozens of
small jobs on 2 cores. ``serving`` starts one process that runs such commands as
``python -m MODULE ARGS`` / ``python SCRIPT ARGS`` would (``runpy``, ``sys.argv``, stdout and
stderr to the caller's files, the exit code back), so every job after the first finds the JVM
started and its code compiled. Each job still starts its own Flink mini-cluster (and the JVM
its own Python workers): only the gateway JVM and the Python modules are shared.

The caller falls back to a process of its own (``call`` returns None) unless a warm process
is serving *its* process (``DRIFTLINE_WARM_JOBS``: socket path and the owner's pid; a child
process of the owner does not use it), with the same environment and interpreter, and is not
busy with another job. Jobs that need a process of their own are never sent (a REST port to
stop with a savepoint, Kafka's jars on the gateway's class path: ``eligible``).
A timeout or an interrupt kills the warm process and its JVM; later jobs run cold.

For tests (``tests/conftest.py`` serves every pytest process; ``DRIFTLINE_WARM_JOBS=0`` turns
it off); production runs keep one job per process.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)
ENV = "DRIFTLINE_WARM_JOBS"
# not compared: pytest's per-test name; what scikit-learn and joblib set on import (OpenMP's)
VOLATILE = {"PYTEST_CURRENT_TEST", "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK"}
PREPARED = ("FLINK_HOME", "FLINK_LIB_DIR")  # what runners.jvm.prepare_local sets before a gateway starts


def _environment() -> dict:
    return {k: v for k, v in os.environ.items() if k not in VOLATILE}


def _target() -> str | None:
    """The socket of the warm process serving this process, if one does."""
    path, _, owner = os.environ.get(ENV, "").rpartition(":")
    return path if path and owner == str(os.getpid()) else None


def _read_line(conn: socket.socket, lines, deadline: float | None) -> dict:
    """The next JSON line of ``lines`` (``conn.makefile("rb")``), waiting until ``deadline``
    (``time.monotonic()``; None: for ever)."""
    conn.settimeout(None if deadline is None else max(0.001, deadline - time.monotonic()))
    try:
        line = lines.readline()
    except socket.timeout:
        raise TimeoutError from None
    if not line.endswith(b"\n"):
        raise ConnectionError("the warm process closed the connection")
    return json.loads(line)


def call(argv: list[str], stdout: str | Path, stderr: str | Path | None = None, python: str | None = None,
         timeout: float | None = None) -> int | None:
    """Run ``python ARGV`` (``["-m", MODULE, ...]`` or ``[SCRIPT, ...]``) in this process's warm
    process, its stdout to the file ``stdout`` and its stderr to ``stderr`` (or the same file),
    from this process's working directory; returns its exit code, or None when no warm process
    takes it (run it in a process of your own). A timeout raises ``subprocess.TimeoutExpired``;
    a timeout or any interrupt kills the warm process (the job with it)."""
    target = _target()
    if target is None or (python or sys.executable) != sys.executable:
        return None
    request = {"argv": [str(a) for a in argv], "cwd": os.getcwd(), "env": _environment(),
               "stdout": str(Path(stdout).resolve()),
               "stderr": str(Path(stderr or stdout).resolve())}
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lines = conn.makefile("rb")
    try:
        try:
            conn.connect(target)
            conn.sendall(json.dumps(request).encode() + b"\n")
            first = _read_line(conn, lines, time.monotonic() + 30)
        except (OSError, TimeoutError, ValueError):
            return None  # not serving (it was killed, or never started): cold
        if "pid" not in first:
            logger.info("a job in a process of its own: %s", first.get("cold"))
            return None  # busy, or another environment
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            return int(_read_line(conn, lines, deadline)["rc"])
        except BaseException as e:  # a timeout, an interrupt, the warm process gone
            _kill(first["pid"])
            if isinstance(e, TimeoutError):
                raise subprocess.TimeoutExpired(argv, timeout) from None
            if isinstance(e, (ConnectionError, ValueError, KeyError)):
                return -signal.SIGKILL  # it died under the job: the job failed
            raise
    finally:
        lines.close()
        conn.close()


def eligible(cfg) -> bool:
    """Whether the job of ``cfg`` (a ``runners.flink_job.JobConfig``) may go to a warm process:
    not one that needs its own (a REST port, to stop it with a savepoint on Ctrl-C; Kafka's
    connector jars, added to the gateway's class loader; a Prometheus reporter's ports)."""
    return not (cfg.flink_conf.get("rest.port") or cfg.kafka or cfg.prometheus_ports)


def run(argv: list[str], python: str | None = None, timeout: float | None = None,
        cold: bool = False) -> subprocess.CompletedProcess:
    """``subprocess.run([python, *argv], capture_output=True, text=True)`` (``python``: this
    interpreter by default), in the warm process when one takes it (never with ``cold``)."""
    python = python or sys.executable
    if not cold:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            rc = call(argv, out, err, python=python, timeout=timeout)
            if rc is not None:
                return subprocess.CompletedProcess([python, *argv], rc, out.read_text(errors="replace"),
                                                   err.read_text(errors="replace"))
    return subprocess.run([python, *argv], capture_output=True, text=True, timeout=timeout)


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # its own session: the process, its JVM, the JVM's workers
    except ProcessLookupError:
        pass


@contextmanager
def serving(log: str | Path, gateway: bool = True):
    """A warm process for this process's local jobs while the block runs (``call`` uses it);
    its own output (and the gateway JVM's) goes to ``log``. Ends it, and its JVM, on exit.
    ``gateway``: start the gateway JVM before the first command (False: commands that need none)."""
    with tempfile.TemporaryDirectory(prefix="driftline-warm-") as tmp:
        path = str(Path(tmp) / "socket")
        value = f"{path}:{os.getpid()}"
        env = {**os.environ, ENV: value}
        args = [sys.executable, "-m", "runners.warm", path, *([] if gateway else ["--no-gateway"])]
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        before = os.environ.get(ENV)
        os.environ[ENV] = value
        try:
            yield proc
        finally:
            if before is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = before
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    _kill(proc.pid)
                    proc.wait()


# ---- the warm process ------------------------------------------------------------------------

def _execute(req: dict) -> int:
    """One command as ``python ARGV`` would run it, here; returns its exit code."""
    import runpy
    import traceback

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    out = os.open(req["stdout"], flags, 0o644)
    err = out if req["stderr"] == req["stdout"] else os.open(req["stderr"], flags, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    argv, path0, cwd = sys.argv, sys.path[0], os.getcwd()
    try:
        os.chdir(req["cwd"])
        args = req["argv"]
        if args[0] == "-m":
            sys.argv, sys.path[0] = [args[1], *args[2:]], req["cwd"]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv, sys.path[0] = list(args), str(Path(args[0]).resolve().parent)
            runpy.run_path(args[0], run_name="__main__")
        return 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 -- the job's failure, reported as a process's would be
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in {out, err, *saved}:
            os.close(fd)
        sys.argv, sys.path[0] = argv, path0
        os.chdir(cwd)


def _start_gateway() -> None:
    """The gateway JVM, before a job's output is redirected: the JVM keeps the stdout it
    started with (this process's log), not the first job's file."""
    from pyflink.java_gateway import get_gateway

    from runners.jvm import prepare_local

    prepare_local()
    system = get_gateway().jvm.System
    # Flink's Arrow code (a table's to_pandas, the pandas UDFs) sets this on its first use if
    # unset, before flink-python's shaded Netty reads it once, at its classes' initialization:
    # in a new JVM that first use comes first, but here an earlier job may have initialized
    # Netty without it (then: "Arrow depends on DirectByteBuffer.<init>(long, int) which is not
    # available"). Set as that first use would set it, before any job.
    system.setProperty("org.apache.flink.api.python.shaded.io.netty.tryReflectionSetAccessible", "true")


def _serve(path: str, gateway: bool = True) -> None:
    environment = _environment()
    owner = int(os.environ[ENV].rpartition(":")[2])
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    jobs: queue.Queue = queue.Queue()
    slot = threading.Lock()  # held from a job's acceptance to its end

    def accept():
        while True:
            conn, _ = server.accept()
            try:
                with conn.makefile("rb") as lines:
                    req = _read_line(conn, lines, time.monotonic() + 30)
                theirs = req["env"]
                # a PREPARED value the caller has because it ran a local job itself is ours too
                diff = sorted(k for k in set(theirs) | set(environment) if theirs.get(k) != environment.get(k)
                              and not (k in PREPARED and theirs.get(k) == os.environ.get(k)))
                if diff:
                    conn.sendall(json.dumps({"cold": f"another environment: {diff[:4]}"}).encode() + b"\n")
                elif not slot.acquire(blocking=False):
                    conn.sendall(b'{"cold": "busy"}\n')
                else:
                    jobs.put((conn, req))
                    continue
            except (OSError, TimeoutError, ValueError, KeyError):
                pass
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    started = not gateway
    while True:
        try:
            conn, req = jobs.get(timeout=2)
        except queue.Empty:
            if os.getppid() != owner:
                return  # the owner is gone
            continue
        free = False
        try:
            conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
            t0 = time.monotonic()
            rc = None
            if not started:
                try:
                    _start_gateway()
                    started = True
                except Exception:  # noqa: BLE001 -- reported as the job's failure
                    import traceback

                    Path(req["stderr"]).write_text(traceback.format_exc())
                    rc = 1
            rc = _execute(req) if rc is None else rc
            print(f"warm: {req['argv']} exit {rc} in {time.monotonic() - t0:.1f} s", flush=True)
            # free before the caller hears the exit code: its next job may come at once (freed
            # after, a caller on a busy machine found the process still "busy")
            slot.release()
            free = True
            conn.sendall(json.dumps({"rc": rc}).encode() + b"\n")
        except OSError:
            pass  # the caller is gone
        finally:
            conn.close()
            if not free:
                slot.release()


if __name__ == "__main__":  # python -m runners.warm SOCKET (started by ``serving``)
    _serve(sys.argv[1], gateway="--no-gateway" not in sys.argv[2:])
