"""`driftline evaluate` end to end on the generator: events -> Beam backfill -> TFX retrains at
each period boundary (LocalDagRunner) -> the four strategies replayed on the same impressions."""
import json
import math

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
    names = ("static", "periodic", "online", "hybrid", "hybrid_replay", "hybrid_fn", "hybrid_fnw", "hybrid_mix",
             "hybrid_mix_online")
    preds = {n: np.load(out / "predictions" / f"{n}.npz") for n in names}
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
    for vs in names[:3] + names[4:]:
        ci = overall["hybrid_vs"][vs]["logloss"]
        assert ci["low"] <= ci["diff"] <= ci["high"] and ci["resamples"] > 0
    assert sum(w["n"] for w in s["over_time"]["hybrid"]) == int(live.sum())
    # the mixtures' expert weights when each impression was scored, and their mean per window
    for name, k in (("hybrid_mix", 5), ("hybrid_mix_online", 6)):
        w = preds[name]["mix_weights"]
        assert w.shape == (n, k) and np.allclose(w.sum(1), 1.0) and w.std(0).max() > 0  # they moved
        mw = s["mix_weights"][name]
        assert len(mw["experts"]) == k and mw["experts"][-1] == ("online expert" if k == 6 else "base + 1 delta")
        assert np.allclose(mw["over_time"][-1]["weights"], w[t >= mw["over_time"][-1]["start"]].mean(0))
    assert "mix_weights" not in preds["hybrid"]
    # each hybrid variant against the simpler options, on the same impressions
    assert set(overall["variants_vs"]) == set(names[4:])
    for v, vs in overall["variants_vs"].items():
        assert set(vs) == {"static", "periodic", "online"}
        for n, ci in vs.items():
            diff = overall["strategies"][v]["logloss"] - overall["strategies"][n]["logloss"]
            assert math.isclose(ci["diff"], diff, abs_tol=1e-12) and ci["low"] <= ci["diff"] <= ci["high"]
    assert "hybrid" in r.output and "logloss" in r.output
    # the hybrid variants serve the same base models as the hybrid; only their deltas differ
    for name in names[4:]:
        np.testing.assert_array_equal(preds[name]["base_version"], preds["hybrid"]["base_version"])
        assert not np.array_equal(preds[name]["p"], preds["hybrid"]["p"])
    print(s["tuning"]["delta_base"])
    tuned = ("online", "delta") if s["tuning"]["delta_base"]["pushed"] else ("online",)
    for part in tuned:
        t = s["tuning"][part]
        assert t["chosen"] in [{k: g[k] for k in ("alpha", "l1")} for g in t["grid"]]
        assert s[part]["ftrl"]["alpha"] == t["chosen"]["alpha"] and t["on"][1] == s["evaluated_from"]
    if "delta" in tuned:
        assert s["tuning"]["delta"]["base"].startswith("tuning-") and s["tuning"]["delta"]["on"][0] < s["evaluated_from"]
        # hybrid_mix: the delta's settings over the mixture's scales, its share chosen on period 1 too
        from pipelines.evaluate import MIX_SCALES, MIX_SHARES

        mix = s["tuning"]["mix"]
        assert [g["mix_share"] for g in mix["grid"]] == list(MIX_SHARES) and mix["on"] == s["tuning"]["delta"]["on"]
        assert s["mix"]["mix_share"] == mix["chosen"]["mix_share"] and s["mix"]["delta_scales"] == list(MIX_SCALES)
        assert s["mix"]["ftrl"] == s["delta"]["ftrl"]
        # hybrid_mix_online: the same, with online-only FTRL at online's settings as one more expert
        mo = s["tuning"]["mix_online"]
        assert [g["mix_share"] for g in mo["grid"]] == list(MIX_SHARES) and mo["on"] == mix["on"]
        assert s["mix_online"] == {**s["mix"], "mix_share": mo["chosen"]["mix_share"], "online_expert": True,
                                   "expert_ftrl": s["online"]["ftrl"]}
    else:  # no base model out of mid-period 1: the hybrids use online's choice, and the summary says why
        assert s["delta"] == s["online"] and s["tuning"]["delta_base"]["status"]
        assert s["mix"] == {**s["delta"], "delta_scales": [0.0, 0.25, 0.5, 0.75, 1.0]}  # the default share
        assert s["mix_online"] == {**s["mix"], "online_expert": True, "expert_ftrl": s["online"]["ftrl"]}
    # the tuning base model lives in a run folder of its own: never one the strategies serve
    assert not any(v.startswith("tuning-") for p in preds.values() for v in set(p["base_version"]))
    # the report: one self-contained file with every figure, rebuilt from the folder alone
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 7 and "<script" not in page and "http" not in page
    for name in names:
        assert f"<td>{name}</td>" in page
    assert "the simpler options" in page
    r = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "again.html")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "again.html").read_text().count("data:image/png;base64,") == 7


def test_tuning_looks_at_the_first_period_only():
    """Hyperparameters come from the impressions before the first boundary, learned from the
    examples resolved before it: changing any label that arrives later changes nothing."""
    import json as _json

    from pipelines.evaluate import EvalConfig, tune_online
    from pipelines.join import JoinConfig
    from pipelines.progressive import Examples

    rng = np.random.default_rng(3)
    boundary, rows = 1_000_000, []
    for i in range(2_000):
        t, y = i * 1_000, int(rng.random() < 0.2)
        res = t + 30_000 if y else t + 60_000
        rows.append({"event_id": f"e{i}", "event_time": t, "resolution_time": res, "label": y,
                     "label_time": res if y else None, "kind": "label" if y else "expired", "weight": 1.0,
                     "features": _json.dumps({"indices": [1, 2 + i % 3], "values": [1.0, 1.0]})})
    rows.sort(key=lambda r: (r["resolution_time"], r["event_id"]))
    cfg = EvalConfig(join=JoinConfig(window_ms=60_000, late_policy="correction"), tick_ms=10_000)
    base = tune_online(Examples.from_rows(rows), cfg, boundary, 8, "")
    assert base["base"] is None
    flipped = [{**r, "label": 1 - r["label"]} if r["resolution_time"] >= boundary else r for r in rows]
    assert tune_online(Examples.from_rows(flipped), cfg, boundary, 8, "") == base
    assert base["on"] == [0, boundary] and all(g["n"] == 940 for g in base["grid"])
    # the delta's tuning over a base model from mid-period 1: scored from its live time only
    from models.base import BaseModel
    from pipelines.progressive import BaseSwap

    swap = BaseSwap(live_at=boundary // 2, version="tuning-1", model=BaseModel.zeros(8, bias=-1.4), train_end=0)
    over_base = tune_online(Examples.from_rows(rows), cfg, boundary, 8, "", swap)
    assert over_base["on"] == [boundary // 2, boundary] and over_base["base"] == "tuning-1"
    assert all(g["n"] == 440 for g in over_base["grid"]) and over_base["grid"] != base["grid"]
    assert tune_online(Examples.from_rows(flipped), cfg, boundary, 8, "", swap) == over_base
    early = [{**r, "label": 1 - r["label"]} if r["resolution_time"] < boundary // 2 else r for r in rows]
    assert tune_online(Examples.from_rows(early), cfg, boundary, 8, "")["grid"] != base["grid"]
    # hybrid_mix's share: the same rule, over the same base, with the mixture's scales
    from dataclasses import replace

    from pipelines.evaluate import MIX_SCALES, MIX_SHARES

    mixed = replace(cfg.online, delta_scales=MIX_SCALES)
    grid = tuple({"mix_share": s} for s in MIX_SHARES)
    mix = tune_online(Examples.from_rows(rows), cfg, boundary, 8, "", swap, grid, mixed)
    assert [g["mix_share"] for g in mix["grid"]] == list(MIX_SHARES) and mix["chosen"]["mix_share"] in MIX_SHARES
    assert len({g["logloss"] for g in mix["grid"]}) > 1  # the share matters to the mixture
    assert tune_online(Examples.from_rows(flipped), cfg, boundary, 8, "", swap, grid, mixed) == mix


def test_an_evaluation_needs_a_folder_of_its_own(tmp_path):
    """A second run into a used folder would compete with the first run's registry: refused
    with a clear error; --overwrite replaces the folder's contents."""
    import pytest

    from pipelines.evaluate import EvalConfig, evaluate

    out = tmp_path / "used"
    (out / "registry").mkdir(parents=True)
    (out / "registry" / "stale").write_text("x")
    r = CliRunner().invoke(app, ["evaluate", "--data", "generator", "--events", "500", "--out", str(out)])
    assert r.exit_code == 1 and "is not empty" in " ".join(r.output.split()), r.output
    assert (out / "registry" / "stale").exists()
    with pytest.raises(Exception) as e:  # an unknown data source fails after the folder was cleared
        evaluate(out, EvalConfig(data=str(tmp_path / "nowhere")), overwrite=True)
    assert not isinstance(e.value, FileExistsError) and not (out / "registry").exists()
