"""Skew cannot happen: the numpy path and the TF path (eager, and inside an exported
SavedModel) give bit-identical hashed indices and floats within 1e-6, on random edge-case
inputs (hypothesis) and on every real data set."""
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.events import SourceSpec
from transforms.aggregates import add_aggregates
from transforms.apply import apply
from transforms.artifact import TransformArtifact, fit
from transforms.skew import mismatch_rate, row_mismatches, tensors_of
from transforms.spec import FeatureSpec, load_spec

tf = pytest.importorskip("tensorflow")

SOURCE = SourceSpec(name="edge", entity_fields=("user",), categorical_fields=("site", "opt"),
                    numeric_fields=("x", "y", "z"), optional=("opt", "y", "z"))
SPEC = FeatureSpec.from_dict({
    "name": "edge", "source": "edge",
    "categorical": [{"name": "user", "buckets": 97}, {"name": "site", "buckets": 1000},
                    {"name": "opt", "buckets": 13}],
    "crosses": [{"name": "site_x_opt", "fields": ["site", "opt"], "buckets": 500},
                {"name": "user_x_hour", "fields": ["user", "hour_of_day"], "buckets": 300},
                {"name": "hour_x_dow", "fields": ["hour_of_day", "day_of_week"], "buckets": 50}],
    "time": ["hour_of_day", "day_of_week"],
    "numeric": [{"name": "x", "log1p": True, "quantile_buckets": 5},
                {"name": "y", "clip": [-10, 1e9], "standardize": True, "quantile_buckets": 4},
                {"name": "z", "standardize": False}],
})
SCHEMA = SOURCE.impression_schema()

text = st.one_of(st.sampled_from(["", "a", "ü", "日本", "\x00", "a\x00b", "\U0001F600", "x" * 300]),
                 st.text(max_size=12))
boundary_times = st.sampled_from([0, 1, 3_599_999, 3_600_000, 86_399_999, 86_400_000, -1, -86_400_001,
                                  1_704_067_200_000, 1_704_153_599_999, 2**53])
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, -1.0, 1e308, -1e308, 5e-324, 1e6, -1e6, 0.5]))
rows = st.lists(st.fixed_dictionaries({
    "event_id": st.just("e"), "event_time": st.one_of(boundary_times, st.integers(-2**40, 2**44)),
    "user": text, "site": text, "opt": st.none() | text,
    "x": number.filter(math.isfinite), "y": st.none() | number, "z": st.none() | number}),
    min_size=1, max_size=40)


def tf_outputs(art: TransformArtifact, table: pa.Table) -> dict:
    from transforms.tf_apply import transform_tensors

    return {k: v.numpy() for k, v in transform_tensors(art, tensors_of(table.drop(["event_id"]))).items()}


def assert_same(np_out, tf_out):
    for name, col in np_out.columns.items():
        other = tf_out[name]
        assert col.dtype == other.dtype, name
        if col.dtype.kind == "f":
            np.testing.assert_allclose(col, other, rtol=1e-6, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(col, other, err_msg=name)
    np.testing.assert_array_equal(np_out.indices, tf_out["ftrl_indices"])
    np.testing.assert_allclose(np_out.values, tf_out["ftrl_values"], rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def edge_artifact():
    """Fitted on other data than the test rows: most test categories are unseen."""
    rng = np.random.default_rng(0)
    n = 500
    fit_rows = pa.table({"event_id": ["f"] * n, "event_time": rng.integers(0, 10**12, n),
                         "user": [f"u{i % 7}" for i in range(n)], "site": ["s"] * n,
                         "opt": [None if i % 3 else "o" for i in range(n)],
                         "x": rng.lognormal(0, 2, n), "y": rng.normal(0, 100, n), "z": rng.normal(size=n)},
                        schema=SCHEMA)
    return fit(SPEC, fit_rows)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=rows)
def test_numpy_and_tf_agree_on_edge_cases(edge_artifact, data):
    table = pa.Table.from_pylist(data, SCHEMA)
    assert_same(apply(edge_artifact, table), tf_outputs(edge_artifact, table))


def test_missing_values_get_their_own_slots(edge_artifact):
    table = pa.Table.from_pylist([{"event_id": "e", "event_time": 0, "user": "u", "site": "s", "opt": None,
                                   "x": 1.0, "y": None, "z": float("nan")}], SCHEMA)
    f = apply(edge_artifact, table)
    assert f.columns["opt"][0] == 13 and f.columns["y_bucket"][0] == 4
    assert f.columns["y"][0] == 0.0 and f.columns["z"][0] == 0.0
    assert_same(f, tf_outputs(edge_artifact, table))


def test_time_features_at_boundaries(edge_artifact):
    times = [0, 3_599_999, 3_600_000, 86_399_999, 86_400_000, -1, 1_704_067_200_000]  # 2024-01-01 is a Monday
    table = pa.Table.from_pylist([{"event_id": "e", "event_time": t, "user": "u", "site": "s", "opt": "o",
                                   "x": 1.0, "y": 1.0, "z": 1.0} for t in times], SCHEMA)
    f = apply(edge_artifact, table)
    assert f.columns["hour_of_day"].tolist() == [0, 0, 1, 23, 0, 23, 0]
    assert f.columns["day_of_week"].tolist() == [3, 3, 3, 3, 4, 2, 0]  # 1970-01-01 was a Thursday
    assert_same(f, tf_outputs(edge_artifact, table))


def test_exported_savedmodel_matches_numpy(edge_artifact, tmp_path):
    """The TF path inside a serving graph (tf.function -> SavedModel -> reload) stays identical."""
    from transforms.tf_apply import transform_tensors

    sig = {"event_time": tf.TensorSpec([None], tf.int64), "user": tf.TensorSpec([None], tf.string),
           "site": tf.TensorSpec([None], tf.string), "opt": tf.TensorSpec([None], tf.string),
           "x": tf.TensorSpec([None], tf.float64), "y": tf.TensorSpec([None], tf.float64),
           "z": tf.TensorSpec([None], tf.float64)}
    module = tf.Module()
    module.serve = tf.function(lambda inputs: transform_tensors(edge_artifact, inputs), input_signature=[sig])
    tf.saved_model.save(module, str(tmp_path / "sm"))
    served = tf.saved_model.load(str(tmp_path / "sm"))
    rng = np.random.default_rng(1)
    n = 300
    table = pa.table({"event_id": ["e"] * n, "event_time": rng.integers(0, 2 * 10**12, n),
                      "user": [f"u{i}" for i in rng.integers(0, 50, n)], "site": ["sité"] * n,
                      "opt": [f"o{i}" for i in range(n)], "x": rng.lognormal(0, 3, n),
                      "y": rng.normal(0, 1e3, n), "z": rng.normal(size=n)}, schema=SCHEMA)
    out = served.serve({k: tf.constant(table[k].to_numpy()) for k in sig})
    assert_same(apply(edge_artifact, table), {k: v.numpy() for k, v in out.items()})


def _real(source_name, shared_data):
    from pipelines.sources import elec2, talkingdata
    from pipelines.sources.generator import GeneratorConfig, generate
    from pipelines.validate import BatchCollector, Validator, validate_lines

    if source_name == "generator":
        from pipelines.events import GENERATOR

        coll = BatchCollector(GENERATOR)
        tables = list(validate_lines(Validator(GENERATOR), coll, generate(GeneratorConfig(events=30_000)).lines, "g"))
        return pa.concat_tables([t["impression"] for t in tables])
    loader = {"talkingdata": talkingdata.load, "elec2": elec2.load}[source_name]
    return loader().drain()["impression"]


@pytest.mark.parametrize("name", ["talkingdata", "elec2", "generator"])
def test_parity_on_real_streams(name, shared_data):
    spec = load_spec(name)
    table = add_aggregates(spec, _real(name, shared_data))
    art = fit(spec, table)
    f = apply(art, table)
    assert_same(f, tf_outputs(art, table))
    assert mismatch_rate(art, table.slice(0, 2_000), apply(art, table.slice(0, 2_000))) == 0.0


def test_skew_check_detects_a_different_artifact(edge_artifact):
    rng = np.random.default_rng(2)
    n = 200
    table = pa.table({"event_id": ["e"] * n, "event_time": rng.integers(0, 10**12, n),
                      "user": [f"u{i}" for i in range(n)], "site": ["s"] * n, "opt": ["o"] * n,
                      "x": rng.lognormal(0, 1, n), "y": rng.normal(size=n), "z": rng.normal(size=n)},
                     schema=SCHEMA)
    other = fit(SPEC, table)  # served with a stale/different fit: floats differ
    assert mismatch_rate(edge_artifact, table, apply(edge_artifact, table)) == 0.0
    assert mismatch_rate(edge_artifact, table, apply(other, table)) > 0.9
    served = apply(edge_artifact, table)
    served.columns["site"] = served.columns["site"].copy()
    served.columns["site"][:10] += 1  # a hashing bug in 10 rows
    assert row_mismatches(edge_artifact, table, served).sum() == 10


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", "a\x00b", "é", ""]), st.text(max_size=4)),
                max_size=64))
def test_small_batches_encode_as_arrow_does(xs):
    """``dictionary`` encodes short columns in Python (Arrow's per-call cost dominates a tick
    of a few dozen rows): codes, values (canonical form) and null mask equal Arrow's."""
    from transforms import hashing

    arr = pa.array(xs, pa.string())
    small = hashing.dictionary(arr)
    assert len(arr) <= hashing.SMALL_BATCH
    saved, hashing.SMALL_BATCH = hashing.SMALL_BATCH, -1  # force the Arrow path
    try:
        big = hashing.dictionary(arr)
    finally:
        hashing.SMALL_BATCH = saved
    assert small[0].tolist() == big[0].tolist() and small[1] == big[1] and small[2].tolist() == big[2].tolist()
    assert small[0].dtype == big[0].dtype and small[2].dtype == big[2].dtype
    k = len(xs) // 2  # a table's column: chunked
    chunked = hashing.dictionary(pa.chunked_array([arr[:k], arr[k:]], pa.string()))
    assert chunked[0].tolist() == big[0].tolist() and chunked[1] == big[1] and chunked[2].tolist() == big[2].tolist()
