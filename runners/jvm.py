"""driftline's JVM side: our ServerFactory (Python operators' endpoints on loopback) and the
output file sink's encoder and event-time bucket assigner (``driftline.flink``).

Flink runs each Python operator's Beam Fn API services on gRPC servers made by Beam's
``ServerFactory`` (vendored in flink-python's jar), which binds ``NettyServerBuilder.forPort``:
every interface. ``runners/jvm/.../ServerFactory.java`` is our own drop-in replacement that
binds 127.0.0.1. ``patch_jar`` compiles it with ``javac`` against the installed flink-python
jar (no download) into a cached jar; ``lib_dir`` makes a Flink lib folder (links to PyFlink's
jars, plus ours) that puts it ahead of flink-python's jar on the class path, for the local
gateway JVM (``FLINK_LIB_DIR``, read by PyFlink's launcher) and for the standalone cluster's
daemons (``FLINK_LIB_DIR`` of Flink's scripts; there flink-python's jar goes in too, so the
operators and our class share one class loader).

A class of ours that replaces one in a jar of PyFlink's lib (``org.apache.flink.connector.
file.table.DeserializationSchemaAdapter``: Flink's line reader loses its position after a
restore, see the Java file) cannot rely on class-path order (PyFlink's launcher lists lib jars
in directory order): ``patch_jar`` writes a copy of that jar with our classes in place of its
own (``patched_jars``), and ``lib_dir`` links the copy under the jar's own name.

In a local run PyFlink's driver would also serve a "loopback" worker pool on ``[::]:0``;
``prepare_local`` chooses PyFlink's process mode instead (the JVM starts the Python workers,
as on a cluster).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

SOURCES = Path(__file__).resolve().parent / "jvm"
log = logging.getLogger(__name__)

# the mini-cluster's own endpoints (RPC, blob server, shuffle, REST): Flink binds two of them
# on all interfaces unless told; a cluster's conf says the same (runners.cluster.write_conf)
LOCAL_ENDPOINTS = {"jobmanager.bind-host": "127.0.0.1", "taskmanager.bind-host": "127.0.0.1",
                   "taskmanager.host": "127.0.0.1", "rest.bind-address": "127.0.0.1",
                   "rest.address": "127.0.0.1"}


def under_flink_run() -> bool:
    """``flink run -py`` started this process and its gateway: the cluster's conf decides."""
    return "PYFLINK_GATEWAY_PORT" in os.environ


def pyflink_home() -> Path:
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def flink_python_jar() -> Path:
    jars = sorted((pyflink_home() / "opt").glob("flink-python*.jar"))
    if not jars:
        raise FileNotFoundError(f"no flink-python jar in {pyflink_home() / 'opt'}")
    return jars[0]


def prometheus_jar() -> Path:
    """Flink's Prometheus reporter (a plugin of the pip package): our loopback reporter extends it."""
    jars = sorted((pyflink_home() / "plugins" / "metrics-prometheus").glob("flink-metrics-prometheus*.jar"))
    if not jars:
        raise FileNotFoundError(f"no flink-metrics-prometheus jar in {pyflink_home() / 'plugins'}")
    return jars[0]


def _resources() -> list[Path]:
    """Files of our jar besides classes (META-INF/services: the reporter factory)."""
    return sorted(p for p in (SOURCES / "META-INF").rglob("*") if p.is_file())


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "driftline" / "jvm"


def _lib_jars() -> dict[str, Path]:
    return {p.name: p for p in sorted((pyflink_home() / "lib").glob("*.jar"))}


def _key() -> str:
    """Changes with our sources and with the jars they are compiled against."""
    h = hashlib.sha256(flink_python_jar().name.encode() + b"\0" + prometheus_jar().name.encode())
    for name in _lib_jars():
        h.update(name.encode() + b"\0")
    for src in [*sorted(SOURCES.rglob("*.java")), *_resources()]:
        h.update(str(src.relative_to(SOURCES)).encode() + b"\0" + src.read_bytes())
    return h.hexdigest()[:16]


def patch_jar(cache: Path | None = None) -> Path:
    """Compile our Java sources into ``driftline-jvm-<key>.jar`` (once per key)."""
    folder = (cache or cache_root()) / _key()
    jar = folder / f"driftline-jvm-{folder.name}.jar"
    if jar.exists():
        return jar
    javac = shutil.which("javac")
    if javac is None:
        raise FileNotFoundError("javac not found: a JDK is needed to build driftline's loopback ServerFactory")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        classes = Path(tmp) / "classes"
        cp = os.pathsep.join([str(flink_python_jar()), str(prometheus_jar()),
                              *map(str, sorted((pyflink_home() / "lib").glob("*.jar")))])
        proc = subprocess.run([javac, "-nowarn", "--release", "11", "-cp", cp,
                               "-d", str(classes), *map(str, sorted(SOURCES.rglob("*.java")))],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"javac failed:\n{proc.stderr[-3000:]}")
        built = {f.relative_to(classes).as_posix(): f for f in sorted(classes.rglob("*.class"))}
        replaced: set[str] = set()
        for name, stock in _lib_jars().items():
            with zipfile.ZipFile(stock) as z:
                theirs = {e for e in z.namelist() if e in built}
            if theirs:  # a copy of that jar with our classes instead (nested classes of theirs dropped)
                mine = {e for e in built if e.split("$")[0].removesuffix(".class") in
                        {t.split("$")[0].removesuffix(".class") for t in theirs}}
                _write_patched(stock, folder / name, {e: built[e] for e in mine})
                replaced |= mine
        part = Path(tmp) / jar.name
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: driftline\n")
            for name, f in built.items():
                if name not in replaced:
                    z.write(f, name)
            for f in _resources():
                z.write(f, f.relative_to(SOURCES).as_posix())
        os.replace(part, jar)  # atomic: a concurrent build leaves one whole jar
    return jar


def _write_patched(stock: Path, dest: Path, ours: dict[str, Path]) -> None:
    """``stock`` with the classes of ``ours`` (entry name → compiled file) in place of its own
    classes of the same outer class (a nested class we do not have is dropped, not kept stale)."""
    outer = {n.split("$")[0].removesuffix(".class") for n in ours}
    part = dest.with_name(f".{dest.name}.{os.getpid()}")
    with zipfile.ZipFile(stock) as src, zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if info.filename.endswith(".class") and info.filename.split("$")[0].removesuffix(".class") in outer:
                continue
            out.writestr(info, src.read(info))
        for name, f in sorted(ours.items()):
            out.write(f, name)
    os.replace(part, dest)


def patched_jars(cache: Path | None = None) -> dict[str, Path]:
    """PyFlink lib jars we replace with a patched copy: name → the copy (built by ``patch_jar``)."""
    return _patched_next_to(patch_jar(cache))


def _patched_next_to(jar: Path) -> dict[str, Path]:
    return {name: jar.parent / name for name in _lib_jars() if (jar.parent / name).is_file()}


def lib_dir(with_flink_python: bool = False, cache: Path | None = None) -> Path:
    """A Flink lib folder: links to PyFlink's lib jars (our patched copies instead, under the
    same names), our jar, Flink's Prometheus reporter (our loopback reporter extends it) and,
    for a cluster, flink-python's. Both PyFlink's launcher and
    Flink's scripts put lib jars before opt's flink-python jar, and Flink's scripts sort them:
    ``driftline-…`` sorts before ``flink-…``."""
    jar = patch_jar(cache)
    folder = jar.parent / ("lib-cluster" if with_flink_python else "lib-local")
    wanted = {**_lib_jars(), **_patched_next_to(jar)}
    wanted[jar.name] = jar
    wanted[prometheus_jar().name] = prometheus_jar()  # for our loopback reporter (LoopbackPrometheus)
    if with_flink_python:
        wanted[flink_python_jar().name] = flink_python_jar()
    folder.mkdir(exist_ok=True)
    for name, target in wanted.items():
        link = folder / name
        if not (link.is_symlink() and link.resolve() == target.resolve()):
            tmp = folder / f".{name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, link)
    for stale in set(p.name for p in folder.glob("*.jar")) - set(wanted):
        (folder / stale).unlink()
    return folder


def gateway_started() -> bool:
    """Whether this process already talks to a Flink JVM."""
    from pyflink import java_gateway

    return java_gateway._gateway is not None or under_flink_run()


def prepare_local() -> bool:
    """Before a local job's gateway starts: our ServerFactory first on its class path, and the
    Python workers as processes of the JVM (not a worker pool in this process on ``[::]``); the
    job's conf adds ``LOCAL_ENDPOINTS``. Returns whether the JVM side is patched. Not under
    ``flink run`` (the cluster's lib decides), nor when a gateway already runs in this process
    or ``FLINK_LIB_DIR`` is the user's own, nor without a JDK (warnings; the job's sinks then fail)."""
    if under_flink_run():
        return False
    patched = False
    ours = cache_root()
    if gateway_started():
        patched = ours in Path(os.environ.get("FLINK_LIB_DIR", "/")).parents
        if not patched:
            log.warning("the Flink gateway was started before driftline's jar was put on its class "
                        "path (runners.jvm.prepare_local must run first)")
    elif os.environ.get("FLINK_LIB_DIR") and ours not in Path(os.environ["FLINK_LIB_DIR"]).parents:
        log.warning("FLINK_LIB_DIR is set (%s): it needs driftline's jar (runners.jvm.patch_jar) "
                    "for the output sinks and loopback-only gRPC servers", os.environ["FLINK_LIB_DIR"])
    else:
        try:
            lib = lib_dir()
            # without FLINK_HOME, PyFlink's launcher resets FLINK_LIB_DIR to its own lib
            os.environ.setdefault("FLINK_HOME", str(pyflink_home()))
            os.environ["FLINK_LIB_DIR"] = str(lib)
            patched = True
            from runners import cds

            if cds.enabled():  # opt-in: a class-data-sharing archive for the gateway JVM
                cds.add_to_environment(lib)
        except (FileNotFoundError, RuntimeError) as e:  # the job's sinks will say so (flink_job.file_sink)
            log.warning("driftline's JVM classes could not be built: %s", e)
    # PyFlink's loopback mode serves a worker pool from this process on [::]:0 (and its
    # "singleton" re-binds on every construction); process mode has the JVM start the
    # Python workers as child processes, which connect to the JVM's loopback servers
    os.environ.setdefault("_python_worker_execution_mode", "process")
    return patched


def after_local_job() -> None:
    """After a local job (its gateway still up): hand the JVM's class list to ``runners.cds``,
    which publishes it and starts the archive's dump (only with ``DRIFTLINE_JVM_CDS=1``)."""
    from runners import cds

    if not cds.enabled() or under_flink_run() or not os.environ.get("FLINK_LIB_DIR"):
        return
    from pyflink.java_gateway import get_gateway

    system = get_gateway().jvm.System
    cds.after_job(Path(os.environ["FLINK_LIB_DIR"]), system.getProperty("java.class.path"),
                  system.getProperty("java.home"))
