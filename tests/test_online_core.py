"""The engine-free core of the streaming job: FTRL, the online layer, the join semantics."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.ftrl import FTRL, FTRLParams, ReferenceFTRL
from models.guard import GuardConfig
from models.online import OnlineConfig, OnlineLayer, arm_of
from pipelines.join import JoinConfig, reference_join


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), l1=st.sampled_from([0.0, 0.5, 3.0]), l2=st.sampled_from([0.0, 1.0]))
def test_ftrl_equals_algorithm_1_in_plain_python(seed, l1, l2):
    rng = np.random.default_rng(seed)
    params = FTRLParams(alpha=0.1, beta=1.0, l1=l1, l2=l2)
    m, ref = FTRL(params, 50), ReferenceFTRL(params)
    for _ in range(300):
        idx = rng.choice(50, size=6, replace=False).tolist()
        x = rng.normal(size=6).tolist()
        y, base, w = int(rng.random() < 0.3), float(rng.normal()), float(rng.choice([1.0, 0.5, 2.0]))
        p, _, _ = m.learn_one(idx, x, y, base, w)
        assert p == pytest.approx(ref.learn_one(idx, x, y, base, w), abs=1e-12)
    np.testing.assert_allclose(m.weights(), [ref.weight(i) for i in range(50)], rtol=0, atol=1e-9)
    if l1 > 0:  # L1: exactly zero where |z| <= l1
        assert all(m.weights()[i] == 0.0 for i in range(50) if abs(m.z[i]) <= l1)


def test_snapshot_round_trip_without_pickle():
    m = FTRL(FTRLParams(l1=0.0), 10)
    m.learn_one([1, 3], [1.0, 2.0], 1)
    back = FTRL.from_bytes(m.to_bytes())
    assert back.updates == 1 and back.params == m.params
    assert back.z.tobytes() == m.z.tobytes() and back.n.tobytes() == m.n.tobytes()


def test_ab_arms_are_deterministic_and_split():
    arms = [arm_of(f"u{i}", 0.3) for i in range(5000)]
    assert arms == [arm_of(f"u{i}", 0.3) for i in range(5000)]
    assert 0.27 < arms.count("hybrid") / 5000 < 0.33
    assert set(arm_of(f"u{i}", 1.0) for i in range(100)) == {"hybrid"}


def test_disabled_layer_serves_base_only_and_marks_it():
    layer = OnlineLayer(OnlineConfig(enabled=False, ftrl=FTRLParams(l1=0.0)), 4, "fp")
    layer.learn("a", 1, [0], [1.0], 1)
    rec = layer.score("b", 2, [0], [1.0], "u")
    assert rec["served"] == "base_only" and rec["base_only_reason"] == "disabled"
    assert rec["delta_logit"] != 0 and rec["p"] == pytest.approx(1 / (1 + math.exp(-rec["base_logit"])))


def test_join_semantics_at_the_boundaries():
    W, H = 100, 1000
    cfg = JoinConfig(window_ms=W, late_horizon_ms=H, late_policy="correction")
    imps = [{"event_id": e, "event_time": 1000} for e in "abcdef"] + [{"event_id": "a", "event_time": 1000}]
    labs = [{"event_id": "a", "label_time": 1000, "label": 1},   # at t: in window
            {"event_id": "a", "label_time": 1050, "label": 1},   # duplicate label
            {"event_id": "b", "label_time": 1099, "label": 1},   # last ms of the window
            {"event_id": "c", "label_time": 1100, "label": 1},   # at t + W: late
            {"event_id": "d", "label_time": 999, "label": 1},    # before its impression
            {"event_id": "e", "label_time": 2001, "label": 1},   # beyond the late horizon: unknown
            {"event_id": "zz", "label_time": 1000, "label": 1}]  # no such impression
    r = reference_join(imps, labs, cfg)
    ex = {(e["event_id"], e["kind"]): e for e in r["examples"]}
    assert ex[("a", "label")]["resolution_time"] == 1000 and ex[("b", "label")]["label"] == 1
    assert ex[("c", "expired")]["label"] == 0 and ex[("c", "correction")]["label"] == 1
    assert ex[("d", "expired")]["resolution_time"] == 1100 and ex[("f", "expired")]["label"] == 0
    assert [x["event_id"] for x in r["late"]] == ["c"]
    assert r["dead_letter"] == sorted([("duplicate_event_id", "a"), ("duplicate_label", "a"),
                                       ("label_before_impression", "d"), ("unknown_impression", "e"),
                                       ("unknown_impression", "zz")])
    # every unique impression: exactly one non-correction example
    assert sorted(e["event_id"] for e in r["examples"] if e["kind"] != "correction") == list("abcdef")


def test_join_config_is_checked():
    with pytest.raises(ValueError):
        JoinConfig(late_policy="drop")
    with pytest.raises(ValueError):
        JoinConfig(window_ms=10, late_horizon_ms=5)


@pytest.mark.parametrize("l1", [0.0, 1.0])
def test_compiled_kernel_equals_the_reference(l1):
    """The batch kernel (numba) is Algorithm 1 event by event: equal to the plain-Python
    reference to 1e-9, weights exactly 0 where |z| <= l1, and bit-identical to learn_one."""
    rng = np.random.default_rng(5)
    m, k, d = 3_000, 6, 500
    idx = np.stack([rng.choice(d, k, replace=False) for _ in range(m)])
    x = rng.normal(size=(m, k))
    y = (rng.random(m) < 0.2).astype(float)
    base = rng.normal(size=m) * 0.3
    sw = rng.choice([1.0, 0.5], size=m)
    params = FTRLParams(alpha=0.1, beta=1.0, l1=l1, l2=0.5)
    batch, single, ref = FTRL(params, d), FTRL(params, d), ReferenceFTRL(params)
    p_batch, w_after = batch.learn_batch(idx, x, y, base, sw)
    p_single = [single.learn_one(idx[j], x[j], int(y[j]), base[j], sw[j])[0] for j in range(m)]
    p_ref = [ref.learn_one(idx[j].tolist(), x[j].tolist(), int(y[j]), base[j], sw[j]) for j in range(m)]
    assert batch.updates == m
    assert np.array_equal(p_batch, p_single) and np.array_equal(batch.z, single.z)
    np.testing.assert_allclose(p_batch, p_ref, rtol=0, atol=1e-9)
    w_ref = np.array([ref.weight(i) for i in range(d)])
    np.testing.assert_allclose(batch.weights(), w_ref, rtol=0, atol=1e-9)
    if l1 > 0:
        assert np.array_equal(batch.weights() == 0, w_ref == 0) and (w_ref == 0).any()
    np.testing.assert_array_equal(w_after[-1], batch.weights_at(idx[-1]))
    np.testing.assert_allclose(batch.predict_logits(idx[:5], x[:5]),
                               [batch.predict_logit(idx[j], x[j]) for j in range(5)], rtol=0, atol=1e-12)


@pytest.mark.parametrize("scales,expert", [((1.0,), False), ((0.0, 0.5, 1.0), False), ((0.0, 1.0), True)])
def test_online_layer_batches_equal_one_at_a_time(scales, expert):
    """score_batch / learn_batch (what the job runs) equal score / learn, prior included (and
    with a mixture over delta scales, models.mixer, and the online expert: the same served p,
    mixture weights and expert weights)."""
    rng = np.random.default_rng(2)
    cfg = OnlineConfig(hybrid_share=0.5, ftrl=FTRLParams(l1=0.1), delta_scales=scales, mix_share=0.01,
                       online_expert=expert, expert_ftrl=FTRLParams(alpha=0.2, l1=0.0) if expert else None)
    a, b = OnlineLayer(cfg, 64, "f"), OnlineLayer(cfg, 64, "f")
    for step in range(5):
        m = 40
        idx = np.stack([rng.choice(64, 4, replace=False) for _ in range(m)])
        x = np.ones((m, 4))
        res = np.sort(rng.integers(0, 1000, m)) + 1000 * step
        y = (rng.random(m) < 0.3).astype(float)
        close = res + rng.choice([0, 500], size=m)
        units = [f"u{i}" for i in rng.integers(0, 30, m)]
        s = a.score_batch(idx, x, units)
        for j in range(m):
            one = b.score(f"e{j}", 0, idx[j], x[j], units[j])
            assert (s["arm"][j], s["served"][j]) == (one["arm"], one["served"])
            assert math.isclose(s["p"][j], one["p"], abs_tol=1e-12) and s["base_logit"] == one["base_logit"]
            assert math.isclose(s["delta_logit"][j], one["delta_logit"], abs_tol=1e-12)
        u = a.learn_batch(res, idx, x, y, np.ones(m), close)
        for j in range(m):
            one = b.learn(f"e{j}", int(res[j]), idx[j], x[j], int(y[j]), 1.0, int(close[j]))
            assert one["seq"] == u["seq"][j] and math.isclose(one["p_before"], u["p_before"][j], abs_tol=1e-12)
    assert np.array_equal(a.ftrl.z, b.ftrl.z) and a.positives == b.positives and a.examples == b.examples
    np.testing.assert_allclose(a.mixer.weights, b.mixer.weights, rtol=0, atol=1e-12)
    k = len(a.mixer.weights)
    assert (k > 1) == (a.mixer.weights.max() > 1.0 / k + 0.01)  # it learned
    if expert:
        assert np.array_equal(a.solo.z, b.solo.z) and np.abs(a.solo.z).sum() > 0


def test_swap_base_rebases_the_delta_on_the_new_residual():
    """After a swap, the delta equals one learned from scratch on the new base's residual over
    the replayed examples only (nothing counted twice), scoring uses the new base per row, and
    the sequence keeps counting stream examples."""
    from models.base import BaseModel

    rng = np.random.default_rng(5)
    dim, m = 64, 400
    idx = np.sort(rng.choice(dim, size=(m, 4)), axis=1)
    vals = rng.random((m, 4)).astype(np.float32)
    y = (rng.random(m) < 0.3).astype(float)
    base = BaseModel.zeros(dim, embedding=2, hidden=3, bias=-0.5)
    base.wide[:] = rng.normal(size=dim).astype(np.float32)
    cfg = OnlineConfig(ftrl=FTRLParams(l1=0.0), guard=GuardConfig(enabled=False))  # the layer's arithmetic
    layer = OnlineLayer(cfg, dim, "f")
    layer.learn_batch(np.arange(m), idx, vals, y, np.ones(m), np.arange(m))
    assert layer.ftrl.updates == m and layer.base_version == "prior"

    tail = slice(300, m)  # the examples after the new base's training data
    replay = {"resolution_time": np.arange(m)[tail], "indices": idx[tail], "values": vals[tail], "label": y[tail],
              "weight": np.ones(m)[tail]}
    assert layer.swap_base(base, "v1", replay) == 100
    assert layer.ftrl.updates == m and layer.base_version == "v1"

    fresh = FTRL(cfg.ftrl, dim)
    fresh.learn_batch(idx[tail], vals[tail], y[tail], base.logits(idx[tail], vals[tail]))
    np.testing.assert_allclose(layer.ftrl.weights(), fresh.weights(), rtol=0, atol=1e-12)

    s = layer.score_batch(idx[:5], vals[:5], ["u"] * 5)
    np.testing.assert_allclose(s["base_logit"], base.logits(idx[:5], vals[:5]))
    expect = 1 / (1 + np.exp(-(base.logits(idx[:5], vals[:5]) + fresh.predict_logits(idx[:5], vals[:5]))))
    np.testing.assert_allclose(s["p"], expect, rtol=1e-9)
    with pytest.raises(ValueError, match="dimension"):
        layer.swap_base(BaseModel.zeros(dim + 1), "v2", replay)


def _ex(rows):
    """Columns of (resolution_time, event_time, feature index, label) rows, one feature each."""
    r = np.array(rows, np.int64)
    return r[:, 0], r[:, 1], r[:, 2:3], np.ones((len(r), 1), np.float32), r[:, 3].astype(float)


def test_positives_wait_for_their_window_after_the_start():
    """The wait policy's start-up bias: for one window after a fresh start, a positive whose
    window is open is recorded at arrival (sequence number, prediction) but its gradient is
    applied only once its window has closed, with its negatives. Without the hold the first
    steps see positives only."""
    W = 100
    cfg = OnlineConfig(ftrl=FTRLParams(alpha=0.5, l1=0.0))
    layer = OnlineLayer(cfg, 4, "f", window_ms=W)
    res, et, idx, vals, y = _ex([(10, 0, 1, 1)])
    u = layer.learn_batch(res, idx, vals, y, np.ones(1), et + W)
    assert u["seq"].tolist() == [1] and layer.ftrl.updates == 1 and layer.held == 1
    assert not layer.ftrl.z.any()  # recorded, not applied
    # the impression's sibling resolves negative when the window closes: the positive first
    res2, et2, idx2, vals2, y2 = _ex([(100, 0, 1, 0)])
    layer.learn_batch(res2, idx2, vals2, y2, np.ones(1), et2 + W)
    assert layer.held == 0 and layer.ftrl.updates == 2
    # the same as learning the positive at its window close, then the negative
    ref = OnlineLayer(cfg, 4, "f")
    ref.learn_batch(np.array([100, 100]), np.vstack([idx, idx2]), np.vstack([vals, vals2]), np.array([1.0, 0.0]),
                    np.ones(2), np.array([100, 100]))
    np.testing.assert_array_equal(layer.ftrl.z, ref.ftrl.z)
    np.testing.assert_array_equal(layer.ftrl.n, ref.ftrl.n)
    assert layer.base_logit() == ref.base_logit()
    # a window after the start, positives are learned when they arrive again
    res3, et3, idx3, vals3, y3 = _ex([(150, 140, 2, 1)])
    layer.learn_batch(res3, idx3, vals3, y3, np.ones(1), et3 + W)
    assert layer.held == 0 and layer.ftrl.z[2] != 0
    # off: nothing is held
    off = OnlineLayer(OnlineConfig(ftrl=FTRLParams(l1=0.0), hold_after_reset=False), 4, "f", window_ms=W)
    off.learn_batch(res, idx, vals, y, np.ones(1), et + W)
    assert off.held == 0 and off.ftrl.z[1] != 0


def test_rebase_holds_the_positives_of_open_windows():
    """At a swap, the replayed positives whose window is still open are held until it closes
    (their negatives are not in the buffer yet); the rest is re-learned at once."""
    from models.base import BaseModel

    W = 100
    cfg = OnlineConfig(ftrl=FTRLParams(alpha=0.5, l1=0.0))
    rows = [(100, 0, 0, 0), (120, 20, 1, 0), (150, 130, 2, 1), (160, 140, 3, 0), (170, 150, 1, 1)]
    res, et, idx, vals, y = _ex(rows)  # at 180: windows of 130 and 150 are open (close 230, 250)
    layer = OnlineLayer(cfg, 8, "f", window_ms=W)
    layer.learn_batch(res, idx, vals, y, np.ones(5), et + W)
    base = BaseModel.zeros(8, bias=-1.0)
    replay = {"resolution_time": res, "indices": idx, "values": vals, "label": y, "weight": np.ones(5),
              "event_time": et}
    assert layer.swap_base(base, "v1", replay, at=180) == 5
    assert layer.held == 2 and layer.hold_until == 180 + W and layer.ftrl.updates == 5
    now = np.array([0, 1, 3])
    ref = OnlineLayer(cfg, 8, "f")
    ref.swap_base(base, "v1", {k: v[now] for k, v in replay.items()})
    np.testing.assert_array_equal(layer.ftrl.z, ref.ftrl.z)
    # a batch that reaches 230 applies the first held positive only, before the batch
    r2, e2, i2, v2, y2 = _ex([(230, 130, 4, 0)])
    layer.learn_batch(r2, i2, v2, y2, np.ones(1), e2 + W)
    assert layer.held == 1 and layer.ftrl.z[2] != 0 and layer.ftrl.z[1] == ref.ftrl.z[1]


def test_float32_state_halves_memory_and_stays_close():
    """``FTRLParams.precision="float32"``: 8 bytes per coordinate instead of 16; the compiled
    kernel and the one-at-a-time path round the same way; the weights stay close to float64's;
    snapshots keep the precision."""
    rng = np.random.default_rng(3)
    m, dim = 3_000, 256
    idx = np.array([rng.choice(dim, size=6, replace=False) for _ in range(m)])  # distinct per event
    x = rng.random((m, 6))
    y = (rng.random(m) < 0.2).astype(float)
    runs = {}
    for prec in ("float64", "float32"):
        params = FTRLParams(alpha=0.1, l1=0.5, precision=prec)
        batch, one = FTRL(params, dim), FTRL(params, dim)
        batch.learn_batch(idx, x, y, np.zeros(m))
        for j in range(m):
            one.learn_one(idx[j], x[j], y[j])
        assert batch.z.dtype == np.dtype(prec) and batch.z.nbytes + batch.n.nbytes == dim * (16 if prec == "float64" else 8)
        np.testing.assert_allclose(batch.weights(), one.weights(), rtol=0, atol=1e-9)
        runs[prec] = batch
    diff = np.abs(runs["float32"].weights() - runs["float64"].weights())
    assert 0 < diff.max() < 1e-3
    back = FTRL.from_bytes(runs["float32"].to_bytes())
    assert back.params.precision == "float32" and back.z.tobytes() == runs["float32"].z.tobytes()
    with pytest.raises(ValueError, match="precision"):
        FTRLParams(precision="float16")


def test_weight_norm_follows_every_update():
    """The guard's norm is kept incrementally (only touched coordinates refreshed): it must
    equal the norm recomputed from all weights after batches, single steps, new parameters
    and a pickle round trip (a checkpoint drops the cache)."""
    import pickle

    rng = np.random.default_rng(3)
    m = FTRL(FTRLParams(alpha=0.3, l1=0.5), 1_000)

    def full() -> float:
        return float(np.linalg.norm(m.weights()))

    assert m.weight_norm() == 0.0
    for step in range(30):
        idx = np.stack([rng.choice(1_000, 5, replace=False) for _ in range(20)])
        m.learn_batch(idx, rng.normal(size=(20, 5)), rng.integers(0, 2, 20).astype(float), np.zeros(20))
        if step % 7 == 0:
            m.learn_one(idx[0], np.ones(5), 1)
        if step == 15:
            m.params = FTRLParams(alpha=0.1, l1=0.2)  # a changed build's rates: every weight moves
        if step == 20:
            m = pickle.loads(pickle.dumps(m))
            assert "_w2" not in m.__dict__
        assert m.weight_norm() == pytest.approx(full(), rel=1e-12)
    assert full() > 0
