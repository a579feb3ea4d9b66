"""Windowed aggregates: the reference semantics against brute force, and Flink SQL (mini-
cluster) and Beam (DirectRunner) against each other on TalkingData and on a generated stream
with out-of-order events."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.eventlog import read_stream
from pipelines.events import GENERATOR, TALKINGDATA
from pipelines.sources.generator import GeneratorConfig
from runners.local import generate_event_dir, load_event_dir
from transforms.aggregates import add_aggregates, window_counts
from transforms.beam import backfill_event_dir
from transforms.flink_sql import aggregates_sql, interval, run_aggregates
from transforms.spec import load_spec


def brute(keys, times, w):
    return [sum(1 for k2, t2 in zip(keys, times) if k2 == k and t - w <= t2 < t) for k, t in zip(keys, times)]


@settings(max_examples=200, deadline=None)
@given(ev=st.lists(st.tuples(st.sampled_from(["a", "b", ""]), st.integers(0, 50)), max_size=60),
       w=st.integers(1, 20))
def test_reference_matches_brute_force(ev, w):
    keys = [k for k, _ in ev]
    times = [t for _, t in ev]
    if not ev:
        assert window_counts([keys], times, w).tolist() == []
        return
    assert window_counts([keys], times, w).tolist() == brute(keys, times, w)


def test_boundaries_ties_and_composite_keys():
    keys_a = ["x", "x", "x", "x", "x", "y"]
    keys_b = ["1", "1", "2", "1", "1", "1"]
    t = [0, 0, 5, 10, 11, 10]
    # window 10: [t-10, t); ties at 0 do not count each other; t=10 sees both rows at 0
    assert window_counts([keys_a], t, 10).tolist() == [0, 0, 2, 3, 2, 0]
    assert window_counts([keys_a, keys_b], t, 10).tolist() == [0, 0, 0, 2, 1, 0]
    # arrival order does not matter
    perm = [5, 3, 0, 4, 2, 1]
    assert window_counts([[keys_a[i] for i in perm]], [t[i] for i in perm], 10).tolist() == \
        [[0, 0, 2, 3, 2, 0][i] for i in perm]
    # huge key x time spaces take the per-group path and agree
    big_t = [0, 2**61, 2**61 + 5]
    assert window_counts([["k", "k", "k"]], big_t, 10).tolist() == [0, 0, 1]


def test_interval_literal():
    assert interval(3_600_000) == "INTERVAL '0 01:00:00.000' DAY TO SECOND(3)"
    assert interval(90_061_001) == "INTERVAL '1 01:01:01.001' DAY TO SECOND(3)"
    with pytest.raises(ValueError):
        interval(-1)
    assert "PARTITION BY `ip`, `app`" in aggregates_sql(load_spec("talkingdata"), "t", ["event_id"])


def _compare(spec, event_dir, source, watermark_delay_ms, tmp_path):
    names = [a.name for a in spec.aggregates]
    ref = add_aggregates(spec, read_stream(event_dir, "impression"))
    key = lambda rows: sorted(rows)  # noqa: E731  duplicates are rows too: compare multisets
    want = key(zip(ref["event_id"].to_pylist(), ref["event_time"].to_pylist(),
                   *[ref[n].to_pylist() for n in names]))
    backfill_event_dir(spec, event_dir, tmp_path / "beam.jsonl")
    beam_rows = [json.loads(x) for x in (tmp_path / "beam.jsonl").read_text().splitlines()]
    got_beam = key(tuple(r[k] for k in ["event_id", "event_time", *names]) for r in beam_rows)
    assert got_beam == want
    # the job's Java operator (WindowedCount) and Flink SQL's own OVER windows, its definition
    for engine in ("java", "sql"):
        flink = run_aggregates(spec, source, str(event_dir / "impressions"), watermark_delay_ms, engine=engine)
        got_flink = key(map(tuple, flink[["event_id", "event_time", *names]].itertuples(index=False)))
        assert len(got_flink) == len(got_beam) == len(want) == ref.num_rows, engine  # nothing lost
        assert got_flink == got_beam, engine
    return ref


def test_flink_and_beam_agree_on_talkingdata(shared_data, tmp_path):
    load_event_dir("talkingdata", tmp_path / "td", shared_data / "talkingdata/train_sample.csv")
    ref = _compare(load_spec("talkingdata"), tmp_path / "td", TALKINGDATA, 0, tmp_path)
    assert np.asarray(ref["ip_count_1h"]).max() > 10  # real bursts per ip


def test_flink_and_beam_agree_on_out_of_order_generated_stream(tmp_path):
    cfg = GeneratorConfig(events=15_000, seed=21, out_of_order_rate=0.1, max_disorder_ms=20_000,
                          rate_per_s=5.0, duplicate_rate=0.01)
    generate_event_dir(tmp_path / "g", cfg)
    imps = read_stream(tmp_path / "g", "impression")
    et = np.asarray(imps["event_time"])
    assert ((np.maximum.accumulate(et) - et) > 0).mean() > 0.05  # really out of order
    _compare(load_spec("generator"), tmp_path / "g", GENERATOR, cfg.max_disorder_ms, tmp_path)
