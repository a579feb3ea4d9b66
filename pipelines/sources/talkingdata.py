"""TalkingData AdTracking adapter: real clicks (impressions) with delayed conversions (labels).

Each CSV row is one impression at ``click_time``; each attributed row also yields one label
(``conversion``) at ``attributed_time``. The file is not in time order: rows are sorted by
``click_time`` (stable, so ties keep file order). ``event_id`` is ``td-<row number in the
file>``, so any record can be traced back to its line. Both streams then pass the same
validator as every other input.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from pipelines.config import data_dir
from pipelines.events import IMPRESSION, LABEL, TALKINGDATA
from pipelines.validate import BatchCollector, ValidationConfig, Validator

RELATIVE_PATH = "talkingdata/train_sample.csv"
ID_COLUMNS = ("ip", "app", "device", "os", "channel")


def _epoch_ms(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.multiply(col.cast(pa.timestamp("s")).cast(pa.int64()), 1000)


def load(path: str | Path | None = None, config: ValidationConfig | None = None) -> BatchCollector:
    """Read, sort and validate the TalkingData sample. Returns the collector (tables + counts)."""
    path = Path(path) if path else data_dir(need=RELATIVE_PATH) / RELATIVE_PATH
    types = {c: pa.string() for c in ID_COLUMNS}
    types.update({"click_time": pa.timestamp("s"), "attributed_time": pa.timestamp("s"),
                  "is_attributed": pa.int8()})
    raw = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=types,
                                                                  strings_can_be_null=False))
    row = pa.array([f"td-{i:07d}" for i in range(raw.num_rows)], pa.string())
    imps = pa.table({"event_id": row, "event_time": _epoch_ms(raw["click_time"]),
                     **{c: raw[c] for c in ID_COLUMNS}})
    imps = imps.take(pc.sort_indices(imps, [("event_time", "ascending")]))  # Arrow's sort is stable

    pos = pc.equal(raw["is_attributed"], 1)
    labels = pa.table({"event_id": row.filter(pos.combine_chunks()),
                       "label_time": _epoch_ms(raw["attributed_time"].filter(pos)),
                       "label": raw["is_attributed"].filter(pos),
                       "label_type": pa.array(["conversion"] * pc.sum(pos).as_py(), pa.string())})
    labels = labels.take(pc.sort_indices(labels, [("label_time", "ascending")]))

    validator = Validator(TALKINGDATA, config)
    out = BatchCollector(TALKINGDATA)
    for kind, table in ((IMPRESSION, imps), (LABEL, labels)):
        out.add_tables(*validator.validate_table(table, kind, f"{path.name}"), kind)
    return out
