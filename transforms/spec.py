"""The declarative feature spec: what features a source's impressions become.

One spec drives every implementation (numpy/pyarrow, TensorFlow, Flink SQL, Beam), so they
cannot disagree about *what* to compute. Its fingerprint goes with every model and prediction.

>>> spec = load_spec("talkingdata")
>>> [f.name for f in spec.categorical][:2]
['ip', 'app']
>>> spec.fingerprint() == load_spec("talkingdata").fingerprint()
True
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

SPEC_DIR = Path(__file__).parent / "specs"
TIME_FEATURES = {"hour_of_day": 24, "day_of_week": 7}


@dataclass(frozen=True)
class Categorical:
    """A string field hashed into ``buckets`` slots (+1 slot for a missing value)."""

    name: str
    buckets: int
    field: str = ""  # the input field; defaults to name

    @property
    def source(self) -> str:
        return self.field or self.name


@dataclass(frozen=True)
class Cross:
    """The conjunction of categorical fields and/or time features, hashed into ``buckets``."""

    name: str
    fields: tuple[str, ...]
    buckets: int


@dataclass(frozen=True)
class Numeric:
    """A float field: clip -> signed log1p -> (quantile bucket) and standardize.

    ``quantile_buckets`` > 1 also emits a bucket id from boundaries fitted by analyze.
    """

    name: str
    field: str = ""
    clip: tuple[float, float] | None = None
    log1p: bool = False
    standardize: bool = True
    quantile_buckets: int = 0

    @property
    def source(self) -> str:
        return self.field or self.name


@dataclass(frozen=True)
class Aggregate:
    """Point-in-time count of impressions with the same ``keys`` in ``[t - window_ms, t)``:
    strictly earlier events only (ties at the same millisecond do not count)."""

    name: str
    keys: tuple[str, ...]
    window_ms: int
    function: str = "count"


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    source: str  # a pipelines.events source name
    categorical: tuple[Categorical, ...] = ()
    crosses: tuple[Cross, ...] = ()
    numeric: tuple[Numeric, ...] = ()
    time: tuple[str, ...] = ()
    aggregates: tuple[Aggregate, ...] = ()
    output_clip: float = 1e6  # every float output is clipped to +-output_clip (no overflow)
    version: int = 1

    def __post_init__(self) -> None:
        names = [f.name for f in self.categorical + self.crosses + self.numeric] + list(self.time)
        if len(set(names)) != len(names):
            raise ValueError(f"spec {self.name!r}: feature names must be unique: {names}")
        unknown_time = set(self.time) - set(TIME_FEATURES)
        if unknown_time:
            raise ValueError(f"spec {self.name!r}: unknown time features {sorted(unknown_time)}")
        cross_ok = {c.name for c in self.categorical} | set(self.time)
        for c in self.crosses:
            bad = set(c.fields) - cross_ok
            if bad or len(c.fields) < 2:
                raise ValueError(f"cross {c.name!r}: needs >= 2 categorical/time features; unknown {bad}")
        for a in self.aggregates:
            if a.function != "count" or a.window_ms <= 0:
                raise ValueError(f"aggregate {a.name!r}: only count over a positive window is supported")
        for f in self.categorical + self.crosses:
            if f.buckets < 1:
                raise ValueError(f"feature {f.name!r}: buckets must be >= 1")

    # ---- derived layout --------------------------------------------------------------------
    def sparse_features(self) -> list[tuple[str, int]]:
        """(name, slots) of every feature in the FTRL index space, in a fixed order.
        Categorical: buckets + 1 (missing); crosses: buckets; time: 24 / 7;
        numeric: 1 slot for the scaled value, plus quantile_buckets + 1 when bucketized."""
        out: list[tuple[str, int]] = [(c.name, c.buckets + 1) for c in self.categorical]
        out += [(c.name, c.buckets) for c in self.crosses]
        out += [(t, TIME_FEATURES[t]) for t in self.time]
        for n in self.numeric:
            out.append((n.name, 1))
            if n.quantile_buckets > 1:
                out.append((f"{n.name}_bucket", n.quantile_buckets + 1))
        return out

    def offsets(self) -> dict[str, int]:
        """Start of each feature's slots in the global index space (no cross-feature collisions)."""
        out, at = {}, 0
        for name, slots in self.sparse_features():
            out[name] = at
            at += slots
        return out

    @property
    def dimension(self) -> int:
        return sum(s for _, s in self.sparse_features())

    def input_fields(self) -> list[str]:
        """Raw fields the apply step reads (aggregate outputs included)."""
        return sorted({c.source for c in self.categorical} | {n.source for n in self.numeric})

    # ---- (de)serialization -----------------------------------------------------------------
    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        d = dict(d)
        d["categorical"] = tuple(Categorical(**c) for c in d.get("categorical", ()))
        d["crosses"] = tuple(Cross(**{**c, "fields": tuple(c["fields"])}) for c in d.get("crosses", ()))
        d["numeric"] = tuple(Numeric(**{**n, "clip": tuple(n["clip"]) if n.get("clip") else None})
                             for n in d.get("numeric", ()))
        d["time"] = tuple(d.get("time", ()))
        d["aggregates"] = tuple(Aggregate(**{**a, "keys": tuple(a["keys"])}) for a in d.get("aggregates", ()))
        return cls(**d)

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the canonical JSON: the same spec gives the same fingerprint on
        any machine; any change to what is computed changes it."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def load_spec(name_or_path: str | Path) -> FeatureSpec:
    """A shipped spec by name (generator, talkingdata, elec2) or a YAML file by path."""
    p = Path(name_or_path)
    if not p.is_file():
        p = SPEC_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        shipped = sorted(x.stem for x in SPEC_DIR.glob("*.yaml"))
        raise ValueError(f"unknown feature spec {name_or_path!r}; shipped: {shipped}, or a YAML path")
    with open(p, encoding="utf-8") as f:
        return FeatureSpec.from_dict(yaml.safe_load(f))
