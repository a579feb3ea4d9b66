"""Bad input at volume (issue 8): 10 % malformed records mixed into a ~100k-line stream, every
class the validator knows plus binary garbage, 1 MB lines, invalid UTF-8, timestamps in 1970
and 2100, and labels before their impressions. Through the path a user takes (raw JSONL files ->
validated event directory -> the streaming job on a Flink mini-cluster), every bad record is a
dead letter with its reason, the good ones give exactly the clean run's outputs, and the
counts reconcile."""
import bisect
import json
from collections import Counter

import numpy as np
import pytest

from models.ftrl import FTRL
from pipelines.events import Reason
from pipelines.join import JoinConfig
from pipelines.sources.generator import GENERATOR, MALFORMED_CLASSES, GeneratorConfig, _corrupt, generate
from runners.local import ingest_event_dir
from runners.stream import read_output, run_stream
from pipelines.eventlog import read_stream

JOIN = JoinConfig(window_ms=600_000, late_horizon_ms=3_600_000, watermark_delay_ms=60_000)
BAD_SHARE = 0.10


def _time(rec: dict) -> int:
    return rec["event_time"] if rec["kind"] == "impression" else rec["label_time"]


def _bad_lines(good: list[bytes], slots: np.ndarray, rng: np.random.Generator) -> list[tuple[bytes, set[str]]]:
    """The bad lines for the places ``slots`` (0-based, in the dirty stream) with the reasons
    the pipeline may give each (binary garbage can fail as invalid UTF-8 or, if it happens to
    decode, as malformed JSON)."""
    recs = [json.loads(x) for x in good]
    imps = [r for r in recs if r["kind"] == "impression"]
    labelled = {r["event_id"] for r in recs if r["kind"] == "label"}
    free = [r for r in imps if r["event_id"] not in labelled]  # impressions without a label
    free_times = [r["event_time"] for r in free]
    out: list[tuple[bytes, set[str]]] = []
    classes = list(MALFORMED_CLASSES) + ["garbage", "mb_line", "invalid_utf8", "1970", "2100", "before"]
    before_used: set[str] = set()
    for i in range(len(slots)):
        c = classes[i % len(classes)]
        r = dict(recs[int(rng.integers(len(recs)))])
        if c == "before":  # a valid label before an impression without a label, in time order
            # where it is planted (its stream's order: more out of order than the watermark
            # delay, it would be a behind_watermark dead letter instead)
            before = _time(recs[max(int(slots[i]) - i - 1, 0)])  # the good line before its place
            j = bisect.bisect_right(free_times, before)
            imp = next((x for x in free[j:] if x["event_id"] not in before_used), None)
            c = c if imp is not None else "2100"  # no impression after this place: another class
        if isinstance(c, Reason):
            out.append((_corrupt(r, c), {c.value}))
        elif c == "garbage":
            b = rng.bytes(int(rng.integers(1, 400))).replace(b"\n", b" ").replace(b"\r", b" ")
            out.append((b, {Reason.INVALID_UTF8.value, Reason.MALFORMED_JSON.value}))
        elif c == "mb_line":
            out.append((json.dumps({**r, "pad": "x" * (1 << 20)}).encode(), {Reason.OVERSIZE_RECORD.value}))
        elif c == "invalid_utf8":
            out.append((json.dumps(r).encode().replace(b'"event_id": "', b'"event_id": "\xc3\x28', 1),
                        {Reason.INVALID_UTF8.value}))
        elif c in ("1970", "2100"):
            t = 0 if c == "1970" else 4_102_444_800_000
            r["event_time" if r["kind"] == "impression" else "label_time"] = t + 1_000
            out.append((json.dumps(r).encode(),
                        {Reason.TIMESTAMP_TOO_OLD.value if c == "1970" else Reason.FUTURE_TIMESTAMP.value}))
        else:  # the label before its impression
            before_used.add(imp["event_id"])
            lab = {"kind": "label", "event_id": imp["event_id"], "label_time": imp["event_time"] - 1_000,
                   "label": 1, "label_type": "click"}
            out.append((json.dumps(lab).encode(), {"label_before_impression"}))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    stream = generate(GeneratorConfig(events=85_000, seed=9, malformed_rate=0.0))
    good = stream.lines
    rng = np.random.default_rng(1)
    n_bad = int(round(len(good) * BAD_SHARE / (1 - BAD_SHARE)))
    # the bad lines at random places among the good ones, the good ones in their order
    slots = np.sort(rng.choice(len(good) + n_bad, n_bad, replace=False))
    bad = _bad_lines(good, slots, rng)
    dirty, expect, gi, bi = [], {}, 0, 0
    for pos in range(len(good) + n_bad):
        if bi < n_bad and slots[bi] == pos:
            dirty.append(bad[bi][0])
            expect[pos + 1] = bad[bi][1]  # 1-based line number: the dead letter's origin
            bi += 1
        else:
            dirty.append(good[gi])
            gi += 1
    (root / "clean.jsonl").write_bytes(b"\n".join(good) + b"\n")
    (root / "dirty.jsonl").write_bytes(b"\n".join(dirty) + b"\n")
    out = {}
    for name in ("clean", "dirty"):
        manifest = ingest_event_dir([str(root / f"{name}.jsonl")], GENERATOR, root / f"ev_{name}")
        summary = run_stream(root / f"ev_{name}", root / f"run_{name}", "generator", JOIN)
        out[name] = (root / f"ev_{name}", root / f"run_{name}", manifest, summary)
    return out, expect, len(dirty)


def test_every_bad_record_is_a_dead_letter_with_its_reason(runs):
    out, expect, n_lines = runs
    ev, run_dir, manifest, summary = out["dirty"]
    assert n_lines >= 95_000 and len(expect) / n_lines == pytest.approx(BAD_SHARE, abs=0.002)
    ingest_dead = read_stream(ev, "dead_letter").to_pylist()
    by_line = {int(d["origin"].rsplit(":", 1)[1]): d for d in ingest_dead}
    clean_dead = read_stream(out["clean"][0], "dead_letter").to_pylist()
    assert clean_dead == []  # the generator's clean lines are all valid
    validator_bad = {line: reasons for line, reasons in expect.items() if "label_before_impression" not in reasons}
    assert set(by_line) == set(validator_bad)  # the ingest dead-letters exactly the bad lines
    wrong = {line: (by_line[line]["reason"], r) for line, r in validator_bad.items() if by_line[line]["reason"] not in r}
    assert wrong == {}
    assert max(len(d["raw"]) for d in ingest_dead) <= 64 * 1024  # a 1 MB line keeps a bounded head
    # labels before their impressions are valid records: the job dead-letters them
    job_dead = Counter(d["reason"] for d in read_output(run_dir, "dead_letter"))
    clean_job_dead = Counter(d["reason"] for d in read_output(out["clean"][1], "dead_letter"))
    planted_before = sum("label_before_impression" in r for r in expect.values())
    assert planted_before >= 400
    assert job_dead - clean_job_dead == Counter({"label_before_impression": planted_before})
    # every class occurred
    reasons = Counter(d["reason"] for d in ingest_dead)
    assert {c.value for c in MALFORMED_CLASSES} <= set(reasons)
    # counts reconcile: lines in = valid + dead letters; impressions and labels in = out
    c = manifest["counts"]
    assert sum(c["valid"].values()) + sum(c["dead_letter"].values()) == n_lines
    assert summary["reconciliation"]["reconciles"] and out["clean"][3]["reconciliation"]["reconciles"]


def test_the_good_records_give_exactly_the_clean_run(runs):
    out, _, _ = runs
    (_, clean, _, cs), (_, dirty, _, ds) = out["clean"], out["dirty"]
    for name in ("predictions", "updates", "examples", "late_labels"):
        a = sorted(json.dumps(r, sort_keys=True) for r in read_output(clean, name))
        b = sorted(json.dumps(r, sort_keys=True) for r in read_output(dirty, name))
        assert a == b, name
    snaps = [sorted((run / "registry" / "delta").iterdir())[-1] / "weights.npz" for run in (clean, dirty)]
    a, b = (FTRL.from_bytes(p.read_bytes()) for p in snaps)
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()
    assert cs["counts"]["predictions"] == ds["counts"]["predictions"] > 80_000
