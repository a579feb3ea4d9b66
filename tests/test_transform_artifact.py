"""The transform artifact: exact statistics, determinism across batchings and engines,
lossless round trip, and refusal of corrupted files."""
import json
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.eventlog import read_stream
from pipelines.events import GENERATOR
from pipelines.sources.generator import GeneratorConfig
from runners.local import generate_event_dir
from transforms.aggregates import add_aggregates
from transforms.apply import apply
from transforms.artifact import ARTIFACT_FILE, TransformArtifact, fit
from transforms.beam import fit_event_dir
from transforms.spec import load_spec
from transforms.stats import SCALE_BITS, NumericStats, exact_sum

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)


@settings(max_examples=100, deadline=None)
@given(xs=st.lists(finite, max_size=50))
def test_exact_sum_is_exact(xs):
    want = sum((Fraction(x) for x in xs), Fraction(0))
    assert Fraction(exact_sum(np.array(xs, dtype=np.float64)), 2**SCALE_BITS) == want


@settings(max_examples=50, deadline=None)
@given(xs=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=80), cut=st.integers(0, 80))
def test_merge_is_order_independent_bit_for_bit(xs, cut):
    a, b = np.array(xs[:cut]), np.array(xs[cut:])
    whole = NumericStats.of(np.array(xs))
    for merged in (NumericStats.of(a).merge(NumericStats.of(b)), NumericStats.of(b).merge(NumericStats.of(a))):
        assert (merged.mean(), merged.std(), merged.quantiles([0.1, 0.5, 0.9])) == \
            (whole.mean(), whole.std(), whole.quantiles([0.1, 0.5, 0.9]))


def test_quantile_sketch_accuracy():
    x = np.random.default_rng(0).lognormal(0, 2, 100_000)
    est = NumericStats.of(x).quantiles([0.1, 0.5, 0.9, 0.99])
    exact = np.quantile(x, [0.1, 0.5, 0.9, 0.99], method="lower")
    assert np.all(np.abs(np.array(est) / exact - 1) < 0.011)


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    generate_event_dir(d, GeneratorConfig(events=8_000, seed=13))
    return d


def test_round_trip_fit_save_load_apply(gen_dir, tmp_path):
    spec = load_spec("generator")
    table = add_aggregates(spec, read_stream(gen_dir, "impression"))
    art = fit(spec, table)
    art.save(tmp_path)
    back = TransformArtifact.load(tmp_path)
    assert back.version == art.version and back.to_dict() == art.to_dict()
    a, b = apply(art, table), apply(back, table)
    for k in a.columns:
        np.testing.assert_array_equal(a.columns[k], b.columns[k])
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.values, b.values)
    assert "pickle" not in (tmp_path / ARTIFACT_FILE).read_text()[:10]  # plain JSON
    json.loads((tmp_path / ARTIFACT_FILE).read_text())


def test_batching_does_not_change_the_artifact(gen_dir):
    spec = load_spec("generator")
    table = add_aggregates(spec, read_stream(gen_dir, "impression"))
    versions = {fit(spec, table, batch_rows=b).version for b in (None, 1_000, 777, 5_000)}
    assert len(versions) == 1


def test_beam_fit_equals_local_fit(gen_dir, tmp_path):
    spec = load_spec("generator")
    beam_art = fit_event_dir(spec, GENERATOR, gen_dir, tmp_path)
    local = fit(spec, add_aggregates(spec, read_stream(gen_dir, "impression")))
    assert beam_art.version == local.version
    assert TransformArtifact.load(tmp_path).version == local.version


def test_corrupted_or_incompatible_artifacts_are_refused(gen_dir, tmp_path):
    spec = load_spec("generator")
    art = fit(spec, add_aggregates(spec, read_stream(gen_dir, "impression")))
    path = art.save(tmp_path)
    d = json.loads(path.read_text())
    d["numeric"]["bid"]["mean"] += 1.0
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="corrupted"):
        TransformArtifact.load(tmp_path)
    d = art.to_dict()
    d["spec"]["categorical"][0]["buckets"] = 7
    with pytest.raises(ValueError, match="corrupted"):
        TransformArtifact.from_dict(d)
    d = art.to_dict()
    d["format_version"] = 99
    with pytest.raises(ValueError, match="format"):
        TransformArtifact.from_dict(d)
