"""Does the hybrid win? Replay a data source in event time through the real components and
compare serving strategies on the same impressions (progressive validation).

    events -> transform artifact (fitted on the first 10 % only) -> Beam backfill (the job's
    join and features) -> TFX retrains at every period boundary (the real pipeline, from the
    examples resolved before it) -> replay per strategy (``pipelines.progressive``: the job's
    online layer and tick semantics) -> metrics per period and window, paired bootstrap CIs

Strategies: ``static`` (the first period's base model only), ``periodic`` (each period's base
model, no online layer), ``online`` (FTRL from scratch over the job's constant prior),
``hybrid`` (periodic base + online delta, rebased at each swap). A base model trained at
boundary B (on the examples resolved before B) serves from B: "train day 1, serve day 2".
Everything is written under ``RUN_DIR`` (``summary.json``, ``predictions/<strategy>.npz``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from models.online import OnlineConfig
from pipelines.join import JoinConfig
from pipelines.progressive import BaseSwap, Examples, Strategy, replay

DAY = 86_400_000
HOUR = 3_600_000
PERIODS = {"talkingdata": DAY, "elec2": 7 * DAY, "generator": 2 * HOUR}
STRATEGIES = ("static", "periodic", "online", "hybrid")


@dataclass(frozen=True)
class EvalConfig:
    data: str = "generator"
    events: int = 20_000  # generator only
    seed: int = 7
    period_ms: int | None = None  # default: PERIODS[data]
    tick_ms: int = 60_000  # the job's learn tick
    strategies: tuple[str, ...] = STRATEGIES
    join: JoinConfig = field(default_factory=JoinConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    retrain: dict = field(default_factory=lambda: {"train_hours": 24.0 * 365 * 10, "eval_hours": 2.0})
    window_ms: int = HOUR  # metrics over time
    bootstrap: int = 200
    block_ms: int = HOUR  # bootstrap blocks

    def period(self, source: str) -> int:
        return self.period_ms or PERIODS.get(source, DAY)


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
    from pipelines.retrain import RetrainConfig, retrain

    period = cfg.period(source)
    times = [r["event_time"] for r in rows]
    first, last = min(times), max(times)
    swaps, rcfg = [], RetrainConfig.from_dict({**RetrainConfig().to_dict(), **cfg.retrain})
    for b in range((first // period + 1) * period, last + 1, period):
        o = retrain(out, cutoff=b, cfg=rcfg, source="segments")
        current = Registry(out / "registry").current("base")
        if current is None:
            continue
        model, manifest = load_base(out / "registry", current, art.spec.fingerprint(), art.spec.dimension)
        swaps.append(BaseSwap(live_at=b, version=current, model=model, train_end=int(manifest["train_end"])))
        print(f"boundary {b}: retrain {o['status']}, pushed={o['pushed']}, serving {current}", flush=True)
    return swaps


def strategies(swaps: list[BaseSwap], online: OnlineConfig, names: tuple[str, ...]) -> list[Strategy]:
    # the first model may come at a later boundary; each version swaps in once
    distinct = [s for i, s in enumerate(swaps) if i == 0 or s.version != swaps[i - 1].version]
    all_ = {"static": Strategy("static", tuple(distinct[:1]), serve_delta=False, online=online),
            "periodic": Strategy("periodic", tuple(distinct), serve_delta=False, online=online),
            "online": Strategy("online", (), online=online),
            "hybrid": Strategy("hybrid", tuple(distinct), online=online)}
    unknown = set(names) - set(all_)
    if unknown:
        raise ValueError(f"unknown strategies {sorted(unknown)}; known: {sorted(all_)}")
    return [all_[n] for n in names]


def evaluate(out: str | Path, cfg: EvalConfig, data_dir: str | None = None) -> dict:
    """Run the whole evaluation into ``out``; returns (and writes) ``summary.json``."""
    from models import metrics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, source, art = _examples(out, cfg, data_dir)
    swaps = _base_models(out, rows, cfg, source, art)
    ex = Examples.from_rows(rows)
    scored = {s.name: replay(ex, s, art.spec.dimension, cfg.join.window_ms, cfg.tick_ms, art.spec.fingerprint())
              for s in strategies(swaps, cfg.online, cfg.strategies)}
    (out / "predictions").mkdir(exist_ok=True)
    ref = next(iter(scored.values()))
    t, y = ref.event_time, ref.label
    for name, s in scored.items():
        assert s.event_id == ref.event_id  # the same impressions, in the same order
        np.savez(out / "predictions" / f"{name}.npz", event_time=s.event_time, p=s.p, label=s.label,
                 base_version=np.array(s.base_version))
    period = cfg.period(source)
    start = swaps[0].live_at if swaps else int(t.min())
    periods = [("all evaluated", start, int(t.max()) + 1)] + [
        (f"period from {b}", b, b + period) for b in range(start, int(t.max()) + 1, period)]
    result: dict = {"data": cfg.data, "source": source, "impressions": len(y), "evaluated_from": start,
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
        result["periods"].append(entry)
    evaluated = t >= start
    result["over_time"] = {n: metrics.by_window(t[evaluated], y[evaluated], s.p[evaluated], cfg.window_ms)
                           for n, s in scored.items()}
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result

