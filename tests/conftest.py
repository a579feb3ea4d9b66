"""Shared fixtures. The real data sets come through the one data setting
($DRIFTLINE_DATA_DIR, default ../shared/data); a test that needs them fails loudly without them."""
from __future__ import annotations

import pytest

from pipelines.config import DataDirMissing, data_dir


@pytest.fixture(scope="session")
def shared_data():
    try:
        return data_dir()
    except DataDirMissing as e:
        pytest.fail(str(e), pytrace=False)


# The longest test files first (seconds per file in one worker, measured 2026-12-07 at fd2caf1
# in a 3-worker ``make test``), for ``make test``'s xdist workers (--dist loadfile
# --no-loadscope-reorder: a file stays whole in one worker and files are handed out in
# collection order, each to the first free worker: longest first is the LPT rule, whose
# makespan on these durations is 861 s against 945 s for the order before; xdist's default
# reorder, by number of tests per file, put the 3-test fault-tolerance file near the end, where
# its minutes of paced replays and restarts ran alone). The fault-tolerance file, mostly
# waiting, then overlaps the CPU-bound rest. Only the order changes: files not named keep theirs.
LONGEST_FIRST = ("test_fault_tolerance.py",  # 719 s, mostly paced and restarting: little CPU
                 "test_follow.py", "test_retrain.py", "test_kafka.py", "test_cluster.py",  # 257, 257, 236, 225
                 "test_bad_input.py", "test_evaluate.py", "test_bootstrap.py", "test_aggregates.py",  # 150 .. 81
                 "test_feature_drift.py", "test_stream_job.py", "test_security.py", "test_guard.py",  # 79 .. 53
                 "test_cli.py", "test_jvm.py", "test_jvm_operators.py")  # 37 .. 25


def pytest_configure(config):
    """Ctrl-C reaches the processes the tests start even when the suite itself was started in
    the background of a non-interactive shell (``(make test &)``, ``nohup ... &``): such a shell
    starts it with SIGINT ignored, every child inherits that, and a Python child then never
    raises KeyboardInterrupt, so the tests that stop ``driftline run`` / ``submit`` with Ctrl-C
    failed (found so: both passed in the foreground). A handled signal is reset to the default
    in a new program, an ignored one is not: so it is handled here (as in the foreground)."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as collected


@pytest.fixture(scope="session", autouse=True)
def warm_jobs(tmp_path_factory):
    """This pytest process's local Flink jobs one after another in one warm process
    (``runners.warm``: the gateway JVM started and compiled once, not per job); each job still
    starts its own mini-cluster. ``DRIFTLINE_WARM_JOBS=0``: every job in a process of its own."""
    import os

    from runners.warm import ENV, serving

    if os.environ.get(ENV) == "0":
        yield None
        return
    with serving(tmp_path_factory.getbasetemp() / "warm.log") as proc:
        yield proc
