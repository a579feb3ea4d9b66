"""Feature-drift monitoring in the real streaming job: on a generated stream with a planted
sudden covariate shift (site popularity reshuffled, device types swapped), the alert fires
within a bounded number of impressions after the shift, and not before it."""
import json
from dataclasses import replace

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
    alerts = [s for s in summary["swaps"] if s["outcome"] == "feature_drift_alert"]
    started = [s for s in alerts if s["cutoff"] is not None]
    # one retrain for the shift, at the end of the tick that raised the first alert (ticks:
    # 60 s); the other features' alerts of the same shift fall in the cooldown (6 h)
    assert len(started) == 1 and started[0]["cutoff"] >= shift and started[0]["alerting"]
    assert 0 <= started[0]["cutoff"] - first["at"] < 60_000
    assert len(alerts) > 1 and all(a["retrain"] == "cooldown" for a in alerts if a["cutoff"] is None)
    assert [r["cutoff"] for r in summary["retrains"]] == [started[0]["cutoff"]]
    assert summary["retrains"][0]["status"] == "skipped"  # it ran, on too small a span
    assert set(summary["base_versions"]) == {"prior"}


K, E = 0.5, 0.25  # hours: the retrain's train and eval spans
DELAY = JOIN.window_ms + int((E + K) * 3_600_000)  # the train split then starts at the alert


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """The whole loop on a longer stream: alert, a retrain DELAY later (its train split all
    after the alert), a real TFX retrain, the swap, the monitor against the new model."""
    root = tmp_path_factory.mktemp("drift_loop")
    generate_event_dir(root / "ev", replace(GEN, events=9_000))
    drift = {"window": WINDOW, "step": 100, "min_reference": 300, "retrain": True}
    summary = run_stream(root / "ev", root / "run", "generator", JOIN, feature_drift=drift,
                         retrain={"train_hours": K, "eval_hours": E, "min_examples": 200}, swap_delay_ms=300_000,
                         replay_buffer_ms=7_200_000, triggered_retrain_delay_ms=DELAY)
    truth = json.loads((root / "ev" / "ground_truth" / "truth.json").read_text())
    return root / "run", summary, truth["drift_points_ms"][0]


def test_a_delayed_retrain_learns_the_shifted_traffic_and_its_reference_clears_the_alerts(loop):
    from models.registry import Registry

    run_dir, summary, shift = loop
    assert summary["reconciliation"]["reconciles"]
    alerts = [s for s in summary["swaps"] if s["outcome"] == "feature_drift_alert"]
    first = alerts[0]
    assert first["alert_at"] >= shift and first["retrain_due"] == first["alert_at"] + DELAY
    assert {a["retrain_due"] for a in alerts} == {first["retrain_due"]}  # one retrain for the shift
    (started,) = [s for s in summary["swaps"] if s["outcome"] == "retrain_started"]
    assert started["alert_at"] == first["alert_at"] and 0 <= started["cutoff"] - first["retrain_due"] < 60_000
    (o,) = summary["retrains"]
    assert o["cutoff"] == started["cutoff"] and o["pushed"], o
    manifest = Registry(run_dir / "registry").verify("base", o["version"]).manifest
    assert manifest["train_range"][0] >= shift  # trained on the shifted traffic only
    (live,) = [s for s in summary["swaps"] if s["outcome"] == "live"]
    assert live["version"] == o["version"] and live["feature_reference"] == manifest["feature_reference"]["n"]
    # every feature that alerted against the artifact's span clears against the new model's
    out = sorted(read_output(run_dir, "alerts"), key=lambda a: a["at"])
    raised = {a["feature"] for a in out if a["alert"] == "feature_drift" and a["reference"] == "artifact"}
    cleared = [a for a in out if a["alert"] == "feature_drift_cleared"]
    assert raised and {a["feature"] for a in cleared} == raised
    assert all(a["reference"] == f"base {o['version']}" and a["at"] >= live["live_at"] - 60_000 for a in cleared)
    # nothing alerts against the new model: with hard value bins the windowed count did (PSI
    # 0.274), a heavy-hitter user's count wobbling across the bin edge 2.0 (soft bins since)
    assert not [a for a in out if a["alert"] == "feature_drift" and a["reference"] != "artifact"]
    metrics = sorted(read_output(run_dir, "metrics"), key=lambda m: m["examples_seen"])
    assert not set(metrics[-1]["feature_drift"]["alerting"]) & raised
    # the windowed count: deferred against the artifact's span (it starts with the job: counts
    # filling), judged against the model trained 76 min in (a full hour of counts behind it)
    fd = [(2**62 if m["tick"] is None else m["tick"], m["feature_drift"]) for m in metrics  # None: the end
          if m["feature_drift"]["features"]]  # comparing (not collecting the artifact span's reference)
    assert all(f["deferred"] == ["user_count_1h"] and "user_count_1h" not in f["features"]
               for t, f in fd if t < live["live_at"])
    assert all(f["deferred"] == [] and "user_count_1h" in f["features"] for t, f in fd if t >= live["live_at"])
    assert sum(t < live["live_at"] for t, _ in fd) > 50 and sum(t >= live["live_at"] for t, _ in fd) > 5
    assert max(f["features"]["user_count_1h"]["psi"] for t, f in fd if t >= live["live_at"]) < 0.25 / 2


def _served(rng, n, sites):
    """n impressions of two features: a site slot drawn from ``sites`` (Zipf-like weights) and a
    scaled numeric value."""
    w = 1.0 / np.arange(1, len(sites) + 1)
    idx = np.stack([rng.choice(sites, n, p=w / w.sum()), np.zeros(n, np.int64)], axis=1)
    vals = np.stack([np.ones(n), rng.normal(size=n)], axis=1)
    return idx, vals


def test_a_models_reference_gives_what_the_same_impressions_give_as_the_span():
    """A reference built offline (``reference_counts``, top 200 bins kept) from the impressions
    of the artifact's span gives the same comparisons as the monitor collecting them itself."""
    from models.feature_drift import reference_counts

    rng = np.random.default_rng(1)
    cfg = DriftConfig(window=400, step=100, min_reference=500, top=50, exclude=())
    ref_idx, ref_vals = _served(rng, 2_000, np.arange(500))  # more distinct sites than kept
    idx, vals = _served(rng, 3_000, np.arange(250, 750))  # half of the sites new
    span = FeatureDrift(cfg, ["site", "x"], (0, 1_999))
    span.observe(np.arange(2_000), ref_idx, ref_vals)
    model = FeatureDrift(cfg, ["site", "x"], (-2, -1))
    assert model.use_reference(reference_counts(ref_idx, ref_vals, ["site", "x"]), "v1")
    t = np.arange(2_000, 5_000)
    a, b = span.observe(t, idx, vals), model.observe(t, idx, vals)
    assert [x["feature"] for x in a] == ["site"]  # the new sites: an alert
    strip = ("reference", "impressions_since_reference")
    assert [{k: v for k, v in x.items() if k not in strip} for x in a] == \
        [{k: v for k, v in x.items() if k not in strip} for x in b]
    assert span.last == model.last and b[0]["reference"] == "base v1" and a[0]["reference"] == "artifact"


def test_a_new_models_reference_clears_the_alert_its_data_explains():
    rng = np.random.default_rng(2)
    cfg = DriftConfig(window=400, step=100, min_reference=500, exclude=())
    m = FeatureDrift(cfg, ["site", "x"], (0, 999))
    old, new = _served(rng, 1_000, np.arange(10)), _served(rng, 4_000, np.arange(10, 20))
    m.observe(np.arange(1_000), *old)
    alerts = m.observe(np.arange(1_000, 2_000), new[0][:1_000], new[1][:1_000])
    assert [a["alert"] for a in alerts] == ["feature_drift"] and m.alerting == {"site"}
    from models.feature_drift import reference_counts

    # too small a reference, or one without a monitored feature: refused, nothing changes
    assert not m.use_reference(reference_counts(new[0][:499], new[1][:499], ["site", "x"]), "v0")
    assert not m.use_reference(reference_counts(new[0][:, :1], new[1][:, :1], ["site"]), "v0")
    assert m.reference == "artifact"
    # the model retrained on the new traffic: its reference explains it, the alert clears
    assert m.use_reference(reference_counts(new[0][1_000:3_000], new[1][1_000:3_000], ["site", "x"]), "v2")
    cleared = m.observe(np.arange(2_000, 2_100), new[0][3_000:3_100], new[1][3_000:3_100])
    assert [(a["alert"], a["feature"], a["reference"]) for a in cleared] == [("feature_drift_cleared", "site", "base v2")]
    assert m.alerting == set() and m.metrics()["reference"] == "base v2" and m.metrics()["reference_n"] == 2_000
    # and the old traffic, back, is drift against the new reference
    back = m.observe(np.arange(2_100, 2_500), *(_served(rng, 400, np.arange(10))))
    assert [a["feature"] for a in back if a["alert"] == "feature_drift"] == ["site"]


def test_a_models_reference_starts_a_monitor_the_artifact_span_left_silent():
    from models.feature_drift import reference_counts

    rng = np.random.default_rng(3)
    m = FeatureDrift(DriftConfig(window=200, step=100, min_reference=500, exclude=()), ["site", "x"], (0, 99))
    idx, vals = _served(rng, 1_000, np.arange(20))
    assert m.observe(np.arange(1_000), idx, vals) == [] and not m.cfg.enabled  # 100 < 500: silent
    assert m.use_reference(reference_counts(idx, vals, ["site", "x"]), "v1")
    moved = m.observe(np.arange(1_000, 1_400), idx[:400] + np.array([100, 0]), vals[:400])
    assert [a["feature"] for a in moved] == ["site"] and m.last["x"]["psi"] < 0.25


def test_the_run_report_shows_the_loop(loop, tmp_path):
    """``driftline report RUN_DIR`` on a streaming run: one self-contained HTML file with the
    counts, the figures, the drift reference switching at the swap, the delayed retrain and the
    cleared alerts."""
    import re

    from typer.testing import CliRunner

    from runners.cli import app

    run_dir, summary, _ = loop
    r = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    doc = (tmp_path / "r.html").read_text()
    assert doc.count('src="data:image/png;base64,') == 4 and not re.search(r"<script|src=\"http|href=", doc)
    assert f"<td>{summary['counts']['predictions']:,}</td>" in doc and "<td>yes</td>" in doc  # reconciles
    version = summary["retrains"][0]["version"]
    refs = re.findall(r"<tr><td>[^<]*</td><td>(artifact|base \d+)</td><td>\d+</td></tr>", doc)
    assert refs == ["artifact", f"base {version}"]
    assert "retrain_started" in doc and doc.count("<td>feature_drift_cleared</td>") == 4


def test_a_windowed_count_is_judged_only_against_a_reference_with_full_windows():
    """A count over the last ``w`` ms of events starts empty with the job: against a reference
    span that starts with the job (its windows filling) it would alert on traffic that has not
    changed. It is deferred until a reference whose span starts ``w`` after the first impression."""
    import pickle

    from models.feature_drift import reference_counts

    def traffic(n, count_slot, sites=np.arange(5)):
        idx = np.stack([np.resize(sites, n), np.full(n, count_slot)], axis=1)
        return idx, np.ones((n, 2))

    cfg = DriftConfig(window=400, step=100, min_reference=500, min_bin_count=1, exclude=())
    m = FeatureDrift(cfg, ["site", "cnt"], (0, 999), warmup={"cnt": 100})
    naive = FeatureDrift(cfg, ["site", "cnt"], (0, 999))
    filling, full = traffic(1_000, 1), traffic(1_000, 2)  # low counts while the windows fill
    for x in (m, naive):
        assert x.observe(np.arange(1_000), *filling) == []
    assert [a["feature"] for a in naive.observe(np.arange(1_000, 2_000), *full)] == ["cnt"]  # a false alarm
    assert m.observe(np.arange(1_000, 2_000), *full) == []
    assert m.metrics()["deferred"] == ["cnt"] and "cnt" not in m.last and "site" in m.last
    # a model trained from t=50 (windows still filling): accepted for the site, the count stays deferred
    assert m.use_reference({**reference_counts(*full, ["site", "cnt"]), "train_range": [50, 999]}, "v1")
    assert m.observe(np.arange(2_000, 2_100), *traffic(100, 3)) == [] and m.deferred == {"cnt"}
    # a model without the count in its reference: also accepted, the count deferred
    assert m.use_reference({**reference_counts(full[0][:, :1], full[1][:, :1], ["site"]),
                            "train_range": [1_000, 2_000]}, "v2") and m.deferred == {"cnt"}
    # a model trained from t=1000 (full windows): the count is judged, and its shift alerts
    assert m.use_reference({**reference_counts(*full, ["site", "cnt"]), "train_range": [1_000, 2_000]}, "v3")
    assert m.deferred == set() and m.metrics()["deferred"] == []
    restored = pickle.loads(pickle.dumps(m))
    shifted = traffic(400, 3)
    got = m.observe(np.arange(2_100, 2_500), *shifted)
    assert [(a["feature"], a["reference"]) for a in got] == [("cnt", "base v3")]
    assert restored.observe(np.arange(2_100, 2_500), *shifted) == got  # the warm-up state is checkpointed
    # a checkpoint of a build before warm-up features restores (with none)
    old = {k: v for k, v in FeatureDrift(cfg, ["site"], (0, 9)).__getstate__().items()
           if k not in ("warmup", "first_at", "deferred")}
    back = FeatureDrift.__new__(FeatureDrift)
    back.__setstate__(old)
    assert back.warmup == {} and back.deferred == set() and back.observe(np.arange(10), np.ones((10, 1)),
                                                                           np.ones((10, 1))) == []


def test_a_heavy_hitter_at_a_value_bin_edge_does_not_alert_when_it_wobbles():
    """Soft value bins: a heavy hitter (30 % of the impressions) whose scaled value moves from
    just below the bin edge 2.0 to just above it is not drift (with hard bins its whole mass
    changed bins: PSI far above the threshold); the same hitter moving to 3.5 is."""
    from models.drift import psi
    from models.feature_drift import VALUE_EDGES

    rng = np.random.default_rng(7)

    def served(n, hitter):
        v = np.where(rng.random(n) < 0.3, hitter, rng.normal(size=n))
        return np.zeros((n, 1), np.int64), v.reshape(-1, 1)

    cfg = DriftConfig(window=2_000, step=2_000, min_reference=1_000, exclude=())
    m = FeatureDrift(cfg, ["cnt"], (0, 9_999))
    ref = served(10_000, 1.99)
    assert m.observe(np.arange(10_000), *ref) == []
    wobble = served(2_000, 2.01)
    assert m.observe(np.arange(10_000, 12_000), *wobble) == [] and m.last["cnt"]["psi"] < 0.05, m.last

    def hard(v):
        h = np.bincount(np.searchsorted(VALUE_EDGES, v.ravel(), side="right"), minlength=len(VALUE_EDGES) + 1)
        return h / h.sum()

    assert psi(hard(ref[1]), hard(wobble[1])) > 1.0  # what hard bins made of the same wobble
    moved = m.observe(np.arange(12_000, 14_000), *served(2_000, 3.5))
    assert [a["feature"] for a in moved] == ["cnt"] and moved[0]["psi"] > 0.25


def test_a_monitor_from_a_checkpoint_before_soft_bins_goes_on():
    """State pickled by a build with hard value bins (no ``ring_q``): restored with its window's
    values whole, it compares and alerts as before."""
    import pickle

    rng = np.random.default_rng(3)
    idx, vals = np.zeros((3_000, 1), np.int64), rng.normal(size=(3_000, 1))
    m = FeatureDrift(DriftConfig(window=500, step=100, min_reference=500, exclude=()), ["x"], (0, 999))
    m.observe(np.arange(1_500), idx[:1_500], vals[:1_500])
    state = m.__getstate__()
    del state["ring_q"]
    old = FeatureDrift.__new__(FeatureDrift)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert old.ring_q.shape == old.ring.shape and not old.ring_q.any()
    assert old.observe(np.arange(1_500, 2_000), idx[1_500:2_000], vals[1_500:2_000]) == []
    shifted = old.observe(np.arange(2_000, 2_500), idx[2_000:2_500], vals[2_000:2_500] + 2.0)
    assert [a["feature"] for a in shifted] == ["x"]
