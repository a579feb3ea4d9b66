"""Feature hashing that is bit-identical in Python and in TensorFlow.

The hash is FarmHash Fingerprint64 of the value's UTF-8 bytes, modulo the bucket count:
exactly TensorFlow's ``tf.strings.to_hash_bucket_fast``, which sits in the exported serving
graph. Python computes it with ``pyfarmhash`` (the same FarmHash C++ code, already a TFX
dependency). Why this hash: it is stable by specification (a *fingerprint*, frozen forever,
unlike ``hash()`` or FarmHash's non-fingerprint functions), fast, and native to TF, so the
serving graph needs no custom op.

Canonical form before hashing (both sides): NUL characters become U+FFFD, because
pyfarmhash's binding cannot take strings with embedded NULs. Crosses hash the values joined by
``CROSS_SEPARATOR``. Speed: values are dictionary-encoded first (Arrow, C++), so each distinct
value is hashed once per batch; crosses hash each distinct combination once.

>>> int(hash_strings(["a", "a", "b"], 1000)[0]) == int(hash_strings(["a"], 1000)[0])
True
"""
from __future__ import annotations

import farmhash
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CROSS_SEPARATOR = "\x1f_X_"  # unit separator + marker: unlikely inside real values
NUL_REPLACEMENT = "\ufffd"


def canonical(s: str) -> str:
    return s.replace("\x00", NUL_REPLACEMENT) if "\x00" in s else s


def fingerprint64(s: str) -> int:
    """FarmHash Fingerprint64 of the canonical UTF-8 bytes (as TF's tf.fingerprint)."""
    return farmhash.fingerprint64(canonical(s))


def _fingerprints(values: list[str]) -> np.ndarray:
    """Fingerprints of values already in canonical form (see ``dictionary``)."""
    return np.fromiter(map(farmhash.fingerprint64, values), dtype=np.uint64, count=len(values))


def dictionary(col: pa.Array | pa.ChunkedArray | list) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(codes int64 with -1 for null, distinct values in canonical form, null mask) of a
    string column. Encoding and canonicalization run in Arrow's C++ kernels."""
    arr = col if isinstance(col, (pa.Array, pa.ChunkedArray)) else pa.array(col, pa.string())
    if len(arr) <= SMALL_BATCH and pa.types.is_string(arr.type):
        # (to_numpy, then tolist: ~10x faster than Arrow's to_pylist)
        return _dictionary_small(arr.to_numpy().tolist() if isinstance(arr, pa.ChunkedArray)
                                 else arr.to_numpy(zero_copy_only=False).tolist())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    enc = pc.dictionary_encode(arr)
    null = np.asarray(pc.is_null(enc.indices).to_numpy(zero_copy_only=False), dtype=bool)
    codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    values = enc.dictionary
    if pa.types.is_string(values.type) and pc.any(pc.match_substring(values, "\x00")).as_py():
        values = pc.replace_substring(values, "\x00", NUL_REPLACEMENT)
    return codes, values.to_numpy(zero_copy_only=False).tolist(), null


# up to this many rows, ``dictionary`` encodes in Python: Arrow's kernels cost ~10 µs per call
# whatever the size (five calls per column), the streaming job's ticks are often a few dozen rows
SMALL_BATCH = 64


def _dictionary_small(xs: list) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``dictionary`` of a short list of strings (None: null): the same codes (first
    occurrence order, as Arrow's dictionary_encode), values and null mask."""
    index: dict[str, int] = {}
    codes = np.fromiter((-1 if x is None else index.setdefault(x, len(index)) for x in xs), np.int64, len(xs))
    return codes, [canonical(v) for v in index], codes < 0


def hash_values(values: list[str], buckets: int) -> np.ndarray:
    """Bucket id (int64) of each value (values in canonical form)."""
    return (_fingerprints(values) % np.uint64(buckets)).astype(np.int64)


def hash_codes(codes: np.ndarray, values: list[str], null: np.ndarray, buckets: int,
               missing: int = -1) -> np.ndarray:
    """Bucket ids of a dictionary-encoded column (see ``dictionary``); nulls get ``missing``."""
    if not len(values):
        return np.full(len(codes), missing, np.int64)
    return np.where(null, missing, hash_values(values, buckets)[np.maximum(codes, 0)])


def hash_strings(col, buckets: int) -> np.ndarray:
    """Bucket ids (int64) of a string column; nulls get -1."""
    return hash_codes(*dictionary(col), buckets)


def hash_cross(parts: list[tuple[np.ndarray, list[str]]], buckets: int) -> np.ndarray:
    """Bucket ids of the cross of columns given as (codes, distinct values); codes are >= 0.

    Each distinct combination is joined with CROSS_SEPARATOR and hashed once.
    """
    n = len(parts[0][0])
    combo = np.zeros(n, dtype=np.int64)
    for codes, values in parts:  # mixed-radix code of the combination
        combo = combo * max(len(values), 1) + codes
    uniq, inverse = np.unique(combo, return_inverse=True)
    strings = []
    for u in uniq.tolist():
        pieces = []
        for codes, values in reversed(parts):
            k = max(len(values), 1)
            pieces.append(values[u % k])
            u //= k
        strings.append(CROSS_SEPARATOR.join(reversed(pieces)))
    return hash_values(strings, buckets)[inverse]
