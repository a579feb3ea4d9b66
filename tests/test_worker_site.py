"""The Python workers' start-up hook (runners/worker_site): Beam's state sampler stops fast."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from runners.flink_job import WORKER_SITE

PROBE = """
import json, sys, time
from apache_beam.runners.worker import statesampler
from apache_beam.utils.counters import CounterFactory
s = statesampler.StateSampler("probe", CounterFactory())
s.start(); time.sleep(1.5)  # long enough for Beam's sampler to reach its full period
t = time.perf_counter(); s.stop(); stop_ms = 1000 * (time.perf_counter() - t)
print(json.dumps({"period": s.sampling_period_ms, "stop_ms": stop_ms,
                  "other": "other_site" in sys.modules}))
"""


def probe(pythonpath: list[str], env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(pythonpath)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sampler_stops_within_its_short_period():
    without = probe([])
    assert without["period"] == 200  # Beam's default: what a bundle's end waits for, up to
    hooked = probe([str(WORKER_SITE)])
    assert hooked["period"] == 5
    assert hooked["stop_ms"] < 50  # Beam's own: 0-200 ms, wherever its nap happens to be


def test_period_setting_and_a_sites_own_hook_still_run(tmp_path):
    other = tmp_path / "site"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import sys\nsys.modules['other_site'] = sys\n")
    got = probe([str(WORKER_SITE), str(other)], {"DRIFTLINE_SAMPLER_MS": "200"})
    assert got == {**got, "period": 200, "other": True}


def test_the_job_puts_the_hook_on_the_workers_path(tmp_path):
    from runners.flink_job import JobConfig, configure

    cfg = JobConfig(event_dir=str(tmp_path), out=str(tmp_path / "out"), artifact=str(tmp_path / "a.json"))
    env, _ = configure(cfg)
    conf = env._j_stream_execution_environment.getConfiguration()
    # (PyFlink also puts it on an in-process client's sys.path once a job ran there: harmless,
    # a started interpreter does not run sitecustomize again)
    assert conf.toMap()["python.pythonpath"] == str(WORKER_SITE)
