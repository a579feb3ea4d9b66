"""Our Java keyed operators on a real Flink mini-cluster (``tests/jvm_operators_job.py``, in a
child process): ``driftline.flink.DedupJoin``'s dedup (event-time retention, impressions and labels) and
join outcomes, against
``pipelines.join.reference_join``, on hand-made streams with the boundary cases."""
import json
from pathlib import Path

from pipelines.join import JoinConfig, reference_join
from runners import warm
from runners.packing import NO_TIME

JOB = Path(__file__).with_name("jvm_operators_job.py")


def _run(tmp_path, args: dict) -> list:
    out = tmp_path / "out.json"
    proc = warm.run([str(JOB), json.dumps(args), str(out)])
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(out.read_text())


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_dedup_counts_occurrences_in_event_time_and_forgets_after_the_retention(tmp_path):
    R = 10_000
    events = [("a", 1_000), ("b", 5_000), ("a", 1_000), ("b", 2_000),  # a tie (arrival order); b out of order
              ("c", 20_000), ("d", 20_000),
              ("c", 20_000 + R),  # exactly the retention later: still a duplicate
              ("d", 20_000 + R + 1),  # one ms more: forgotten, a first occurrence again
              ("e", 40_000), ("e", 45_000), ("e", 45_000 + R),  # the retention runs from the last occurrence
              ("z", 100_000)]
    labels = [("a", 1_500), ("a", 1_500), ("b", 30_000), ("b", 30_000 + R), ("b", 30_000 + 2 * R + 1)]
    got = _run(tmp_path, {"op": "dedup", "retention_ms": R, "delay": 5_000,
                          "impressions": _jsonl(tmp_path / "ev.jsonl", [{"event_id": e, "event_time": t}
                                                                        for e, t in events]),
                          "labels": _jsonl(tmp_path / "lab.jsonl", [{"event_id": e, "label_time": t, "label": 1}
                                                                    for e, t in labels])})
    first = sorted((e, t) for e, t, line in got if line is None)
    assert first == sorted([("a", 1_000), ("b", 2_000), ("c", 20_000), ("d", 20_000), ("d", 20_000 + R + 1),
                            ("e", 40_000), ("z", 100_000)])
    dups = sorted((d["kind"], d["raw"], d["detail"], d["reason"]) for d in (json.loads(x) for *_, x in got if x))
    assert dups == sorted([("impression", "a", "occurrence 2", "duplicate_event_id"),
                           ("impression", "b", "occurrence 2", "duplicate_event_id"),
                           ("impression", "c", "occurrence 2", "duplicate_event_id"),
                           ("impression", "e", "occurrence 2", "duplicate_event_id"),
                           ("impression", "e", "occurrence 3", "duplicate_event_id"),
                           # labels: a tie; exactly R later still a duplicate; R + 1 after that forgotten
                           ("label", "a", "occurrence 2", "duplicate_label"),
                           ("label", "b", "occurrence 2", "duplicate_label")])
    assert all(set(json.loads(x)) == {"reason", "detail", "kind", "origin", "raw"} for *_, x in got if x)


def test_the_join_gives_the_reference_outcomes_at_every_boundary(tmp_path):
    W, H = 1_000, 5_000
    cfg = JoinConfig(window_ms=W, late_horizon_ms=H, watermark_delay_ms=100)
    imps = [{"event_id": f"i{k}", "event_time": 10_000 * (k + 1)} for k in range(10)]
    t = {r["event_id"]: r["event_time"] for r in imps}
    planted = [("i0", t["i0"]), ("i1", t["i1"] + W - 1), ("i2", t["i2"] + W),  # positive at the edges; late
               ("i3", t["i3"] - 1),  # one ms before its impression (ties with it in the join's time)
               ("i4", t["i4"] + H), ("i5", t["i5"] + H + 1),  # last late; just beyond the horizon
               ("i6", t["i6"] + H + 3 * W),  # after the key's state was freed
               ("i7", t["i7"] - W), ("i7", t["i7"] - W + 10),  # W before; a duplicate label
               ("i8", t["i8"] + 10), ("i8", t["i8"] + H + 3 * W),  # a duplicate after the state expired
               ("nobody", 12_345)]
    labels = [{"event_id": e, "label_time": lt, "label": 1} for e, lt in sorted(planted, key=lambda x: x[1])]
    ref = reference_join(imps, labels, cfg)
    for policy in ("sink", "correction"):
        got = _run(tmp_path, {"op": "join", "join": {**cfg.to_dict(), "late_policy": policy},
                              "impressions": _jsonl(tmp_path / "imps.jsonl", imps),
                              "labels": _jsonl(tmp_path / "labs.jsonl", labels)})
        rows = [dict(zip(["event_id", "resolution_time", "event_time", "label", "label_time", "info", "inputs"], r))
                for r in got]
        examples = sorted((r["event_id"], r["resolution_time"], r["label"]) for r in rows
                          if r["info"] in ("label", "expired"))
        assert examples == sorted((e["event_id"], e["resolution_time"], e["label"]) for e in ref["examples"]
                                  if e["kind"] != "correction")
        assert sorted((r["event_id"], r["label_time"]) for r in rows if r["info"] == "late") == \
            sorted((x["event_id"], x["label_time"]) for x in ref["late"])
        outcomes = sorted((r["info"], r["event_id"]) for r in rows if r["info"] not in ("label", "expired", "late"))
        assert outcomes == sorted(d for d in ref["dead_letter"] if d[0] != "duplicate_label")
        assert {r["event_id"] for r in rows if r["info"] == "unknown_impression"} == {"i5", "i6", "nobody"}
        assert all(r["event_time"] == NO_TIME for r in rows if r["info"] == "unknown_impression")
        # the inputs reach the examples; a late label carries them only when it becomes a correction
        assert all(json.loads(r["inputs"]) == [r["event_id"]] for r in rows if r["info"] in ("label", "expired"))
        late = [r for r in rows if r["info"] == "late"]
        assert late and all(r["inputs"] == (json.dumps([r["event_id"]]) if policy == "correction" else "")
                            for r in late)


def test_the_validated_kafka_sources_watermark_time_is_only_a_time_the_validation_accepts(tmp_path):
    """``driftline.flink.JsonTime``: a record's top-level integer ``event_time`` within the
    bounds, else 0 (never moves the watermark) — on hand-made cases and on fuzzed records,
    against Python's json and the validation's bounds."""
    from pipelines.validate import ValidationConfig
    from test_validate import GOOD_IMP, _batch_corpus, line, with_

    lo, hi, t = ValidationConfig().min_time_ms, ValidationConfig().max_time_ms, GOOD_IMP["event_time"]
    cases = {line(GOOD_IMP): t,
             b'{"event_time": 1704067200001, "event_time": 1704067200002}': t + 2,  # the last, as json
             b'{"event_time": 1704067200001, "event_time": "1704067200002"}': 0,
             b'{"ev\\u0065nt_time": 1704067200003}': t + 3,  # an escaped name is the same name
             b'{"x": {"event_time": 1704067200004}, "y": [1, {"a": 2}]}': 0,  # nested: not the record's
             line(with_(GOOD_IMP, event_time=1.7e12)): 0, line(with_(GOOD_IMP, event_time=str(t))): 0,
             line(with_(GOOD_IMP, event_time=True)): 0, line(with_(GOOD_IMP, event_time=hi)): 0,
             line(with_(GOOD_IMP, event_time=hi - 1)): hi - 1, line(with_(GOOD_IMP, event_time=lo - 1)): 0,
             line(with_(GOOD_IMP, event_time=2**64)): 0, line(GOOD_IMP) + b" x": 0, line(GOOD_IMP)[:-1]: 0,
             line(GOOD_IMP) + line(GOOD_IMP): 0, b"[1704067200000]": 0, b"": 0,
             line(with_(GOOD_IMP, site="\xff")).replace(b"\\u00ff", b"\xff"): 0,  # not UTF-8
             json.dumps(GOOD_IMP).encode("utf-16"): 0, json.dumps(GOOD_IMP).encode("utf-32-le"): 0}
    fuzz = [raw for raw in _batch_corpus(seed=3, mutants=2000)]
    lines = [*cases, *fuzz]
    (tmp_path / "lines.json").write_text(json.dumps([raw.hex() for raw in lines] + [None]))
    got = _run(tmp_path, {"op": "json_time", "lines": str(tmp_path / "lines.json"), "field": "event_time",
                          "min": lo, "max": hi})
    assert got[:len(cases)] == list(cases.values())
    assert got[-1] == 0  # a message without a value (a tombstone)
    moved = 0
    for raw, time in zip(lines[len(cases):], got[len(cases):-1]):
        if time:
            moved += 1
            text = raw.decode("utf-8")  # UTF-8 ...
            obj = json.loads(text)  # ... JSON Python reads, the integer it reads, within the bounds
            assert type(obj["event_time"]) is int and obj["event_time"] == time and lo <= time < hi, text
    assert moved > 100
