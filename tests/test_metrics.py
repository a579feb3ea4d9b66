"""models.metrics against scikit-learn on fixed inputs, and the paired block bootstrap."""
import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from models import metrics


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    n = 5_000
    p = rng.random(n)
    p[::7] = np.round(p[::7], 1)  # ties
    y = (rng.random(n) < p).astype(float)
    w = rng.random(n) + 0.5
    return y, p, w


def test_logloss_and_auc_match_scikit_learn(data):
    y, p, w = data
    assert metrics.logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)
    assert metrics.logloss(y, p, w) == pytest.approx(log_loss(y, p, sample_weight=w), rel=1e-12)
    assert metrics.auc(y, p) == pytest.approx(roc_auc_score(y, p), rel=1e-12)
    assert metrics.auc(y, p, w) == pytest.approx(roc_auc_score(y, p, sample_weight=w), rel=1e-12)
    assert np.isnan(metrics.auc(np.zeros(4), p[:4]))


def test_normalized_entropy_and_calibration(data):
    y, p, _ = data
    rate = y.mean()
    assert metrics.normalized_entropy(y, np.full(len(y), rate)) == pytest.approx(1.0, rel=1e-12)
    assert metrics.normalized_entropy(y, p) < 1.0
    assert metrics.calibration(y, p) == pytest.approx(p.mean() / rate, rel=1e-12)
    assert metrics.calibration(y, 2 * p) == pytest.approx(2 * metrics.calibration(y, p), rel=1e-12)


def test_by_window_partitions_the_rows(data):
    y, p, _ = data
    t = np.arange(len(y)) * 1_000
    rows = metrics.by_window(t, y, p, 600_000)
    assert sum(r["n"] for r in rows) == len(y) and rows[1]["start"] == 600_000
    assert rows[0]["logloss"] == pytest.approx(log_loss(y[:600], p[:600], labels=[0, 1]), rel=1e-12)


def test_paired_bootstrap_interval(data):
    y, p, _ = data
    t = np.arange(len(y)) * 1_000
    noisy = np.clip(p + np.random.default_rng(1).normal(0, 0.2, len(p)), 0.01, 0.99)
    b = metrics.paired_bootstrap(t, y, p, noisy, "logloss", block_ms=60_000, n=100)
    assert b["low"] <= b["diff"] <= b["high"] and b["excludes_zero"] and b["high"] < 0  # p is better
    assert b == metrics.paired_bootstrap(t, y, p, noisy, "logloss", block_ms=60_000, n=100)  # seeded
    same = metrics.paired_bootstrap(t, y, p, p, "auc", block_ms=60_000, n=50)
    assert same["diff"] == 0 and not same["excludes_zero"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_sliding_window_is_kept_sorted_and_exact(seed):
    """WindowMetrics keeps its window sorted and its losses across updates (the Learner reports
    them every tick): after every update, pickle round trip and large batch, its log loss and
    AUC equal metrics.logloss / metrics.auc of the window, bit for bit (ties included)."""
    import pickle

    from models.monitor import WindowMetrics

    rng = np.random.default_rng(seed)
    w = WindowMetrics(size=400)
    for step in range(120):
        m = int(rng.choice([0, 1, 7, 30, 90, 500]))  # 90 > size/4 and 500 > size: rebuilt
        p = np.round(rng.random(m), 2)  # many ties
        y = (rng.random(m) < p).astype(int)
        w.update(p, y, np.full(m, -1))
        if step % 17 == 5:
            w = pickle.loads(pickle.dumps(w))
            assert "_cache" not in w.__dict__
        if w.n:
            assert w.logloss() == metrics.logloss(w.y, w.p)
        if 0 < w.y.sum() < w.n:
            assert w.auc() == metrics.auc(w.y, w.p)
            assert list(w._sorted()[0]) == sorted(w.p)
    assert w.n == 400
