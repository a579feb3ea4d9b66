"""Hot swap of the base model into a running stream, engine-free: which base model goes live
and when, what the delta re-learns, and the record of it.

Two ways a base model reaches the stream (``runners.learner`` drives them tick by tick):

* **scheduled** (``retrain_every_ms`` > 0): when event time passes a boundary ``B`` the job
  requests a TFX retrain with cutoff ``B`` (examples resolved before ``B``) and keeps
  streaming; the result goes live at the first tick at or after ``B + swap_delay_ms`` --
  a time fixed by the event log, so a replay swaps at the same event and the same version
  (the job waits there for the retrain if it is still running). A candidate that is not
  blessed is not pushed and the champion stays.
* **watched** (no schedule): the job checks the registry's current base at every tick; a newly
  promoted version goes live at the next tick, and that tick is recorded in
  ``RUN_DIR/swaps.jsonl``, the log a deterministic replay follows.

Either way the model is verified (checksums, feature-spec fingerprint, dimension) before it
goes live; a model that fails is refused with its reason, recorded, and the current base stays.

A **drift alert** (``DriftAlert``) also starts a retrain, at the tick where the learner's
windowed normalized entropy rises ``ratio`` times above its best level since the last alert;
its model goes live ``swap_delay_ms`` later, like a scheduled one. The window is a function of
the event log, so alerts replay at the same ticks.

>>> s = Schedule(every_ms=3_600_000, swap_delay_ms=600_000)
>>> s.first_boundary(5_400_000), s.live_at(7_200_000)
(7200000, 7800000)
>>> alert, state = DriftAlert(ratio=1.2, min_examples=10, cooldown_ms=1_000), {}
>>> [alert.check(state, ne, 100, t) for t, ne in [(0, 0.9), (1, 0.8), (2, 0.9), (3, 0.97), (4, 0.99)]]
[False, False, False, True, False]
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.base import FILE, BaseModel
from models.registry import Registry, RegistryError

SWAPS = "swaps.jsonl"


@dataclass(frozen=True)
class Schedule:
    every_ms: int = 0  # 0: no scheduled retrains (watch the registry instead)
    swap_delay_ms: int = 1_800_000  # event time from a boundary to its model going live

    def first_boundary(self, t: int) -> int:
        """The first boundary after event time ``t`` (boundaries are multiples of ``every_ms``)."""
        return (t // self.every_ms + 1) * self.every_ms

    def live_at(self, boundary: int) -> int:
        return boundary + self.swap_delay_ms


@dataclass(frozen=True)
class DriftAlert:
    ratio: float = 0.0  # 0: off; else alert when the window's NE > ratio x its best since the last alert
    min_examples: int = 2_000  # the window must hold this many examples
    cooldown_ms: int = 6 * 3_600_000  # event time after an alert before the next one can fire

    def check(self, state: dict, ne: float | None, n: int, tick: int) -> bool:
        """Update ``state`` (``best``, ``last``: kept in the job's state) with the window's NE at
        ``tick``; True when it is an alert."""
        if not self.ratio or ne is None or n < self.min_examples:
            return False
        if state.get("last") is not None and tick - state["last"] < self.cooldown_ms:
            return False
        best = state.get("best")
        if best is None or ne < best:
            state["best"] = ne
            return False
        if ne > self.ratio * best:
            state.update(best=None, last=tick)
            return True
        return False


def load_base(registry: Path, version: str, fingerprint: str, dimension: int,
              artifact_version: str | None = None) -> tuple[BaseModel, dict]:
    """The verified base model ``version`` and its manifest; ``RegistryError`` if it is missing,
    corrupted, for another feature spec or of another dimension, or (its manifest saying so)
    trained on the features of another transform artifact than ``artifact_version``: the same
    spec with other statistics (vocabularies, scaling) would serve it skewed features."""
    ref = Registry(registry).verify("base", version, fingerprint=fingerprint)
    trained = ref.manifest.get("artifact_version")
    if artifact_version and trained and trained != artifact_version:
        raise RegistryError(f"base {version}: trained on transform artifact {trained}, the job serves {artifact_version}")
    path = ref.path / "assets.extra" / FILE
    try:
        model = BaseModel.from_bytes(path.read_bytes())
    except (OSError, ValueError) as e:
        raise RegistryError(f"base {version}: cannot load {FILE} ({e})") from None
    if model.dimension != dimension:
        raise RegistryError(f"base {version}: dimension {model.dimension} != the served {dimension}")
    return model, ref.manifest


def replay_columns(lines: list[str], since_event_time: int) -> dict:
    """Example JSON lines (as the job emits them) with event time >= ``since_event_time``, as
    the columns ``OnlineLayer.swap_base`` re-learns, in learning order (``seq``)."""
    rows = sorted((r for r in map(json.loads, lines) if r["event_time"] >= since_event_time),
                  key=lambda r: r["seq"])
    feats = [json.loads(r["features"]) for r in rows]
    return {"resolution_time": np.array([r["resolution_time"] for r in rows], np.int64),
            "indices": [f["indices"] for f in feats], "values": [f["values"] for f in feats],
            "label": np.array([r["label"] for r in rows], np.float64),
            "weight": np.array([r["weight"] for r in rows], np.float64),
            "event_time": np.array([r["event_time"] for r in rows], np.int64)}


def record(run_dir: Path, entry: dict) -> None:
    """Append a swap (or refusal) to ``RUN_DIR/swaps.jsonl``; a replay after a failover may
    append the same entry again, ``read_swaps`` keeps one."""
    with open(Path(run_dir) / SWAPS, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_swaps(run_dir: Path) -> list[dict]:
    """The swap log, one entry per (version, live_at, outcome, cutoff, alert_at), in order."""
    p = Path(run_dir) / SWAPS
    if not p.exists():
        return []
    seen, out = set(), []
    for line in p.read_text().splitlines():
        if line.strip():
            e = json.loads(line)
            key = (e.get("version"), e.get("live_at"), e.get("outcome"), e.get("cutoff"), e.get("alert_at"))
            if key not in seen:
                seen.add(key)
                out.append(e)
    return out


def pushed_unix(registry: Path, version: str) -> float | None:
    """When ``version`` was promoted (the registry's history), for the swap latency."""
    for h in reversed(Registry(registry).history("base")):
        if h.get("version") == version:
            return h.get("unix")
    return None
