"""The base model as the streaming job serves it: the TFX Trainer's Keras model, exported as
plain arrays and scored with numpy on the *served* sparse features (no TensorFlow in the
stream).

The Keras model (``pipelines.tfx_module.build_keras_model``) is a wide logistic part over the
hashed features plus a small deep part (a value-weighted bag of embeddings, one hidden ReLU
layer): ``logit = sum_k wide[i_k] v_k + w2 . relu(sum_k emb[i_k] v_k @ w1 + b1) + b2``.
``BaseModel.logits`` computes exactly that, so the streaming scorer and the SavedModel agree
(float32 weights, float64 arithmetic; the infra check asserts it on every candidate).

>>> import numpy as np
>>> m = BaseModel.zeros(dimension=10, embedding=2, hidden=3, bias=-2.0)
>>> m.logits(np.array([[1, 4]]), np.array([[1.0, 0.5]], np.float32)).tolist()
[-2.0]
>>> BaseModel.from_bytes(m.to_bytes()).dimension
10
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

FILE = "base_model.npz"
ARRAYS = ("wide", "emb", "w1", "b1", "w2", "b2")


@dataclass
class BaseModel:
    wide: np.ndarray  # [D]
    emb: np.ndarray  # [D, E]
    w1: np.ndarray  # [E, H]
    b1: np.ndarray  # [H]
    w2: np.ndarray  # [H]
    b2: np.ndarray  # [] the global bias

    @property
    def dimension(self) -> int:
        return int(self.wide.shape[0])

    @classmethod
    def zeros(cls, dimension: int, embedding: int = 4, hidden: int = 8, bias: float = 0.0) -> "BaseModel":
        f = np.float32
        return cls(np.zeros(dimension, f), np.zeros((dimension, embedding), f), np.zeros((embedding, hidden), f),
                   np.zeros(hidden, f), np.zeros(hidden, f), np.array(bias, f))

    def logits(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Logits of a batch of served features ``indices``/``values`` [m, k]."""
        idx = np.asarray(indices, np.int64)
        v = np.asarray(values, np.float64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.dimension):
            raise ValueError(f"feature index out of range for a base model of dimension {self.dimension}")
        wide = (self.wide[idx].astype(np.float64) * v).sum(axis=1)
        bag = np.einsum("mke,mk->me", self.emb[idx].astype(np.float64), v)
        h = np.maximum(bag @ self.w1.astype(np.float64) + self.b1, 0.0)
        return wide + h @ self.w2.astype(np.float64) + float(self.b2)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{k: getattr(self, k) for k in ARRAYS})
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "BaseModel":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            missing = [k for k in ARRAYS if k not in z]
            if missing:
                raise ValueError(f"not a base model: arrays {missing} missing")
            return cls(**{k: z[k] for k in ARRAYS})
