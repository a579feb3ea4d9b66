"""Progressive replay (pipelines.progressive): no label is used before it arrived, base models
serve from their live time, and the replay serves what the streaming job serves (that check is
in tests/test_stream_job.py, on the job's own output)."""
import json

import numpy as np
import pytest

from models.base import BaseModel
from models.ftrl import FTRLParams
from models.online import OnlineConfig
from pipelines.progressive import BaseSwap, Examples, Strategy, replay

W = 10**9  # negatives resolve long after the stream: only planted labels arrive in it
ONLINE = OnlineConfig(ftrl=FTRLParams(l1=0.0))


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


@pytest.mark.parametrize("tick_ms", [1, 60_000])
def test_a_planted_label_is_never_used_before_it_arrives(tick_ms):
    label_time = 120_500
    run = {y: replay(Examples.from_rows(_rows(y, label_time)), Strategy("online", online=ONLINE), dimension=32,
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
    # rebased: the delta re-learned the planted positive on the new residual (p was -2 there)
    fresh = replay(ex, Strategy("fresh", swaps=(BaseSwap(0, "000000000001", swap.model, 0),), online=ONLINE),
                   dimension=32, window_ms=W, tick_ms=1)
    np.testing.assert_allclose(out.delta_logit[live], fresh.delta_logit[live], rtol=0, atol=1e-12)


def test_examples_out_of_learning_order_are_refused():
    rows = _rows(1, 50_500)[::-1]
    with pytest.raises(ValueError, match="learning order"):
        replay(Examples.from_rows(rows), Strategy("online"), dimension=32, window_ms=W, tick_ms=1)
