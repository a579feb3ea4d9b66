"""Vectorized apply (numpy + pyarrow) over record batches: the path the Flink job's Python
functions and Beam batch pipelines use.

Per example it produces

* ``columns``: the base model's inputs: ``<name>`` bucket ids (int64) for categorical,
  cross, time and bucketized numeric features (``<name>_bucket``); ``<name>`` float32 scaled
  values for numeric features;
* ``indices`` / ``values`` [n, k]: the FTRL layer's sparse example in one global index
  space (``spec.offsets()``), k fixed per spec: one slot per categorical, cross and time
  feature (value 1), one per numeric feature (its scaled value) and one per bucketized numeric
  (value 1).

Semantics (the TF path in ``transforms.tf_apply`` does exactly the same):
missing categorical -> slot ``buckets`` (the extra one); missing numeric -> scaled value 0 and
bucket ``quantile_buckets``; hour/day from UTC ``event_time`` (day_of_week 0 = Monday);
bucket = number of boundaries <= value.

>>> import pyarrow as pa
>>> from transforms.spec import load_spec
>>> from transforms.artifact import fit
>>> spec = load_spec("elec2")
>>> t = pa.table({"event_time": [0, 1_800_000], **{n.name: [0.2, 0.4] for n in spec.numeric}})
>>> f = apply(fit(spec, t), t)
>>> f.indices.shape == (2, len(spec.sparse_features())), f.columns["hour_of_day"].tolist()
(True, [0, 0])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from transforms.artifact import TransformArtifact, column_as_float, column_as_int, prepare_numeric
from transforms.hashing import NUL_REPLACEMENT, dictionary, hash_codes, hash_cross

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
MISSING_IN_CROSS = NUL_REPLACEMENT  # a missing categorical value inside a cross


@dataclass
class Features:
    columns: dict[str, np.ndarray]
    indices: np.ndarray  # int64 [n, k]
    values: np.ndarray  # float32 [n, k]

    def to_arrow(self) -> pa.Table:
        """Columns plus the sparse example as fixed-size list columns (for sinks and skew checks)."""
        n, k = self.indices.shape
        cols = {name: pa.array(v) for name, v in self.columns.items()}
        cols["ftrl_indices"] = pa.FixedSizeListArray.from_arrays(pa.array(self.indices.ravel()), k)
        cols["ftrl_values"] = pa.FixedSizeListArray.from_arrays(pa.array(self.values.ravel()), k)
        return pa.table(cols)


INPUT_TYPES = {"string": pa.string(), "double": pa.float64(), "bigint": pa.int64()}


def parse_inputs(rows: list[str]) -> list[list]:
    """JSON arrays of raw input values (the streaming job's join keeps a pending impression's
    inputs this way: no field names, a smaller join state) -> lists of values, in one parse
    (orjson: ~4x faster, the same values; Python's json when a row holds NaN or an infinity,
    which the job writes as Python's json does and orjson refuses)."""
    import json

    import orjson

    if not rows:
        return []
    text = "[" + ",".join(rows) + "]"
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def inputs_table(values: list[list], types: dict[str, str]) -> pa.Table:
    """Parsed input rows (``parse_inputs``), values in the order of ``types`` (name -> string |
    double | bigint; null for a missing value) -> a table ``apply`` takes. The streaming job
    recomputes a resolved impression's features this way; a JSON number round-trips a double
    exactly, so those are the features it served, bit for bit.

    >>> from transforms.spec import load_spec
    >>> from transforms.artifact import fit
    >>> spec = load_spec("elec2")
    >>> t = pa.table({"event_time": [0], **{n.source: [0.25] for n in spec.numeric}})
    >>> art = fit(spec, t)
    >>> got = inputs_table(parse_inputs(["[" + ", ".join("0.25" for _ in spec.numeric) + "]"]),
    ...                    {n.source: "double" for n in spec.numeric})
    >>> f = apply(art, got.append_column("event_time", pa.array([0], pa.int64())))
    >>> bool((f.indices == apply(art, t).indices).all() and (f.values == apply(art, t).values).all())
    True
    """
    names = list(types)
    if any(len(v) != len(names) for v in values):
        raise ValueError(f"an inputs row does not have the {len(names)} values {names}")
    cols = list(zip(*values)) if values else [()] * len(names)
    return pa.table({n: pa.array(list(c), INPUT_TYPES[types[n]]) for n, c in zip(names, cols)})


def inputs_objects(values: list[list], names: list[str]) -> list[str]:
    """The same rows as JSON objects (what joined examples carry for the retrains). orjson
    (60 rows: 257 -> 115 us); a row holding NaN or an infinity through Python's json, which writes
    them as the job reads them (orjson would write null: a missing value). Floats keep their
    value; only the exponent's spelling may differ from Python's json (``1e-05`` / ``1e-5``).

    >>> inputs_objects(parse_inputs(['["a", 1.5, null]', '["b", NaN, 2]']), ["x", "y", "z"])
    ['{"x":"a","y":1.5,"z":null}', '{"x":"b","y":NaN,"z":2}']
    """
    import json
    import math

    import orjson

    encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    dumps = orjson.dumps
    out = []
    for v in values:
        s = dumps(dict(zip(names, v)))
        # orjson writes a non-finite float as null: only a row with a null can hold one
        if b"null" in s and any(type(x) is float and not math.isfinite(x) for x in v):
            out.append(encode(dict(zip(names, v))))
        else:
            out.append(s.decode())
    return out


def time_features(event_time: np.ndarray) -> dict[str, np.ndarray]:
    t = np.asarray(event_time, dtype=np.int64)
    return {"hour_of_day": (t % DAY_MS) // HOUR_MS, "day_of_week": (t // DAY_MS + 3) % 7}


def apply(artifact: TransformArtifact, table: pa.Table) -> Features:
    """Transform a batch of raw rows (impression fields + aggregate columns)."""
    spec = artifact.spec
    n = table.num_rows
    cols: dict[str, np.ndarray] = {}
    cross_parts: dict[str, tuple[np.ndarray, list[str]]] = {}

    for f in spec.categorical:
        codes, values, null = dictionary(table.column(f.source))
        cols[f.name] = hash_codes(codes, values, null, f.buckets, missing=f.buckets)
        # for crosses: nulls become an extra distinct value
        vals = values + [MISSING_IN_CROSS]
        cross_parts[f.name] = (np.where(null, len(values), codes), vals)

    if spec.time or spec.crosses:
        tf_ = time_features(column_as_int(table, "event_time")) if n else \
            {k: np.zeros(0, np.int64) for k in ("hour_of_day", "day_of_week")}
        for name in spec.time:
            cols[name] = tf_[name]
        for name, v in tf_.items():
            size = 24 if name == "hour_of_day" else 7
            cross_parts[name] = (v, [str(i) for i in range(size)])

    for c in spec.crosses:
        cols[c.name] = hash_cross([cross_parts[x] for x in c.fields], c.buckets) if n else np.zeros(0, np.int64)

    for f in spec.numeric:
        p = artifact.numeric[f.name]
        v, present = prepare_numeric(column_as_float(table, f.source), f, spec.output_clip)
        z = (v - p.mean) / p.std if f.standardize else v
        z = np.clip(z, -spec.output_clip, spec.output_clip)
        cols[f.name] = np.where(present, z, 0.0).astype(np.float32)
        if f.quantile_buckets > 1:
            bucket = np.searchsorted(np.asarray(p.boundaries, np.float64), v, side="right")
            cols[f"{f.name}_bucket"] = np.where(present, bucket, f.quantile_buckets).astype(np.int64)

    offsets = spec.offsets()
    idx, val = [], []
    for name, _ in spec.sparse_features():
        c = cols[name]
        if c.dtype == np.float32:  # numeric slot: fixed index, value = scaled number
            idx.append(np.full(n, offsets[name], np.int64))
            val.append(c)
        else:
            idx.append(offsets[name] + c)
            val.append(np.ones(n, np.float32))
    indices = np.stack(idx, axis=1) if idx else np.zeros((n, 0), np.int64)
    values = np.stack(val, axis=1) if val else np.zeros((n, 0), np.float32)
    return Features(cols, indices, values)
