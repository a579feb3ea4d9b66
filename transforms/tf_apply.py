"""The TensorFlow apply: the same spec and artifact as ``transforms.apply``, as TF ops, so it
runs inside the TFX Transform component's ``preprocessing_fn`` and therefore inside the
exported serving graph.

Inputs are a dict of tensors keyed by raw field name: dense 1-D tensors for required fields,
or ``tf.SparseTensor`` [batch, 1] for optional ones (what tf.Transform gives for
VarLenFeature); a missing entry of a SparseTensor is a missing value. Raw numerics are first
rounded to float32 (the tf.Example wire type; beyond its range inf, so missing; float32 and
float64 inputs give the same result), arithmetic is float64 and the outputs are cast to
float32, like the numpy path; hashing is ``to_hash_bucket_fast`` (FarmHash Fingerprint64, see
``transforms.hashing``).

>>> import tensorflow as tf, pyarrow as pa
>>> from transforms.spec import load_spec
>>> from transforms.artifact import fit
>>> spec = load_spec("elec2")
>>> t = pa.table({"event_time": [0, 1_800_000], **{n.name: [0.2, 0.4] for n in spec.numeric}})
>>> out = transform_tensors(fit(spec, t), {k: tf.constant(t[k].to_pylist()) for k in t.column_names})
>>> out["hour_x_weekday"].shape.as_list()
[2]
"""
from __future__ import annotations

from typing import Callable

from transforms.artifact import TransformArtifact
from transforms.apply import DAY_MS, HOUR_MS, MISSING_IN_CROSS
from transforms.hashing import CROSS_SEPARATOR, NUL_REPLACEMENT


def _dense(tf, x, default):
    """(values [batch], present [batch] bool) from a dense tensor or a SparseTensor [batch, 1]."""
    if isinstance(x, tf.SparseTensor):
        # [batch, 1] even when no row of the batch has a value (dense_shape [batch, 0] then)
        x = tf.SparseTensor(x.indices, x.values, tf.stack([x.dense_shape[0], tf.constant(1, tf.int64)]))
        ones = tf.SparseTensor(x.indices, tf.ones_like(x.values, dtype=tf.bool), x.dense_shape)
        present = tf.sparse.to_dense(ones, default_value=False)[:, 0]
        values = tf.sparse.to_dense(x, default_value=default)[:, 0]
        return values, present
    x = tf.reshape(x, [-1])
    return x, tf.ones_like(x, dtype=tf.bool)


def transform_tensors(artifact: TransformArtifact, inputs: dict) -> dict:
    """Raw tensors -> the same outputs as ``transforms.apply.apply`` (columns + ftrl_*)."""
    import tensorflow as tf

    spec = artifact.spec
    out: dict = {}
    cross_str: dict = {}
    for f in spec.categorical:
        s, present = _dense(tf, inputs[f.source], "")
        canon = tf.strings.regex_replace(s, "\x00", NUL_REPLACEMENT)
        bucket = tf.strings.to_hash_bucket_fast(canon, f.buckets)
        out[f.name] = tf.where(present, bucket, tf.constant(f.buckets, tf.int64))
        cross_str[f.name] = tf.where(present, canon, MISSING_IN_CROSS)

    if spec.time or spec.crosses:
        t, _ = _dense(tf, inputs["event_time"], tf.constant(0, tf.int64))
        t = tf.cast(t, tf.int64)
        hour = tf.math.floordiv(tf.math.floormod(t, DAY_MS), HOUR_MS)
        dow = tf.math.floormod(tf.math.floordiv(t, DAY_MS) + 3, 7)
        times = {"hour_of_day": hour, "day_of_week": dow}
        for name in spec.time:
            out[name] = times[name]
        for name, v in times.items():
            cross_str[name] = tf.strings.as_string(v)

    for c in spec.crosses:
        joined = tf.strings.join([cross_str[x] for x in c.fields], separator=CROSS_SEPARATOR)
        out[c.name] = tf.strings.to_hash_bucket_fast(joined, c.buckets)

    clip_out = spec.output_clip
    for f in spec.numeric:
        p = artifact.numeric[f.name]
        x, present = _dense(tf, inputs[f.source], tf.constant(0, inputs[f.source].dtype))
        x = tf.cast(tf.cast(x, tf.float32), tf.float64)  # the float32 wire rounding
        present = tf.logical_and(present, tf.math.is_finite(x))
        v = tf.where(present, x, tf.zeros_like(x))
        if f.clip is not None:
            v = tf.clip_by_value(v, f.clip[0], f.clip[1])
        if f.log1p:
            v = tf.math.sign(v) * tf.math.log1p(tf.abs(v))
        v = tf.clip_by_value(v, -clip_out, clip_out)
        z = (v - p.mean) / p.std if f.standardize else v
        z = tf.clip_by_value(z, -clip_out, clip_out)
        out[f.name] = tf.cast(tf.where(present, z, tf.zeros_like(z)), tf.float32)
        if f.quantile_buckets > 1:
            bounds = tf.constant(p.boundaries, tf.float64)
            b = tf.searchsorted(bounds, v, side="right", out_type=tf.int64) if p.boundaries else \
                tf.zeros_like(v, tf.int64)
            out[f"{f.name}_bucket"] = tf.where(present, b, tf.constant(f.quantile_buckets, tf.int64))

    offsets = spec.offsets()
    idx, val = [], []
    for name, _ in spec.sparse_features():
        c = out[name]
        if c.dtype == tf.float32:
            idx.append(tf.fill(tf.shape(c), tf.constant(offsets[name], tf.int64)))
            val.append(c)
        else:
            idx.append(c + offsets[name])
            val.append(tf.ones_like(c, tf.float32))
    out["ftrl_indices"] = tf.stack(idx, axis=1)
    out["ftrl_values"] = tf.stack(val, axis=1)
    return out


def make_preprocessing_fn(artifact: TransformArtifact) -> Callable[[dict], dict]:
    """A tf.Transform ``preprocessing_fn`` that applies the fitted artifact (no TFT analyzers:
    fitting is ours, so batch and streaming share one artifact). Passes ``label`` through."""

    def preprocessing_fn(inputs: dict) -> dict:
        out = transform_tensors(artifact, inputs)
        if "label" in inputs:
            import tensorflow as tf

            lab, _ = _dense(tf, inputs["label"], tf.constant(0, inputs["label"].dtype))
            out["label"] = lab
        return out

    return preprocessing_fn
