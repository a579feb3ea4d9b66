"""FTRL-Proximal logistic regression (McMahan et al. 2013, Algorithm 1), learned on the residual
of a base model: p = sigmoid(base_logit + w·x).

Per coordinate i the state is (z_i, n_i); the weight is derived lazily:

    w_i = 0                                                   if |z_i| <= l1
    w_i = -(z_i - sign(z_i) l1) / ((beta + sqrt(n_i)) / alpha + l2)   otherwise

and after the label y (optionally with a sample weight s):

    g_i = s (p - y) x_i;  sigma_i = (sqrt(n_i + g_i^2) - sqrt(n_i)) / alpha
    z_i += g_i - sigma_i w_i;  n_i += g_i^2

``FTRL`` keeps z and n in dense float64 arrays over the hashed index space (the spec's
``dimension``) and updates one event at a time: each event sees the weights the previous one
left, so the result depends only on the order of the examples. ``ReferenceFTRL`` is the same
algorithm in plain Python dicts, written for reading; tests hold the two equal to 1e-9.

>>> m = FTRL(FTRLParams(alpha=0.1, beta=1.0, l1=0.0, l2=0.0), dimension=4)
>>> p0, changed, w = m.learn_one([0, 2], [1.0, 1.0], y=1)
>>> round(p0, 6), changed.tolist()
(0.5, [0, 2])
>>> m.predict_logit([0, 2], [1.0, 1.0]) > 0
True
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

LOGIT_CLIP = 35.0  # sigmoid saturates in float64 beyond this; keeps logloss finite


PRECISIONS = ("float64", "float32")


@dataclass(frozen=True)
class FTRLParams:
    """``precision``: how z and n are stored (16 or 8 bytes per coordinate). The arithmetic is
    float64 either way; float32 rounds the state after each update (McMahan et al. 2013
    report no measurable loss from reduced-precision weights; ``bench/ftrl.py`` measures it)."""

    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 1.0
    l2: float = 1.0
    precision: str = "float64"

    def __post_init__(self) -> None:
        if self.alpha <= 0 or self.beta < 0 or self.l1 < 0 or self.l2 < 0:
            raise ValueError(f"FTRL needs alpha > 0 and beta, l1, l2 >= 0, got {self}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


def _dot(w: np.ndarray, x: np.ndarray) -> float:
    """w·x summed left to right, as the compiled kernel does, not ``np.dot``: BLAS dot kernels
    reorder and fuse the sum (OpenBLAS on an AVX-512 machine differed from the kernel by 1 ulp,
    so learn_one and the batch kernel were no longer bit-identical)."""
    s = 0.0
    for v in (w * x).tolist():
        s += v
    return s


def sigmoid(x: float) -> float:
    x = min(max(x, -LOGIT_CLIP), LOGIT_CLIP)
    return 1.0 / (1.0 + math.exp(-x))


class FTRL:
    """The online delta layer. Indices of one event must be distinct (the feature spec's
    layout gives every feature its own slot range)."""

    def __init__(self, params: FTRLParams, dimension: int):
        self.params = params
        self.dimension = int(dimension)
        self.z = np.zeros(self.dimension, dtype=params.precision)
        self.n = np.zeros(self.dimension, dtype=params.precision)
        self.updates = 0  # sequence number of the last applied example

    def weights_at(self, idx: np.ndarray) -> np.ndarray:
        p = self.params
        z, n = self.z[idx].astype(np.float64), self.n[idx].astype(np.float64)
        w = -(z - np.sign(z) * p.l1) / ((p.beta + np.sqrt(n)) / p.alpha + p.l2)
        return np.where(np.abs(z) <= p.l1, 0.0, w)

    def predict_logit(self, indices: Sequence[int], values: Sequence[float]) -> float:
        idx = np.asarray(indices, dtype=np.int64)
        return _dot(self.weights_at(idx), np.asarray(values, dtype=np.float64))

    def learn_one(self, indices: Sequence[int], values: Sequence[float], y: int,
                  base_logit: float = 0.0, weight: float = 1.0) -> tuple[float, np.ndarray, np.ndarray]:
        """One step of Algorithm 1. Returns (p before the update, the coordinates touched,
        their new weights)."""
        idx = np.asarray(indices, dtype=np.int64)
        x = np.asarray(values, dtype=np.float64)
        w = self.weights_at(idx)
        p = sigmoid(base_logit + _dot(w, x))
        g = weight * (p - y) * x
        n = self.n[idx].astype(np.float64)
        sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / self.params.alpha
        self.z[idx] = self.z[idx].astype(np.float64) + (g - sigma * w)
        self.n[idx] = n + g * g
        self.updates += 1
        self._touch(idx)
        return p, idx, self.weights_at(idx)

    # ---- batches: the compiled kernel (models.ftrl_kernel), same arithmetic ---------------
    def predict_logits(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """w·x for each row of ``indices``/``values`` [m, k]."""
        from models.ftrl_kernel import predict_logits

        p = self.params
        return predict_logits(self.z, self.n, np.ascontiguousarray(indices, np.int64),
                              np.ascontiguousarray(values, np.float64), p.alpha, p.beta, p.l1, p.l2)

    def learn_batch(self, indices: np.ndarray, values: np.ndarray, y: np.ndarray,
                    base_logits: np.ndarray, weights: np.ndarray | None = None,
                    want_weights: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``learn_one`` for each row in order; returns (p before each update, each row's new
        weights [m, k], or an empty [0, k] without ``want_weights``)."""
        from models.ftrl_kernel import learn_batch

        m = len(y)
        p = self.params
        sw = np.ones(m) if weights is None else np.asarray(weights, np.float64)
        p_before, w = learn_batch(self.z, self.n, np.ascontiguousarray(indices, np.int64),
                                  np.ascontiguousarray(values, np.float64), np.asarray(y, np.float64),
                                  np.asarray(base_logits, np.float64), sw, p.alpha, p.beta, p.l1, p.l2,
                                  self.z.dtype == np.float64, bool(want_weights))
        self.updates += m
        self._touch(indices)
        return p_before, w

    def weights(self) -> np.ndarray:
        return self.weights_at(np.arange(self.dimension))

    def weight_norm(self) -> float:
        """L2 norm of the weights, for the guard (before every tick of the job). Kept as each
        coordinate's squared weight and their sum, both refreshed only where updates touched since
        the last call: a tick costs its touched coordinates, not a pass over all of z (measured
        ~0.5-0.8 ms per tick on the generator and TalkingData spaces; the sum over all of them
        was then still a third of the norm's py-spy samples). Recomputed in full on
        first use, after new parameters, or when more coordinates were touched than exist.

        >>> m = FTRL(FTRLParams(alpha=0.5), 8)
        >>> _ = m.learn_batch(np.array([[1, 3]]), np.ones((1, 2)), np.ones(1), np.zeros(1))
        >>> bool(np.isclose(m.weight_norm(), np.linalg.norm(m.weights())))
        True
        """
        key = (self.params.alpha, self.params.beta, self.params.l1, self.params.l2)
        cache = self.__dict__.get("_w2")
        touched = self.__dict__.get("_touched") or []
        if cache is None or cache[0] != key or sum(len(t) for t in touched) > self.dimension:
            w2 = self.weights() ** 2
            cache = [key, w2, float(w2.sum())]
        elif touched:
            idx = np.unique(np.concatenate(touched))
            new = self.weights_at(idx) ** 2
            cache[2] = max(0.0, cache[2] + float(new.sum() - cache[1][idx].sum()))  # the sum kept, not redone
            cache[1][idx] = new
        self._w2, self._touched = cache, []
        return float(np.sqrt(cache[2]))

    def _touch(self, idx: np.ndarray) -> None:
        if "_w2" in self.__dict__:  # only once the norm is in use
            self._touched.append(np.asarray(idx, np.int64).ravel())

    def __getstate__(self) -> dict:
        # the norm's cache is derived: not in checkpoints (rebuilt on first use)
        return {k: v for k, v in self.__dict__.items() if k not in ("_w2", "_touched")}

    # ---- snapshots: .npz without pickle ---------------------------------------------------
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, z=self.z, n=self.n, updates=np.int64(self.updates),
                            params=np.array([self.params.alpha, self.params.beta, self.params.l1,
                                             self.params.l2]))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "FTRL":
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            a, b, l1, l2 = (float(v) for v in f["params"])
            m = cls(FTRLParams(a, b, l1, l2, precision=str(f["z"].dtype)), len(f["z"]))
            m.z[:], m.n[:] = f["z"], f["n"]
            m.updates = int(f["updates"])
        return m

    def params_dict(self) -> dict:
        return asdict(self.params)


class ReferenceFTRL:
    """Algorithm 1 exactly as printed, in plain Python (dicts, math): the yardstick."""

    def __init__(self, params: FTRLParams):
        self.a, self.b, self.l1, self.l2 = params.alpha, params.beta, params.l1, params.l2
        self.z: dict[int, float] = {}
        self.n: dict[int, float] = {}

    def weight(self, i: int) -> float:
        z = self.z.get(i, 0.0)
        if abs(z) <= self.l1:
            return 0.0
        sign = 1.0 if z > 0 else -1.0
        return -(z - sign * self.l1) / ((self.b + math.sqrt(self.n.get(i, 0.0))) / self.a + self.l2)

    def learn_one(self, indices, values, y, base_logit=0.0, weight=1.0) -> float:
        w = {i: self.weight(i) for i in indices}
        p = sigmoid(base_logit + sum(w[i] * x for i, x in zip(indices, values)))
        for i, x in zip(indices, values):
            g = weight * (p - y) * x
            n = self.n.get(i, 0.0)
            sigma = (math.sqrt(n + g * g) - math.sqrt(n)) / self.a
            self.z[i] = self.z.get(i, 0.0) + g - sigma * w[i]
            self.n[i] = n + g * g
        return p
