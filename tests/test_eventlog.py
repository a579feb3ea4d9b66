"""Arrow <-> JSONL <-> Parquet round trips are lossless; part files are atomic and ordered."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.eventlog import (EventDirWriter, PartWriter, event_time_span, jsonl_to_table, part_files,
                                read_manifest, read_stream, table_to_jsonl)
from pipelines.events import (DEAD_LETTER_SCHEMA, GENERATOR, IMPRESSION, LABEL, LABEL_SCHEMA,
                              Counts, SourceSpec)
from pipelines.validate import Validator

SPEC = SourceSpec(name="rt", entity_fields=("user",), categorical_fields=("site",),
                  numeric_fields=("x", "y"), optional=("site", "y"))
text = st.text(max_size=30)  # any unicode, including empty and surrogate-free astral chars
finite = st.floats(allow_nan=False, allow_infinity=False)
imp_rows = st.lists(st.fixed_dictionaries({
    "event_id": text.filter(bool), "event_time": st.integers(-2**62, 2**62), "user": text,
    "site": st.none() | text, "x": finite, "y": st.none() | finite}), max_size=25)
dead_rows = st.lists(st.fixed_dictionaries({
    "reason": text, "detail": text, "kind": st.none() | st.sampled_from(["impression", "label"]),
    "origin": text, "raw": st.binary(max_size=60)}), max_size=10)


def roundtrips(table: pa.Table, tmp_path) -> None:
    schema = table.schema
    back = jsonl_to_table(table_to_jsonl(table), schema)
    assert back.equals(table)
    pq.write_table(back, tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet", schema=schema).equals(table)


@settings(max_examples=60, deadline=None)
@given(rows=imp_rows)
def test_impressions_roundtrip_losslessly(rows, tmp_path_factory):
    roundtrips(pa.Table.from_pylist(rows, SPEC.impression_schema()), tmp_path_factory.mktemp("rt"))


@settings(max_examples=30, deadline=None)
@given(rows=dead_rows)
def test_dead_letters_roundtrip_with_binary_payloads(rows, tmp_path_factory):
    roundtrips(pa.Table.from_pylist(rows, DEAD_LETTER_SCHEMA), tmp_path_factory.mktemp("rt"))


def test_float_edge_values_roundtrip_exactly(tmp_path):
    xs = [0.1, -0.0, 5e-324, 1.7976931348623157e308, 2 / 3, 1e16 + 1]
    t = pa.Table.from_pylist([{"event_id": str(i), "event_time": 1, "user": "u", "site": None,
                               "x": x, "y": None} for i, x in enumerate(xs)], SPEC.impression_schema())
    roundtrips(t, tmp_path)
    assert jsonl_to_table(table_to_jsonl(t), t.schema).column("x").to_pylist() == xs


def test_jsonl_lines_are_valid_input_again():
    """What we write, the validator reads back as the same records (kind given by folder)."""
    rows = [{"event_id": "a", "label_time": 1_704_067_200_000, "label": 1, "label_type": "click"}]
    data = table_to_jsonl(pa.Table.from_pylist(rows, LABEL_SCHEMA))
    v = Validator(GENERATOR)
    assert [v.parse_line(ln, "x", LABEL) for ln in data.splitlines()] == [(LABEL, rows[0])]


def test_part_writer_rolls_and_is_atomic(tmp_path):
    w = PartWriter(tmp_path / "s", LABEL_SCHEMA, "jsonl", rows_per_file=4)
    rows = [{"event_id": f"e{i}", "label_time": i, "label": i % 2, "label_type": "c"} for i in range(10)]
    w.write(pa.Table.from_pylist(rows[:3], LABEL_SCHEMA))
    assert part_files(tmp_path, "s") == []  # nothing complete yet
    w.write(pa.Table.from_pylist(rows[3:], LABEL_SCHEMA))
    assert [p.name for p in part_files(tmp_path, "s")] == ["part-000000.jsonl", "part-000001.jsonl"]
    w.close()
    files = part_files(tmp_path, "s")
    assert len(files) == 3 and not list((tmp_path / "s").glob(".*"))
    got = [json.loads(l)["event_id"] for p in files for l in p.read_text().splitlines()]
    assert got == [r["event_id"] for r in rows]


def test_event_dir_write_read_in_both_formats(tmp_path):
    imps = pa.Table.from_pylist([{"event_id": f"e{i}", "event_time": 10 * i, "user": "ü", "site": None,
                                  "x": i / 3, "y": 1.0} for i in range(7)], SPEC.impression_schema())
    for fmt in ("jsonl", "parquet"):
        w = EventDirWriter(tmp_path / fmt, SPEC, fmt, rows_per_file=3)
        w.write({IMPRESSION: imps, LABEL: LABEL_SCHEMA.empty_table(),
                 "dead_letter": DEAD_LETTER_SCHEMA.empty_table()})
        m = w.close(Counts(input=7, valid={IMPRESSION: 7, LABEL: 0}))
        assert m["rows_written"][IMPRESSION] == 7 and read_manifest(tmp_path / fmt)["format"] == fmt
        assert read_stream(tmp_path / fmt, IMPRESSION).equals(imps)
        assert read_stream(tmp_path / fmt, LABEL).num_rows == 0
        assert len(part_files(tmp_path / fmt, IMPRESSION)) == 3


def test_the_manifest_answers_the_time_span_while_the_parts_are_its_own(tmp_path, monkeypatch):
    """``event_time_span`` (a warm-up's cut, at every prepare) reads the manifest, not a large
    history's parts; a part added since (a followed folder) makes it read the parts again."""
    import shutil

    from pipelines import eventlog

    imps = pa.Table.from_pylist([{"event_id": f"e{i}", "event_time": t, "user": "u", "site": None, "x": 0.0,
                                  "y": None} for i, t in enumerate([50, 10, 70, 30, 20])], SPEC.impression_schema())
    w = EventDirWriter(tmp_path / "ev", SPEC, "jsonl", rows_per_file=2)
    w.write({IMPRESSION: imps})
    m = w.close(Counts(input=5, valid={IMPRESSION: 5, LABEL: 0}))
    assert m["impressions"] == {"parts": ["part-000000.jsonl", "part-000001.jsonl", "part-000002.jsonl"],
                                "event_time_span": [10, 70]}
    with monkeypatch.context() as mp:
        mp.setattr(eventlog, "read_stream", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
        assert event_time_span(tmp_path / "ev") == (10, 70)
    late = tmp_path / "ev" / "impressions" / "part-000003.jsonl"
    late.write_bytes(table_to_jsonl(imps.slice(0, 1).set_column(1, "event_time", pa.array([90], pa.int64()))))
    assert event_time_span(tmp_path / "ev") == (10, 90)  # read from the parts
    shutil.rmtree(tmp_path / "ev" / "impressions")
    (tmp_path / "ev" / "impressions").mkdir()
    assert event_time_span(tmp_path / "ev") is None
    empty = EventDirWriter(tmp_path / "empty", SPEC, "jsonl")
    assert empty.close(Counts(input=0, valid={IMPRESSION: 0, LABEL: 0}))["impressions"]["event_time_span"] is None
    assert event_time_span(tmp_path / "empty") is None
