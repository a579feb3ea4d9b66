"""Generator properties: determinism, delays as configured, real drift, configured dirt."""
import hashlib
import json

import numpy as np
import pyarrow.compute as pc
import pytest

from pipelines.events import GENERATOR, IMPRESSION, LABEL
from pipelines.eventlog import read_stream
from pipelines.sources.generator import (MALFORMED_CLASSES, DelayComponent, GeneratorConfig,
                                         delay_quantile, generate)
from pipelines.validate import Validator
from runners.local import generate_event_dir


def tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_same_seed_same_bytes(tmp_path, fmt):
    cfg = GeneratorConfig(events=3_000, seed=11)
    generate_event_dir(tmp_path / "a", cfg, fmt, rows_per_file=1_000)
    generate_event_dir(tmp_path / "b", cfg, fmt, rows_per_file=1_000)
    generate_event_dir(tmp_path / "c", GeneratorConfig(events=3_000, seed=12), fmt, rows_per_file=1_000)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


@pytest.fixture(scope="module")
def big():
    cfg = GeneratorConfig(events=60_000, seed=3, base_ctr=0.2, malformed_rate=0.03,
                          out_of_order_rate=0.05, duplicate_rate=0.02)
    return cfg, generate(cfg)


def test_label_delay_quantiles_match_the_configured_mixture(big):
    cfg, s = big
    t = s.truth.filter(pc.equal(s.truth["clicked"], 1))
    delay_s = (np.asarray(t["label_time"]) - np.asarray(t["event_time"])) / 1000
    assert len(delay_s) > 5_000
    for q in (0.25, 0.5, 0.75, 0.9, 0.99):
        want = delay_quantile(cfg, q)
        got = np.quantile(delay_s, q)
        assert abs(np.log(got / want)) < 0.12, (q, got, want)
    # heavy tail: some positives arrive after a 1 h attribution window
    assert 0.03 < np.mean(delay_s > 3600) < 0.2


def test_delay_quantile_of_a_single_lognormal():
    cfg = GeneratorConfig(delay=(DelayComponent(1.0, 100.0, 0.5),))
    assert delay_quantile(cfg, 0.5) == pytest.approx(100.0, rel=1e-6)


def test_sudden_drift_changes_true_ctr(big):
    cfg, s = big
    t = s.truth
    (cut,) = s.drift_points_ms
    et = np.asarray(t["event_time"])
    ctr = np.asarray(t["true_ctr"])
    window = 3_000 * 1000  # compare the 50 min just before and after the drift point
    before, after = (et >= cut - window) & (et < cut), (et >= cut) & (et < cut + window)
    # same kind of traffic, different truth: the mean true CTR jumps at the drift point
    assert abs(np.log(ctr[after].mean() / ctr[before].mean())) > 0.1
    assert set(np.asarray(t["phase"])[before]) == {0} and set(np.asarray(t["phase"])[after]) == {1}


def test_sudden_drift_redraws_effects_for_the_same_context():
    """Two streams identical but for the drift point: the truth differs only after it."""
    a = generate(GeneratorConfig(events=20_000, seed=5, drift_points=(0.5,)))
    b = generate(GeneratorConfig(events=20_000, seed=5, drift_points=(0.99,)))
    la, lb = np.asarray(a.truth["true_logit"]), np.asarray(b.truth["true_logit"])
    half = np.asarray(a.truth["phase"]) == 0
    both_before = half & (np.asarray(b.truth["phase"]) == 0)
    assert np.allclose(la[both_before], lb[both_before])
    assert np.mean(np.abs(la[~half & (np.asarray(b.truth["phase"]) == 0)] - lb[~half & (np.asarray(b.truth["phase"]) == 0)])) > 0.3


def test_gradual_drift_and_new_items(big):
    cfg, s = big
    items = s.truth["item_id"].to_pylist()
    first = set(items[: len(items) // 4])
    late_new = [i for i in items[3 * len(items) // 4:] if i not in first]
    assert len(late_new) > 0.2 * (len(items) // 4)  # new items keep appearing
    users = s.truth["user_id"].to_pylist()
    assert len(set(users[-10_000:]) - set(users[:10_000])) > 1_000


def test_configured_rates_of_dirt(big):
    cfg, s = big
    n_lines = len(s.lines)
    assert s.counts["malformed"] == len(s.malformed)
    assert len(s.malformed) / n_lines == pytest.approx(cfg.malformed_rate, rel=0.02)
    assert {r for _, r in s.malformed} == {c.value for c in MALFORMED_CLASSES}
    n = cfg.events
    for k, rate in (("displaced", cfg.out_of_order_rate), ("duplicate_impressions", cfg.duplicate_rate)):
        sd = np.sqrt(rate * (1 - rate) / n)
        assert abs(s.counts[k] / n - rate) < 4 * sd, k


def test_planted_malformed_lines_get_exactly_their_reasons(big):
    cfg, s = big
    v = Validator(GENERATOR)
    want = dict(s.malformed)
    for i, line in enumerate(s.lines):
        kind, rec = v.parse_line(line, f"g:{i}")
        if i in want:
            assert kind is None and rec["reason"] == want[i], (i, line[:200])
        else:
            assert kind in (IMPRESSION, LABEL), (i, rec)


def test_disorder_is_bounded_and_event_dir_reconciles(tmp_path):
    cfg = GeneratorConfig(events=20_000, seed=9, out_of_order_rate=0.1, max_disorder_ms=30_000)
    m = generate_event_dir(tmp_path, cfg)
    c = m["counts"]
    assert c["reconciles"] and c["input"] == m["generator_counts"]["lines"]
    imps = read_stream(tmp_path, IMPRESSION)
    et = np.asarray(imps["event_time"])
    lateness = np.maximum.accumulate(et) - et
    assert lateness.max() <= cfg.max_disorder_ms
    assert (lateness > 0).mean() > 0.05  # disorder really happens
    assert imps.num_rows == cfg.events + m["generator_counts"]["duplicate_impressions"]
    labels = read_stream(tmp_path, LABEL)
    assert labels.num_rows == m["generator_counts"]["labels"] + m["generator_counts"]["duplicate_labels"]
    truth = json.loads((tmp_path / "ground_truth" / "truth.json").read_text())
    assert truth["drift_points_ms"] and (tmp_path / "ground_truth" / "impressions.parquet").is_file()
    assert read_stream(tmp_path, "dead_letter").num_rows == c["dead_letter_total"] == len(truth["malformed"])
    raw_lines = sum(len(p.read_bytes().splitlines()) for p in (tmp_path / "raw").glob("part-*"))
    assert raw_lines == c["input"]
