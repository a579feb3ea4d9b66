"""Elec2 adapter: the NSW electricity stream, a classic real concept-drift benchmark.

Row i is half-hour ``i % 48`` of day ``i // 48`` from 1996-05-07T00:00Z, so
``event_time = start + i * 30 min``. The target (did the price go up) becomes known one
period later: every row yields a label (0 or 1, ``price_up``) at ``event_time + 30 min``.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from pipelines.config import data_dir
from pipelines.events import ELEC2, IMPRESSION, LABEL
from pipelines.validate import BatchCollector, ValidationConfig, Validator

RELATIVE_PATH = "elec2/electricity.csv"
START_MS = 831_427_200_000  # 1996-05-07T00:00:00Z
PERIOD_MS = 30 * 60 * 1000


def load(path: str | Path | None = None, config: ValidationConfig | None = None) -> BatchCollector:
    """Read and validate Elec2. Returns the collector (tables + counts)."""
    path = Path(path) if path else data_dir(need=RELATIVE_PATH) / RELATIVE_PATH
    types = {c: pa.float64() for c in ELEC2.numeric_fields}
    types["class"] = pa.int8()
    raw = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=types))
    n = raw.num_rows
    idx = pa.array(range(n), pa.int64())
    ids = pa.array([f"elec2-{i:06d}" for i in range(n)], pa.string())
    t = pc.add(pc.multiply(idx, PERIOD_MS), START_MS)
    imps = pa.table({"event_id": ids, "event_time": t, **{c: raw[c] for c in ELEC2.numeric_fields}})
    labels = pa.table({"event_id": ids, "label_time": pc.add(t, PERIOD_MS), "label": raw["class"],
                       "label_type": pa.array(["price_up"] * n, pa.string())})
    validator = Validator(ELEC2, config)
    out = BatchCollector(ELEC2)
    for kind, table in ((IMPRESSION, imps), (LABEL, labels)):
        out.add_tables(*validator.validate_table(table, kind, path.name), kind)
    return out
