"""Joined training examples as Parquet, partitioned by event-time date and hour.

The streaming job commits its joined examples as JSON lines (the pip PyFlink ships no Parquet
format jar) under ``RUN_DIR/examples/dt=YYYY-MM-DD/hr=HH/``: Flink's FileSink writes part files under
hidden in-progress names and renames them when a checkpoint completes, so every visible part
file is committed. ``export_parquet`` turns every partition with committed part files into one Parquet
file, ``RUN_DIR/examples_parquet/dt=.../hr=.../examples.parquet``: the fixed columns of
``EXAMPLE_SCHEMA`` plus the raw model inputs as served (point-in-time, windowed aggregates
included), one typed column each (``inputs_schema``: what TFX's Transform reads), rows in
update order (``seq``), published atomically (write, then rename). It is idempotent and
incremental: a partition is rewritten only when its committed part files differ from the ones
its Parquet file was made from (``.parts.json`` beside it), so it can run while a follow-mode
job is still committing. The TFX retrain reads these.

>>> import json, tempfile
>>> import pyarrow as pa
>>> from pathlib import Path
>>> run = Path(tempfile.mkdtemp())
>>> part = run / "examples" / "dt=2017-11-07" / "hr=09"
>>> part.mkdir(parents=True)
>>> row = {"event_id": "e1", "event_time": 1510045200000, "resolution_time": 1510045260000,
...        "label": 1, "label_time": 1510045260000, "label_delay_ms": 60000, "kind": "label",
...        "weight": 1.0, "features": json.dumps({"indices": [3, 7], "values": [1.0, 0.5]}),
...        "inputs": "{}", "spec_fingerprint": "abc", "seq": 1}
>>> _ = (part / "part-0").write_text(json.dumps(row) + "\\n")
>>> _ = (part / ".part-1.inprogress").write_text("not committed yet")
>>> [p.relative_to(run).as_posix() for p in export_parquet(run, pa.schema([]))]
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


def inputs_schema(source, spec) -> pa.Schema:
    """The raw inputs of ``spec`` as typed columns: a source's string fields, its numeric
    fields (float64) and the windowed aggregates (int64), the way the streaming job served them."""
    fields = [pa.field(n, pa.string()) for n in source.string_fields]
    fields += [pa.field(n, pa.float64()) for n in source.numeric_fields]
    fields += [pa.field(a.name, pa.int64()) for a in spec.aggregates]
    return pa.schema(fields)


def run_inputs_schema(run_dir: str | Path) -> pa.Schema:
    """``inputs_schema`` of the run in ``run_dir`` (from its job.json: event log + artifact)."""
    from pipelines.eventlog import read_manifest
    from pipelines.events import SourceSpec
    from transforms.artifact import TransformArtifact

    job = json.loads((Path(run_dir) / "job.json").read_text())
    source = SourceSpec.from_dict(read_manifest(job["event_dir"])["source"])
    return inputs_schema(source, TransformArtifact.load(job["artifact"]).spec)


def _partition_rows(parts: list[Path], inputs: pa.Schema) -> pa.Table:
    rows = []
    for p in parts:
        with open(p, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows_to_table(rows, inputs)


def rows_to_table(rows: list[dict], inputs: pa.Schema) -> pa.Table:
    """Example records (the job's JSON lines, parsed) -> the Parquet table, in ``seq`` order."""
    rows = sorted(rows, key=lambda r: r["seq"])
    feats = [json.loads(r.pop("features")) for r in rows]
    cols = {f.name: [r.get(f.name) for r in rows] for f in EXAMPLE_SCHEMA if not f.name.startswith("feature_")}
    cols["feature_indices"] = [f["indices"] for f in feats]
    cols["feature_values"] = [f["values"] for f in feats]
    raw = [json.loads(r.get("inputs") or "{}") for r in rows]
    cols.update({f.name: [x.get(f.name) for x in raw] for f in inputs})
    schema = pa.schema([*EXAMPLE_SCHEMA, *inputs])
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema}, schema=schema)


def committed_parts(folder: Path) -> list[Path]:
    """A partition's committed part files: the visible ones (in-progress files are hidden)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_")))


def export_parquet(run_dir: str | Path, inputs: pa.Schema | None = None) -> list[Path]:
    """Export the committed JSON example partitions of ``run_dir``; returns the Parquet files
    (re)written now. ``inputs``: the input columns (default: ``run_inputs_schema``)."""
    run_dir = Path(run_dir)
    if inputs is None:
        inputs = run_inputs_schema(run_dir)
    src, dst = run_dir / "examples", run_dir / "examples_parquet"
    written = []
    for folder in sorted(p for p in src.glob("dt=*/hr=*") if p.is_dir()):
        target = dst / folder.relative_to(src) / FILE
        parts = committed_parts(folder)
        # the part files it was made from (a file renamed on commit keeps its older mtime)
        names = target.with_name(".parts.json")
        listed = json.dumps([p.name for p in parts])
        if not parts or target.exists() and names.exists() and names.read_text() == listed:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{FILE}.{os.getpid()}.tmp")
        pq.write_table(_partition_rows(parts, inputs), tmp)
        os.replace(tmp, target)
        names.write_text(listed)
        written.append(target)
    return written


def read_examples(path: str | Path, files: list[Path] | None = None) -> pa.Table:
    """All exported examples under ``path`` (or just ``files``), with the Hive partitions
    ``dt``/``hr`` as string columns, in learning order."""
    part = ds.partitioning(pa.schema([("dt", pa.string()), ("hr", pa.string())]), flavor="hive")
    sources = [str(f) for f in files] if files is not None else str(path)
    first = files[0] if files else next(Path(path).rglob(FILE), None)
    schema = pq.read_schema(first) if first is not None else EXAMPLE_SCHEMA
    schema = schema.append(pa.field("dt", pa.string())).append(pa.field("hr", pa.string()))
    table = ds.dataset(sources, format="parquet", partitioning=part, partition_base_dir=str(path),
                       schema=schema).to_table()
    return table.sort_by("seq")
