"""A class-data-sharing archive (AppCDS) for the local jobs' JVM: an opt-in start-up saving.

A local job's JVM (PyFlink's gateway with the mini-cluster in it) loads ~18,000 classes before
its first row; parsing and verifying them is a good part of its ~20 s start-up on 2 cores. With
``DRIFTLINE_JVM_CDS=1`` (``make test TEST_JVM_CDS=1`` sets it), a job that finds no archive has its
JVM list the classes it loads (``-XX:DumpLoadedClassList``); after the job the first such list is
published and one background ``java -Xshare:dump`` turns it into an archive, which every later job
maps (``-XX:SharedArchiveFile``; ``-Xshare:auto``: a stale or mismatched archive is ignored by the
JVM with a warning, never an error). Measured on a 4,000-event job with C1 only: 28.3 -> 23.8
CPU-s, 23.1 -> 19.5 s; on the whole suite no gain was measured (three runs each way; README,
Timings). Off by default: a single run gains nothing and would leave a ~20 CPU-s dump running after
it. The archive (~120 MB) lives in the jar's cache, keyed by the lib folder and the Java runtime.
Not for ``flink run``: a cluster's JVMs are its own.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path

ENV = "DRIFTLINE_JVM_CDS"
ARCHIVE = "flink.jsa"
CLASSES = "classes.lst"


def enabled() -> bool:
    return os.environ.get(ENV, "") == "1"


def folder(lib: Path) -> Path:
    """The archive's folder for this lib folder and Java runtime (as PyFlink's launcher finds it)."""
    from runners.jvm import cache_root

    java = os.path.realpath(shutil.which("java") or "java")
    key = hashlib.sha256(f"{Path(lib).resolve()}\0{os.environ.get('JAVA_HOME', '')}\0{java}".encode())
    return cache_root() / "cds" / key.hexdigest()[:16]


def _own_list(d: Path) -> Path:
    return d / f".{CLASSES}.{os.getpid()}"


def jvm_options(lib: Path) -> list[str]:
    """The options for a local job's JVM: map the archive, or list the loaded classes for one
    (none while another job's list is being dumped)."""
    d = folder(lib)
    if (d / ARCHIVE).is_file():
        return [f"-XX:SharedArchiveFile={d / ARCHIVE}", "-Xshare:auto"]
    if (d / CLASSES).exists():
        return []
    d.mkdir(parents=True, exist_ok=True)
    return [f"-XX:DumpLoadedClassList={_own_list(d)}"]


def add_to_environment(lib: Path) -> None:
    """Before the gateway starts: ``jvm_options`` appended to ``JDK_JAVA_OPTIONS`` (read by the
    ``java`` launcher; the user's own options stay), once per process."""
    current = os.environ.get("JDK_JAVA_OPTIONS", "")
    if "SharedArchiveFile" in current or "DumpLoadedClassList" in current:
        return
    extra = jvm_options(lib)
    if extra:
        os.environ["JDK_JAVA_OPTIONS"] = " ".join([current, *extra]).strip()


def after_job(lib: Path, class_path: str, java_home: str) -> bool:
    """After a local job whose JVM listed its classes: publish the list (the first job's wins:
    a hard link cannot replace an existing name) and start the archive's dump in its own session,
    written under a temporary name and renamed when complete. Returns whether a dump started."""
    d = folder(lib)
    mine = _own_list(d)
    if not mine.is_file() or mine.stat().st_size == 0:
        return False
    try:
        os.link(mine, d / CLASSES)
    except FileExistsError:
        return False
    finally:
        mine.unlink(missing_ok=True)
    tmp = d / f".{ARCHIVE}.{os.getpid()}"
    dump = [str(Path(java_home) / "bin" / "java"), "-Xshare:dump", f"-XX:SharedClassListFile={d / CLASSES}",
            f"-XX:SharedArchiveFile={tmp}", "-cp", class_path]
    script = f"{shlex.join(dump)} && mv -f {shlex.quote(str(tmp))} {shlex.quote(str(d / ARCHIVE))}"
    env = {k: v for k, v in os.environ.items() if k != "JDK_JAVA_OPTIONS"}  # not this job's options
    with open(d / "dump.log", "w") as log:
        subprocess.Popen(["sh", "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    return True
