"""The tests' warm process (``runners.warm``): a command runs there as in a process of its own
(argv, working directory, stdout / stderr, exit code), one at a time, only for its owner and
its environment; a timeout ends it. (The jobs' own results are the other tests': each streaming
job of the suite that can runs there.)"""
import os
import subprocess
import sys
import threading
import time

import pytest

from runners import warm

SCRIPT = """import os, sys, time
print("argv", sys.argv[1:], "cwd", os.getcwd(), "pid", os.getpid())
print("to stderr", file=sys.stderr)
if sys.argv[1] == "sleep":
    time.sleep(float(sys.argv[2]))
sys.exit(int(sys.argv[-1]) if sys.argv[-1].isdigit() else 0)
"""


@pytest.fixture
def served(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    with warm.serving(tmp_path / "warm.log", gateway=False) as proc:
        deadline = time.monotonic() + 60
        while not (warm._target() and os.path.exists(warm._target())) and time.monotonic() < deadline:
            time.sleep(0.1)  # the process binds its socket once its imports are done
        yield script, proc


def test_a_command_runs_there_as_in_a_process_of_its_own(served, tmp_path, monkeypatch):
    script, proc = served
    monkeypatch.chdir(tmp_path)
    got = warm.run([str(script), "a b", "3"])
    assert got.returncode == 3 and got.stderr == "to stderr\n"
    assert got.stdout == f"argv ['a b', '3'] cwd {tmp_path} pid {proc.pid}\n"  # there, not here
    again = warm.run([str(script), "x"])  # the same process again
    assert again.returncode == 0 and again.stdout.endswith(f"pid {proc.pid}\n")
    failing = warm.run(["-m", "no_such_module_here"])
    assert failing.returncode == 1 and "No module named no_such_module_here" in failing.stderr
    assert warm.run([str(script), "x"]).returncode == 0  # and it still serves


def test_another_environment_a_busy_process_or_another_owner_run_cold(served, tmp_path, monkeypatch):
    script, proc = served
    out = tmp_path / "out"
    monkeypatch.setenv("DRIFTLINE_SOMETHING_ELSE", "1")
    assert warm.call([str(script), "x"], out) is None  # the caller runs it in a process of its own
    monkeypatch.delenv("DRIFTLINE_SOMETHING_ELSE")
    slow = threading.Thread(target=warm.call, args=([str(script), "sleep", "3"], tmp_path / "slow"))
    slow.start()
    time.sleep(1)
    assert warm.call([str(script), "x"], out) is None  # busy
    slow.join()
    assert warm.call([str(script), "x"], out) == 0
    child = subprocess.run([sys.executable, "-c", "from runners import warm; print(warm._target())"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "None"  # a child process of the owner has none


def test_a_timeout_ends_the_warm_process(served, tmp_path):
    script, proc = served
    with pytest.raises(subprocess.TimeoutExpired):
        warm.call([str(script), "sleep", "60"], tmp_path / "out", timeout=2)
    assert proc.wait(timeout=30) != 0  # killed, with whatever ran in it
    assert warm.call([str(script), "x"], tmp_path / "out") is None  # later commands run cold
    assert warm.run([str(script), "x"]).stdout.split()[-1] != str(proc.pid)
