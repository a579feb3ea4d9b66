"""The mixture over delta scales (models.mixer) and the online layer that serves it."""
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.ftrl import FTRLParams
from models.guard import GuardConfig
from models.mixer import Mixer
from models.online import OnlineConfig, OnlineLayer


def _logloss(y, p) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), k=st.integers(2, 6))
def test_the_mixture_loses_at_most_ln_k_more_than_the_best_expert(seed, k):
    """Without share, the mixture (learning rate 1, log loss) is the Bayes mixture: on any
    sequence its cumulative log loss is at most the best expert's plus ln K."""
    rng = np.random.default_rng(seed)
    m = Mixer(tuple(sorted(rng.uniform(0, 2, k))), share=0.0)
    n = 300
    base, delta = rng.normal(-1, 1, n), rng.normal(0, 2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(base + rng.uniform(0, 2) * delta)))).astype(float)
    mixed, experts = 0.0, np.zeros(k)
    for i in range(n):
        z = float(m.logits(base[i:i + 1], delta[i:i + 1])[0])
        mixed += _logloss(y[i], 1 / (1 + math.exp(-z)))
        experts += [_logloss(y[i], 1 / (1 + math.exp(-(base[i] + s * delta[i])))) for s in m.scales]
        m.observe(base[i:i + 1], delta[i:i + 1], y[i:i + 1])
    assert mixed <= experts.min() + math.log(k) + 1e-6


@pytest.mark.parametrize("truth", [0.0, 1.0])
def test_the_weight_goes_to_the_scale_that_predicts(truth):
    """Labels drawn from base + truth * delta: the mixture's weight moves to that scale; with
    fixed share no expert's weight falls below share / K (it can come back)."""
    rng = np.random.default_rng(5)
    m = Mixer((0.0, 0.5, 1.0), share=0.01)
    base, delta = rng.normal(-1, 1, 3000), rng.normal(0, 2, 3000)
    y = (rng.random(3000) < 1 / (1 + np.exp(-(base + truth * delta)))).astype(float)
    for i in range(0, 3000, 50):  # batches, as the job learns them
        m.observe(base[i:i + 50], delta[i:i + 50], y[i:i + 50])
    best = int(np.argmax(m.weights))
    assert m.scales[best] == truth and m.weights[best] > 0.8, m.weights
    assert m.weights.min() >= 0.01 / 3 - 1e-12 and math.isclose(m.weights.sum(), 1.0)


def test_the_layer_serves_the_mixture_and_keeps_its_weights():
    """The served p is the weighted mixture of the experts' p (its delta_logit the part of the
    delta served); the weights survive a checkpoint (pickle); a layer checkpointed before the
    mixer existed restores as the plain hybrid; other scales in a new build start uniform."""
    rng = np.random.default_rng(1)
    cfg = OnlineConfig(ftrl=FTRLParams(l1=0.0), delta_scales=(0.0, 1.0), mix_share=0.001,
                       guard=GuardConfig(enabled=False))  # the delta served from the first example
    layer = OnlineLayer(cfg, 32, "f")
    idx, x = rng.integers(0, 32, (200, 3)), np.ones((200, 3))
    y = (idx[:, 0] < 8).astype(float)  # a feature the delta can learn
    layer.learn_batch(np.arange(200), idx, x, y, np.ones(200), np.arange(200))
    w = layer.mixer.weights.copy()
    assert w[1] > 0.9  # the delta predicted better than the prior alone
    s = layer.score_batch(idx[:5], x[:5], ["u"] * 5)
    base, delta = s["base_logit"], layer.ftrl.predict_logits(idx[:5], x[:5])
    experts = np.stack([1 / (1 + np.exp(-(base + k * delta))) for k in (0.0, 1.0)], 1)
    np.testing.assert_allclose(s["p"], experts @ w, rtol=1e-12)
    np.testing.assert_allclose(1 / (1 + np.exp(-(base + s["delta_logit"]))), s["p"], rtol=1e-12)
    again = pickle.loads(pickle.dumps(layer))
    np.testing.assert_array_equal(again.mixer.weights, w)
    old = pickle.loads(pickle.dumps(OnlineLayer(OnlineConfig(), 32, "f")))
    del old.__dict__["mixer"]
    restored = pickle.loads(pickle.dumps(old))
    assert restored.mixer.trivial
    layer.reconfigure(OnlineConfig(ftrl=FTRLParams(l1=0.0), delta_scales=(0.0, 0.5, 1.0)))
    assert layer.mixer.weights.tolist() == [1 / 3] * 3


def test_scales_and_share_are_checked():
    with pytest.raises(ValueError):
        OnlineConfig(delta_scales=())
    with pytest.raises(ValueError):
        OnlineConfig(delta_scales=(-1.0, 1.0))
    with pytest.raises(ValueError):
        OnlineConfig(delta_scales=(0.0, 1.0), mix_share=1.0)
    assert OnlineConfig.from_dict(OnlineConfig(delta_scales=(0.0, 1.0)).to_dict()).delta_scales == (0.0, 1.0)
