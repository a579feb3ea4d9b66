"""Progressive replay (pipelines.progressive): no label is used before it arrived, base models
serve from their live time, and the replay serves what the streaming job serves (that check is
in tests/test_stream_job.py, on the job's own output)."""
import json
from dataclasses import replace

import numpy as np
import pytest

from models.base import BaseModel
from models.ftrl import FTRLParams
from models.guard import GuardConfig
from models.online import OnlineConfig
from pipelines.progressive import BaseSwap, Examples, Strategy, replay

W = 10**9  # negatives resolve long after the stream: only planted labels arrive in it
ONLINE = OnlineConfig(ftrl=FTRLParams(l1=0.0), guard=GuardConfig(enabled=False))  # the replay itself


def _rows(planted_label: int, label_time: int) -> list[dict]:
    """200 impressions one second apart sharing feature 3; impression p-0 gets a label at
    ``label_time`` (1 planted, or 0)."""
    rows = []
    for i in range(200):
        t = i * 1_000
        if i == 0:
            rows.append({"event_id": "p-0", "event_time": t, "resolution_time": label_time, "label": planted_label,
                         "label_time": label_time, "kind": "label", "weight": 1.0})
        else:
            rows.append({"event_id": f"n-{i}", "event_time": t, "resolution_time": t + W, "label": 0,
                         "label_time": None, "kind": "expired", "weight": 1.0})
    for r in rows:
        r["features"] = json.dumps({"indices": [3, 10 + int(r["event_time"] // 1_000) % 5], "values": [1.0, 1.0]})
    return sorted(rows, key=lambda r: (r["resolution_time"], r["event_id"]))


@pytest.mark.parametrize("feedback", ["wait", "fake_negative", "fnw"])
@pytest.mark.parametrize("tick_ms", [1, 60_000])
def test_a_planted_label_is_never_used_before_it_arrives(tick_ms, feedback):
    label_time = 120_500
    strategy = Strategy("online", online=ONLINE, feedback=feedback, replay_mix=0.5 if feedback == "fnw" else 0.0)
    run = {y: replay(Examples.from_rows(_rows(y, label_time)), strategy, dimension=32,
                     window_ms=W, tick_ms=tick_ms) for y in (0, 1)}
    t = run[1].event_time
    before = t // tick_ms <= label_time // tick_ms  # scored before (or in) the label's tick
    assert before.any() and (~before).any()
    np.testing.assert_array_equal(run[1].p[before], run[0].p[before])
    assert np.all(run[1].p[~before] > run[0].p[~before])  # and used once it arrived
    assert run[1].label[list(run[1].event_id).index("p-0")] == 1


def test_base_models_serve_from_their_live_time_and_the_delta_is_rebased():
    rows = _rows(1, 50_500)
    swap = BaseSwap(live_at=100_000, version="000000000001", model=BaseModel.zeros(32, bias=-2.0), train_end=0)
    ex = Examples.from_rows(rows)
    out = replay(ex, Strategy("hybrid", swaps=(swap,), online=ONLINE), dimension=32, window_ms=W, tick_ms=1)
    live = out.event_time >= swap.live_at
    assert set(np.array(out.base_version)[~live]) == {"prior"}
    assert set(np.array(out.base_version)[live]) == {"000000000001"}
    np.testing.assert_array_equal(out.base_logit[live], -2.0)
    # base only: the same base logits, no delta served
    base_only = replay(ex, Strategy("periodic", swaps=(swap,), serve_delta=False, online=ONLINE), dimension=32,
                       window_ms=W, tick_ms=1)
    np.testing.assert_allclose(base_only.p[live], 1 / (1 + np.exp(2.0)))
    # rebased: the delta re-learned the planted positive on the new residual (p was -2 there),
    # as if that base had served from the start (without the hold after a reset, which by design
    # treats a reset at 0 and at the swap differently)
    nohold = replace(ONLINE, hold_after_reset=False)
    out = replay(ex, Strategy("hybrid", swaps=(swap,), online=nohold), dimension=32, window_ms=W, tick_ms=1)
    fresh = replay(ex, Strategy("fresh", swaps=(BaseSwap(0, "000000000001", swap.model, 0),), online=nohold),
                   dimension=32, window_ms=W, tick_ms=1)
    np.testing.assert_allclose(out.delta_logit[live], fresh.delta_logit[live], rtol=0, atol=1e-12)


def test_examples_out_of_learning_order_are_refused():
    rows = _rows(1, 50_500)[::-1]
    with pytest.raises(ValueError, match="learning order"):
        replay(Examples.from_rows(rows), Strategy("online"), dimension=32, window_ms=W, tick_ms=1)


def _constant_rate_rows(n: int = 6_000, rate: float = 0.3, seed: int = 1) -> list[dict]:
    """One feature, a constant conversion rate, labels 0-120 s late, window 600 s."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        t = i * 1_000
        if rng.random() < rate:
            lt = t + int(rng.integers(0, 120_000))
            rows.append({"event_id": f"e{i}", "event_time": t, "resolution_time": lt, "label": 1, "label_time": lt,
                         "kind": "label", "weight": 1.0})
        else:
            rows.append({"event_id": f"e{i}", "event_time": t, "resolution_time": t + 600_000, "label": 0,
                         "label_time": None, "kind": "expired", "weight": 1.0})
        rows[-1]["features"] = json.dumps({"indices": [1], "values": [1.0]})
    return sorted(rows, key=lambda r: (r["resolution_time"], r["event_id"]))


def test_fake_negatives_bias_the_rate_low_and_fake_negative_weighting_corrects_it():
    ex = Examples.from_rows(_constant_rate_rows(20_000))
    online = OnlineConfig(ftrl=FTRLParams(alpha=0.05, l1=0.0, l2=0.0), prior_rate=0.3, guard=ONLINE.guard)
    mean = {}
    for fb in ("wait", "fake_negative", "fnw"):
        out = replay(ex, Strategy(fb, online=online, feedback=fb), dimension=4, window_ms=600_000, tick_ms=1_000)
        mean[fb] = float(out.p[-2_000:].mean())
    truth = float(ex.label.mean())  # 0.30
    assert abs(mean["fake_negative"] - truth / (1 + truth)) < 0.01  # learns p / (1 + p): 0.23
    assert abs(mean["fnw"] - truth) < 0.01 and abs(mean["wait"] - truth) < 0.01


def test_replay_mixing_is_seeded_and_leaves_the_update_sequence_alone():
    ex = Examples.from_rows(_constant_rate_rows(2_000))
    run = lambda mix, seed: replay(ex, Strategy("h", online=ONLINE, replay_mix=mix, seed=seed, replay_capacity=300),  # noqa: E731
                                   dimension=4, window_ms=600_000, tick_ms=1_000)
    a, b, c, plain = run(1.0, 0), run(1.0, 0), run(1.0, 1), run(0.0, 0)
    np.testing.assert_array_equal(a.p, b.p)
    assert not np.array_equal(a.p, c.p) and not np.array_equal(a.p, plain.p)
    np.testing.assert_array_equal(a.delta_version, plain.delta_version)
