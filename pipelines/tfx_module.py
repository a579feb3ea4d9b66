"""The user code of the TFX retrain: Transform's ``preprocessing_fn`` and Trainer's ``run_fn``.

``preprocessing_fn`` is the shared transforms' TF implementation (``transforms.tf_apply``)
with the *same fitted artifact* the streaming job serves (its path comes through
``custom_config``), so the transform graph inside the SavedModel computes the streaming job's
features (the infra check asserts it on every candidate).

``run_fn`` trains ``build_keras_model`` on the transformed ``ftrl_indices``/``ftrl_values``:
a wide logistic part plus a small bag-of-embeddings part, warm-started from the current base
model when its feature spec (fingerprint and dimension) matches. It exports a SavedModel with
two signatures -- ``serving_default`` (serialized raw tf.Examples -> ``logit``,
``probabilities``) and ``transform_features`` (-> ``ftrl_indices``, ``ftrl_values``) -- and the
same weights as ``base_model.npz`` (``models.base.BaseModel``) for the streaming scorer.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TF 2.16 + TFX: Keras 2 (tf-keras)

LABEL = "label"
SPAN_ROW = "span_row"  # pipelines.retrain.SPAN_ROW (not imported: this module is TFX user code)
NPZ_DIR = "assets.extra"


class _Clock:
    """Wall seconds per phase of ``run_fn`` (kept in ``training.json``: where a retrain's time goes)."""

    def __init__(self) -> None:
        import time

        self._now = time.perf_counter
        self._t = self._now()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        t = self._now()
        self.laps[name] = round(t - self._t, 2)
        self._t = t


def preprocessing_fn(inputs: dict, custom_config: dict) -> dict:
    from transforms.artifact import TransformArtifact
    from transforms.tf_apply import make_preprocessing_fn

    out = make_preprocessing_fn(TransformArtifact.load(custom_config["artifact"]))(inputs)
    keep = {k: out[k] for k in ("ftrl_indices", "ftrl_values", LABEL)}
    if SPAN_ROW in inputs:  # passed through: the Trainer restores the learning order with it
        import tensorflow as tf

        from transforms.tf_apply import _dense

        keep[SPAN_ROW], _ = _dense(tf, inputs[SPAN_ROW], tf.constant(-1, tf.int64))
    return keep


def build_keras_model(dimension: int, width: int, embedding: int, hidden: int, l2: float, lr: float):
    """wide + deep over the hashed features; the layer names are what ``to_base_model`` reads."""
    import tensorflow as tf

    idx = tf.keras.Input((width,), dtype=tf.int64, name="ftrl_indices")
    val = tf.keras.Input((width,), dtype=tf.float32, name="ftrl_values")
    reg = tf.keras.regularizers.l2(l2) if l2 else None
    wide = tf.keras.layers.Embedding(dimension, 1, embeddings_initializer="zeros", embeddings_regularizer=reg,
                                     name="wide")(idx)
    wide_logit = tf.reduce_sum(wide[:, :, 0] * val, axis=1, keepdims=True)
    emb = tf.keras.layers.Embedding(dimension, embedding, embeddings_regularizer=reg, name="emb")(idx)
    bag = tf.reduce_sum(emb * val[:, :, None], axis=1)
    h = tf.keras.layers.Dense(hidden, activation="relu", name="hidden")(bag)
    deep_logit = tf.keras.layers.Dense(1, name="out")(h)
    logit = tf.keras.layers.Add(name="logit")([wide_logit, deep_logit])
    model = tf.keras.Model([idx, val], logit)
    model.compile(optimizer=tf.keras.optimizers.Adam(lr),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
    return model


def to_base_model(model):
    from models.base import BaseModel

    w1, b1 = model.get_layer("hidden").get_weights()
    w2, b2 = model.get_layer("out").get_weights()
    return BaseModel(wide=model.get_layer("wide").get_weights()[0][:, 0], emb=model.get_layer("emb").get_weights()[0],
                     w1=w1, b1=b1, w2=w2[:, 0], b2=b2[0])


def set_from_base_model(model, base) -> None:
    model.get_layer("wide").set_weights([base.wide[:, None]])
    model.get_layer("emb").set_weights([base.emb])
    model.get_layer("hidden").set_weights([base.w1, base.b1])
    model.get_layer("out").set_weights([base.w2[:, None], base.b2.reshape(1)])


def _batch_loss(model):
    """The mean log loss of a batch (labels ``y`` of shape [n]). Training and scoring are
    traced with ``autograph=False``: the model has no data-dependent Python control flow, and
    Keras' ``fit``/``evaluate`` machinery took ~25 s per retrain here just to go through
    autograph, more than the training itself."""
    import tensorflow as tf

    bce = tf.keras.losses.BinaryCrossentropy(from_logits=True)

    def loss(x, y, training):
        return bce(y[:, None], model(x, training=training))

    return loss


def _fit(model, data, epochs: int) -> float:
    """Adam steps over ``data`` ``epochs`` times, in order (deterministic); the last epoch's
    mean loss."""
    import tensorflow as tf

    loss_of = _batch_loss(model)

    @tf.function(autograph=False)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_of(x, y, True)
            total = loss + tf.add_n(model.losses) if model.losses else loss
        grads = tape.gradient(total, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return total

    mean = 0.0
    for _ in range(epochs):
        losses = [float(step(x, y)) for x, y in data]
        mean = sum(losses) / max(len(losses), 1)
    return mean


def _recalibrate(model, data) -> float:
    """Shift the output bias so the mean predicted probability on the training split equals
    its positive rate, and return the shift. Adam on a rare-positive span leaves the mean
    prediction far from the rate (seen: 0.38x on a TalkingData day) while the ranking is
    good; an intercept-only correction fixes calibration without touching the ranking. A 1-D
    Newton solve on the frozen logits; deterministic."""
    import numpy as np
    import tensorflow as tf

    fwd = tf.function(lambda x: model(x, training=False), autograph=False)
    z = np.concatenate([fwd(x).numpy().reshape(-1) for x, _ in data]).astype(np.float64)
    y = np.concatenate([y.numpy().reshape(-1) for _, y in data]).astype(np.float64)
    rate = float(y.mean()) if len(y) else 0.0
    if not 0.0 < rate < 1.0:
        return 0.0
    delta = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(z + delta, -35, 35)))
        f, g = p.mean() - rate, (p * (1 - p)).mean()
        if abs(f) < 1e-12 * rate or g <= 0:
            break
        delta -= float(np.clip(f / g, -5.0, 5.0))
    out_layer = model.get_layer("out")
    w, b = out_layer.get_weights()
    out_layer.set_weights([w, b + np.float32(delta)])
    return float(delta)


def _mean_loss(model, data) -> float:
    """Example-weighted mean log loss of ``model`` on ``data``."""
    import tensorflow as tf

    loss_of = _batch_loss(model)
    score = tf.function(lambda x, y: loss_of(x, y, False), autograph=False)
    total = n = 0.0
    for x, y in data:
        k = float(tf.shape(y)[0])
        total, n = total + float(score(x, y)) * k, n + k
    return total / max(n, 1.0)


def run_fn(fn_args) -> None:
    import tensorflow as tf
    import tensorflow_transform as tft
    from tfx_bsl.public import tfxio

    from models.base import FILE, BaseModel

    cfg = fn_args.custom_config
    clock = _Clock()
    tf.keras.utils.set_random_seed(int(cfg.get("seed", 0)))
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    schema = tf_transform_output.transformed_metadata.schema

    def dataset(files):
        """The split in its staged (learning) order, whatever order the files hold it in."""
        import numpy as np

        ds = fn_args.data_accessor.tf_dataset_factory(
            files, tfxio.TensorFlowDatasetOptions(batch_size=8192, label_key=LABEL, num_epochs=1, shuffle=False),
            schema)
        cols: dict = {"ftrl_indices": [], "ftrl_values": [], LABEL: [], SPAN_ROW: []}
        for x, y in ds:
            for k in ("ftrl_indices", "ftrl_values"):
                cols[k].append(x[k].numpy())
            cols[LABEL].append(y.numpy().reshape(-1).astype(np.float32))
            if SPAN_ROW in x:
                cols[SPAN_ROW].append(x[SPAN_ROW].numpy().reshape(-1))
        arr = {k: np.concatenate(v) for k, v in cols.items() if v}
        order = np.argsort(arr[SPAN_ROW], kind="stable") if SPAN_ROW in arr else slice(None)
        feats = {k: arr[k][order] for k in ("ftrl_indices", "ftrl_values")}
        return tf.data.Dataset.from_tensor_slices((feats, arr[LABEL][order])).batch(int(cfg["batch_size"]))

    model = build_keras_model(int(cfg["dimension"]), int(cfg["width"]), int(cfg["embedding"]), int(cfg["hidden"]),
                              float(cfg["l2"]), float(cfg["learning_rate"]))
    warm = cfg.get("warm_start")
    started_from = None
    if warm:
        base = BaseModel.from_bytes(Path(warm["path"]).read_bytes())
        shapes_match = (base.dimension == int(cfg["dimension"]) and base.emb.shape[1] == int(cfg["embedding"])
                        and base.w1.shape[1] == int(cfg["hidden"]))
        if warm.get("spec_fingerprint") == cfg["spec_fingerprint"] and shapes_match:
            set_from_base_model(model, base)
            started_from = warm["version"]
    if started_from is None and cfg.get("prior_logit") is not None:
        # a cold start begins at the span's positive rate, not at p = 0.5: with few steps
        # (a small span) it would otherwise end badly calibrated
        out_layer = model.get_layer("out")
        out_layer.set_weights([out_layer.get_weights()[0], out_layer.get_weights()[1] * 0 + float(cfg["prior_logit"])])
    clock.lap("setup")
    train_data = dataset(fn_args.train_files)
    train_loss = _fit(model, train_data, int(cfg["epochs"]))
    clock.lap("fit")
    bias_shift = _recalibrate(model, train_data) if cfg.get("recalibrate", True) else 0.0
    clock.lap("recalibrate")
    eval_loss = _mean_loss(model, dataset(fn_args.eval_files))
    clock.lap("evaluate")

    raw_spec = tf_transform_output.raw_feature_spec()
    needed = set(cfg["raw_inputs"])
    serving_spec = {k: v for k, v in raw_spec.items() if k in needed}
    # a plain tf.Module: the signatures and the variables they use, not Keras' own saving
    # (which traces every layer through autograph again)
    export = tf.Module()
    export.model_variables = list(model.variables)
    export.tft_layer = tf_transform_output.transform_features_layer()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def transform_features(serialized):
        t = export.tft_layer(tf.io.parse_example(serialized, serving_spec))
        return {"ftrl_indices": t["ftrl_indices"], "ftrl_values": t["ftrl_values"]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve(serialized):
        logit = model(transform_features(serialized))[:, 0]
        return {"logit": logit, "probabilities": tf.sigmoid(logit)}

    out = Path(fn_args.serving_model_dir)
    tf.saved_model.save(export, str(out), signatures={"serving_default": serve,
                                                      "transform_features": transform_features})
    clock.lap("save")
    (out / NPZ_DIR).mkdir(parents=True, exist_ok=True)
    (out / NPZ_DIR / FILE).write_bytes(to_base_model(model).to_bytes())
    (out / NPZ_DIR / "training.json").write_text(json.dumps({
        "warm_started_from": started_from, "train_loss": train_loss, "bias_shift": bias_shift,
        "eval_loss": float(eval_loss), "epochs": int(cfg["epochs"]), "seconds": clock.laps}, indent=1) + "\n")
