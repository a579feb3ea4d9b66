"""Point-in-time windowed aggregates: the reference semantics, engine-free.

For an impression at event time ``t`` with key ``k`` (one or more fields), the count is the
number of impressions with the same key and event time in ``[t - window_ms, t)``:

* the lower bound is inclusive, the upper bound exclusive: **strictly earlier** events only;
* ties: events at the same millisecond as ``t`` never count, whichever arrived first, so the
  value does not depend on arrival order (it cannot leak "future" events that share a stamp);
* late events: the value depends only on event times, never on arrival order. Engines that
  evaluate in event time (Flink's OVER window) must see an event before the watermark passes
  it, so the watermark delay must cover the source's disorder. Flink's OVER operator drops
  rows behind the watermark; the streaming job's windowed count (``driftline.flink.WindowedCount``)
  writes them as dead letters (``behind_watermark``), so counts reconcile.
* a null key is a key of its own.

The Beam backfill (``transforms.beam``) runs this function per key; Flink evaluates the same
semantics natively in SQL (``transforms.flink_sql``); tests prove they agree.

>>> window_counts([["a", "a", "a", "b"]], [0, 0, 5, 5], 10).tolist()
[0, 0, 2, 0]
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from transforms.hashing import dictionary


def key_codes(keys: Sequence, n: int) -> np.ndarray:
    """One int64 code per row for the combination of key columns (nulls are a value).
    No key columns: one group."""
    code = np.zeros(n, dtype=np.int64)
    for col in keys:
        codes, values, null = dictionary(col)
        codes = np.where(null, len(values), codes)
        code = code * (len(values) + 1) + codes
    return np.unique(code, return_inverse=True)[1].astype(np.int64)


def window_counts(keys: Sequence, times, window_ms: int) -> np.ndarray:
    """Count of same-key events with time in [t - window_ms, t), per row (input order).
    ``keys`` may be empty: all rows are one group (used per key group by the Beam backfill)."""
    t = np.asarray(times, dtype=np.int64)
    n = len(t)
    if n == 0:
        return np.zeros(0, np.int64)
    k = key_codes(keys, n)
    order = np.lexsort((t, k))
    ks, ts = k[order], t[order] - t.min()
    span = int(ts.max()) + window_ms + 1
    if (int(ks.max()) + 1) * span < 2**62:  # one sorted int64 axis: key-major, then time
        flat = ks * span + ts + window_ms  # + window_ms keeps t - window_ms >= 0
        upper = np.searchsorted(flat, flat, side="left")  # first row of the same key at >= t
        lower = np.searchsorted(flat, flat - window_ms, side="left")
        counts_sorted = upper - lower
    else:  # huge key spaces or time spans: per key group
        counts_sorted = np.zeros(n, np.int64)
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        for s, e in zip(starts, np.r_[starts[1:], n]):
            g = ts[s:e]
            counts_sorted[s:e] = np.searchsorted(g, g, "left") - np.searchsorted(g, g - window_ms, "left")
    out = np.empty(n, np.int64)
    out[order] = counts_sorted
    return out


def add_aggregates(spec, table: pa.Table) -> pa.Table:
    """The table with one int64 column per aggregate of the feature spec (reference path)."""
    t = table.column("event_time").to_numpy() if table.num_rows else np.zeros(0, np.int64)
    for a in spec.aggregates:
        counts = window_counts([table.column(k) for k in a.keys], t, a.window_ms)
        table = table.append_column(a.name, pa.array(counts, pa.int64()))
    return table
