"""Start-up hook of the job's Python workers (on their PYTHONPATH only: ``python.pythonpath``,
set by ``runners.flink_job.configure``); Python imports ``sitecustomize`` at start-up.

Why: at the end of every bundle Beam's SDK harness stops its state sampler, and ``stop()``
joins the sampler's thread, which sleeps in steps of up to ``sampling_period_ms`` (200 ms by
default): the Learner's task waits ~100 ms per bundle (py-spy on the worker: 6.7 s of a 300k
sparse run's ~60 s, 16-20 % of the bundle thread's samples; 24 of its samples with the hook).
The sampler only feeds Beam's per-step msec counters, which Flink does not use. With a 5-ms
period the wait is at most 5 ms. Beam has no option for it, and the first bundle processor (the
one every bundle reuses) builds its sampler before any user code of the job is unpickled, so it
is set here, lazily: when Beam's ``statesampler`` module is first imported.

Set ``DRIFTLINE_SAMPLER_MS`` to change the period (Beam's 200 to restore its behaviour). Another
``sitecustomize`` later on the path (a site's own) still runs.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

MODULE = "apache_beam.runners.worker.statesampler"
SAMPLER_MS = int(os.environ.get("DRIFTLINE_SAMPLER_MS", "5"))


class _SamplerPeriod(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when ``MODULE`` is imported, sets its sampler's default period
    once the module has run (then steps aside)."""

    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            init = module.StateSampler.__init__
            if init.__defaults__ and len(init.__defaults__) == 1:  # (sampling_period_ms,) in Beam 2.61
                init.__defaults__ = (SAMPLER_MS,)

        spec.loader.exec_module = exec_module
        return spec


if MODULE not in sys.modules:
    sys.meta_path.insert(0, _SamplerPeriod())

# a site's own sitecustomize, if one is further down the path
_here = os.path.dirname(os.path.abspath(__file__))
_other = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here])
if _other is not None and _other.loader is not None:
    _other.loader.exec_module(importlib.util.module_from_spec(_other))
