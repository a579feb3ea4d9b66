"""The online layer as the streaming job runs it, engine-free: serve p = sigmoid(base_logit +
delta_logit) for every impression, and learn FTRL on the residual from resolved examples.

Order is the caller's job: examples must be passed to ``learn`` in (resolution_time, event_id)
order (the Flink job buffers them until the watermark passes; a replay sorts them). Then the
same event log always gives the same weights.

Until a TFX base model exists, the base is a constant prior: the positive rate of the examples
whose attribution window has closed (with ``prior_strength`` pseudo-examples at
``prior_rate``). Counting a positive only when its window closes, as its negatives are, keeps
the rate unbiased by label delay; it is a function of the example order only. The prior keeps
counting after a swap: it is the fallback if a base model must be dropped.

``swap_base`` puts a TFX base model (``models.base.BaseModel``) underneath and *rebases* the
delta: the FTRL weights were learned on the old base's residual, so they are reset and the
examples the new base was not trained on (event time from its ``train_end`` on, from the
caller's replay buffer) are re-learned on the new residual, in their original order. Each
example is then counted once, by one of the two layers, and no freshness is lost.

**Hold after a reset** (``OnlineConfig.hold_after_reset``, needs the attribution window
``window_ms``). Under the wait policy a positive is learned when its label arrives, its
impression's negatives only when their window closes. In steady state the two flows balance;
right after a reset they do not: a fresh FTRL (the stream's start, or a rebase) would see up to
a window of positives with none of their negatives, with its largest steps, and over-predict
for hours. So for one window after a reset (from the first example learned, or from the swap)
a positive whose window is still open is *held*: it is recorded (sequence number, prediction)
at arrival but its gradient is applied only in the first ``learn_batch`` that reaches its window
close, with its negatives; at a rebase, the replayed positives whose window is still open are
held the same way. Held gradients are state (checkpointed with the layer); the order still
depends only on the event log.

**Online expert** (``OnlineConfig.online_expert``, with the mixer of ``models.mixer``): a second
FTRL learns every example once over the prior alone, as online-only FTRL would (``expert_ftrl``;
without the hold: it is never reset, so it has no reset to hold for). Swaps leave it alone. It
is one more expert of the mixture, so when a retrain's base model (plus its fresh delta)
predicts worse than the stream learned without one, the weight moves to it; the guard still
serves the base alone when it disables the delta.

>>> from models.ftrl import FTRLParams
>>> layer = OnlineLayer(OnlineConfig(ftrl=FTRLParams(l1=0.0)), dimension=8, spec_fingerprint="f")
>>> rec = layer.score("e1", 0, [1, 5], [1.0, 1.0], unit="u1")
>>> rec["delta_version"], rec["base_version"]
(0, 'prior')
>>> upd = layer.learn("e1", 10, [1, 5], [1.0, 1.0], label=1)
>>> upd["seq"], upd["indices"]
(1, [1, 5])
>>> from models.base import BaseModel
>>> replay = {"resolution_time": [10], "indices": [[1, 5]], "values": [[1.0, 1.0]], "label": [1], "weight": [1.0]}
>>> layer.swap_base(BaseModel.zeros(8, bias=-1.0), "000000000001", replay)
1
>>> rec = layer.score("e2", 20, [1, 5], [1.0, 1.0], unit="u1")
>>> rec["base_version"], rec["base_logit"], rec["delta_version"]
('000000000001', -1.0, 1)
"""
from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from models.ftrl import FTRL, LOGIT_CLIP, FTRLParams, sigmoid
from models.guard import Guard, GuardConfig
from models.mixer import Mixer
from transforms.hashing import fingerprint64

ARM_BUCKETS = 10_000


@dataclass(frozen=True)
class OnlineConfig:
    ftrl: FTRLParams = field(default_factory=FTRLParams)
    hybrid_share: float = 1.0  # A/B: share of units served hybrid; the rest base-only
    enabled: bool = True  # False: serve base-only (marked), keep learning
    prior_rate: float = 0.01
    prior_strength: float = 100.0
    hold_after_reset: bool = True  # see the module: positives wait for their window after a reset
    guard: GuardConfig = field(default_factory=GuardConfig)  # models.guard: when the delta is served
    # models.mixer: serve a mixture over these scales of the delta, weighted online (fixed share
    # ``mix_share``); the default (1.0,) serves the delta whole, the plain hybrid
    delta_scales: tuple[float, ...] = (1.0,)
    mix_share: float = 0.001
    # one more expert in the mixture: online-only FTRL over the prior (``expert_ftrl``, default
    # ``ftrl``), learning every example once and never rebased: served when the stream alone
    # predicts better than base + delta (a weak retrain)
    online_expert: bool = False
    expert_ftrl: FTRLParams | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.hybrid_share <= 1.0:
            raise ValueError(f"hybrid_share must be in [0, 1], got {self.hybrid_share}")
        if not 0.0 < self.prior_rate < 1.0 or self.prior_strength <= 0:
            raise ValueError("prior_rate must be in (0, 1) and prior_strength > 0")
        Mixer(self.delta_scales, self.mix_share, int(self.online_expert))  # validates them

    @classmethod
    def from_dict(cls, d: dict) -> "OnlineConfig":
        d = dict(d)
        if isinstance(d.get("ftrl"), dict):
            d["ftrl"] = FTRLParams(**d["ftrl"])
        if isinstance(d.get("expert_ftrl"), dict):
            d["expert_ftrl"] = FTRLParams(**d["expert_ftrl"])
        if isinstance(d.get("guard"), dict):
            d["guard"] = GuardConfig(**d["guard"])
        if "delta_scales" in d:
            d["delta_scales"] = tuple(float(x) for x in d["delta_scales"])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def arm_of(unit: str, hybrid_share: float) -> str:
    """Deterministic A/B arm of a unit id (FarmHash, the same on every machine and run)."""
    return "hybrid" if fingerprint64(unit or "") % ARM_BUCKETS < round(hybrid_share * ARM_BUCKETS) else "base"


def logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return max(min(math.log(p / (1 - p)), LOGIT_CLIP), -LOGIT_CLIP)


def logit_rows(p: np.ndarray) -> np.ndarray:
    """``logit`` per row."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.clip(np.log(p / (1.0 - p)), -LOGIT_CLIP, LOGIT_CLIP)


def _prior_logit(positives: float, examples: int, c: OnlineConfig) -> float:
    """The prior's logit after ``examples`` counted examples with ``positives`` positives."""
    return logit((positives + c.prior_rate * c.prior_strength) / (examples + c.prior_strength))


class OnlineLayer:
    """``window_ms``: the join's attribution window W (0: no hold after a reset)."""

    def __init__(self, cfg: OnlineConfig, dimension: int, spec_fingerprint: str, window_ms: int = 0):
        self.cfg = cfg
        self.spec_fingerprint = spec_fingerprint
        self.ftrl = FTRL(cfg.ftrl, dimension)
        self.positives = 0.0
        self.examples = 0
        self._open: list[tuple[int, int, float]] = []  # heap: (window close, seq, label) to count
        self.base = None  # a models.base.BaseModel once one is swapped in
        self.base_id: str | None = None
        self.window_ms = int(window_ms) if cfg.hold_after_reset else 0
        self.hold_until: int | None = None  # positives resolved before this are held (None: not set yet)
        self._held: list[tuple] = []  # heap: (window close, order, indices, values, label, weight)
        self._held_order = 0
        self.guard = Guard(cfg.guard)
        self.alerts: list[dict] = []  # the guard's alerts, drained by the caller
        self.mixer = Mixer(cfg.delta_scales, cfg.mix_share, int(cfg.online_expert))
        self.solo = FTRL(cfg.expert_ftrl or cfg.ftrl, dimension) if cfg.online_expert else None

    def __setstate__(self, state: dict) -> None:
        # a layer checkpointed by a build without the guard: restored with it disabled
        if "guard" not in state:
            state = {**state, "guard": Guard(GuardConfig(enabled=False)), "alerts": []}
        if "mixer" not in state:  # a build without the mixer: the plain hybrid
            state = {**state, "mixer": Mixer()}
        self.__dict__.update({"solo": None, **state})  # without the online expert

    def reconfigure(self, cfg: OnlineConfig) -> None:
        """Apply a new build's config to a layer restored from a checkpoint or savepoint: serving
        (A/B share, enabled), the prior, the guard and FTRL's learning rates take effect from
        now on; the learned state is kept. The weights' dimension and precision cannot change."""
        if cfg.ftrl.precision != self.cfg.ftrl.precision:
            raise ValueError(f"FTRL precision {self.cfg.ftrl.precision} cannot change to {cfg.ftrl.precision} "
                             "on restore")
        self.cfg = cfg
        self.ftrl.params = cfg.ftrl
        self.guard.cfg = cfg.guard
        expert = cfg.expert_ftrl or cfg.ftrl
        if self.solo is not None and cfg.online_expert and expert.precision != self.solo.params.precision:
            raise ValueError(f"the online expert's precision {self.solo.params.precision} cannot change to "
                             f"{expert.precision} on restore")
        if (tuple(self.mixer.scales.tolist()) != tuple(cfg.delta_scales)  # other experts: weights anew
                or self.mixer.extra != int(cfg.online_expert)):
            self.mixer = Mixer(cfg.delta_scales, cfg.mix_share, int(cfg.online_expert))
        self.mixer.share = cfg.mix_share
        if not cfg.online_expert:
            self.solo = None
        elif self.solo is None:  # turned on: it learns from now on
            self.solo = FTRL(expert, self.ftrl.dimension)
        else:
            self.solo.params = expert

    def guard_decide(self, at: int) -> None:
        """Let the guard decide what is served from now on (before a tick is scored)."""
        if not self.cfg.enabled:
            return
        c = self.guard.cfg
        norm = self.ftrl.weight_norm() if c.enabled and c.max_weight_norm else 0.0
        alert = self.guard.decide(norm, at)
        if alert is not None:
            self.alerts.append({**alert, "base_version": self.base_version, "delta_version": self.ftrl.updates})

    def drain_alerts(self) -> list[dict]:
        out, self.alerts = self.alerts, []
        return out

    @property
    def held(self) -> int:
        """Gradients held until their window closes (see the module)."""
        return len(self._held)

    def _hold(self, window_close: int, indices, values, label: float, weight: float) -> None:
        self._held_order += 1
        heapq.heappush(self._held, (int(window_close), self._held_order, np.asarray(indices, np.int64),
                                    np.asarray(values, np.float32), float(label), float(weight)))

    def _release(self, until: int) -> int:
        """Apply the held gradients whose window closed by ``until``, in (window close, arrival)
        order. They were counted at arrival (``relearn``)."""
        rows = []
        while self._held and self._held[0][0] <= until:
            rows.append(heapq.heappop(self._held))
        if rows:
            self.relearn(np.stack([r[2] for r in rows]), np.stack([r[3] for r in rows]),
                         np.array([r[4] for r in rows]), np.array([r[5] for r in rows]))
        return len(rows)

    def relearn(self, indices: np.ndarray, values: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> None:
        """Learn examples the stream already counted (a rebase, held gradients, replay mixing)
        on the current base's residual: the update sequence and the prior are untouched."""
        if not len(labels):
            return np.empty(0), np.empty(0)
        base = np.broadcast_to(np.asarray(self.base_logits(indices, values), np.float64), len(labels))
        if self.guard.frozen:
            weights = np.zeros(len(labels))
        seq = self.ftrl.updates
        p, _ = self.ftrl.learn_batch(indices, values, labels, np.ascontiguousarray(base), weights, want_weights=False)
        self.ftrl.updates = seq
        return p, np.ascontiguousarray(base)

    # ---- the base model (a constant prior until the registry has a TFX model) --------------
    @property
    def base_version(self) -> str:
        return self.base_id or "prior"

    def base_logit(self) -> float:
        """The constant prior's logit (the base until a TFX model is swapped in)."""
        return _prior_logit(self.positives, self.examples, self.cfg)

    def base_logits(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray | float:
        """Per-row base logits of a batch (the TFX model), or the prior's scalar."""
        if self.base is None:
            return self.base_logit()
        return np.clip(self.base.logits(indices, values), -LOGIT_CLIP, LOGIT_CLIP)

    def swap_base(self, model, version: str, replay: dict, at: int | None = None) -> int:
        """Serve ``model`` as the base from now on and rebase the delta: reset FTRL, then
        re-learn ``replay`` (columns ``resolution_time``, ``indices``, ``values``, ``label``,
        ``weight`` and, for the hold, ``event_time``; in learning order: the examples after the
        new base's training data) on the new residual. The update sequence (``delta_version``)
        keeps counting stream examples: the re-learned ones were counted when they arrived.
        ``at`` (event time of the swap): positives whose window is still open then are held,
        and so are those resolved in the next window (see the module). Returns how many
        examples were replayed (re-learned now or held)."""
        if model.dimension != self.ftrl.dimension:
            raise ValueError(f"base model dimension {model.dimension} != the served {self.ftrl.dimension}")
        seq = self.ftrl.updates
        self.base, self.base_id = model, version
        self.ftrl = FTRL(self.cfg.ftrl, self.ftrl.dimension)
        self.ftrl.updates = seq
        self._held = []
        self.guard.reset()  # new weights: they earn their place again, from the replayed examples
        hold = bool(self.window_ms) and at is not None
        if hold:
            self.hold_until = int(at) + self.window_ms
        m = len(replay["label"])
        if not m:
            return 0
        idx = np.asarray(replay["indices"], np.int64).reshape(m, -1)
        vals = np.asarray(replay["values"], np.float32).reshape(m, -1)
        y = np.asarray(replay["label"], np.float64)
        wt = np.asarray(replay["weight"], np.float64)
        now = np.ones(m, bool)
        if hold:
            close = np.asarray(replay["event_time"], np.int64) + self.window_ms
            now = ~((y > 0) & (close > at) & (close > np.asarray(replay["resolution_time"], np.int64)))
            for j in np.flatnonzero(~now):
                self._hold(close[j], idx[j], vals[j], y[j], wt[j])
        p, base = self.relearn(idx[now], vals[now], y[now], wt[now])
        self.guard.observe(p, 1.0 / (1.0 + np.exp(-base)), y[now])
        return m

    def restore_delta(self, ftrl: FTRL, base_version: str) -> None:
        """Serve an earlier delta snapshot (a rollback): its weights replace the current ones;
        the update sequence keeps counting the stream. It must have been learned on the residual
        of the base served now, and it earns its place again (the guard's window starts empty)."""
        if ftrl.dimension != self.ftrl.dimension:
            raise ValueError(f"delta dimension {ftrl.dimension} != the served {self.ftrl.dimension}")
        if base_version != self.base_version:
            raise ValueError(f"delta was learned on base {base_version}, the job serves {self.base_version}")
        seq = self.ftrl.updates
        self.ftrl, self.ftrl.updates = ftrl, seq
        self._held = []
        self.guard.reset()

    # ---- serving ---------------------------------------------------------------------------
    def score(self, event_id: str, event_time: int, indices, values, unit: str) -> dict:
        self.guard_decide(int(event_time))
        base = self._one_base(indices, values)
        delta = self.ftrl.predict_logit(indices, values)
        arm = arm_of(unit, self.cfg.hybrid_share)
        if not self.cfg.enabled:
            served, why = "base_only", "disabled"
        elif arm == "base":
            served, why = "base_only", "ab_arm"
        elif not self.guard.serving:
            served, why = "base_only", self.guard.reason
        else:
            served, why = "hybrid", ""
        if not self.mixer.trivial:  # the delta's part served: the mixture's logit - base
            solo = None if self.solo is None else [[self.base_logit() + self.solo.predict_logit(indices, values)]]
            delta = float(self.mixer.logits(np.array([base]), np.array([delta]), solo)[0]) - base
        p = sigmoid(base + delta) if served == "hybrid" else sigmoid(base)
        return {"event_id": event_id, "event_time": int(event_time), "p": p, "base_logit": base,
                "delta_logit": delta, "base_version": self.base_version,
                "delta_version": self.ftrl.updates, "spec_fingerprint": self.spec_fingerprint,
                "arm": arm, "served": served, "base_only_reason": why}

    def score_batch(self, indices: np.ndarray, values: np.ndarray, units: list[str], at: int = 0) -> dict:
        """``score`` for a batch [m, k] with the current weights: columns ``p``, ``delta_logit``,
        ``arm``, ``served``, ``base_only_reason``, ``base_logit`` (a column with a TFX base
        model, else the prior's scalar) and the scalars every row shares. First the guard decides whether the delta is
        served (``at``: the event time of the decision, for its alert)."""
        self.guard_decide(at)
        base = self.base_logits(indices, values) if len(units) else self.base_logit()
        delta = self.ftrl.predict_logits(indices, values) if len(units) else np.zeros(0)
        share = self.cfg.hybrid_share
        arms = [("hybrid" if share >= 1.0 else "base" if share <= 0.0 else arm_of(u, share)) for u in units]
        in_arm = np.array([a == "hybrid" for a in arms], bool)
        hybrid = in_arm & self.cfg.enabled & self.guard.serving
        if len(units) and not self.mixer.trivial:  # the delta's part served: the mixture's logit - base
            solo = None if self.solo is None else self.base_logit() + self.solo.predict_logits(indices, values)
            delta = self.mixer.logits(base, delta, solo) - base
        logits = np.clip(base + np.where(hybrid, delta, 0.0), -LOGIT_CLIP, LOGIT_CLIP)
        why = ["" if h else "disabled" if not self.cfg.enabled else "ab_arm" if not a else self.guard.reason
               for h, a in zip(hybrid, in_arm)]
        return {"p": 1.0 / (1.0 + np.exp(-logits)), "delta_logit": delta, "arm": arms,
                "served": np.where(hybrid, "hybrid", "base_only").tolist(), "base_only_reason": why,
                "base_logit": base.tolist() if isinstance(base, np.ndarray) else base,
                "base_version": self.base_version, "delta_version": self.ftrl.updates,
                "spec_fingerprint": self.spec_fingerprint}

    def learn_batch(self, resolution_times: np.ndarray, indices: np.ndarray, values: np.ndarray,
                    labels: np.ndarray, weights: np.ndarray, window_close: np.ndarray,
                    first: np.ndarray | None = None) -> dict:
        """``learn`` for a batch already in learning order: the prior's base logit per example
        (it moves as windows close), then the compiled kernel. Returns ``seq``, ``p_before``
        and each row's new weights. First the held gradients whose window closed by the batch's
        last resolution time are applied; in the first window after a reset, positives whose
        window is open are held (learned now with weight 0: recorded, not applied). The guard
        (``models.guard``) compares hybrid and base-only on the ``first`` rows (default: all; a
        correction repeats its event); a frozen delta learns nothing."""
        m = len(labels)
        weights = given = np.asarray(weights, np.float64)
        if self.window_ms and m:
            if self.hold_until is None:  # a fresh layer: the stream's first example resets it
                self.hold_until = int(resolution_times[0]) + self.window_ms
            self._release(int(resolution_times[-1]))
            hold = ((np.asarray(labels) > 0) & (np.asarray(window_close) > np.asarray(resolution_times))
                    & (np.asarray(resolution_times) < self.hold_until))
            if hold.any():
                for j in np.flatnonzero(hold):
                    self._hold(window_close[j], indices[j], values[j], labels[j], weights[j])
                weights = np.where(hold, 0.0, weights)
        # the prior's logit before each example (counted even under a TFX base: the fallback);
        # on locals (a per-row loop: the counts move as windows close)
        base = np.empty(m)
        c = self.cfg
        heap, pos, ex, seq = self._open, self.positives, self.examples, self.ftrl.updates
        res_l = np.asarray(resolution_times, np.int64).tolist()
        close_l = np.asarray(window_close, np.int64).tolist()
        lab_l = np.asarray(labels, np.float64).tolist()
        for j in range(m):
            r = res_l[j]
            while heap and heap[0][0] <= r:
                pos += heapq.heappop(heap)[2]
                ex += 1
            base[j] = _prior_logit(pos, ex, c)
            if close_l[j] > r:
                heapq.heappush(heap, (close_l[j], seq + j + 1, lab_l[j]))
            else:
                pos += lab_l[j]
                ex += 1
        self.positives, self.examples = pos, ex
        solo = None
        if self.solo is not None and m:  # online-only over the prior: every example once, as given
            solo = logit_rows(self.solo.learn_batch(indices, values, labels, base, given, want_weights=False)[0])
        if self.base is not None and m:
            base = np.asarray(self.base_logits(indices, values), np.float64)
        if self.guard.frozen:
            weights = np.zeros(m)
        seq0 = self.ftrl.updates + 1
        p_before, w = self.ftrl.learn_batch(indices, values, labels, base, weights)
        sel = slice(None) if first is None else np.asarray(first, bool)
        self.guard.observe(p_before[sel], (1.0 / (1.0 + np.exp(-np.broadcast_to(base, m))))[sel],
                           np.asarray(labels)[sel])
        if not self.mixer.trivial and m:
            b = np.broadcast_to(base, m)
            self.mixer.observe(b[sel], (logit_rows(p_before) - b)[sel], np.asarray(labels)[sel],
                               None if solo is None else solo[sel])
        return {"seq": np.arange(seq0, seq0 + m), "p_before": p_before, "weights": w, "base_logit": base}

    def _one_base(self, indices, values) -> float:
        if self.base is None:
            return self.base_logit()
        return float(self.base_logits(np.asarray([indices], np.int64), np.asarray([values], np.float32))[0])

    # ---- learning --------------------------------------------------------------------------
    def learn(self, event_id: str, resolution_time: int, indices, values, label: int,
              weight: float = 1.0, window_close: int | None = None) -> dict:
        """One example, on the residual of the base logit; returns the weight-update record.
        ``window_close`` (impression time + W) is when the example counts for the prior;
        default: now. One example at a time, without the hold after a reset (the job and the
        replay learn through ``learn_batch``)."""
        while self._open and self._open[0][0] <= resolution_time:
            self.positives += heapq.heappop(self._open)[2]
            self.examples += 1
        solo = None
        if self.solo is not None:  # online-only over the prior (see learn_batch)
            solo = [[logit(self.solo.learn_one(indices, values, label, base_logit=self.base_logit(),
                                               weight=weight)[0])]]
        base = self._one_base(indices, values)
        p, idx, w = self.ftrl.learn_one(indices, values, label, base_logit=base,
                                        weight=0.0 if self.guard.frozen else weight)
        self.guard.observe([p], [sigmoid(base)], [label])
        if not self.mixer.trivial:
            self.mixer.observe([base], [logit(p) - base], [label], solo)
        if window_close is not None and window_close > resolution_time:
            heapq.heappush(self._open, (window_close, self.ftrl.updates, float(label)))
        else:
            self.positives += label
            self.examples += 1
        return {"seq": self.ftrl.updates, "event_id": event_id, "resolution_time": int(resolution_time),
                "p_before": p, "label": int(label), "indices": idx.tolist(), "weights": w.tolist()}
