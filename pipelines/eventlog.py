"""Event directories: the on-disk form of impression, label and dead-letter streams.

Layout (one folder per stream, so a Flink FileSource can monitor each one continuously)::

    DIR/_manifest.json           source spec, schema fingerprint, format, counts
    DIR/impressions/part-000000.jsonl   (or .parquet)
    DIR/labels/part-000000.jsonl
    DIR/dead_letter/part-000000.jsonl
    DIR/raw/part-000000.jsonl    optional: the stream as received, malformed lines included

Part files are written under a hidden name (``.part-….inprogress``) and renamed when complete,
so a monitoring reader never sees half a file (Flink's default file filter skips names that
start with '.' or '_'). Part numbers increase in write order, which is arrival order.

JSONL encoding: one JSON object per line, UTF-8, keys in schema order; floats in shortest
round-trip form (exact for float64); binary columns (the dead letter's ``raw``) in base64.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.events import DEAD_LETTER_SCHEMA, IMPRESSION, LABEL, Counts, SourceSpec

STREAM_DIRS = {IMPRESSION: "impressions", LABEL: "labels", "dead_letter": "dead_letter"}
FORMATS = ("jsonl", "parquet")
MANIFEST = "_manifest.json"


# ---- JSONL codec ---------------------------------------------------------------------------
def table_to_jsonl(table: pa.Table) -> bytes:
    """Arrow table -> JSONL bytes (lossless for the event model's types)."""
    binary = [f.name for f in table.schema if pa.types.is_binary(f.type)]
    lines = []
    for row in table.to_pylist():
        for name in binary:
            if row[name] is not None:
                row[name] = base64.b64encode(row[name]).decode("ascii")
        lines.append(json.dumps(row, ensure_ascii=False, allow_nan=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def jsonl_to_table(data: bytes, schema: pa.Schema) -> pa.Table:
    """JSONL bytes written by ``table_to_jsonl`` -> Arrow table in ``schema``.

    For already-validated files only; raw input goes through ``validate.Validator``.
    """
    binary = [f.name for f in schema if pa.types.is_binary(f.type)]
    rows = []
    for line in data.splitlines():
        if not line:
            continue
        row = json.loads(line)
        for name in binary:
            if row.get(name) is not None:
                row[name] = base64.b64decode(row[name])
        rows.append(row)
    return pa.Table.from_pylist(rows, schema)


# ---- writing -------------------------------------------------------------------------------
class PartWriter:
    """Writes one stream as numbered part files, atomically, rolling every ``rows_per_file``."""

    def __init__(self, folder: Path, schema: pa.Schema, fmt: str = "jsonl",
                 rows_per_file: int = 100_000, time_field: str = "event_time"):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        self.folder, self.schema, self.fmt, self.rows_per_file = folder, schema, fmt, rows_per_file
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = sorted(self.folder.glob("part-*"))
        self._next = int(existing[-1].name.split("-")[1].split(".")[0]) + 1 if existing else 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self.rows_written = 0
        self.parts: list[str] = []  # the part files this writer wrote, in order
        self.time_field = time_field
        self.time_span: list[int] | None = None  # [first, last] ``time_field`` written, if any

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if table.schema != self.schema:
            table = table.cast(self.schema)
        self._buffer.append(table)
        self._buffered += table.num_rows
        while self._buffered >= self.rows_per_file:
            whole = pa.concat_tables(self._buffer)
            self._flush(whole.slice(0, self.rows_per_file))
            rest = whole.slice(self.rows_per_file)
            self._buffer, self._buffered = ([rest], rest.num_rows) if rest.num_rows else ([], 0)

    def close(self) -> None:
        if self._buffered:
            self._flush(pa.concat_tables(self._buffer))
        self._buffer, self._buffered = [], 0

    def _flush(self, table: pa.Table) -> None:
        name = f"part-{self._next:06d}.{self.fmt}"
        tmp = self.folder / f".{name}.inprogress"
        if self.fmt == "jsonl":
            tmp.write_bytes(table_to_jsonl(table))
        else:
            pq.write_table(table.combine_chunks(), tmp, compression="zstd")
        os.replace(tmp, self.folder / name)
        self._next += 1
        self.rows_written += table.num_rows
        self.parts.append(name)
        f = self.time_field
        if f in table.column_names and table.column(f).null_count < table.num_rows:
            import pyarrow.compute as pc

            lo, hi = pc.min_max(table.column(f)).as_py().values()
            self.time_span = [min(lo, self.time_span[0]), max(hi, self.time_span[1])] if self.time_span else [lo, hi]


class EventDirWriter:
    """Writes impressions, labels and dead letters of one source into an event directory."""

    def __init__(self, root: str | Path, spec: SourceSpec, fmt: str = "jsonl",
                 rows_per_file: int = 100_000, overwrite: bool = False):
        self.root, self.spec, self.fmt = Path(root), spec, fmt
        existing = [self.root / d for d in (*STREAM_DIRS.values(), MANIFEST) if (self.root / d).exists()]
        if existing and not overwrite:
            raise FileExistsError(f"{self.root} already holds an event directory; "
                                  f"choose a new folder or overwrite it")
        for p in existing:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.root.mkdir(parents=True, exist_ok=True)
        schemas = {IMPRESSION: spec.impression_schema(), LABEL: spec.schema(LABEL),
                   "dead_letter": DEAD_LETTER_SCHEMA}
        self.writers = {k: PartWriter(self.root / STREAM_DIRS[k], schemas[k], fmt, rows_per_file,
                                      "label_time" if k == LABEL else "event_time")
                        for k in STREAM_DIRS}

    def write(self, tables: dict[str, pa.Table]) -> None:
        for k, t in tables.items():
            self.writers[k].write(t)

    def close(self, counts: Counts, extra: dict | None = None) -> dict:
        for w in self.writers.values():
            w.close()
        if not counts.reconciles():
            raise AssertionError(f"counts do not reconcile: {counts.to_dict()}")
        imp, lab = self.writers[IMPRESSION], self.writers[LABEL]
        manifest = {"source": self.spec.to_dict(), "fingerprint": self.spec.fingerprint(),
                    "format": self.fmt, "counts": counts.to_dict(),
                    "rows_written": {k: w.rows_written for k, w in self.writers.items()},
                    # what ``event_time_span`` answers without reading the parts (while they are these)
                    "impressions": {"parts": imp.parts, "event_time_span": imp.time_span},
                    "labels": {"parts": lab.parts, "label_time_span": lab.time_span}}
        manifest.update(extra or {})
        tmp = self.root / f".{MANIFEST}.inprogress"
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.root / MANIFEST)
        return manifest


# ---- reading -------------------------------------------------------------------------------
def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not an event directory (no {MANIFEST})")
    return json.loads(path.read_text())


def part_files(root: str | Path, stream: str) -> list[Path]:
    """Completed part files of one stream, in write order (hidden in-progress files skipped)."""
    folder = Path(root) / STREAM_DIRS.get(stream, stream)
    return sorted(p for p in folder.glob("part-*") if p.suffix.lstrip(".") in FORMATS)


def iter_stream(root: str | Path, stream: str, schema: pa.Schema) -> Iterator[pa.Table]:
    """Tables of one stream, one per part file, in write order."""
    for p in part_files(root, stream):
        if p.suffix == ".parquet":
            yield pq.read_table(p, schema=schema)
        else:
            yield jsonl_to_table(p.read_bytes(), schema)


def read_stream(root: str | Path, stream: str, spec: SourceSpec | None = None) -> pa.Table:
    """A whole stream of an event directory as one table ('impression', 'label', 'dead_letter')."""
    if spec is None:
        spec = SourceSpec.from_dict(read_manifest(root)["source"])
    schema = DEAD_LETTER_SCHEMA if stream == "dead_letter" else spec.schema(stream)
    tables = list(iter_stream(root, stream, schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _time_span(root: str | Path, stream: str, field: str) -> tuple[int, int] | None:
    """The first and last ``field`` of a stream (None: no rows), from the manifest when its writer
    recorded them and the stream's parts are still the ones it wrote (a large history is not
    read whole); otherwise read from the parts."""
    import pyarrow.compute as pc

    recorded = read_manifest(root).get(STREAM_DIRS[stream]) or {}
    if "parts" in recorded and recorded["parts"] == [p.name for p in part_files(root, stream)]:
        span = recorded.get(f"{field}_span")
        return (int(span[0]), int(span[1])) if span else None
    times = read_stream(root, stream).column(field)
    if len(times) == times.null_count:
        return None
    span = pc.min_max(times).as_py()
    return int(span["min"]), int(span["max"])


def event_time_span(root: str | Path) -> tuple[int, int] | None:
    """The first and last event time of an event directory's impressions (None: none yet)."""
    return _time_span(root, IMPRESSION, "event_time")


def label_time_span(root: str | Path) -> tuple[int, int] | None:
    """The first and last label time of an event directory's labels (None: none)."""
    return _time_span(root, LABEL, "label_time")


def cut_time(root: str | Path) -> int | None:
    """The end of what an event directory holds: its last impression's event time or label's
    label time, whichever is later, plus 1 ms (None: empty). As a history's cut, it splits the
    join's outcomes by their resolution time: before it, the history's (what a bootstrap
    trains on: ``pipelines.bootstrap``); from it on, the stream's (a job warmed up with the
    history holds the impressions still pending at the cut: ``runners.stream.warmup_job``).

    >>> import tempfile
    >>> from pipelines.events import GENERATOR, Counts
    >>> w = EventDirWriter(tempfile.mkdtemp(), GENERATOR)
    >>> w.write({"label": pa.table({"event_id": ["a"], "label_time": [900], "label": [1],
    ...                             "label_type": ["click"]})})
    >>> _ = w.close(Counts(input=1, valid={"impression": 0, "label": 1}))
    >>> cut_time(w.root)  # no impressions: the last label's time + 1
    901
    """
    ends = [s[1] for s in (event_time_span(root), label_time_span(root)) if s]
    return max(ends) + 1 if ends else None
