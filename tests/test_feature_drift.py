"""Feature-drift monitoring in the real streaming job: on a generated stream with a planted
sudden covariate shift (site popularity reshuffled, device types swapped), the alert fires
within a bounded number of impressions after the shift, and not before it."""
import json

import numpy as np
import pytest

from models.feature_drift import DriftConfig, FeatureDrift
from pipelines.join import JoinConfig
from pipelines.sources.generator import GeneratorConfig, generate
from runners.local import generate_event_dir
from runners.stream import read_output, run_stream

JOIN = JoinConfig(window_ms=600_000, late_horizon_ms=3_600_000, watermark_delay_ms=60_000)
WINDOW = 1_000
GEN = GeneratorConfig(events=6_000, seed=12, covariate_shift=True, user_growth=0.0, item_growth=0.0,
                      malformed_rate=0.0)


def test_covariate_shift_is_opt_in_and_changes_only_the_features():
    a = generate(GeneratorConfig(events=2_000, seed=3))
    b = generate(GeneratorConfig(events=2_000, seed=3, covariate_shift=True))
    c = generate(GeneratorConfig(events=2_000, seed=3))
    assert a.lines == c.lines and a.lines != b.lines
    assert a.truth.column("event_time").to_pylist() == b.truth.column("event_time").to_pylist()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    generate_event_dir(root / "ev", GEN)
    # an alert also starts an early retrain; the span is made too small to train on (the retrain
    # is then "skipped" at once, no TFX run), which is enough to see the trigger work
    drift = {"window": WINDOW, "step": 100, "min_reference": 300, "retrain": True}
    summary = run_stream(root / "ev", root / "run", "generator", JOIN, feature_drift=drift,
                         retrain={"min_examples": 10**9}, swap_delay_ms=600_000, replay_buffer_ms=7_200_000)
    truth = json.loads((root / "ev" / "ground_truth" / "truth.json").read_text())
    return root / "run", summary, truth["drift_points_ms"][0]


def test_the_alert_fires_after_the_shift_and_not_before(run):
    run_dir, summary, shift = run
    assert summary["reconciliation"]["reconciles"]
    alerts = sorted((a for a in read_output(run_dir, "alerts") if a["alert"] == "feature_drift"),
                    key=lambda a: a["at"])
    assert alerts, "no drift alert"
    assert all(a["at"] >= shift for a in alerts)  # never before the shift
    times = np.array(sorted(p["event_time"] for p in read_output(run_dir, "predictions")))
    first = alerts[0]
    after = int(((times >= shift) & (times <= first["at"])).sum())
    assert after <= WINDOW, after  # within one window of impressions after the shift
    assert {"site", "device_type"} <= {a["feature"] for a in alerts}
    assert first["psi"] > 0.25
    # the psi of every monitored feature is in the metrics output
    last = max(read_output(run_dir, "metrics"), key=lambda m: m["examples_seen"])
    assert "site" in last["feature_drift"]["features"] and "hour_of_day" not in last["feature_drift"]["features"]


def test_the_monitor_is_deterministic_and_batch_independent():
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 20, (3_000, 2))
    vals = np.where(rng.random((3_000, 2)) < 0.5, 1.0, rng.normal(size=(3_000, 2)))
    t = np.arange(3_000)
    cfg = DriftConfig(window=500, step=50, min_reference=200, exclude=())
    a, b = FeatureDrift(cfg, ["x", "y"], (0, 999)), FeatureDrift(cfg, ["x", "y"], (0, 999))
    idx[2_000:, 0] = 99  # a shift in column x
    out_a = a.observe(t, idx, vals)
    out_b = [x for s in range(0, 3_000, 137) for x in b.observe(t[s:s + 137], idx[s:s + 137], vals[s:s + 137])]
    assert out_a == out_b and [x["feature"] for x in out_a] == ["x"]
    assert 2_000 <= out_a[0]["at"] <= 2_000 + 500


def test_a_drift_alert_starts_an_early_retrain(run):
    run_dir, summary, shift = run
    first = min((a for a in read_output(run_dir, "alerts") if a["alert"] == "feature_drift"), key=lambda a: a["at"])
    started = [s for s in summary["swaps"] if s["outcome"] == "feature_drift_alert"]
    assert started and all(s["cutoff"] >= shift for s in started)
    # at the end of the tick that raised the first alert (learn ticks: 60 s)
    assert 0 <= started[0]["cutoff"] - first["at"] < 60_000 and started[0]["alerting"]
    outcomes = {r["cutoff"]: r for r in summary["retrains"]}
    assert outcomes[started[0]["cutoff"]]["status"] == "skipped"  # it ran, on too small a span
    assert set(summary["base_versions"]) == {"prior"}
