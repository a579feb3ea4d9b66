import pyarrow as pa
import pytest

from pipelines.events import (ELEC2, GENERATOR, LABEL_SCHEMA, SOURCES, TALKINGDATA, Counts,
                              SourceSpec, get_source)


def test_impression_schema_has_core_then_source_fields():
    s = GENERATOR.impression_schema()
    assert s.names[:2] == ["event_id", "event_time"]
    assert s.field("event_time").type == pa.int64()
    assert s.field("user_id").type == pa.string()
    assert s.field("bid").type == pa.float64()
    assert not s.field("bid").nullable
    assert LABEL_SCHEMA.field("label").type == pa.int8()


def test_fingerprint_is_stable_and_sensitive():
    assert TALKINGDATA.fingerprint() == SourceSpec.from_dict(TALKINGDATA.to_dict()).fingerprint()
    changed = SourceSpec(name="talkingdata", entity_fields=("ip", "app"),
                         categorical_fields=("os", "channel", "device"))
    assert changed.fingerprint() != TALKINGDATA.fingerprint()
    assert len({s.fingerprint() for s in SOURCES.values()}) == len(SOURCES)


def test_spec_loads_from_yaml(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("name: mine\nentity_fields: [user]\nnumeric_fields: [price]\noptional: [price]\n")
    spec = get_source(str(p))
    assert spec.impression_schema().field("price").nullable
    assert not spec.impression_schema().field("user").nullable


@pytest.mark.parametrize("bad", [
    dict(name="x", entity_fields=("a",), numeric_fields=("a",)),
    dict(name="x", entity_fields=("event_time",)),
    dict(name="x", entity_fields=("a",), optional=("b",)),
])
def test_bad_specs_are_refused(bad):
    with pytest.raises(ValueError):
        SourceSpec(**bad)


def test_unknown_source_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown source"):
        get_source("nope")


def test_counts_reconcile():
    c = Counts(input=5, valid={"impression": 3, "label": 1}, dead_letter={"wrong_type": 1})
    assert c.reconciles()
    c.add(Counts(input=1, dead_letter={"wrong_type": 1}))
    assert c.reconciles() and c.dead_letter == {"wrong_type": 2}
    assert not Counts(input=2, valid={"impression": 1, "label": 0}).reconciles()
    assert ELEC2.entity_fields == ()
