"""Every bad-record class gets its machine-readable reason, on the row path (JSONL, CSV)
and on the vectorized Arrow path, with the same rules."""
import json
import math

import pyarrow as pa
import pytest

from pipelines.events import DEAD_LETTER_SCHEMA, GENERATOR, IMPRESSION, LABEL, Reason
from pipelines.validate import BatchCollector, ValidationConfig, Validator, validate_lines

T0 = 1_704_067_200_000
GOOD_IMP = {"kind": "impression", "event_id": "e1", "event_time": T0, "user_id": "u1",
            "item_id": "i1", "site": "s1", "device_type": "mobile", "ad_format": "banner",
            "bid": 1.5, "position": 2.0, "user_age_days": 10.0}
GOOD_LAB = {"kind": "label", "event_id": "e1", "label_time": T0 + 5, "label": 1, "label_type": "click"}
V = Validator(GENERATOR)


def line(d) -> bytes:
    return json.dumps(d).encode()


def with_(base, **kw):
    d = dict(base)
    for k, v in kw.items():
        if v is ...:
            del d[k]
        else:
            d[k] = v
    return d


def test_good_records_pass_typed():
    kind, rec = V.parse_line(line(GOOD_IMP), "t:1")
    assert kind == IMPRESSION and rec["event_time"] == T0 and rec["bid"] == 1.5
    assert "kind" not in rec
    kind, rec = V.parse_line(line(GOOD_LAB), "t:2")
    assert kind == LABEL and rec == {k: v for k, v in GOOD_LAB.items() if k != "kind"}


def test_integer_codes_become_their_decimal_text():
    kind, rec = V.parse_line(line(with_(GOOD_IMP, user_id=12345, bid=3)), "t")
    assert rec["user_id"] == "12345" and rec["bid"] == 3.0 and isinstance(rec["bid"], float)


BAD_LINES = [
    (b'{"kind": "impression", "event_id": ', Reason.MALFORMED_JSON),
    (b'[1, 2, 3]', Reason.MALFORMED_JSON),
    (b'{"kind":"label","event_id":"\xff\xfe","label_time":1,"label":1,"label_type":"c"}', Reason.INVALID_UTF8),
    (b'{"kind":"label","event_id":"\\ud800","label_time":1,"label":1,"label_type":"c"}', Reason.INVALID_UTF8),
    (line(with_(GOOD_IMP, pad="x" * 70_000)), Reason.OVERSIZE_RECORD),
    (line(with_(GOOD_IMP, kind="purchase")), Reason.UNKNOWN_EVENT_KIND),
    (line(with_(GOOD_IMP, kind=...)), Reason.UNKNOWN_EVENT_KIND),
    (line(with_(GOOD_IMP, site=...)), Reason.MISSING_FIELD),
    (line(with_(GOOD_IMP, site=None)), Reason.MISSING_FIELD),
    (line(with_(GOOD_LAB, label_type="")), Reason.MISSING_FIELD),
    (line(with_(GOOD_IMP, event_time="2024-01-01")), Reason.WRONG_TYPE),
    (line(with_(GOOD_IMP, event_time=1.7e12)), Reason.WRONG_TYPE),
    (line(with_(GOOD_IMP, bid="cheap")), Reason.WRONG_TYPE),
    (line(with_(GOOD_IMP, bid=True)), Reason.WRONG_TYPE),
    (line(with_(GOOD_IMP, site=["a"])), Reason.WRONG_TYPE),
    (line(with_(GOOD_IMP, event_id=7)), Reason.WRONG_TYPE),
    (line(with_(GOOD_LAB, label=True)), Reason.WRONG_TYPE),
    (line(with_(GOOD_IMP, bid=math.nan)), Reason.NON_FINITE),  # json.dumps writes NaN
    (line(with_(GOOD_IMP, position=math.inf)), Reason.NON_FINITE),
    (line(with_(GOOD_IMP, event_time=-1)), Reason.NEGATIVE_TIMESTAMP),
    (line(with_(GOOD_IMP, event_time=86_400_000)), Reason.TIMESTAMP_TOO_OLD),
    (line(with_(GOOD_IMP, event_time=4_102_444_800_000)), Reason.FUTURE_TIMESTAMP),
    (line(with_(GOOD_IMP, site="é" * 600)), Reason.OVERSIZE_STRING),
    (line(with_(GOOD_IMP, event_id="")), Reason.EMPTY_EVENT_ID),
    (line(with_(GOOD_LAB, label=2)), Reason.INVALID_LABEL),
    (b"[" * 60_000, Reason.MALFORMED_JSON),  # json.loads raised RecursionError: the run died
    (line(with_(GOOD_IMP, bid=10**400)), Reason.NON_FINITE),  # float() raised OverflowError
]


@pytest.mark.parametrize("raw,reason", BAD_LINES, ids=[f"{r.value}-{i}" for i, (_, r) in enumerate(BAD_LINES)])
def test_each_bad_class_gets_its_reason(raw, reason):
    kind, dead = V.parse_line(raw, "f.jsonl:9")
    assert kind is None
    assert dead["reason"] == reason.value
    assert dead["origin"] == "f.jsonl:9" and dead["detail"]
    assert dead["raw"] == raw[: V.config.max_record_bytes]
    pa.Table.from_pylist([dead], DEAD_LETTER_SCHEMA)  # fits the dead-letter schema


def test_first_failing_field_in_schema_order_wins():
    _, dead = V.parse_line(line(with_(GOOD_IMP, event_time=-1, bid="x")), "t")
    assert dead["reason"] == Reason.NEGATIVE_TIMESTAMP.value


def test_limits_are_configurable():
    v = Validator(GENERATOR, ValidationConfig(min_time_ms=0, max_string_bytes=10_000))
    assert v.parse_line(line(with_(GOOD_IMP, event_time=86_400_000, site="é" * 600)), "t")[0] == IMPRESSION


def test_csv_rows_parse_text_per_schema():
    header = ["kind", "event_id", "label_time", "label", "label_type"]
    assert V.parse_csv_row(["label", "e", str(T0), "1", "click"], header, "c:2", b"")[1]["label"] == 1
    assert V.parse_csv_row(["label", "e", "soon", "1", "click"], header, "c", b"")[1]["reason"] == "wrong_type"
    assert V.parse_csv_row(["label", "e", str(T0)], header, "c", b"")[1]["reason"] == "malformed_csv"
    assert V.parse_csv_row(["label", "e", "", "1", "click"], header, "c", b"")[1]["reason"] == "missing_field"
    h = list(GOOD_IMP)
    row = [str(GOOD_IMP[k]) for k in h]
    row[h.index("bid")] = "nan"
    assert V.parse_csv_row(row, h, "c", b"")[1]["reason"] == "non_finite"


def test_vectorized_path_agrees_with_row_path():
    """The same records through validate_table (Arrow) and parse_line (JSON) give the same
    verdicts and reasons, record by record."""
    recs = [with_(GOOD_IMP, kind=..., event_id=f"e{i}") for i in range(9)]
    recs[1]["event_time"] = -5
    recs[2]["event_time"] = 86_400_000
    recs[3]["event_time"] = 4_102_444_800_000
    recs[4]["bid"] = math.nan
    recs[5]["site"] = None
    recs[6]["event_id"] = ""
    recs[7]["site"] = "x" * 2000
    recs[8]["position"] = math.inf
    loose = pa.schema([f.with_nullable(True) for f in GENERATOR.impression_schema()])
    table = pa.Table.from_pylist(recs, loose)
    valid, dead = V.validate_table(table, IMPRESSION, "arrow")
    row_reasons = [V.check(r, "x", b"", IMPRESSION)[1].get("reason") for r in recs]
    assert valid.column("event_id").to_pylist() == ["e0"]
    assert dead.column("reason").to_pylist() == [r for r in row_reasons if r]
    assert dead.column("origin").to_pylist()[0] == "arrow#1"
    assert json.loads(dead.column("raw")[0].as_py())["event_time"] == -5


def test_vectorized_missing_column_and_uncastable_type():
    t = pa.table({"event_id": ["a"], "label_time": ["soon"], "label": [1], "label_type": ["c"]})
    _, dead = V.validate_table(t, LABEL, "x")
    assert dead.column("reason").to_pylist() == ["wrong_type"]
    t = pa.table({"event_id": ["a"], "label": [1], "label_type": ["c"]})
    _, dead = V.validate_table(t, LABEL, "x")
    assert dead.column("reason").to_pylist() == ["missing_field"]
    t = pa.table({"event_id": ["a", "b"], "label_time": [T0, T0], "label": [1, 3], "label_type": ["c", "c"]})
    valid, dead = V.validate_table(t, LABEL, "x")
    assert valid.num_rows == 1 and dead.column("reason").to_pylist() == ["invalid_label"]


def test_collector_counts_reconcile_over_batches():
    lines = [line(GOOD_IMP), b"{", line(GOOD_LAB), line(with_(GOOD_LAB, label=5))] * 30
    coll = BatchCollector(GENERATOR)
    out = list(validate_lines(V, coll, lines, "mem", batch_rows=7))
    assert sum(t["impression"].num_rows for t in out) == 30
    assert sum(t["label"].num_rows for t in out) == 30
    assert sum(t["dead_letter"].num_rows for t in out) == 60
    assert coll.counts.reconciles() and coll.counts.input == 120
    assert coll.counts.dead_letter == {"malformed_json": 30, "invalid_label": 30}


def _batch_corpus(seed: int = 5, mutants: int = 3000) -> list[bytes]:
    """Lines for the batch path: the bad classes, valid variants it must vouch for or leave
    alone, and random byte mutations of valid lines (most malformed, some still valid, some
    not UTF-8)."""
    import random

    rnd = random.Random(seed)
    base = [line(GOOD_IMP), line(GOOD_LAB)]
    valid = [line(with_(GOOD_IMP, kind=..., user_id=12345, bid=3, position=-0.0)),
             line(with_(GOOD_IMP, site="é" * 200, event_id="ü")),  # non-ASCII, within limits
             line(with_(GOOD_IMP, bid=2**63, position=2**64 + 1, user_age_days=-(2**63) - 1)),
             b'{"kind":"impression","kind":"impression",' + line(with_(GOOD_IMP, kind=...))[1:],
             line(with_(GOOD_LAB, kind=..., label=0, event_id=" "))]
    others = [line(with_(GOOD_IMP, site="x" * 1024)),  # valid, but left to the row path
              line(with_(GOOD_IMP, user_id=2**64, extra={"a": [1, None]})),  # the same
              line(with_(GOOD_IMP, kind=None)), line(with_(GOOD_IMP, event_time=2**64)),
              line(with_(GOOD_IMP, event_time=True)), b'{"bid": NaN}', b"\xef\xbb\xbf" + line(GOOD_IMP),
              b"null", b"", line(with_(GOOD_LAB, label=1.0)), line(with_(GOOD_IMP, event_id="\ud800"))]
    corpus = [raw for raw, _ in BAD_LINES] + base + valid + others
    alphabet = b'0123456789-+.eE"{}[],: naNIfinityu\\'
    for _ in range(mutants):
        b = bytearray(rnd.choice(base + valid))
        for _ in range(rnd.randint(1, 3)):
            i, op = rnd.randrange(len(b)), rnd.random()
            if op < 0.4:
                b[i] = rnd.choice(alphabet)
            elif op < 0.7:
                del b[i]
            elif op < 0.95:
                b.insert(i, rnd.choice(alphabet))
            else:  # a byte of a multi-byte UTF-8 sequence, alone: not UTF-8 any more (mostly)
                b.insert(i, rnd.randrange(0x80, 0x100))
        corpus.append(bytes(b))
    return corpus


@pytest.mark.parametrize("as_bytes", [False, True], ids=["text", "bytes"])
@pytest.mark.parametrize("kind", [IMPRESSION, LABEL])
def test_the_batch_path_vouches_only_for_what_the_row_path_accepts_with_the_same_values(kind, as_bytes):
    """On lines as text and as bytes (Kafka messages as they came, invalid UTF-8 among them)."""
    corpus = _batch_corpus()
    text = corpus if as_bytes else [raw.decode("utf-8", "replace") for raw in corpus]
    cols, ok = V.parse_batch(text, kind)
    vouched = 0
    for i, t in enumerate(text):
        got_kind, rec = V.parse_line(t if as_bytes else t.encode("utf-8", "surrogatepass"), "t", kind)
        if ok[i]:
            vouched += 1
            assert got_kind == kind, (t, rec)
            assert list(rec) == list(cols) and all(rec[k] == cols[k][i] and type(rec[k]) is type(cols[k][i])
                                                   for k in rec), (t, rec)
    row_valid = sum(V.parse_line(t if as_bytes else t.encode("utf-8", "surrogatepass"), "t", kind)[0] == kind
                    for t in text)
    # it is the fast path for ordinary records (the corpus's few unusual valid ones aside)
    assert vouched >= 0.9 * row_valid > 0, (vouched, row_valid)


def test_the_batch_path_leaves_unusual_records_to_the_row_path():
    lines = [line(with_(GOOD_IMP, site="x" * 1024)), line(with_(GOOD_IMP, kind=None)),
             line(with_(GOOD_IMP, bid=math.nan)), line(with_(GOOD_IMP, event_time=1.7e12)),
             line(with_(GOOD_LAB, kind=...)), line(GOOD_IMP)]
    _, ok = V.parse_batch([ln.decode() for ln in lines] + [None], IMPRESSION)
    assert ok == [False, False, False, False, False, True, False]


@pytest.mark.parametrize("kind", [None, IMPRESSION, LABEL])
def test_parse_many_gives_parse_lines_results_in_order(kind):
    """``parse_many`` (each kind's ordinary records vouched for at once, the rest one by one) =
    ``parse_line`` per line: the same kinds, records (values and types, field order) and dead
    letters (origins included), on the fuzzed corpus with both kinds mixed, with and without a
    ``kind`` field."""
    import random

    corpus = _batch_corpus(seed=13, mutants=2000)
    no_kind = [line(with_(GOOD_IMP, kind=..., event_id=f"n{i}")) for i in range(50)]
    lines = corpus + no_kind
    random.Random(1).shuffle(lines)
    got = V.parse_many(lines, "f", 7, kind)
    assert len(got) == len(lines)
    valid = 0
    for i, (raw, (k, rec)) in enumerate(zip(lines, got)):
        want_k, want = V.parse_line(raw, f"f:{7 + i}", kind)
        assert k == want_k and list(rec) == list(want), raw
        assert all(rec[f] == want[f] and type(rec[f]) is type(want[f]) for f in rec), raw
        valid += k is not None
    assert valid > 100
