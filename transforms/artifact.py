"""The fitted transform artifact: everything "apply" needs beyond the spec, as plain JSON.

"Analyze" runs over historical examples (``transforms.beam.AnalyzeTransform`` with Beam, or
``fit`` here for in-memory tables; both use the same mergeable accumulators, so both give the
same artifact, bit for bit). Streaming and serving only load and apply an artifact.

Per numeric feature: mean and std of the pre-standardization value, quantile boundaries, and
the sketch they came from (kept for drift monitoring). Per categorical feature: the top values
with counts. No pickle anywhere: JSON in, JSON out.

>>> import pyarrow as pa
>>> from transforms.spec import load_spec
>>> spec = load_spec("elec2")
>>> t = pa.table({"event_time": [0, 1_800_000], **{n.name: [0.2, 0.4] for n in spec.numeric}})
>>> round(fit(spec, t).numeric["nswprice"].mean, 6)
0.3
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.spec import FeatureSpec, Numeric
from transforms.stats import NumericStats, top_k

FORMAT_VERSION = 1
ARTIFACT_FILE = "transform_artifact.json"
VOCAB_SIZE = 100


def to_wire_float(x: np.ndarray) -> np.ndarray:
    """Raw numerics travel as float32 (tf.Example has no float64), so every path (numpy, Flink,
    TFX reading tf.Examples) first rounds to float32; beyond its range a value becomes inf and
    so missing, as a float32 tf.Example would carry it. Returns float64."""
    with np.errstate(over="ignore"):
        return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


def prepare_numeric(x: np.ndarray, f: Numeric, output_clip: float) -> tuple[np.ndarray, np.ndarray]:
    """(value before standardization, present mask): float32 wire rounding -> clip -> signed
    log1p -> clamp. Nulls (NaN here) and non-finite inputs (after rounding) are missing."""
    x = to_wire_float(x)
    present = np.isfinite(x)
    v = np.where(present, x, 0.0)
    if f.clip is not None:
        v = np.clip(v, f.clip[0], f.clip[1])
    if f.log1p:
        v = np.sign(v) * np.log1p(np.abs(v))
    return np.clip(v, -output_clip, output_clip), present


def column_as_float(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.cast(pa.float64()).to_numpy(zero_copy_only=False)


def column_as_int(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.cast(pa.int64()).to_numpy(zero_copy_only=False)


@dataclass
class NumericParams:
    mean: float
    std: float
    boundaries: list[float]


@dataclass
class AnalyzeState:
    """Partial result of analyze over some rows; ``merge`` is exact and order-independent."""

    rows: int = 0
    t_min: int | None = None
    t_max: int | None = None
    numeric: dict[str, NumericStats] = field(default_factory=dict)
    categorical: dict[str, Counter] = field(default_factory=dict)

    def merge(self, o: "AnalyzeState") -> "AnalyzeState":
        mins = [t for t in (self.t_min, o.t_min) if t is not None]
        maxs = [t for t in (self.t_max, o.t_max) if t is not None]
        return AnalyzeState(
            self.rows + o.rows, min(mins) if mins else None, max(maxs) if maxs else None,
            {k: self.numeric.get(k, NumericStats()).merge(o.numeric.get(k, NumericStats()))
             for k in self.numeric.keys() | o.numeric.keys()},
            {k: self.categorical.get(k, Counter()) + o.categorical.get(k, Counter())
             for k in self.categorical.keys() | o.categorical.keys()})


def analyze_batch(spec: FeatureSpec, table: pa.Table) -> AnalyzeState:
    """Statistics of one batch of raw rows (aggregate columns already present)."""
    st = AnalyzeState(rows=table.num_rows)
    if table.num_rows and "event_time" in table.column_names:
        mm = pc.min_max(table.column("event_time"))
        st.t_min, st.t_max = mm["min"].as_py(), mm["max"].as_py()
    for f in spec.numeric:
        v, present = prepare_numeric(column_as_float(table, f.source), f, spec.output_clip)
        st.numeric[f.name] = NumericStats.of(v[present])
    for f in spec.categorical:
        vc = pc.value_counts(pc.drop_null(table.column(f.source)).combine_chunks()) if table.num_rows else None
        st.categorical[f.name] = Counter(
            dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))) if vc else Counter()
    return st


@dataclass
class TransformArtifact:
    spec: FeatureSpec
    numeric: dict[str, NumericParams]
    vocab: dict[str, list[tuple[str, int]]]
    rows: int
    event_time_range: tuple[int | None, int | None]
    stats: dict[str, dict] = field(default_factory=dict)  # NumericStats.to_dict per feature

    @property
    def spec_fingerprint(self) -> str:
        return self.spec.fingerprint()

    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "spec": self.spec.to_dict(),
                "spec_fingerprint": self.spec_fingerprint, "rows": self.rows,
                "event_time_range": list(self.event_time_range),
                "numeric": {k: vars(v) for k, v in sorted(self.numeric.items())},
                "vocab": {k: [list(x) for x in v] for k, v in sorted(self.vocab.items())},
                "stats": dict(sorted(self.stats.items()))}

    @property
    def version(self) -> str:
        """Content hash: two artifacts with the same version apply identically."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        d = self.to_dict()
        d["version"] = self.version
        tmp = folder / f".{ARTIFACT_FILE}.inprogress"
        tmp.write_text(json.dumps(d, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, folder / ARTIFACT_FILE)
        return folder / ARTIFACT_FILE

    @classmethod
    def from_dict(cls, d: dict) -> "TransformArtifact":
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"transform artifact format {d.get('format_version')} is not {FORMAT_VERSION}")
        spec = FeatureSpec.from_dict(d["spec"])
        if spec.fingerprint() != d["spec_fingerprint"]:
            raise ValueError("transform artifact is corrupted: its spec does not match its fingerprint")
        art = cls(spec=spec, numeric={k: NumericParams(**v) for k, v in d["numeric"].items()},
                  vocab={k: [tuple(x) for x in v] for k, v in d["vocab"].items()}, rows=d["rows"],
                  event_time_range=tuple(d["event_time_range"]), stats=d.get("stats", {}))
        if "version" in d and d["version"] != art.version:
            raise ValueError("transform artifact is corrupted: content does not match its version")
        missing = {n.name for n in spec.numeric} - set(art.numeric)
        if missing:
            raise ValueError(f"transform artifact lacks fitted numeric features {sorted(missing)}")
        return art

    @classmethod
    def load(cls, folder: str | Path) -> "TransformArtifact":
        path = Path(folder)
        path = path / ARTIFACT_FILE if path.is_dir() else path
        return cls.from_dict(json.loads(path.read_text()))


def finalize(spec: FeatureSpec, st: AnalyzeState) -> TransformArtifact:
    numeric = {}
    for f in spec.numeric:
        s = st.numeric.get(f.name, NumericStats())
        std = s.std()
        bounds: list[float] = []
        if f.quantile_buckets > 1:
            qs = s.quantiles([i / f.quantile_buckets for i in range(1, f.quantile_buckets)])
            bounds = sorted(set(qs))
        numeric[f.name] = NumericParams(mean=s.mean(), std=std if std > 0 else 1.0, boundaries=bounds)
    vocab = {f.name: top_k(st.categorical.get(f.name, Counter()), VOCAB_SIZE) for f in spec.categorical}
    return TransformArtifact(spec, numeric, vocab, st.rows, (st.t_min, st.t_max),
                             {k: v.to_dict() for k, v in st.numeric.items()})


def fit(spec: FeatureSpec, table: pa.Table, batch_rows: int | None = None) -> TransformArtifact:
    """Analyze an in-memory table (optionally in batches, merged exactly)."""
    if not batch_rows:
        return finalize(spec, analyze_batch(spec, table))
    st = AnalyzeState()
    for start in range(0, max(table.num_rows, 1), batch_rows):
        st = st.merge(analyze_batch(spec, table.slice(start, batch_rows)))
    return finalize(spec, st)
