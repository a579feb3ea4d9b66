"""The curated TFX schemas in pipelines/schemas (ImportSchemaGen reads them in every retrain)
fit their feature specs: a schema that drifted from its spec would fail retrains at run time."""
import pytest

from pipelines.retrain import SCHEMAS, SPAN_COLUMNS, SPAN_ROW
from transforms.spec import load_spec

CURATED = sorted(SCHEMAS.glob("*.pbtxt"))


def test_there_are_curated_schemas():
    assert {p.stem for p in CURATED} >= {"generator", "talkingdata"}


@pytest.mark.parametrize("path", CURATED, ids=lambda p: p.stem)
def test_curated_schema_fits_its_spec(path):
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = tfdv.load_schema_text(str(path))
    spec = load_spec(path.stem)
    features = {f.name: f for f in schema.feature}
    # every column a span carries, and every raw input the transforms read
    assert {*SPAN_COLUMNS, SPAN_ROW, *spec.input_fields()} == set(features)
    assert features["label"].type == schema_pb2.INT and features["event_time"].type == schema_pb2.INT
    width = len(spec.sparse_features())
    for name in ("feature_indices", "feature_values"):
        assert [d.size for d in features[name].shape.dim] == [width], name
