"""A user's own event files: JSONL, CSV or Parquet, validated like every other input.

* JSONL (``.jsonl``/``.json``/``.ndjson``): one JSON object per line. A ``kind`` field
  ("impression"/"label") selects the schema; files of one kind may omit it and pass ``kind``.
* CSV (``.csv``): a header row with the schema's column names (and optionally ``kind``).
  One record per physical line (quoted newlines are not supported); each line is decoded as
  UTF-8 on its own, so one bad line becomes one dead letter.
* Parquet (``.parquet``): typed columns, validated vectorized; a ``kind`` column, if present,
  splits the file.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.events import KINDS, Reason, SourceSpec
from pipelines.validate import PARSE_CHUNK, BatchCollector, ValidationConfig, Validator, _add_parsed, _dead

JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
SUFFIXES = JSONL_SUFFIXES | {".csv", ".parquet"}


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, and files of a known suffix below named folders, in sorted order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES and not f.name.startswith((".", "_")))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def _lines(path: Path, limit: int) -> Iterator[bytes]:
    """The file's lines, in bounded memory: a line longer than ``limit`` bytes (no valid record
    is) is read only up to ``limit + 1`` bytes, the validator's oversize dead letter, and the
    rest of it skipped; a 1 GB line without a newline costs ``limit`` bytes, not 1 GB."""
    with open(path, "rb") as f:
        while True:
            line = f.readline(limit + 1)
            if not line:
                return
            if len(line) > limit and not line.endswith(b"\n"):
                while True:  # skip to the end of this line
                    chunk = f.readline(1 << 20)
                    if not chunk or chunk.endswith(b"\n"):
                        break
                yield line
            else:
                yield line.rstrip(b"\r\n")


def read_file(path: Path, validator: Validator, collector: BatchCollector, kind: str | None = None,
              batch_rows: int = 50_000) -> Iterator[dict[str, pa.Table]]:
    """Validate one file into ``collector``; yields drained tables every ``batch_rows`` records."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = pq.read_table(path)
        if "kind" in table.column_names:
            kinds = table.column("kind")
            for k in KINDS:
                part = table.filter(pc.fill_null(pc.equal(kinds, k), False))
                collector.add_tables(*validator.validate_table(part, k, str(path)), k)
            unknown = table.filter(pc.invert(pc.fill_null(pc.is_in(kinds, pa.array(KINDS)), False)))
            for i, r in enumerate(unknown.to_pylist()):
                collector.add((None, _dead(Reason.UNKNOWN_EVENT_KIND, f"kind={r['kind']!r}", None,
                                           f"{path}#kind{i}", repr(r).encode())))
        else:
            if kind not in KINDS:
                raise ValueError(f"{path}: no 'kind' column; pass kind= one of {KINDS}")
            collector.add_tables(*validator.validate_table(table, kind, str(path)), kind)
        yield collector.drain()
        return
    lines = _lines(path, validator.config.max_record_bytes)
    header: list[str] | None = None
    chunk: list[bytes] = []  # JSONL lines in a row, parsed together (Validator.parse_many)
    first = 1
    for i, raw in enumerate(lines, 1):
        origin = f"{path}:{i}"
        if suffix == ".csv":
            if header is None:
                header = next(csv.reader([raw.decode("utf-8", "replace")]))
                continue
            if not raw:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                collector.add((None, _dead(Reason.INVALID_UTF8, str(e), kind, origin, raw)))
                continue
            try:
                row = next(csv.reader([text], strict=True))
            except (csv.Error, StopIteration) as e:
                collector.add((None, _dead(Reason.MALFORMED_CSV, str(e), kind, origin, raw)))
                continue
            collector.add(validator.parse_csv_row(row, header, origin, raw, kind))
        elif suffix in JSONL_SUFFIXES:
            if not raw.strip():
                continue  # blank lines are not records
            if not chunk:
                first = i
            elif i != first + len(chunk):  # parse_many numbers a chunk's lines consecutively
                yield from _add_parsed(validator, collector, chunk, str(path), first, kind, batch_rows)
                chunk, first = [], i
            chunk.append(raw)
            if len(chunk) == PARSE_CHUNK:
                yield from _add_parsed(validator, collector, chunk, str(path), first, kind, batch_rows)
                chunk = []
            continue
        else:
            raise ValueError(f"{path}: unknown file type; expected one of {sorted(SUFFIXES)}")
        if collector.pending() >= batch_rows:
            yield collector.drain()
    yield from _add_parsed(validator, collector, chunk, str(path), first, kind, batch_rows)
    yield collector.drain()


def read_files(paths: Iterable[str | Path], spec: SourceSpec, kind: str | None = None,
               config: ValidationConfig | None = None,
               collector: BatchCollector | None = None) -> Iterator[dict[str, pa.Table]]:
    """Validate a user's files; yields tables ('impression', 'label', 'dead_letter') in batches.
    Pass a ``collector`` to read its running counts."""
    validator = Validator(spec, config)
    collector = collector or BatchCollector(spec)
    for p in expand(paths):
        yield from read_file(p, validator, collector, kind)
