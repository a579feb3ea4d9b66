"""A/B analysis (models/ab.py, runners.stream.ab_report): the unit bootstrap's intervals and
the report's honesty when units cannot be recovered. The real job's two-arm run is analysed in
tests/test_stream_job.py."""
import numpy as np


def test_the_ab_interval_resamples_units_not_impressions():
    """Two arms served the same model: the difference's interval covers zero, and because one
    unit's impressions share its rate, resampling units gives a wider (honest) interval than
    resampling impressions as if they were independent."""
    from models.ab import arm_difference

    rng = np.random.default_rng(5)
    units = np.repeat(np.arange(300), 40)
    rate = rng.beta(0.5, 5.0, 300)[units]  # rates differ a lot between units
    y = (rng.random(len(units)) < rate).astype(float)
    p = np.full(len(units), y.mean())
    in_a = units % 2 == 0
    by_unit = arm_difference(units.astype(str), y, p, in_a, "logloss", n=300)
    by_row = arm_difference(np.arange(len(units)).astype(str), y, p, in_a, "logloss", n=300)
    assert by_unit["low"] < 0 < by_unit["high"] and by_unit["units"] == [150, 150]
    assert by_unit["diff"] == by_row["diff"]
    assert by_unit["high"] - by_unit["low"] > 2 * (by_row["high"] - by_row["low"])


def test_the_ab_report_says_when_it_cannot_recover_units(tmp_path):
    """A source whose unit field is not among the model's inputs: impressions stand in for
    units, and the arms cannot be rechecked (None, not a count of false mismatches)."""
    import json

    from runners.stream import ab_report

    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "_manifest.json").write_text(json.dumps({"source": {"entity_fields": ["account"]}}))
    (tmp_path / "job.json").write_text(json.dumps({"event_dir": str(tmp_path / "ev"), "online": {"hybrid_share": 0.5}}))
    rng = np.random.default_rng(0)
    preds, examples = [], []
    for i in range(400):
        arm = "hybrid" if i % 2 else "base"
        preds.append({"event_id": f"e{i}", "event_time": i, "p": float(rng.uniform(0.1, 0.9)), "base_logit": 0.0,
                      "arm": arm, "served": "hybrid" if arm == "hybrid" else "base_only", "base_version": "prior"})
        examples.append({"event_id": f"e{i}", "kind": "label", "label": int(rng.random() < 0.5),
                         "inputs": json.dumps({"site": "s1"})})
    for name, rows in (("predictions", preds), ("examples", examples)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "part-0").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = ab_report(tmp_path, n=20)
    assert r["unit"] == "event_id (account is not among the inputs)" and r["arms_check"]["mismatched"] is None
    assert r["arms"]["hybrid"]["units"] == r["arms"]["hybrid"]["n"] == 200
