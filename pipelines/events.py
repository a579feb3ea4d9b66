"""The event model, defined once: impression and label records, per-source field lists.

Every engine (Beam, Flink, the local replay, TFX) uses these Arrow schemas, so a record means
the same thing everywhere. Times are UTC epoch milliseconds (int64): no time zones, no
ambiguity, and arithmetic on windows is plain integer arithmetic.

>>> spec = SOURCES["talkingdata"]
>>> spec.impression_schema().names
['event_id', 'event_time', 'ip', 'app', 'device', 'os', 'channel']
>>> LABEL_SCHEMA.names
['event_id', 'label_time', 'label', 'label_type']
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import pyarrow as pa

IMPRESSION = "impression"
LABEL = "label"
KINDS = (IMPRESSION, LABEL)

LABEL_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("label_time", pa.int64(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("label_type", pa.string(), nullable=False),
    ]
)

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("reason", pa.string(), nullable=False),  # a Reason value: machine-readable
        pa.field("detail", pa.string(), nullable=False),  # for humans: which field, what value
        pa.field("kind", pa.string(), nullable=True),  # impression/label when known
        pa.field("origin", pa.string(), nullable=False),  # file:line or source name
        pa.field("raw", pa.binary(), nullable=False),  # the payload exactly as received
    ]
)


class Reason(str, Enum):
    """Why a record went to the dead-letter output. Values are stable, machine-readable codes."""

    MALFORMED_JSON = "malformed_json"
    MALFORMED_CSV = "malformed_csv"
    INVALID_UTF8 = "invalid_utf8"
    OVERSIZE_RECORD = "oversize_record"
    UNKNOWN_EVENT_KIND = "unknown_event_kind"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    NEGATIVE_TIMESTAMP = "negative_timestamp"
    TIMESTAMP_TOO_OLD = "timestamp_too_old"
    FUTURE_TIMESTAMP = "future_timestamp"
    OVERSIZE_STRING = "oversize_string"
    EMPTY_EVENT_ID = "empty_event_id"
    INVALID_LABEL = "invalid_label"
    # Decided by the label join (later stages), not by record validation:
    DUPLICATE_EVENT_ID = "duplicate_event_id"
    DUPLICATE_LABEL = "duplicate_label"
    UNKNOWN_IMPRESSION = "unknown_impression"
    EXPIRED_IMPRESSION = "expired_impression"
    LABEL_BEFORE_IMPRESSION = "label_before_impression"
    # Decided by the stream: a record at or behind the watermark on arrival (more out of order
    # than ``JoinConfig.watermark_delay_ms``), which event-time operators can no longer process
    BEHIND_WATERMARK = "behind_watermark"


@dataclass(frozen=True)
class SourceSpec:
    """Which fields an impression of one data source has.

    entity ids and categorical context are strings (integer codes are kept as their decimal
    text, so hashing is the same whatever the input file's type); numeric context is float64.
    Fields listed in ``optional`` may be null; all others are required.
    """

    name: str
    entity_fields: tuple[str, ...] = ()
    categorical_fields: tuple[str, ...] = ()
    numeric_fields: tuple[str, ...] = ()
    label_types: tuple[str, ...] = ("click",)
    optional: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        names = self.string_fields + self.numeric_fields
        reserved = {"event_id", "event_time", "kind"}
        if len(set(names)) != len(names) or reserved & set(names):
            raise ValueError(f"source {self.name!r}: field names must be unique and not {reserved}")
        unknown = set(self.optional) - set(names)
        if unknown:
            raise ValueError(f"source {self.name!r}: optional fields {sorted(unknown)} are not fields")

    @property
    def string_fields(self) -> tuple[str, ...]:
        return self.entity_fields + self.categorical_fields

    def impression_schema(self) -> pa.Schema:
        fields = [
            pa.field("event_id", pa.string(), nullable=False),
            pa.field("event_time", pa.int64(), nullable=False),
        ]
        fields += [pa.field(n, pa.string(), nullable=n in self.optional) for n in self.string_fields]
        fields += [pa.field(n, pa.float64(), nullable=n in self.optional) for n in self.numeric_fields]
        return pa.schema(fields)

    def schema(self, kind: str) -> pa.Schema:
        if kind == IMPRESSION:
            return self.impression_schema()
        if kind == LABEL:
            return LABEL_SCHEMA
        raise ValueError(f"unknown event kind {kind!r}; expected one of {KINDS}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SourceSpec":
        d = dict(d)
        for k in ("entity_fields", "categorical_fields", "numeric_fields", "label_types", "optional"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> "SourceSpec":
        """Load a user's source spec from YAML or JSON (safe loaders only)."""
        import yaml

        with open(path, encoding="utf-8") as f:
            return cls.from_dict(yaml.safe_load(f))

    def fingerprint(self) -> str:
        """Stable across runs and machines: sha256 of the canonical JSON of the field list."""
        canon = json.dumps(
            {"schema": [(f.name, str(f.type), f.nullable) for f in self.impression_schema()],
             "labels": [(f.name, str(f.type)) for f in LABEL_SCHEMA]},
            sort_keys=True,
        )
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


GENERATOR = SourceSpec(
    name="generator",
    entity_fields=("user_id", "item_id"),
    categorical_fields=("site", "device_type", "ad_format"),
    numeric_fields=("bid", "position", "user_age_days"),
    label_types=("click",),
    description="driftline's seeded synthetic CTR stream (pipelines.sources.generator)",
)

TALKINGDATA = SourceSpec(
    name="talkingdata",
    entity_fields=("ip", "app", "device"),
    categorical_fields=("os", "channel"),
    label_types=("conversion",),
    description="TalkingData AdTracking: clicks with delayed app-download conversions",
)

ELEC2 = SourceSpec(
    name="elec2",
    numeric_fields=("period", "nswprice", "nswdemand", "vicprice", "vicdemand", "transfer"),
    label_types=("price_up",),
    description="Elec2 (NSW electricity market): did the price go up; real concept drift",
)

#: The built-in sources. Immutable; a user's own source is a SourceSpec loaded from a file.
SOURCES: dict[str, SourceSpec] = {s.name: s for s in (GENERATOR, TALKINGDATA, ELEC2)}


def get_source(name_or_path: str) -> SourceSpec:
    """A built-in source by name, or a spec file (YAML/JSON) by path."""
    if name_or_path in SOURCES:
        return SOURCES[name_or_path]
    p = Path(name_or_path)
    if p.is_file():
        return SourceSpec.from_file(p)
    raise ValueError(f"unknown source {name_or_path!r}: use one of {sorted(SOURCES)} or a spec file path")


@dataclass
class Counts:
    """Reconciliation counts: every input record is valid (per kind) or dead-lettered."""

    input: int = 0
    valid: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    dead_letter: dict[str, int] = field(default_factory=dict)

    @property
    def dead_letter_total(self) -> int:
        return sum(self.dead_letter.values())

    def reconciles(self) -> bool:
        return self.input == sum(self.valid.values()) + self.dead_letter_total

    def add(self, other: "Counts") -> None:
        self.input += other.input
        for k, v in other.valid.items():
            self.valid[k] = self.valid.get(k, 0) + v
        for k, v in other.dead_letter.items():
            self.dead_letter[k] = self.dead_letter.get(k, 0) + v

    def to_dict(self) -> dict:
        return {"input": self.input, "valid": dict(self.valid),
                "dead_letter": dict(sorted(self.dead_letter.items())),
                "dead_letter_total": self.dead_letter_total, "reconciles": self.reconciles()}

    @classmethod
    def from_dict(cls, d: dict) -> "Counts":
        return cls(input=d["input"], valid=dict(d["valid"]), dead_letter=dict(d["dead_letter"]))
