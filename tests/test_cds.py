"""The opt-in class-data-sharing archive of the local jobs' JVM (``runners.cds``): the options a
job gets at each stage, one published class list however many jobs race, and a real
``java -Xshare:dump`` whose archive a JVM then maps (``-Xshare:on`` fails when it cannot)."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from runners import cds


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("JDK_JAVA_OPTIONS", raising=False)
    lib = tmp_path / "lib"
    lib.mkdir()
    return lib


def _java_home() -> Path:
    java = shutil.which("java")
    if java is None:
        pytest.fail("java not found: the streaming job needs a JDK", pytrace=False)
    return Path(os.path.realpath(java)).parent.parent


def test_options_list_classes_then_map_the_archive(cache):
    d = cds.folder(cache)
    first = cds.jvm_options(cache)
    assert first == [f"-XX:DumpLoadedClassList={d / f'.classes.lst.{os.getpid()}'}"]
    (d / cds.CLASSES).write_text("java/lang/Object\n")
    assert cds.jvm_options(cache) == []  # a list is being dumped: no second list
    (d / cds.ARCHIVE).write_bytes(b"")
    assert cds.jvm_options(cache) == [f"-XX:SharedArchiveFile={d / cds.ARCHIVE}", "-Xshare:auto"]


def test_the_users_options_stay_and_ours_are_added_once(cache, monkeypatch):
    monkeypatch.setenv("JDK_JAVA_OPTIONS", "-XX:TieredStopAtLevel=1")
    cds.add_to_environment(cache)
    cds.add_to_environment(cache)
    opts = os.environ["JDK_JAVA_OPTIONS"].split()
    assert opts[0] == "-XX:TieredStopAtLevel=1" and len(opts) == 2 and opts[1].startswith("-XX:DumpLoadedClassList=")


def test_the_first_list_is_dumped_into_an_archive_a_jvm_maps(cache):
    d = cds.folder(cache)
    cds.jvm_options(cache)  # creates the folder
    own = d / f".classes.lst.{os.getpid()}"
    own.write_text("java/lang/Object\njava/lang/String\njava/util/ArrayList\n")
    assert cds.after_job(cache, str(cache), str(_java_home()))
    assert not own.exists() and (d / cds.CLASSES).is_file()
    own.write_text("java/lang/Object\n")  # a later job's list: the published one stays
    assert not cds.after_job(cache, str(cache), str(_java_home())) and not own.exists()
    deadline = time.time() + 120
    while not (d / cds.ARCHIVE).is_file() and time.time() < deadline:
        time.sleep(0.2)
    assert (d / cds.ARCHIVE).is_file(), (d / "dump.log").read_text()[-2000:]
    assert not list(d.glob(f".{cds.ARCHIVE}.*"))  # written under a temporary name, then renamed
    proc = subprocess.run([str(_java_home() / "bin" / "java"), f"-XX:SharedArchiveFile={d / cds.ARCHIVE}",
                           "-Xshare:on", "-cp", str(cache), "-version"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
