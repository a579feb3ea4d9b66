"""How much of the online delta to serve, learned online: a mixture over delta scales.

The hybrid serves sigmoid(base + delta). Over a strong base model a delta tuned on an earlier,
weaker base can step too far (TalkingData day 3: README, "Does the hybrid win?"). The mixer
serves instead a mixture of experts, expert k being ``sigmoid(base + s_k * delta)`` for the
fixed scales ``s_k`` (0 is the base alone, 1 the plain hybrid), weighted by how well each has
predicted the examples learned so far: the exponentially weighted forecaster with learning
rate 1 (for log loss, the Bayes mixture: its loss is at most ln K above the best expert's) and
fixed share (Herbster & Warmuth 1998: after each example a share of the weight is spread
evenly, so the mixture can move to another expert when the best one changes, as after a
retrain). Each expert is judged on the prediction it would have made before the example was
learned (the FTRL's ``p_before``), in learning order: no label is used before it arrives, and
the same event log gives the same weights.

``extra`` experts are given as logits of their own (``OnlineConfig.online_expert``: online-only
FTRL over the prior, never rebased): when a retrain's base is worse than what the stream has
learned without one, the mixture can move to it.

>>> m = Mixer(scales=(0.0, 1.0), share=0.0)
>>> m.weights.tolist()
[0.5, 0.5]
>>> m.observe(base=[0.0], delta=[2.0], labels=[1.0])  # the delta was right: scale 1 gains
>>> m.weights.round(3).tolist()  # in proportion to each expert's p(y): 0.5 and 0.881
[0.362, 0.638]
>>> float(m.logits(np.array([0.0]), np.array([2.0]))[0]) < 2.0  # still part base
True
"""
from __future__ import annotations

import math

import numpy as np

from models.ftrl import LOGIT_CLIP
from models.ftrl_kernel import njit  # numba, imported where the job's Python worker can use it

EPS = 1e-12


@njit(cache=True)
def _fixed_share(lw: np.ndarray, loss: np.ndarray, share: float) -> np.ndarray:
    """Log-weights after each row of ``loss`` [n, K] in turn: the exponential update, then the
    share spread evenly (compiled: ~1 us per example against ~9 us as a Python loop)."""
    k = lw.shape[0]
    for i in range(loss.shape[0]):
        top = -np.inf
        for j in range(k):
            lw[j] -= loss[i, j]
            top = max(top, lw[j])
        total = 0.0
        for j in range(k):
            lw[j] = math.exp(lw[j] - top)
            total += lw[j]
        for j in range(k):
            lw[j] = math.log((1.0 - share) * lw[j] / total + share / k)
    return lw


class Mixer:
    """Weights over ``scales`` and then ``extra`` experts given as logits (uniform at the
    start); ``share``: the fixed-share rate."""

    def __init__(self, scales: tuple[float, ...] = (1.0,), share: float = 0.0, extra: int = 0):
        if not scales or any(s < 0 for s in scales):
            raise ValueError(f"scales must be non-empty and >= 0, got {scales}")
        if not 0.0 <= share < 1.0:
            raise ValueError(f"share must be in [0, 1), got {share}")
        if extra < 0:
            raise ValueError(f"extra must be >= 0, got {extra}")
        self.scales = np.asarray(scales, np.float64)
        self.share = float(share)
        self.extra = int(extra)
        self.weights = np.full(len(scales) + self.extra, 1.0 / (len(scales) + self.extra))

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"extra": 0, **state})  # pickled before extra experts existed

    @property
    def trivial(self) -> bool:
        """One expert at scale 1: exactly the plain hybrid."""
        return len(self.scales) == 1 and self.scales[0] == 1.0 and not self.extra

    def _experts(self, base: np.ndarray, delta: np.ndarray, extra=None) -> np.ndarray:
        """[n, K + E] each expert's probability."""
        z = np.asarray(base, np.float64)[:, None] + np.asarray(delta, np.float64)[:, None] * self.scales
        if self.extra:
            x = np.asarray(extra, np.float64).reshape(len(z), -1)
            if x.shape[1] != self.extra:
                raise ValueError(f"{self.extra} extra experts' logits expected, got {x.shape[1]}")
            z = np.hstack([z, x])
        return 1.0 / (1.0 + np.exp(-np.clip(z, -LOGIT_CLIP, LOGIT_CLIP)))

    def logits(self, base: np.ndarray, delta: np.ndarray, extra=None) -> np.ndarray:
        """The served logit of each row: logit of the weighted mixture of the experts
        (``extra``: [n, E] the extra experts' logits)."""
        base = np.broadcast_to(np.asarray(base, np.float64), np.shape(delta))
        if self.trivial:
            return np.clip(base + delta, -LOGIT_CLIP, LOGIT_CLIP)
        p = np.clip(self._experts(base, delta, extra) @ self.weights, EPS, 1.0 - EPS)
        return np.clip(np.log(p / (1.0 - p)), -LOGIT_CLIP, LOGIT_CLIP)

    def observe(self, base, delta, labels, extra=None) -> None:
        """Examples just learned, in learning order: each expert's log loss on the prediction
        before the update (``delta``: the FTRL's logit then; ``extra``: the extra experts'
        logits then, [n, E])."""
        delta = np.asarray(delta, np.float64)
        if self.trivial or not len(delta):
            return
        base = np.broadcast_to(np.asarray(base, np.float64), delta.shape)
        p = np.clip(self._experts(base, delta, extra), EPS, 1.0 - EPS)
        y = np.asarray(labels, np.float64)[:, None]
        loss = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
        w = np.exp(_fixed_share(np.log(self.weights), np.ascontiguousarray(loss), self.share))
        self.weights = w / w.sum()
