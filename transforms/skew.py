"""Runtime training/serving skew check.

The streaming job serves features computed by the numpy path. Periodically it hands a sample
of served rows (with their raw inputs) to ``mismatch_rate``, which recomputes them with the TF
path, the one inside the exported model, and reports the fraction of rows where any hashed
index differs or any float differs by more than ``tolerance``. The job exports it as a metric.

>>> import pyarrow as pa
>>> from transforms.spec import load_spec
>>> from transforms.artifact import fit
>>> from transforms.apply import apply
>>> spec = load_spec("elec2")
>>> raw = pa.table({"event_time": [0, 1_800_000], **{n.name: [0.2, 0.4] for n in spec.numeric}})
>>> art = fit(spec, raw)
>>> mismatch_rate(art, raw, apply(art, raw))
0.0
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from transforms.apply import Features
from transforms.artifact import TransformArtifact


def tensors_of(table: pa.Table) -> dict:
    """Raw Arrow columns -> TF tensors; nullable columns with nulls become SparseTensors."""
    import tensorflow as tf

    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if col.null_count:
            present = np.flatnonzero(~np.asarray(col.is_null().to_numpy(zero_copy_only=False)))
            vals = col.drop_null().to_numpy(zero_copy_only=False)
            out[name] = tf.SparseTensor(indices=np.stack([present, np.zeros_like(present)], 1),
                                        values=tf.constant(vals), dense_shape=[len(col), 1])
        else:
            out[name] = tf.constant(col.to_numpy(zero_copy_only=False))
    return out


def row_mismatches(artifact: TransformArtifact, raw: pa.Table, served: Features,
                   tolerance: float = 1e-6) -> np.ndarray:
    """Boolean per row: does the TF path disagree with what was served?"""
    from transforms.tf_apply import transform_tensors

    needed = set(artifact.spec.input_fields()) | {"event_time"}
    expect = transform_tensors(artifact, tensors_of(raw.select([c for c in raw.column_names if c in needed])))
    bad = np.zeros(raw.num_rows, dtype=bool)
    for name, col in served.columns.items():
        other = expect[name].numpy()
        if col.dtype.kind == "f":
            bad |= ~np.isclose(col, other, rtol=tolerance, atol=tolerance)
        else:
            bad |= col != other
    bad |= (served.indices != expect["ftrl_indices"].numpy()).any(axis=1)
    bad |= ~np.isclose(served.values, expect["ftrl_values"].numpy(), rtol=tolerance, atol=tolerance).all(axis=1)
    return bad


def mismatch_rate(artifact: TransformArtifact, raw: pa.Table, served: Features,
                  tolerance: float = 1e-6) -> float:
    """Fraction of sampled rows whose served features differ from the TF path's."""
    if raw.num_rows == 0:
        return 0.0
    return float(row_mismatches(artifact, raw, served, tolerance).mean())
