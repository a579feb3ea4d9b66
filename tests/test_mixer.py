"""The mixture over delta scales (models.mixer), its online expert, and the online layer that
serves it."""
import math
import pickle
from dataclasses import replace

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


def test_an_extra_expert_takes_the_weight_when_it_predicts():
    """Extra experts come as logits: labels drawn from the extra expert's p move the weight to
    it; a wrong number of extra logits is refused; a mixer pickled before extras existed has
    none."""
    rng = np.random.default_rng(3)
    m = Mixer((0.0, 1.0), share=0.001, extra=1)
    n = 2000
    base, delta, solo = rng.normal(-1, 1, n), rng.normal(0, 1, n), rng.normal(-1, 2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-solo))).astype(float)
    for i in range(0, n, 50):
        m.observe(base[i:i + 50], delta[i:i + 50], y[i:i + 50], solo[i:i + 50, None])
    assert len(m.weights) == 3 and m.weights[2] > 0.9, m.weights
    p = 1 / (1 + np.exp(-m.logits(base[:5], delta[:5], solo[:5, None])))
    experts = np.stack([1 / (1 + np.exp(-(base[:5] + s * delta[:5]))) for s in (0.0, 1.0)]
                       + [1 / (1 + np.exp(-solo[:5]))], 1)
    np.testing.assert_allclose(p, experts @ m.weights, rtol=1e-12)
    with pytest.raises(ValueError, match="extra"):
        m.logits(base[:5], delta[:5], np.zeros((5, 2)))
    old = Mixer((0.0, 1.0))
    del old.__dict__["extra"]
    assert pickle.loads(pickle.dumps(old)).extra == 0 and not Mixer((1.0,), extra=1).trivial


def _stream(rng, n, dim=32):
    idx, x = rng.integers(0, dim, (n, 3)), np.ones((n, 3))
    return idx, x, (idx[:, 0] < 8).astype(float)


def test_the_online_expert_learns_like_online_only_and_survives_a_swap():
    """The online expert is online-only FTRL: its weights equal those of an online-only layer
    (no base model) fed the same examples, before and after a base swap (which rebases the
    delta, not the expert); the served p is the mixture with it; it is checkpointed (pickle);
    a build that turns it off drops it, one that turns it on starts it empty."""
    from models.base import BaseModel

    rng = np.random.default_rng(4)
    expert = FTRLParams(alpha=0.3, l1=0.0)
    cfg = OnlineConfig(ftrl=FTRLParams(l1=0.0), delta_scales=(0.0, 1.0), online_expert=True, expert_ftrl=expert,
                       guard=GuardConfig(enabled=False))
    solo_cfg = OnlineConfig(ftrl=expert, guard=GuardConfig(enabled=False))
    layer, alone = OnlineLayer(cfg, 32, "f"), OnlineLayer(solo_cfg, 32, "f")
    for step in range(4):
        idx, x, y = _stream(rng, 100)
        t = np.arange(100) + 100 * step
        layer.learn_batch(t, idx, x, y, np.ones(100), t)
        alone.learn_batch(t, idx, x, y, np.ones(100), t)
        if step == 1:  # a base model arrives: the delta is rebased, the expert goes on
            layer.swap_base(BaseModel.zeros(32, bias=-2.0), "000000000001",
                            {"resolution_time": t, "indices": idx, "values": x, "label": y, "weight": np.ones(100)})
        np.testing.assert_array_equal(layer.solo.z, alone.ftrl.z)
        np.testing.assert_array_equal(layer.solo.n, alone.ftrl.n)
    assert len(layer.mixer.weights) == 3
    idx, x, _ = _stream(rng, 5)
    s = layer.score_batch(idx, x, ["u"] * 5)
    base, delta = np.asarray(s["base_logit"]), layer.ftrl.predict_logits(idx, x)
    solo = alone.score_batch(idx, x, ["u"] * 5)["p"]
    experts = np.stack([1 / (1 + np.exp(-(base + k * delta))) for k in (0.0, 1.0)] + [solo], 1)
    np.testing.assert_allclose(s["p"], experts @ layer.mixer.weights, rtol=1e-12)
    again = pickle.loads(pickle.dumps(layer))
    np.testing.assert_array_equal(again.solo.z, layer.solo.z)
    again.reconfigure(replace(cfg, online_expert=False))
    assert again.solo is None and len(again.mixer.weights) == 2
    again.reconfigure(cfg)
    assert again.solo is not None and not again.solo.z.any() and len(again.mixer.weights) == 3
    old = pickle.loads(pickle.dumps(OnlineLayer(OnlineConfig(), 32, "f")))
    del old.__dict__["solo"]
    assert pickle.loads(pickle.dumps(old)).solo is None
    assert OnlineConfig.from_dict(cfg.to_dict()) == cfg
