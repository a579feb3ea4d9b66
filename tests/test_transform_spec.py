import pytest

from pipelines.events import SOURCES
from transforms.spec import FeatureSpec, load_spec

SHIPPED = ["generator", "talkingdata", "elec2"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_specs_load_and_fit_their_source(name):
    spec = load_spec(name)
    source = SOURCES[spec.source]
    raw_fields = set(source.string_fields) | set(source.numeric_fields) | {a.name for a in spec.aggregates}
    assert set(spec.input_fields()) <= raw_fields
    for a in spec.aggregates:
        assert set(a.keys) <= set(source.string_fields)
    # the index space has no overlaps and covers every slot
    offs = spec.offsets()
    layout = spec.sparse_features()
    assert [offs[n] for n, _ in layout] == sorted(offs.values())
    assert offs[layout[-1][0]] + layout[-1][1] == spec.dimension


def test_fingerprint_stable_and_sensitive(tmp_path):
    spec = load_spec("talkingdata")
    assert FeatureSpec.from_dict(spec.to_dict()).fingerprint() == spec.fingerprint()
    d = spec.to_dict()
    d["categorical"][0]["buckets"] += 1
    assert FeatureSpec.from_dict(d).fingerprint() != spec.fingerprint()
    p = tmp_path / "s.yaml"
    p.write_text("name: s\nsource: generator\ncategorical: [{name: site, buckets: 10}]\n")
    assert load_spec(p).categorical[0].buckets == 10
    assert len({load_spec(n).fingerprint() for n in SHIPPED}) == 3


@pytest.mark.parametrize("bad", [
    {"crosses": [{"name": "c", "fields": ["nope", "hour_of_day"], "buckets": 5}]},
    {"time": ["minute"]},
    {"aggregates": [{"name": "a", "keys": ["site"], "window_ms": 0}]},
    {"categorical": [{"name": "site", "buckets": 0}]},
    {"categorical": [{"name": "x", "buckets": 3}], "numeric": [{"name": "x"}]},
])
def test_bad_specs_refused(bad):
    with pytest.raises(ValueError):
        FeatureSpec.from_dict({"name": "s", "source": "generator", **bad})


def test_unknown_spec_is_a_clear_error():
    with pytest.raises(ValueError, match="shipped"):
        load_spec("nope")
