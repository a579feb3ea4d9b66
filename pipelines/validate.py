"""Record validation: every record is either valid, typed per the event model, or a dead letter
with a machine-readable reason and its raw payload. Nothing is dropped silently.

Two entry points share one rule set (field order, check order, limits):

* ``Validator.parse_line`` / ``parse_csv_row`` for raw input (JSONL lines, CSV rows);
* ``Validator.validate_table`` for already-typed Arrow data (Parquet files), vectorized.

Check order per record: fields in schema order; per field: missing -> wrong type -> value
checks (non-finite, timestamp range, string size, label value). The first failure is the reason.

>>> from pipelines.events import SOURCES
>>> v = Validator(SOURCES["elec2"])
>>> kind, rec = v.parse_line(b'{"kind":"label","event_id":"e1","label_time":900000000000,'
...                          b'"label":1,"label_type":"price_up"}', "doc:1")
>>> kind, rec["label"]
('label', 1)
>>> v.parse_line(b'{"kind":"label","event_id":"e1"}', "doc:2")[1]["reason"]
'missing_field'
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.events import (DEAD_LETTER_SCHEMA, IMPRESSION, KINDS, LABEL, LABEL_SCHEMA, Counts,
                              Reason, SourceSpec)

DAY_MS = 86_400_000


@dataclass(frozen=True)
class ValidationConfig:
    """Limits. Time bounds are fixed dates, not 'now', so a replay validates the same way
    on any day (determinism); widen them for older or newer data."""

    min_time_ms: int = 631_152_000_000  # 1990-01-01T00:00Z; 1970-ish times are clock bugs
    max_time_ms: int = 2_208_988_800_000  # 2040-01-01T00:00Z
    max_string_bytes: int = 1024
    max_record_bytes: int = 64 * 1024


def _dead(reason: Reason, detail: str, kind: str | None, origin: str, raw: bytes) -> dict:
    return {"reason": reason.value, "detail": detail, "kind": kind, "origin": origin, "raw": raw}


class _Bad(Exception):
    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _json_constant(name: str) -> float:
    # json.loads accepts NaN/Infinity literals; keep them so they get the non_finite reason.
    return float(name.lower().replace("infinity", "inf"))


class Validator:
    """Validates records of one source against the event model.

    ``parse_line`` returns ``(kind, record)`` for a valid record or ``(None, dead_letter)``.
    """

    def __init__(self, spec: SourceSpec, config: ValidationConfig | None = None):
        self.spec = spec
        self.config = config or ValidationConfig()
        self._schemas = {k: spec.schema(k) for k in KINDS}
        self._optional = set(spec.optional)
        self._string_fields = set(spec.string_fields)
        self._numeric_fields = set(spec.numeric_fields)

    # ---- raw input -------------------------------------------------------------------------
    def parse_line(self, raw: bytes, origin: str, kind: str | None = None):
        """One JSONL line (without its newline). ``kind`` is the default when the record has
        no ``kind`` field (files that hold one kind only)."""
        if len(raw) > self.config.max_record_bytes:
            return None, _dead(Reason.OVERSIZE_RECORD,
                               f"{len(raw)} bytes > {self.config.max_record_bytes}", kind, origin,
                               raw[: self.config.max_record_bytes])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, _dead(Reason.INVALID_UTF8, str(e), kind, origin, raw)
        try:
            obj = json.loads(text, parse_constant=_json_constant)
        except ValueError as e:
            return None, _dead(Reason.MALFORMED_JSON, str(e), kind, origin, raw)
        except RecursionError:  # '[[[[…' nested deeper than Python's stack (64 KiB allow ~60k)
            return None, _dead(Reason.MALFORMED_JSON, "nested too deeply", kind, origin, raw)
        if not isinstance(obj, dict):
            return None, _dead(Reason.MALFORMED_JSON, f"expected a JSON object, got {type(obj).__name__}",
                               kind, origin, raw)
        return self.check(obj, origin, raw, kind, from_text=False)

    def parse_batch(self, lines: list[bytes | str | None], kind: str) -> tuple[dict[str, list], list[bool]]:
        """Many JSONL lines of one ``kind`` (bytes or text, without newlines) at once, for speed:
        ``(columns, ok)``, where ``ok[i]`` says line i is valid and its typed fields are
        ``columns[name][i]`` (exactly ``parse_line``'s record); a line not ``ok`` may be valid or
        not: ``parse_line`` decides it (and names its reason). Parsed by orjson, checked a column
        at a time; only records whose every field has exactly the expected Python type and
        passes the limits are vouched for, anything unusual (another kind, a null, a float
        timestamp, a long or non-ASCII string, what orjson reads differently from ``json``:
        NaN, huge or out-of-range numbers, lone surrogates) is left to ``parse_line``.

        >>> from pipelines.events import SOURCES
        >>> v = Validator(SOURCES["elec2"])
        >>> cols, ok = v.parse_batch(['{"event_id":"e1","label_time":900000000000,"label":1,'
        ...                           '"label_type":"up"}', '{"event_id":"e2"}', None], "label")
        >>> ok, cols["label"][0], cols["event_id"][0]
        ([True, False, False], 1, 'e1')
        """
        import numpy as np

        objs, ok = self._objects(lines)
        absent = object()
        ok &= np.fromiter((k is absent or k == kind for k in (o.get("kind", absent) for o in objs)), bool, len(objs))
        return self._vouch(objs, ok, kind), ok.tolist()

    def parse_many(self, lines: list[bytes], origin: str, first: int = 1, kind: str | None = None) -> list[tuple]:
        """``parse_line`` of each of ``lines`` (line i's origin ``<origin>:<first + i>``), the
        same results in order, faster: the ordinary valid records of each kind vouched for at
        once (``parse_batch``'s checks), the rest one by one. ``kind``: as ``parse_line``'s, the
        kind of a record without a ``kind`` field (None: such a record is a dead letter).

        >>> from pipelines.events import SOURCES
        >>> v = Validator(SOURCES["elec2"])
        >>> [k for k, _ in v.parse_many([b'{"kind":"label","event_id":"e1","label_time":900000000000,'
        ...                              b'"label":1,"label_type":"up"}', b'{"event_id":"e2"}'], "doc")]
        ['label', None]
        """
        import numpy as np

        objs, ok = self._objects(lines)
        absent = object()
        kinds = [o.get("kind", absent) for o in objs]
        out: list = [None] * len(lines)
        for k in KINDS:
            rows = [i for i, (good, ki) in enumerate(zip(ok, kinds))
                    if good and (ki == k or (ki is absent and kind == k))]
            if not rows:
                continue
            vouched: list[int] = []
            columns = self._vouch([objs[i] for i in rows], np.ones(len(rows), bool), k, vouched)
            names = list(columns)
            for j in vouched:
                out[rows[j]] = (k, {name: columns[name][j] for name in names})
        return [res if res is not None else self.parse_line(lines[i], f"{origin}:{first + i}", kind)
                for i, res in enumerate(out)]

    def _objects(self, lines: list) -> tuple[list[dict], Any]:
        """Each line as orjson reads it, if it is a JSON object within the size limit (else
        ``{}``), and which are (a numpy bool array)."""
        import numpy as np
        import orjson

        n, cfg = len(lines), self.config
        ok = np.zeros(n, bool)
        objs: list[dict] = [{}] * n  # a line orjson cannot read as an object: no fields (not ok)
        chars = cfg.max_record_bytes // 4  # UTF-8: at most 4 bytes per character
        for i, line in enumerate(lines):
            # bytes: orjson refuses invalid UTF-8 (and a BOM), which parse_line names
            if line is None or len(line) > (cfg.max_record_bytes if type(line) is bytes else chars):
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if type(obj) is dict:
                objs[i] = obj
                ok[i] = True
        return objs, ok

    def _vouch(self, objs: list[dict], ok, kind: str, vouched: list | None = None) -> dict[str, list]:
        """``parse_batch``'s column checks of records of ``kind``: ``ok`` (numpy bool, in place)
        keeps the records whose every field is ordinary and valid; returns the typed columns;
        ``vouched`` (if given) gets the indices of the ``ok`` ones."""
        import numpy as np

        n, cfg = len(objs), self.config
        short = cfg.max_string_bytes // 4
        columns: dict[str, list] = {}
        for f in self._schemas[kind]:
            name = f.name
            vals = [o.get(name) for o in objs]
            if name in ("event_id", "label_type"):
                ok &= np.fromiter((type(v) is str and 0 < len(v) <= short for v in vals), bool, n)
            elif name in ("event_time", "label_time"):
                lo, hi = max(cfg.min_time_ms, 0), cfg.max_time_ms
                ok &= np.fromiter((type(v) is int and lo <= v < hi for v in vals), bool, n)
            elif name == "label":
                ok &= np.fromiter((type(v) is int and (v == 0 or v == 1) for v in vals), bool, n)
            elif name in self._string_fields:
                ok &= np.fromiter(((type(v) is str and len(v) <= short) or type(v) is int for v in vals), bool, n)
                vals = [v if type(v) is not int else str(v) for v in vals]
            elif name in self._numeric_fields:
                # orjson reads numbers beyond int64/uint64 as floats, never inf or NaN
                ok &= np.fromiter((type(v) is float or (type(v) is int and -2**63 <= v < 2**64)
                                   for v in vals), bool, n)
                vals = [float(v) if type(v) is int else v for v in vals]
            else:
                raise AssertionError(f"unhandled field {name}")  # schema and checks out of sync
            columns[name] = vals  # a null (also in an optional field) is left to the row path
        if vouched is not None:
            vouched.extend(np.flatnonzero(ok).tolist())
        return columns

    def parse_csv_row(self, row: list[str], header: list[str], origin: str, raw: bytes,
                      kind: str | None = None):
        """One CSV row, already split. Values are text and are parsed per the schema."""
        if len(row) != len(header):
            return None, _dead(Reason.MALFORMED_CSV, f"{len(row)} columns, header has {len(header)}",
                               kind, origin, raw)
        obj = {h: (v if v != "" else None) for h, v in zip(header, row)}
        return self.check(obj, origin, raw, kind, from_text=True)

    def check(self, obj: dict, origin: str, raw: bytes, kind: str | None = None,
              from_text: bool = False):
        """Check a parsed record; ``from_text`` parses values from strings (CSV)."""
        kind = obj.get("kind", kind)
        if kind not in KINDS:
            return None, _dead(Reason.UNKNOWN_EVENT_KIND, f"kind={kind!r}; expected one of {KINDS}",
                               None, origin, raw)
        out: dict[str, Any] = {}
        try:
            for f in self._schemas[kind]:
                out[f.name] = self._field(kind, f.name, obj.get(f.name), from_text)
        except _Bad as e:
            return None, _dead(e.reason, e.detail, kind, origin, raw)
        return kind, out

    def _field(self, kind: str, name: str, value: Any, from_text: bool) -> Any:
        if value is None:
            if name in self._optional:
                return None
            raise _Bad(Reason.MISSING_FIELD, f"{name} is missing")
        if name == "event_id" or name == "label_type":
            if not isinstance(value, str):
                raise _Bad(Reason.WRONG_TYPE, f"{name} must be a string, got {type(value).__name__}")
            if value == "":
                raise _Bad(Reason.EMPTY_EVENT_ID if name == "event_id" else Reason.MISSING_FIELD,
                           f"{name} is empty")
            return self._sized(name, value)
        if name in ("event_time", "label_time"):
            t = self._int(name, value, from_text)
            if t < 0:
                raise _Bad(Reason.NEGATIVE_TIMESTAMP, f"{name}={t}")
            if t < self.config.min_time_ms:
                raise _Bad(Reason.TIMESTAMP_TOO_OLD, f"{name}={t} < {self.config.min_time_ms}")
            if t >= self.config.max_time_ms:
                raise _Bad(Reason.FUTURE_TIMESTAMP, f"{name}={t} >= {self.config.max_time_ms}")
            return t
        if name == "label":
            y = self._int(name, value, from_text)
            if y not in (0, 1):
                raise _Bad(Reason.INVALID_LABEL, f"label={y}; expected 0 or 1")
            return y
        if name in self._string_fields:
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise _Bad(Reason.WRONG_TYPE, f"{name} must be a string or integer code, "
                                              f"got {type(value).__name__}")
            return self._sized(name, value if isinstance(value, str) else str(value))
        if name in self._numeric_fields:
            if from_text and isinstance(value, str):
                try:
                    x = float(value)
                except ValueError:
                    raise _Bad(Reason.WRONG_TYPE, f"{name}={value[:40]!r} is not a number") from None
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _Bad(Reason.WRONG_TYPE, f"{name} must be a number, got {type(value).__name__}")
            else:
                try:
                    x = float(value)
                except OverflowError:  # an integer beyond a double's range: infinite as one
                    raise _Bad(Reason.NON_FINITE, f"{name} overflows a double") from None
            if not math.isfinite(x):
                raise _Bad(Reason.NON_FINITE, f"{name}={x}")
            return x
        raise AssertionError(f"unhandled field {name}")  # schema and checks out of sync

    def _int(self, name: str, value: Any, from_text: bool) -> int:
        if from_text and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise _Bad(Reason.WRONG_TYPE, f"{name}={value[:40]!r} is not an integer") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise _Bad(Reason.NON_FINITE, f"{name}={value}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(Reason.WRONG_TYPE, f"{name} must be an integer, got {type(value).__name__}")
        return value

    def _sized(self, name: str, s: str) -> str:
        limit = self.config.max_string_bytes
        if s.isascii():
            size = len(s)
        else:
            try:  # JSON escapes can smuggle lone surrogates, which are not UTF-8
                size = len(s.encode("utf-8"))
            except UnicodeEncodeError as e:
                raise _Bad(Reason.INVALID_UTF8, f"{name}: {e}") from None
        if size > limit:
            raise _Bad(Reason.OVERSIZE_STRING, f"{name} is longer than {limit} bytes")
        return s

    # ---- typed Arrow input (vectorized) ----------------------------------------------------
    def validate_table(self, table: pa.Table, kind: str, origin: str) -> tuple[pa.Table, pa.Table]:
        """Split an Arrow table of one kind into (valid rows in the kind's schema, dead letters).

        Same rules and order as the row path; a column that is absent or of an uncastable type
        makes every row bad with missing_field / wrong_type.
        """
        schema = self._schemas[kind]
        n = table.num_rows
        reason = pa.nulls(n, pa.string())
        detail = pa.nulls(n, pa.string())
        columns = {}
        for f in reversed(schema):  # reversed + fill: the first failing field wins
            r, d, col = self._column_reasons(kind, f, table, n)
            columns[f.name] = col
            if r is not None:
                bad = pc.is_valid(r)
                reason = pc.if_else(bad, r, reason)
                detail = pc.if_else(bad, d, detail)
        ok = pc.is_null(reason)
        valid = pa.table([pc.filter(columns[f.name], ok) for f in schema], schema=schema)
        bad_mask = pc.invert(ok)
        bad_rows = table.filter(bad_mask)
        raws = [json.dumps(r, default=str, allow_nan=True).encode() for r in bad_rows.to_pylist()]
        dead = pa.table(
            {
                "reason": pc.filter(reason, bad_mask),
                "detail": pc.filter(detail, bad_mask),
                "kind": pa.array([kind] * len(raws), pa.string()),
                "origin": pa.array([f"{origin}#{i}" for i in
                                    pc.indices_nonzero(bad_mask).to_pylist()], pa.string()),
                "raw": pa.array(raws, pa.binary()),
            },
            schema=DEAD_LETTER_SCHEMA,
        )
        return valid, dead

    def _column_reasons(self, kind: str, f: pa.Field, table: pa.Table, n: int):
        """(reason array or None, detail array, column cast to the schema type)."""

        def const(reason: Reason, text: str):
            return pa.array([reason.value] * n, pa.string()), pa.array([text] * n, pa.string())

        if f.name not in table.column_names:
            r, d = const(Reason.MISSING_FIELD, f"{f.name} is missing")
            return r, d, pa.nulls(n, f.type)
        col = table.column(f.name).combine_chunks() if n else pa.array([], f.type)
        if col.type != f.type:
            numeric_ok = pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
            castable = (pa.types.is_string(f.type) and pa.types.is_integer(col.type)) or (
                pa.types.is_floating(f.type) and numeric_ok) or (
                pa.types.is_integer(f.type) and pa.types.is_integer(col.type))
            if not castable:
                r, d = const(Reason.WRONG_TYPE, f"{f.name} has type {col.type}, expected {f.type}")
                return r, d, pa.nulls(n, f.type)
            col = col.cast(f.type, safe=False) if pa.types.is_integer(f.type) else col.cast(f.type)
        checks: list[tuple[Any, Reason, str]] = []  # (bad mask, reason, detail), in check order
        if f.name not in self._optional:
            checks.append((pc.is_null(col), Reason.MISSING_FIELD, f"{f.name} is missing"))
        if pa.types.is_floating(f.type):
            checks.append((pc.invert(pc.is_finite(col)), Reason.NON_FINITE, f"{f.name} is not finite"))
        if f.name in ("event_time", "label_time"):
            cfg = self.config
            checks += [(pc.less(col, 0), Reason.NEGATIVE_TIMESTAMP, f"{f.name} < 0"),
                       (pc.less(col, cfg.min_time_ms), Reason.TIMESTAMP_TOO_OLD,
                        f"{f.name} < {cfg.min_time_ms}"),
                       (pc.greater_equal(col, cfg.max_time_ms), Reason.FUTURE_TIMESTAMP,
                        f"{f.name} >= {cfg.max_time_ms}")]
        if f.name == "label":
            checks.append((pc.invert(pc.is_in(col, pa.array([0, 1], pa.int8()))), Reason.INVALID_LABEL,
                           "label not in {0, 1}"))
        if pa.types.is_string(f.type):
            if f.name in ("event_id", "label_type"):
                checks.append((pc.equal(col, ""), Reason.EMPTY_EVENT_ID if f.name == "event_id"
                               else Reason.MISSING_FIELD, f"{f.name} is empty"))
            checks.append((pc.greater(pc.binary_length(col), self.config.max_string_bytes),
                           Reason.OVERSIZE_STRING, f"{f.name} is longer than "
                                                   f"{self.config.max_string_bytes} bytes"))
        reason = pa.nulls(n, pa.string())
        detail = pa.nulls(n, pa.string())
        for mask, why, text in reversed(checks):
            mask = pc.fill_null(mask, False)
            reason = pc.if_else(mask, why.value, reason)
            detail = pc.if_else(mask, text, detail)
        return reason, detail, col


class BatchCollector:
    """Accumulates validated records per kind and dead letters into Arrow tables, and counts."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.schemas = {IMPRESSION: spec.impression_schema(), LABEL: LABEL_SCHEMA,
                        "dead_letter": DEAD_LETTER_SCHEMA}
        self.counts = Counts()
        self._reset()

    def _reset(self) -> None:
        self.rows: dict[str, list[dict]] = {k: [] for k in self.schemas}
        self.tables: dict[str, list[pa.Table]] = {k: [] for k in self.schemas}
        self._pending = 0

    def add(self, result: tuple[str | None, dict]) -> None:
        """One result of ``Validator.parse_line`` / ``parse_csv_row`` / ``check``."""
        kind, rec = result
        self.counts.input += 1
        self._pending += 1
        if kind is None:
            self.rows["dead_letter"].append(rec)
            self._count_dead(rec["reason"], 1)
        else:
            self.rows[kind].append(rec)
            self.counts.valid[kind] += 1

    def add_tables(self, valid: pa.Table, dead: pa.Table, kind: str) -> None:
        """The two outputs of ``Validator.validate_table``."""
        self.counts.input += valid.num_rows + dead.num_rows
        self.counts.valid[kind] += valid.num_rows
        self._pending += valid.num_rows + dead.num_rows
        self.tables[kind].append(valid)
        self.tables["dead_letter"].append(dead)
        for reason, n in zip(*pc.value_counts(dead.column("reason")).flatten()):
            self._count_dead(reason.as_py(), n.as_py())

    def _count_dead(self, reason: str, n: int) -> None:
        self.counts.dead_letter[reason] = self.counts.dead_letter.get(reason, 0) + n

    def pending(self) -> int:
        return self._pending

    def drain(self) -> dict[str, pa.Table]:
        """What was collected since the last drain: tables 'impression', 'label', 'dead_letter'."""
        out = {}
        for k, schema in self.schemas.items():
            parts = self.tables[k] + ([pa.Table.from_pylist(self.rows[k], schema)] if self.rows[k] else [])
            out[k] = pa.concat_tables(parts) if parts else schema.empty_table()
        self._reset()
        return out


def validate_lines(validator: Validator, collector: BatchCollector, lines: Iterable[bytes],
                   origin: str, kind: str | None = None,
                   batch_rows: int = 50_000) -> Iterator[dict[str, pa.Table]]:
    """Validate JSONL lines into ``collector``; yields its drained tables every ``batch_rows``
    records and once at the end. ``collector.counts`` keeps the running reconciliation. Lines
    go through ``Validator.parse_many`` in chunks (the same results as line by line)."""
    chunk: list[bytes] = []
    first = 1
    for line in lines:
        chunk.append(line.rstrip(b"\r\n"))
        if len(chunk) == PARSE_CHUNK:
            yield from _add_parsed(validator, collector, chunk, origin, first, kind, batch_rows)
            first += len(chunk)
            chunk = []
    yield from _add_parsed(validator, collector, chunk, origin, first, kind, batch_rows)
    yield collector.drain()


# lines parsed together by ``Validator.parse_many`` when reading JSONL
PARSE_CHUNK = 4096


def _add_parsed(validator: Validator, collector: BatchCollector, chunk: list[bytes], origin: str, first: int,
                kind: str | None, batch_rows: int) -> Iterator[dict[str, pa.Table]]:
    """``chunk``'s results into ``collector``, in order, draining it every ``batch_rows``."""
    for result in validator.parse_many(chunk, origin, first, kind) if chunk else ():
        collector.add(result)
        if collector.pending() >= batch_rows:
            yield collector.drain()
