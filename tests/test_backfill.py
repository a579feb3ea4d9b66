"""The Beam backfill's sorted outputs: sorted per bucket by Beam workers, concatenated in order.

(That the backfill's examples are the streaming job's is `tests/test_stream_job.py`.)"""
from __future__ import annotations

import json
import random

import apache_beam as beam

from pipelines.backfill import SortedFiles, backfill_examples, bucket_file, concat_sorted
from pipelines.events import GENERATOR
from pipelines.join import JoinConfig, example_order
from pipelines.sources.generator import GeneratorConfig
from runners.local import generate_event_dir
from transforms.beam import fit_event_dir
from transforms.spec import load_spec


def test_sorted_files_sort_across_buckets_and_number_in_order(tmp_path):
    rng = random.Random(5)
    rows = [{"t": rng.randrange(-50, 1000), "id": f"e{i}"} for i in range(2_000)]
    with beam.Pipeline() as p:
        counts = (p | beam.Create(rows)
                  | SortedFiles(str(tmp_path / "s"), lambda r: (r["t"], r["id"]), lambda r: r["t"] // 100, number=True))
        _ = counts | beam.CombineGlobally(sum) | beam.Map(lambda n: json.dump(n, open(tmp_path / "n", "w")))
    files = sorted((tmp_path / "s").glob("*.jsonl"))
    buckets = sorted({r["t"] // 100 for r in rows})
    assert [f.name for f in files] == [bucket_file(b) for b in buckets] and len(files) == 11  # -1 .. 9
    assert not list((tmp_path / "s").glob("*.inprogress"))
    for f in files:  # each bucket's file holds its bucket only, sorted
        got = [json.loads(line) for line in f.read_text().splitlines()]
        assert {r["t"] // 100 for r in got} == {buckets[files.index(f)]}
        assert got == sorted(got, key=lambda r: (r["t"], r["id"]))
    assert concat_sorted(tmp_path / "s", tmp_path / "all.jsonl") == len(rows) == json.load(open(tmp_path / "n"))
    got = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    want = sorted(rows, key=lambda r: (r["t"], r["id"]))
    assert got == [{**r, "seq": i} for i, r in enumerate(want, 1)]


def test_the_backfill_writes_the_same_files_for_any_bucket_size(tmp_path):
    """Hour buckets, minute buckets (hundreds of files) and one bucket for everything: the same
    bytes, in the learning order, ``seq`` 1..n; corrections, late labels and dead letters too."""
    generate_event_dir(tmp_path / "ev", GeneratorConfig(events=3_000, seed=11, duplicate_rate=0.02))
    art = fit_event_dir(load_spec("generator"), GENERATOR, tmp_path / "ev", tmp_path / "art")
    join = JoinConfig(window_ms=600_000, late_policy="correction")
    outs = {}
    for name, bucket_ms in (("hour", 3_600_000), ("minute", 60_000), ("one", 10**15)):
        counts = backfill_examples(tmp_path / "ev", art, join, tmp_path / name, bucket_ms=bucket_ms)
        outs[name] = {f: (tmp_path / name / f).read_bytes() for f in ("examples.jsonl", "late_labels.jsonl",
                                                                        "dead_letter.jsonl")}
        assert not (tmp_path / name / ".beam").exists()
    assert outs["hour"] == outs["minute"] == outs["one"]
    ex = [json.loads(line) for line in outs["hour"]["examples.jsonl"].decode().splitlines()]
    assert counts["examples"] == len(ex) and [e["seq"] for e in ex] == list(range(1, len(ex) + 1))
    assert ex == sorted(ex, key=example_order)
    assert len({e["resolution_time"] // 60_000 for e in ex}) > 50  # the minute run sorted many buckets
    assert any(e["kind"] == "correction" for e in ex)
    dead = [json.loads(line) for line in outs["hour"]["dead_letter.jsonl"].decode().splitlines()]
    assert counts["dead"] == len(dead) > 0 and len({d["reason"] for d in dead}) > 1
    assert dead == sorted(dead, key=lambda r: (r["reason"], r["event_id"]))
