"""Guardrails for the online delta: serve it only while it earns its place.

The delta layer learns from every label, so a burst of bad labels (a tracking bug, flipped
conversions, a bot) or a numerical blow-up goes straight into what is served. The guard
watches two things and falls back to the base model (which a TFX pipeline validated) when
either goes wrong:

* **quality**: over the last ``window`` learned examples, the progressive logloss of the hybrid
  (the prediction the delta made *before* learning each example) against the base model's alone,
  on the same examples. The delta is disabled when the hybrid is worse than base-only by more
  than ``max_excess`` (relative), and enabled again once it is no worse than base-only
  (``recover_excess``): the hysteresis keeps it from flapping. It keeps learning while disabled,
  so it can recover.
* **weights**: the L2 norm of the delta's weights. Above ``max_weight_norm`` the delta is
  *frozen*: its updates are no longer applied and it is not served, until the next rebase (a
  base-model swap resets it) or a rollback.

A delta with fewer than ``min_examples`` in the window (a start without a checkpoint: the
online state was lost; or just after a rebase) is not served either: base-only at once, never
an untrained delta.

Decisions are taken when a tick is scored, from the state the examples learned so far left (never
mid-batch), so the job and the replay decide the same way at the same ticks; each change of
what is served is an alert.

>>> g = Guard(GuardConfig(window=4, min_examples=2, max_excess=0.1))
>>> g.decide(weight_norm=0.0, at=0), g.reason
(None, 'warming_up')
>>> g.observe(p_hybrid=[0.9, 0.1], p_base=[0.6, 0.4], y=[1, 0])  # the delta helps
>>> g.decide(weight_norm=1.0, at=1)["alert"], g.serving
('delta_enabled', True)
>>> g.observe(p_hybrid=[0.1, 0.9, 0.1, 0.9], p_base=[0.6, 0.4, 0.6, 0.4], y=[1, 0, 1, 0])  # it hurts
>>> g.decide(weight_norm=1.0, at=2)["alert"], g.reason
('delta_disabled', 'guard_logloss')
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

EPS = 1e-15


@dataclass(frozen=True)
class GuardConfig:
    enabled: bool = True
    window: int = 2_000  # learned examples compared, hybrid vs base-only
    min_examples: int = 500  # fewer in the window: the delta is not served yet
    max_excess: float = 0.05  # disable when hybrid logloss > base-only's * (1 + max_excess)
    recover_excess: float = 0.0  # enable again when hybrid logloss <= base-only's * (1 + this)
    max_weight_norm: float = 1_000.0  # L2 norm of the delta's weights; above: frozen (0: no limit)

    def __post_init__(self) -> None:
        if self.window < 1 or not 0 <= self.min_examples <= self.window:
            raise ValueError("guard: need window >= 1 and 0 <= min_examples <= window")
        if self.max_excess < self.recover_excess:
            raise ValueError("guard: max_excess must be >= recover_excess (hysteresis)")

    @classmethod
    def from_dict(cls, d: dict | "GuardConfig") -> "GuardConfig":
        return d if isinstance(d, GuardConfig) else cls(**d)


def _logloss(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    y = np.asarray(y, np.float64)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


@dataclass
class Guard:
    cfg: GuardConfig = field(default_factory=GuardConfig)
    ll_hybrid: np.ndarray = field(default_factory=lambda: np.empty(0))
    ll_base: np.ndarray = field(default_factory=lambda: np.empty(0))
    serving: bool = False  # is the delta served now
    reason: str = "warming_up"  # why not ("" when served)
    frozen: bool = False
    alerts: int = 0

    def observe(self, p_hybrid, p_base, y) -> None:
        """Examples just learned, in learning order: the hybrid's and the base's predictions
        before the update, and the labels."""
        w = self.cfg.window
        self.ll_hybrid = np.concatenate([self.ll_hybrid, _logloss(p_hybrid, y)])[-w:]
        self.ll_base = np.concatenate([self.ll_base, _logloss(p_base, y)])[-w:]

    def reset(self) -> None:
        """A rebase: new delta weights (unfrozen), and a window to fill again."""
        self.ll_hybrid, self.ll_base = np.empty(0), np.empty(0)
        self.frozen = False

    @property
    def n(self) -> int:
        return len(self.ll_hybrid)

    def stats(self) -> dict:
        h = float(self.ll_hybrid.mean()) if self.n else None
        b = float(self.ll_base.mean()) if self.n else None
        return {"window_n": self.n, "hybrid_logloss": h, "base_logloss": b}

    def decide(self, weight_norm: float, at: int) -> dict | None:
        """Decide what to serve from now on; returns an alert record when that changes."""
        c = self.cfg
        before, was = self.serving, self.reason
        detail = ""
        if not c.enabled:
            self.serving, self.reason = True, ""
            return None
        froze = bool(c.max_weight_norm) and weight_norm > c.max_weight_norm and not self.frozen
        if froze:
            self.frozen = True
            detail = f"delta weight norm {weight_norm:.4g} > {c.max_weight_norm:g}: frozen until a rebase or rollback"
        s = self.stats()
        if self.frozen:
            self.serving, self.reason = False, "guard_frozen"
        elif self.n < c.min_examples:
            self.serving, self.reason = False, "warming_up"
        else:
            h, b = s["hybrid_logloss"], s["base_logloss"]
            if self.serving and h > b * (1 + c.max_excess):
                self.serving, self.reason = False, "guard_logloss"
                detail = f"hybrid logloss {h:.5f} > base-only {b:.5f} x {1 + c.max_excess:g}"
            elif not self.serving and h <= b * (1 + c.recover_excess):
                self.serving, self.reason = True, ""
                detail = f"hybrid logloss {h:.5f} <= base-only {b:.5f} x {1 + c.recover_excess:g}"
            elif not self.serving and self.reason == "warming_up":
                self.reason = "guard_logloss"  # warmed up, but not good enough yet
        if self.serving == before and not froze:
            return None
        self.alerts += 1
        alert = "delta_frozen" if froze else "delta_enabled" if self.serving else "delta_disabled"
        why = self.reason or ("warmed_up" if was == "warming_up" else "recovered")
        return {"alert": alert, "at": int(at), "reason": why, "detail": detail,
                "weight_norm": float(weight_norm), **s, "config": asdict(c)}
