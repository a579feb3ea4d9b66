"""The real-data adapters on the real files, and the file source for users' own files."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.config import DATA_DIR_ENV, DataDirMissing, data_dir
from pipelines.events import ELEC2, GENERATOR, IMPRESSION, LABEL, TALKINGDATA
from pipelines.sources import elec2, talkingdata
from pipelines.sources.files import read_files
from pipelines.validate import BatchCollector


def test_talkingdata_adapter(shared_data):
    coll = talkingdata.load(shared_data / talkingdata.RELATIVE_PATH)
    t = coll.drain()
    imps, labels = t[IMPRESSION], t[LABEL]
    assert imps.num_rows == 100_000 and labels.num_rows == 227
    assert coll.counts.dead_letter_total == 0 and coll.counts.reconciles()
    assert imps.schema.equals(TALKINGDATA.impression_schema())
    et = np.asarray(imps["event_time"])
    assert (np.diff(et) >= 0).all()  # sorted by click_time
    assert et[0] == 1_509_984_000_000  # 2017-11-06 16:00:00 UTC
    assert et[-1] == 1_510_243_191_000  # 2017-11-09 15:59:51 UTC
    # every label belongs to an impression and comes after it; delays as the README states
    by_id = dict(zip(imps["event_id"].to_pylist(), et.tolist()))
    delays = np.array([lt - by_id[e] for e, lt in zip(labels["event_id"].to_pylist(),
                                                      labels["label_time"].to_pylist())]) / 1000
    assert delays.min() == 2 and delays.max() == 46_341 and np.median(delays) == 198
    assert set(labels["label_type"].to_pylist()) == {"conversion"}
    # first row of the file: 87540,12,1,13,497,2017-11-07 09:30:38
    row0 = imps.filter(pc.equal(imps["event_id"], "td-0000000")).to_pylist()[0]
    assert row0["ip"] == "87540" and row0["channel"] == "497" and row0["event_time"] == 1_510_047_038_000


def test_elec2_adapter(shared_data):
    coll = elec2.load(shared_data / elec2.RELATIVE_PATH)
    t = coll.drain()
    imps, labels = t[IMPRESSION], t[LABEL]
    assert imps.num_rows == 45_312 and labels.num_rows == 45_312
    assert coll.counts.dead_letter_total == 0
    assert imps.schema.equals(ELEC2.impression_schema())
    assert imps["event_time"][0].as_py() == 831_427_200_000  # 1996-05-07T00:00Z
    assert imps["event_time"][48].as_py() - imps["event_time"][0].as_py() == 86_400_000  # next day
    assert (np.asarray(labels["label_time"]) - np.asarray(imps["event_time"]) == 1_800_000).all()
    assert pc.mean(labels["label"].cast(pa.float64())).as_py() == pytest.approx(0.4245, abs=5e-4)


def test_data_dir_setting(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert data_dir() == tmp_path.resolve()
    with pytest.raises(DataDirMissing, match=DATA_DIR_ENV):
        data_dir(need="talkingdata/train_sample.csv")
    with pytest.raises(DataDirMissing, match="--data-dir"):
        data_dir(tmp_path / "nowhere")


def test_file_source_jsonl_csv_parquet(tmp_path):
    t0 = 1_704_067_200_000
    good = {"event_id": "a", "label_time": t0, "label": 1, "label_type": "click"}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "l.jsonl").write_bytes(
        json.dumps(good).encode() + b"\n\n" + b'{"event_id": "b"\n' + b"\xff\n")
    (tmp_path / "in" / "m.csv").write_bytes(
        b"kind,event_id,label_time,label,label_type\n"
        b"label,c,%d,0,click\n" % t0 + b"label,d,%d,7,click\n" % t0 + b"label,e\n" +
        b"label,\xff,1,1,click\n" + b"purchase,f,1,1,click\n")
    pq.write_table(pa.table({"kind": ["label", "label", "oops"], "event_id": ["g", "", "h"],
                             "label_time": [t0, t0, t0], "label": [1, 1, 1],
                             "label_type": ["click"] * 3}), tmp_path / "in" / "p.parquet")
    coll = BatchCollector(GENERATOR)
    out = list(read_files([tmp_path / "in"], GENERATOR, kind=LABEL, collector=coll))
    labels = pa.concat_tables([o[LABEL] for o in out])
    dead = pa.concat_tables([o["dead_letter"] for o in out])
    assert sorted(labels["event_id"].to_pylist()) == ["a", "c", "g"]
    assert sorted(dead["reason"].to_pylist()) == sorted(
        ["malformed_json", "invalid_utf8", "invalid_label", "malformed_csv", "invalid_utf8",
         "unknown_event_kind", "empty_event_id", "unknown_event_kind"])
    assert coll.counts.reconciles() and coll.counts.input == 11
    assert any(o.endswith("l.jsonl:3") for o in dead["origin"].to_pylist())
    assert b"\xff" in dead.filter(pc.equal(dead["reason"], "invalid_utf8"))["raw"][0].as_py()


def test_parquet_without_kind_needs_one(tmp_path):
    pq.write_table(pa.table({"event_id": ["x"]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="kind"):
        list(read_files([tmp_path / "x.parquet"], GENERATOR))
