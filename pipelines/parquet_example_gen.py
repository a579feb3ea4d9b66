"""A Parquet ExampleGen executor that keeps zeros.

TFX 1.16's ``parquet_executor`` converts rows with ``example_gen.utils.dict_to_example``,
which writes an *empty* feature for every falsy value: a label 0, a bid of 0.0, a count of 0
or an empty string all arrive in TFX as *missing*. The shared transforms treat a missing
value differently from a zero (its own bucket), so that would be training/serving skew. Here
only a null is missing.

>>> ex = row_to_example({"label": 0, "bid": 0.0, "site": "", "age": None, "idx": [0, 3]})
>>> f = ex.features.feature
>>> list(f["label"].int64_list.value), list(f["bid"].float_list.value), list(f["site"].bytes_list.value)
([0], [0.0], [b''])
>>> f["age"].WhichOneof("kind") is None, list(f["idx"].int64_list.value)
(True, [0, 3])
"""
from __future__ import annotations

import os
from typing import Any

import apache_beam as beam
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.types import standard_component_specs


def _feature(values: list):
    from tensorflow.core.example import feature_pb2

    if not values:
        return feature_pb2.Feature()
    v0 = values[0]
    if isinstance(v0, (bool, int)):
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[int(v) for v in values]))
    if isinstance(v0, float):
        return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=values))
    if isinstance(v0, (str, bytes)):
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(
            value=[v.encode("utf-8") if isinstance(v, str) else v for v in values]))
    raise TypeError(f"unsupported Parquet value type {type(v0).__name__}")


def row_to_example(row: dict[str, Any]):
    """A Parquet row (dict) -> tf.train.Example: a scalar is a one-value list, a null is an
    empty feature (missing), and nothing else is."""
    from tensorflow.core.example import example_pb2, feature_pb2

    feats = {}
    for k, v in row.items():
        if hasattr(v, "tolist"):
            v = v.tolist()
        if v is None:
            feats[k] = feature_pb2.Feature()
        elif isinstance(v, list):
            feats[k] = _feature([x for x in v if x is not None])
        else:
            feats[k] = _feature([v])
    return example_pb2.Example(features=feature_pb2.Features(feature=feats))


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
def _ParquetToExample(pipeline: beam.Pipeline, exec_properties: dict, split_pattern: str):  # noqa: N802 - TFX style
    pattern = os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY], split_pattern)
    return (pipeline
            | "ReadFromParquet" >> beam.io.ReadFromParquet(pattern)
            | "ToTFExample" >> beam.Map(row_to_example))


class Executor(BaseExampleGenExecutor):
    """``FileBasedExampleGen(custom_executor_spec=BeamExecutorSpec(Executor))``."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:  # noqa: N802 - TFX API
        return _ParquetToExample
