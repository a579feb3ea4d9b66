"""The TF apply inside real tf.Transform: ``make_preprocessing_fn`` run by
``tft_beam.AnalyzeAndTransformDataset`` on the Beam DirectRunner (what the TFX Transform
component runs), and the exported transform graph reloaded with ``TFTransformOutput`` (what
serving runs), both equal the numpy path the streaming job uses. Raw inputs go through
tf.Example types (float32, int64, bytes), as they do in TFX."""
import numpy as np
import pyarrow as pa
import pytest

tf = pytest.importorskip("tensorflow")
tft = pytest.importorskip("tensorflow_transform")


def _feature_spec(schema: pa.Schema, optional: set[str]) -> dict:
    kinds = {pa.string(): tf.string, pa.int64(): tf.int64, pa.float64(): tf.float32}
    return {f.name: tf.io.VarLenFeature(kinds[f.type]) if f.name in optional
            else tf.io.FixedLenFeature([], kinds[f.type]) for f in schema if f.name != "event_id"}


def test_preprocessing_fn_in_tf_transform_matches_numpy(tmp_path):
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    from pipelines.events import GENERATOR
    from pipelines.sources.generator import GeneratorConfig, generate
    from pipelines.validate import BatchCollector, Validator, validate_lines
    from transforms.aggregates import add_aggregates
    from transforms.apply import apply
    from transforms.artifact import fit
    from transforms.spec import load_spec
    from transforms.tf_apply import make_preprocessing_fn

    spec = load_spec("generator")
    tables = validate_lines(Validator(GENERATOR), BatchCollector(GENERATOR),
                            generate(GeneratorConfig(events=600, seed=3)).lines, "g")
    table = add_aggregates(spec, pa.concat_tables([t["impression"] for t in tables]))
    art = fit(spec, table)
    # some bids exactly representable in float64 only: the float32 wire rounding must match
    bids = table.column("bid").to_numpy().copy()
    bids[:5] = [0.1, 1e308, -1e-40, 3.3333333333333335, 2.0**24 + 1]
    table = table.set_column(table.schema.get_field_index("bid"), "bid", pa.array(bids))

    optional = {f.name for f in table.schema if f.nullable and table.column(f.name).null_count}
    feature_spec = _feature_spec(table.schema, optional)
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(feature_spec))
    instances = []
    for row in table.drop(["event_id"]).to_pylist():
        instances.append({k: ([] if v is None else [v]) if k in optional else v for k, v in row.items()})

    with tft_beam.Context(temp_dir=str(tmp_path / "tmp")):
        with beam.Pipeline() as p:
            raw = p | beam.Create(instances, reshuffle=False)
            (transformed, _), transform_fn = ((raw, metadata)
                                              | tft_beam.AnalyzeAndTransformDataset(make_preprocessing_fn(art)))
            _ = transform_fn | tft_beam.WriteTransformFn(str(tmp_path / "tf"))
            _ = (transformed | beam.combiners.ToList()
                 | beam.Map(lambda rows: np.save(tmp_path / "out.npy", np.array(rows, dtype=object))))
    rows = list(np.load(tmp_path / "out.npy", allow_pickle=True))  # written by this test just above

    expect = apply(art, table)
    assert len(rows) == table.num_rows
    # Beam keeps no order: match on the full FTRL row, which is unique enough, then compare
    got_idx = np.array([r["ftrl_indices"] for r in rows])
    got_val = np.array([r["ftrl_values"] for r in rows])
    order_got = np.lexsort(got_idx.T[::-1])
    order_exp = np.lexsort(expect.indices.T[::-1])
    np.testing.assert_array_equal(got_idx[order_got], expect.indices[order_exp])
    np.testing.assert_allclose(got_val[order_got], expect.values[order_exp], rtol=1e-6, atol=1e-6)

    # the exported graph, as serving loads it, on the same raw tensors
    out = tft.TFTransformOutput(str(tmp_path / "tf")).transform_raw_features(
        _tensors(instances, feature_spec))
    np.testing.assert_array_equal(out["ftrl_indices"].numpy(), expect.indices)
    np.testing.assert_allclose(out["ftrl_values"].numpy(), expect.values, rtol=1e-6, atol=1e-6)


def _tensors(instances: list[dict], feature_spec: dict) -> dict:
    """Instance dicts -> the tensors a tf.Example parser gives: dense, or SparseTensor [n, 1]."""
    dtypes = {tf.string: object, tf.int64: np.int64, tf.float32: np.float32}
    out = {}
    for k, f in feature_spec.items():
        col = [i[k] for i in instances]
        if isinstance(f, tf.io.VarLenFeature):
            present = [j for j, v in enumerate(col) if v]
            out[k] = tf.SparseTensor([[j, 0] for j in present],
                                     tf.constant(np.array([col[j][0] for j in present], dtypes[f.dtype])),
                                     [len(col), 1])
        else:
            # the planted bid 1e308 is infinite in float32, as on a tf.Example's float wire (meant)
            with np.errstate(over="ignore"):
                out[k] = tf.constant(np.array(col, dtypes[f.dtype]))
    return out


def test_optional_field_missing_from_a_whole_batch():
    """A batch where no row has an optional field parses to a SparseTensor of dense_shape
    [n, 0] (TFX Transform batches do this); it must read as all-missing, like the numpy path."""
    from pipelines.events import GENERATOR
    from pipelines.sources.generator import GeneratorConfig, generate
    from pipelines.validate import BatchCollector, Validator, validate_lines
    from transforms.aggregates import add_aggregates
    from transforms.apply import apply
    from transforms.artifact import fit
    from transforms.spec import load_spec
    from transforms.tf_apply import transform_tensors

    spec = load_spec("generator")
    tables = validate_lines(Validator(GENERATOR), BatchCollector(GENERATOR),
                            generate(GeneratorConfig(events=300, seed=4)).lines, "g")
    table = add_aggregates(spec, pa.concat_tables([t["impression"] for t in tables])).slice(0, 8)
    art = fit(spec, table)
    optional = {f.name for f in table.schema if f.nullable} - {"event_id"}
    table = table.set_column(table.schema.get_field_index("user_age_days"), "user_age_days",
                             pa.nulls(table.num_rows, pa.float64()))
    feature_spec = _feature_spec(table.schema, optional)
    tensors = {}
    for k, f in feature_spec.items():
        col = table.column(k).to_pylist()
        if k == "user_age_days":
            tensors[k] = tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], tf.float32), [len(col), 0])
        elif isinstance(f, tf.io.VarLenFeature):
            rows = [j for j, v in enumerate(col) if v is not None]
            tensors[k] = tf.SparseTensor([[j, 0] for j in rows] or tf.zeros([0, 2], tf.int64),
                                         tf.constant([col[j] for j in rows], f.dtype), [len(col), 1])
        else:
            tensors[k] = tf.constant(col, f.dtype)
    out = transform_tensors(art, tensors)
    expect = apply(art, table)
    np.testing.assert_array_equal(out["ftrl_indices"].numpy(), expect.indices)
    np.testing.assert_allclose(out["ftrl_values"].numpy(), expect.values, rtol=1e-6, atol=1e-6)
