"""`driftline evaluate` end to end on the generator: events -> Beam backfill -> TFX retrains at
each period boundary (LocalDagRunner) -> the four strategies replayed on the same impressions."""
import json

import numpy as np
from typer.testing import CliRunner

from runners.cli import app


def test_evaluate_compares_the_strategies_on_the_same_impressions(tmp_path):
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["evaluate", "--data", "generator", "--events", "8000", "--seed", "5",
                                 "--period", "1h", "--window-ms", "600000", "--eval-hours", "0.25",
                                 "--bootstrap", "20", "--out", str(out)])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["swaps"] and s["swaps"][0]["live_at"] == s["evaluated_from"]
    preds = {n: np.load(out / "predictions" / f"{n}.npz") for n in ("static", "periodic", "online", "hybrid")}
    n = s["impressions"]
    assert n > 7_000 and all(len(p["p"]) == n for p in preds.values())
    t = preds["static"]["event_time"]
    first = s["swaps"][0]["version"]
    live = t >= s["evaluated_from"]
    # online only never has a base model; the others serve the first one from its boundary
    assert set(preds["online"]["base_version"]) == {"prior"}
    for name in ("static", "periodic", "hybrid"):
        assert set(preds[name]["base_version"][~live]) == {"prior"}
        assert preds[name]["base_version"][live][0] == first
    assert set(preds["static"]["base_version"][live]) == {first}
    same = preds["periodic"]["base_version"] == first
    np.testing.assert_array_equal(preds["static"]["p"][same], preds["periodic"]["p"][same])
    overall = s["periods"][0]
    assert overall["period"] == "all evaluated"
    for m in overall["strategies"].values():
        assert m["n"] == int(live.sum()) and 0 < m["logloss"] < 1 and 0 < m["auc"] < 1
    for vs in ("static", "periodic", "online"):
        ci = overall["hybrid_vs"][vs]["logloss"]
        assert ci["low"] <= ci["diff"] <= ci["high"] and ci["resamples"] > 0
    assert sum(w["n"] for w in s["over_time"]["hybrid"]) == int(live.sum())
    assert "hybrid" in r.output and "logloss" in r.output
