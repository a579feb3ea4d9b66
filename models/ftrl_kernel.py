"""The compiled FTRL-Proximal kernel (numba): Algorithm 1 over a batch of hashed sparse
examples, strictly one event after another (each sees the weights the previous one left).

It is the same arithmetic as ``FTRL.learn_one`` (same operation order, float64; with float32
state, ``FTRLParams.precision``, z and n are read as float64 and rounded when stored), so it equals
the plain-Python ``ReferenceFTRL`` to rounding; tests hold it to 1e-9. Compiled once per
machine into numba's on-disk cache (``cache=True``, ``__pycache__``; ~2.5 s otherwise in every
job's Python worker). Numba's cache keys on the file path but pickles the module name: run the
doctests as ``pytest --doctest-modules models/ftrl_kernel.py``, not ``python -m doctest`` (a
cache written under ``__main__`` broke later ``models.ftrl_kernel`` imports).

>>> import numpy as np
>>> z, n = np.zeros(4), np.zeros(4)
>>> idx = np.array([[0, 2]]); x = np.ones((1, 2))
>>> p, w = learn_batch(z, n, idx, x, np.array([1.0]), np.zeros(1), np.ones(1), 0.1, 1.0, 0.0, 0.0)
>>> float(p[0]), bool(w[0, 0] > 0)
(0.5, True)
"""
from __future__ import annotations

import builtins
import math
import sys

import numpy as np

# PyFlink's process-mode Python worker replaces builtins.print with a function of its own
# module; numba registers print by looking it up in the module it claims to come from, so
# make that lookup succeed (no behaviour change: the same function object).
_print = builtins.print
if getattr(_print, "__module__", "builtins") not in ("builtins", None) and _print.__module__ in sys.modules:
    _mod = sys.modules[_print.__module__]
    if getattr(_mod, _print.__name__, None) is not _print:
        setattr(_mod, _print.__name__, _print)

from numba import njit  # noqa: E402

LOGIT_CLIP = 35.0


@njit(inline="always", cache=True)
def _w(z: float, sqrt_n: float, alpha: float, beta: float, l1: float, l2: float) -> float:
    """The weight of a coordinate from z and sqrt(n) (computed once per coordinate and event)."""
    if abs(z) <= l1:
        return 0.0
    sign = 1.0 if z > 0 else -1.0
    return -(z - sign * l1) / ((beta + sqrt_n) / alpha + l2)


# cache=True: compiled once per machine into __pycache__ (numba's cache), not in every job's
# Python worker (measured 1.6 s of each streaming job's start-up)
@njit(cache=True)
def learn_batch(z, n, idx, x, y, base, sample_weight, alpha, beta, l1, l2, exact=True, want_weights=True):
    """Learn rows ``idx[j], x[j]`` with labels ``y[j]`` in order, updating ``z``/``n`` in place.
    Returns (p before each update [m], the new weights of each row's coordinates [m, k], or
    [0, k] without ``want_weights``). ``exact``: z and n are float64, so the square roots
    computed for the update are the ones a re-read would give and are reused (with float32
    state the new weights are computed from the rounded, stored values). The indices of a row
    must be distinct (the feature spec's layout guarantees it)."""
    m, k = idx.shape
    p_out = np.empty(m)
    w_out = np.empty((m if want_weights else 0, k))
    w = np.empty(k)
    sq = np.empty(k)
    for j in range(m):
        s = 0.0
        for c in range(k):
            i = idx[j, c]
            zi = np.float64(z[i])
            r = math.sqrt(np.float64(n[i]))
            sq[c] = r
            w[c] = _w(zi, r, alpha, beta, l1, l2)
            s += w[c] * x[j, c]
        t = base[j] + s
        t = min(max(t, -LOGIT_CLIP), LOGIT_CLIP)
        p = 1.0 / (1.0 + math.exp(-t))
        p_out[j] = p
        for c in range(k):
            i = idx[j, c]
            g = sample_weight[j] * (p - y[j]) * x[j, c]
            ni = np.float64(n[i])
            r1 = math.sqrt(ni + g * g)
            sigma = (r1 - sq[c]) / alpha
            zi = np.float64(z[i]) + (g - sigma * w[c])
            z[i] = zi  # stored in z's precision
            n[i] = ni + g * g
            if want_weights:
                if not exact:
                    zi = np.float64(z[i])
                    r1 = math.sqrt(np.float64(n[i]))
                w_out[j, c] = _w(zi, r1, alpha, beta, l1, l2)
    return p_out, w_out


@njit(cache=True)
def predict_logits(z, n, idx, x, alpha, beta, l1, l2):
    """w·x per row with the current weights (no update)."""
    m, k = idx.shape
    out = np.empty(m)
    for j in range(m):
        s = 0.0
        for c in range(k):
            i = idx[j, c]
            s += _w(np.float64(z[i]), math.sqrt(np.float64(n[i])), alpha, beta, l1, l2) * x[j, c]
        out[j] = s
    return out
