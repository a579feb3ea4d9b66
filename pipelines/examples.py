"""Joined training examples as Parquet, partitioned by event-time date and hour.

The streaming job commits its joined examples as JSON lines (the pip PyFlink ships no Parquet
format jar) under ``RUN_DIR/examples/dt=YYYY-MM-DD/hr=HH/``; Flink marks a partition committed
with a ``_SUCCESS`` file. ``export_parquet`` turns every committed partition into one Parquet
file with a fixed schema, ``RUN_DIR/examples_parquet/dt=.../hr=.../examples.parquet``, rows in
update order (``seq``), published atomically (write, then rename). It is idempotent and
incremental: a partition is rewritten only when a JSON part file is newer than its Parquet
file, so it can run while a follow-mode job is still committing. The TFX retrain reads these.

>>> import json, tempfile
>>> from pathlib import Path
>>> run = Path(tempfile.mkdtemp())
>>> part = run / "examples" / "dt=2017-11-07" / "hr=09"
>>> part.mkdir(parents=True)
>>> row = {"event_id": "e1", "event_time": 1510045200000, "resolution_time": 1510045260000,
...        "label": 1, "label_time": 1510045260000, "label_delay_ms": 60000, "kind": "label",
...        "weight": 1.0, "features": json.dumps({"indices": [3, 7], "values": [1.0, 0.5]}),
...        "spec_fingerprint": "abc", "seq": 1}
>>> _ = (part / "part-0").write_text(json.dumps(row) + "\\n")
>>> _ = (part / "_SUCCESS").write_text("")
>>> [p.relative_to(run).as_posix() for p in export_parquet(run)]
['examples_parquet/dt=2017-11-07/hr=09/examples.parquet']
>>> t = read_examples(run / "examples_parquet")
>>> t.column("feature_indices").to_pylist(), t.column("hr").to_pylist()
([[3, 7]], ['09'])
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

EXAMPLE_SCHEMA = pa.schema([
    ("event_id", pa.string()),
    ("event_time", pa.int64()),
    ("resolution_time", pa.int64()),
    ("label", pa.int32()),
    ("label_time", pa.int64()),  # null for a negative (no label within the window)
    ("label_delay_ms", pa.int64()),
    ("kind", pa.string()),  # label | negative | correction
    ("weight", pa.float64()),
    ("feature_indices", pa.list_(pa.int32())),  # the hashed features as served (point-in-time)
    ("feature_values", pa.list_(pa.float32())),
    ("spec_fingerprint", pa.string()),
    ("seq", pa.int64()),  # the FTRL update sequence number: the learning order
])
FILE = "examples.parquet"


def _partition_rows(folder: Path) -> pa.Table:
    rows = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith((".", "_")):
            with open(p, encoding="utf-8") as f:
                rows += [json.loads(line) for line in f if line.strip()]
    rows.sort(key=lambda r: r["seq"])
    feats = [json.loads(r.pop("features")) for r in rows]
    cols = {f.name: [r.get(f.name) for r in rows] for f in EXAMPLE_SCHEMA if not f.name.startswith("feature_")}
    cols["feature_indices"] = [f["indices"] for f in feats]
    cols["feature_values"] = [f["values"] for f in feats]
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in EXAMPLE_SCHEMA}, schema=EXAMPLE_SCHEMA)


def export_parquet(run_dir: str | Path) -> list[Path]:
    """Export the committed JSON example partitions of ``run_dir``; returns the Parquet files
    (re)written now."""
    run_dir = Path(run_dir)
    src, dst = run_dir / "examples", run_dir / "examples_parquet"
    written = []
    for success in sorted(src.glob("dt=*/hr=*/_SUCCESS")):
        folder = success.parent
        target = dst / folder.relative_to(src) / FILE
        parts = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_"))]
        if target.exists() and all(p.stat().st_mtime <= target.stat().st_mtime for p in parts):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{FILE}.{os.getpid()}.tmp")
        pq.write_table(_partition_rows(folder), tmp)
        os.replace(tmp, target)
        written.append(target)
    return written


def read_examples(path: str | Path) -> pa.Table:
    """All exported examples under ``path`` (Hive partitions ``dt``/``hr`` as string columns),
    in learning order."""
    part = ds.partitioning(pa.schema([("dt", pa.string()), ("hr", pa.string())]), flavor="hive")
    table = ds.dataset(str(path), format="parquet", partitioning=part, schema=EXAMPLE_SCHEMA.append(
        pa.field("dt", pa.string())).append(pa.field("hr", pa.string()))).to_table()
    return table.sort_by("seq")
