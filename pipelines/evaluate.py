"""Does the hybrid win? Replay a data source in event time through the real components and
compare serving strategies on the same impressions (progressive validation).

    events -> transform artifact (fitted on the first 10 % only) -> Beam backfill (the job's
    join and features) -> TFX retrains at every period boundary (the real pipeline, from the
    examples resolved before it) -> replay per strategy (``pipelines.progressive``: the job's
    online layer and tick semantics) -> metrics per period and window, paired bootstrap CIs

Strategies: ``static`` (the first period's base model only), ``periodic`` (each period's base
model, no online layer), ``online`` (FTRL from scratch over the job's constant prior),
``hybrid`` (periodic base + online delta, rebased at each swap), and variants of the hybrid:
replay mixing, the fake-negative feedback policies, ``hybrid_mix`` (a mixture over scales
of the delta, weighted online: ``models.mixer``) and ``hybrid_mix_online`` (the same mixture
with online-only FTRL as one more expert: ``OnlineConfig.online_expert``). A base model trained at
boundary B (on the examples resolved before B) serves from B: "train day 1, serve day 2".
Everything is written under ``RUN_DIR`` (``summary.json``, ``predictions/<strategy>.npz``,
``report.html``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from models.guard import GuardConfig
from models.online import OnlineConfig
from pipelines.join import JoinConfig
from pipelines.progressive import BaseSwap, Examples, Strategy, replay

DAY = 86_400_000
HOUR = 3_600_000
PERIODS = {"talkingdata": DAY, "elec2": 7 * DAY, "generator": 2 * HOUR}
STRATEGIES = ("static", "periodic", "online", "hybrid", "hybrid_replay", "hybrid_fn", "hybrid_fnw", "hybrid_mix",
              "hybrid_mix_online")
# chosen on the first period only (online FTRL over the prior; no base model exists yet)
TUNE_GRID = tuple({"alpha": a, "l1": l1} for a in (0.01, 0.03, 0.1, 0.3, 1.0) for l1 in (0.0, 1.0))
# hybrid_mix: the experts (base + s * delta) and the fixed-share rates its share is chosen from,
# on the first period, over the tuning base with the delta's chosen FTRL settings (hybrid_mix_online:
# the same, with online-only FTRL at online's chosen settings as one more expert)
MIX_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)
MIX_SHARES = (0.0, 0.0001, 0.001, 0.01)
MIXES = {"mix": "hybrid_mix", "mix_online": "hybrid_mix_online"}  # summary key: strategy
# what each hybrid is compared with: the simpler options (summary's "variants_vs")
BASELINES = ("static", "periodic", "online")


@dataclass(frozen=True)
class EvalConfig:
    data: str = "generator"
    events: int = 20_000  # generator only
    seed: int = 7
    period_ms: int | None = None  # default: PERIODS[data]
    tick_ms: int = 60_000  # the job's learn tick
    strategies: tuple[str, ...] = STRATEGIES
    # late labels become corrections: every strategy is scored against the final label, and the
    # fake-negative policies learn every label up to the late horizon
    join: JoinConfig = field(default_factory=lambda: JoinConfig(late_policy="correction"))
    # the guard (models.guard) is off: the evaluation measures the layers themselves
    online: OnlineConfig = field(default_factory=lambda: OnlineConfig(guard=GuardConfig(enabled=False)))
    # RetrainConfig overrides; defaults: all history before the boundary (K), E = a quarter
    # period, drift reported rather than blocking (see retrain_config)
    retrain: dict = field(default_factory=dict)
    align: str = "start"  # period boundaries at data start + k periods ("day 1" = the first 24 h), or "calendar"
    window_ms: int = HOUR  # metrics over time
    bootstrap: int = 200
    block_ms: int = HOUR  # bootstrap blocks
    # choose FTRL alpha/l1 on the first period (TUNE_GRID): for online-only over the prior, and
    # for the hybrids' delta over a base model retrained at mid-period 1; else online.ftrl as given
    tune: bool = True
    replay_mix: float = 1.0  # hybrid_replay: older examples learned per new one
    replay_capacity: int = 20_000
    report: bool = True  # RUN_DIR/report.html (pipelines.report)

    def __post_init__(self) -> None:
        if self.align not in ("start", "calendar"):
            raise ValueError(f"align must be 'start' or 'calendar', got {self.align!r}")

    def period(self, source: str) -> int:
        return self.period_ms or PERIODS.get(source, DAY)

    def retrain_config(self, source: str):
        """The retrain settings of this evaluation. Drift against the previous span is a
        warning here, not a failure: cumulative spans of different lengths and features with a
        daily cycle drift by construction (TalkingData's ip_app_count_1h: JSD 0.31 between
        day 1 and days 1-2), and in production a human would look and approve; every warning
        is kept in ``retrain/outcomes.jsonl``."""
        from pipelines.retrain import RetrainConfig

        defaults = {"train_hours": 24.0 * 365 * 10, "eval_hours": self.period(source) / HOUR / 4,
                    "drift_action": "warn"}
        return RetrainConfig.from_dict({**RetrainConfig().to_dict(), **defaults, **self.retrain})

    def boundaries(self, source: str, first: int, last: int) -> list[int]:
        period = self.period(source)
        start = first + period if self.align == "start" else (first // period + 1) * period
        return list(range(start, last + 1, period))


def _examples(out: Path, cfg: EvalConfig, data_dir: str | None) -> tuple[list[dict], str, object]:
    from pipelines.backfill import backfill_examples
    from runners.flink_job import JobConfig
    from runners.local import prepare_events
    from runners.stream import fit_warmup_artifact

    event_dir, source = prepare_events(cfg.data, out, cfg.events, cfg.seed, data_dir)
    art = fit_warmup_artifact(event_dir, source, out / "transform")
    backfill_examples(event_dir, art, cfg.join, out / "backfill")
    from pipelines.retrain import write_segment

    lines = (out / "backfill" / "examples.jsonl").read_text().splitlines()
    # a run folder the TFX retrain reads: job.json and the examples as one segment
    (out / "job.json").write_text(json.dumps(JobConfig(event_dir=str(event_dir.resolve()), out=str(out.resolve()),
                                                       artifact=str((out / "transform").resolve()), join=cfg.join,
                                                       online=cfg.online).to_dict(), indent=1) + "\n")
    write_segment(out, "all", lines)
    return [json.loads(x) for x in lines], source, art


def _base_models(out: Path, rows: list[dict], cfg: EvalConfig, source: str, art) -> list[BaseSwap]:
    """A TFX retrain at every period boundary with examples before and after it; the champion
    serves from each boundary (a candidate that is not blessed leaves it in place)."""
    from models.hotswap import load_base
    from models.registry import Registry
    from pipelines.retrain import retrain

    times = [r["event_time"] for r in rows]
    swaps, rcfg = [], cfg.retrain_config(source)
    for b in cfg.boundaries(source, min(times), max(times)):
        o = retrain(out, cutoff=b, cfg=rcfg, source="segments")
        current = Registry(out / "registry").current("base")
        if current is None:
            continue
        model, manifest = load_base(out / "registry", current, art.spec.fingerprint(), art.spec.dimension)
        swaps.append(BaseSwap(live_at=b, version=current, model=model, train_end=int(manifest["train_end"])))
        print(f"boundary {b}: retrain {o['status']}, pushed={o['pushed']}, serving {current}", flush=True)
    return swaps


def strategies(swaps: list[BaseSwap], online: OnlineConfig, names: tuple[str, ...],
               replay_mix: float = 1.0, replay_capacity: int = 20_000,
               delta: OnlineConfig | None = None, mix: OnlineConfig | None = None,
               mix_online: OnlineConfig | None = None) -> list[Strategy]:
    """(a) static, (b) periodic, (c) online, (d) hybrid, (e) hybrid_replay (replay-buffer
    mixing), the hybrid under the fake-negative feedback policies (hybrid_fn, hybrid_fnw),
    hybrid_mix (a mixture over scales of the delta) and hybrid_mix_online (with online-only
    FTRL as one more expert). ``online`` configures online-only FTRL, ``delta`` (default: the
    same) the hybrids' delta, ``mix`` hybrid_mix's (default: ``delta`` over ``MIX_SCALES``),
    ``mix_online`` hybrid_mix_online's (default: ``mix`` with the expert at ``online``'s FTRL)."""
    d = delta or online
    default = mixtures(d, online)
    mix, mix_online = mix or default["mix"], mix_online or default["mix_online"]
    # the first model may come at a later boundary; each version swaps in once
    distinct = tuple(s for i, s in enumerate(swaps) if i == 0 or s.version != swaps[i - 1].version)
    all_ = {"static": Strategy("static", distinct[:1], serve_delta=False, online=online),
            "periodic": Strategy("periodic", distinct, serve_delta=False, online=online),
            "online": Strategy("online", (), online=online),
            "hybrid": Strategy("hybrid", distinct, online=d),
            "hybrid_replay": Strategy("hybrid_replay", distinct, online=d, replay_mix=replay_mix,
                                      replay_capacity=replay_capacity),
            "hybrid_fn": Strategy("hybrid_fn", distinct, online=d, feedback="fake_negative"),
            "hybrid_fnw": Strategy("hybrid_fnw", distinct, online=d, feedback="fnw"),
            "hybrid_mix": Strategy("hybrid_mix", distinct, online=mix),
            "hybrid_mix_online": Strategy("hybrid_mix_online", distinct, online=mix_online)}
    unknown = set(names) - set(all_)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; known: {sorted(all_)}")
    return [all_[n] for n in names]


def mixture_weights(online: OnlineConfig, t: np.ndarray, weights: np.ndarray, window_ms: int) -> dict:
    """The mixture's experts and their mean weight over the impressions of each window: which
    part of the model served when."""
    experts = [f"base + {s:g} delta" for s in online.delta_scales] + (["online expert"] if online.online_expert else [])
    k = t // window_ms
    return {"experts": experts, "over_time": [{"start": int(b * window_ms), "weights": weights[k == b].mean(0).tolist()}
                                              for b in np.unique(k)]}


def mixtures(delta: OnlineConfig, online: OnlineConfig) -> dict[str, OnlineConfig]:
    """The mixtures' configs at the default share, by summary key (``MIXES``): ``delta`` over
    ``MIX_SCALES``, and the same with online-only FTRL (at ``online``'s settings) as one more
    expert."""
    mix = replace(delta, delta_scales=MIX_SCALES)
    return {"mix": mix, "mix_online": replace(mix, online_expert=True, expert_ftrl=online.ftrl)}


def tune_online(ex: Examples, cfg: EvalConfig, boundary: int, dimension: int, fingerprint: str,
                base: BaseSwap | None = None, grid: tuple[dict, ...] = TUNE_GRID,
                online: OnlineConfig | None = None) -> dict:
    """Choose the FTRL hyperparameters on the first period only. Without ``base``: for online
    FTRL from scratch (over the prior); with it: for the delta on top of that base model
    (serving from ``base.live_at``, as the hybrid does). Replayed on the examples resolved
    before ``boundary``, scored on the impressions whose attribution window closed before it
    (from ``base.live_at`` on, with a base); the lowest progressive logloss wins. Nothing
    known only after the boundary is looked at. ``grid``: FTRL settings (default), or
    ``OnlineConfig`` fields (``{"mix_share": ...}``) applied to ``online`` (default: cfg's)."""
    from models import metrics

    part = ex.take(np.flatnonzero(ex.resolution_time < boundary))
    start = base.live_at if base else int(ex.event_time.min())
    results, given = [], online or cfg.online
    for g in grid:
        ftrl = {k: v for k, v in g.items() if k in TUNE_GRID[0]}
        layer = replace(given, ftrl=replace(given.ftrl, **ftrl), **{k: v for k, v in g.items() if k not in ftrl})
        strategy = Strategy("tune", swaps=(base,) if base else (), online=layer)
        s = replay(part, strategy, dimension, cfg.join.window_ms, cfg.tick_ms, fingerprint)
        m = (s.event_time >= start) & (s.event_time < boundary - cfg.join.window_ms)
        results.append({**g, "logloss": metrics.logloss(s.label[m], s.p[m]), "n": int(m.sum())})
    best = min(results, key=lambda r: r["logloss"])
    return {"grid": results, "chosen": {k: best[k] for k in grid[0]}, "on": [start, boundary],
            "base": base.version if base else None}


def _tuning_base(out: Path, cfg: EvalConfig, source: str, art, cutoff: int) -> tuple[BaseSwap | None, dict]:
    """A base model for tuning the delta inside period 1: a TFX retrain at mid-period-1 in a run
    folder of its own (``RUN_DIR/tuning``: its registry does not become the evaluation's
    champion). None if it is not pushed; and the retrain's outcome (status, reason)."""
    import shutil

    from models.hotswap import load_base
    from models.registry import Registry
    from pipelines.retrain import SEGMENTS, retrain

    run = out / "tuning"
    (run / SEGMENTS).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "job.json", run / "job.json")
    for f in (out / SEGMENTS).glob("*.parquet"):
        shutil.copyfile(f, run / SEGMENTS / f.name)
    o = retrain(run, cutoff=cutoff, cfg=cfg.retrain_config(source), source="segments")
    print(f"tuning base at {cutoff}: retrain {o['status']}, pushed={o['pushed']}", flush=True)
    brief = {"cutoff": cutoff, "status": o["status"], "pushed": o["pushed"],
             "reason": "; ".join(o.get("evaluation", {}).get("reasons", [])) or o.get("reason", "")}
    current = Registry(run / "registry").current("base")
    if current is None:
        return None, brief
    model, manifest = load_base(run / "registry", current, art.spec.fingerprint(), art.spec.dimension)
    swap = BaseSwap(live_at=cutoff, version=f"tuning-{current}", model=model, train_end=int(manifest["train_end"]))
    return swap, brief


def evaluate(out: str | Path, cfg: EvalConfig, data_dir: str | None = None, overwrite: bool = False) -> dict:
    """Run the whole evaluation into ``out``; returns (and writes) ``summary.json``. ``out``
    must be new or empty (``overwrite``: its contents are removed first): the retrains register
    their models in its registry, so a second run into the same folder would compete with the
    first run's champions and serve other base models."""
    import shutil

    from models import metrics

    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty: an evaluation needs a folder of its own (its registry "
                                  "decides which base models serve); pass --overwrite to replace its contents")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, source, art = _examples(out, cfg, data_dir)
    swaps = _base_models(out, rows, cfg, source, art)
    ex = Examples.from_rows(rows)
    bounds = cfg.boundaries(source, int(ex.event_time.min()), int(ex.event_time.max()))
    online = delta = cfg.online
    tuning: dict | None = None
    base = None
    if cfg.tune and bounds:
        dim, fp = art.spec.dimension, art.spec.fingerprint()
        tuning = {"online": tune_online(ex, cfg, bounds[0], dim, fp)}
        online = delta = replace(cfg.online, ftrl=replace(cfg.online.ftrl, **tuning["online"]["chosen"]))
        base, tuning["delta_base"] = _tuning_base(out, cfg, source, art, bounds[0] - cfg.period(source) // 2)
        if base is not None:  # else the hybrids keep online's choice (said in the summary)
            tuning["delta"] = tune_online(ex, cfg, bounds[0], dim, fp, base)
            delta = replace(cfg.online, ftrl=replace(cfg.online.ftrl, **tuning["delta"]["chosen"]))
    # the mixtures: the delta over MIX_SCALES (with the online expert at online's settings), their
    # share chosen like the delta's, over the same tuning base (without one: the default share)
    mixes = {k: m for k, m in mixtures(delta, online).items() if MIXES[k] in cfg.strategies}
    for key, mixed in mixes.items():
        if base is not None:
            tuning[key] = tune_online(ex, cfg, bounds[0], dim, fp, base,
                                      tuple({"mix_share": s} for s in MIX_SHARES), mixed)
            mixes[key] = replace(mixed, **tuning[key]["chosen"])
    chosen = strategies(swaps, online, cfg.strategies, cfg.replay_mix, cfg.replay_capacity, delta=delta,
                        mix=mixes.get("mix"), mix_online=mixes.get("mix_online"))
    scored = {}
    for s in chosen:
        scored[s.name] = replay(ex, s, art.spec.dimension, cfg.join.window_ms, cfg.tick_ms, art.spec.fingerprint(),
                                progress=True)
    (out / "predictions").mkdir(exist_ok=True)
    ref = next(iter(scored.values()))
    t, y = ref.event_time, ref.label
    for name, s in scored.items():
        assert s.event_id == ref.event_id  # the same impressions, in the same order
        np.savez(out / "predictions" / f"{name}.npz", event_time=s.event_time, p=s.p, label=s.label,
                 base_version=np.array(s.base_version),
                 **({} if s.mix_weights is None else {"mix_weights": s.mix_weights}))
    period = cfg.period(source)
    start = bounds[0] if bounds else int(t.min())  # period 1 trains the first model: not evaluated
    periods = [("all evaluated", start, int(t.max()) + 1)] + [
        (f"period {i + 2}", b, b + period) for i, b in enumerate(bounds)]
    result: dict = {"data": cfg.data, "source": source, "impressions": len(y), "evaluated_from": start,
                    "period_ms": period, "boundaries": bounds, "tuning": tuning,
                    "online": online.to_dict(), "delta": delta.to_dict(),
                    **{key: m.to_dict() for key, m in mixes.items()},
                    "swaps": [{"live_at": s.live_at, "version": s.version, "train_end": s.train_end} for s in swaps],
                    "config": {**asdict(cfg), "join": cfg.join.to_dict(), "online": cfg.online.to_dict()},
                    "periods": [], "over_time": {}}
    for label, lo, hi in periods:
        m = (t >= lo) & (t < hi)
        entry = {"period": label, "start": lo, "end": hi,
                 "strategies": {n: metrics.summary(y[m], s.p[m]) for n, s in scored.items()}, "hybrid_vs": {}}
        if "hybrid" in scored and m.any():
            for n in (n for n in scored if n != "hybrid"):
                entry["hybrid_vs"][n] = {k: metrics.paired_bootstrap(t[m], y[m], scored["hybrid"].p[m], scored[n].p[m],
                                                                     k, cfg.block_ms, cfg.bootstrap)
                                         for k in ("logloss", "auc")}
        # each variant of the hybrid against the three simpler options (the question)
        entry["variants_vs"] = {
            v: {n: metrics.paired_bootstrap(t[m], y[m], scored[v].p[m], scored[n].p[m], "logloss", cfg.block_ms,
                                            cfg.bootstrap) for n in BASELINES if n in scored}
            for v in scored if v.startswith("hybrid_") and m.any()}
        result["periods"].append(entry)
    evaluated = t >= start
    result["over_time"] = {n: metrics.by_window(t[evaluated], y[evaluated], s.p[evaluated], cfg.window_ms)
                           for n, s in scored.items()}
    result["mix_weights"] = {n: mixture_weights(next(x for x in chosen if x.name == n).online, t[evaluated],
                                                s.mix_weights[evaluated], cfg.window_ms)
                             for n, s in scored.items() if s.mix_weights is not None}
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    if cfg.report:
        from pipelines.report import build_report

        build_report(out)
    return result

