"""The evaluation report: one self-contained HTML file (plots embedded as PNG) built only from
what ``driftline evaluate`` left in its run folder, so ``driftline report RUN_DIR`` can rebuild
it at any time:

* ``summary.json``: metrics per period and strategy, bootstrap CIs, per-window metrics;
* ``predictions/<strategy>.npz``: what each strategy served for each impression;
* ``backfill/examples.jsonl``: label delays and the raw inputs (drift);
* ``retrain/outcomes.jsonl``: each TFX retrain's outcome (blessed or why not, drift warnings).

A folder holding several such runs (one per data set, as ``driftline evaluate --data
a,b,c`` writes them) gives one report with a section per data set and a combined
``summary.json`` (per data set, period and strategy).

Figures: each metric over time per strategy (cumulative progressive logloss, and logloss,
AUC, calibration per window), a calibration (reliability) plot, the label-delay distribution,
input drift over time against the first period (PSI/JSD per feature).
"""
from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from models import drift, metrics

HOUR = 3_600_000


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _dates(ms: np.ndarray) -> np.ndarray:
    return np.asarray(ms, "datetime64[ms]")


def _load(run: Path) -> tuple[dict, dict, list[dict], list[dict]]:
    summary = json.loads((run / "summary.json").read_text())
    preds = {p.stem: dict(np.load(p, allow_pickle=False)) for p in sorted((run / "predictions").glob("*.npz"))}
    order = [n for n in summary["periods"][0]["strategies"] if n in preds]
    preds = {n: preds[n] for n in order}
    examples = []
    path = run / "backfill" / "examples.jsonl"
    if path.exists():
        with path.open() as f:
            examples = [json.loads(line) for line in f]
    outcomes_path = run / "retrain" / "outcomes.jsonl"
    outcomes = [json.loads(x) for x in outcomes_path.read_text().splitlines()] if outcomes_path.exists() else []
    return summary, preds, examples, outcomes


def _metric_figures(summary: dict, preds: dict) -> list[str]:
    import matplotlib.pyplot as plt

    start = summary["evaluated_from"]
    figs = []
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, p in preds.items():
        m = p["event_time"] >= start
        y, q = p["label"][m], np.clip(p["p"][m], 1e-15, 1 - 1e-15)
        ll = -(y * np.log(q) + (1 - y) * np.log(1 - q))
        ax.plot(_dates(p["event_time"][m]), np.cumsum(ll) / np.arange(1, len(ll) + 1), label=name, lw=1.2)
    for b in summary.get("boundaries", []):
        ax.axvline(_dates(np.array([b]))[0], color="grey", ls=":", lw=1)
    ax.set_title("progressive logloss, cumulative from the first evaluated impression (dotted: retrains)")
    ax.set_ylabel("logloss")
    ax.legend(fontsize=8, ncol=4)
    figs.append(_png(fig))
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for name, rows in summary["over_time"].items():
        t = _dates(np.array([r["start"] for r in rows]))
        for ax, key in zip(axes, ("logloss", "auc", "calibration")):
            ax.plot(t, [np.nan if r[key] is None else r[key] for r in rows], marker=".", lw=0.8, label=name)
    window = summary["config"].get("window_ms", HOUR) / HOUR
    for ax, key in zip(axes, ("logloss", "AUC", "calibration (mean p / rate)")):
        ax.set_ylabel(key)
    axes[0].set_title(f"per {window:g}-hour window")
    axes[2].axhline(1.0, color="grey", lw=0.8)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8, ncol=4)
    figs.append(_png(fig))
    return figs


def _mixture_figure(summary: dict) -> list[str]:
    """Each mixture strategy's expert weights over time (stacked): which part served when."""
    import matplotlib.pyplot as plt

    figs = []
    for name, m in summary.get("mix_weights", {}).items():
        rows = m["over_time"]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(10, 3))
        ax.stackplot(_dates(np.array([r["start"] for r in rows])), np.array([r["weights"] for r in rows]).T,
                     labels=m["experts"], step="post")
        for b in summary.get("boundaries", []):
            ax.axvline(_dates(np.array([b]))[0], color="grey", ls=":", lw=1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}: each expert's mean weight per window (dotted: retrains)")
        ax.legend(fontsize=8, ncol=6, loc="lower left")
        figs.append(_png(fig))
    return figs


def _calibration_figure(summary: dict, preds: dict, bins: int = 10) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    lo = 1.0
    for name, p in preds.items():
        m = p["event_time"] >= summary["evaluated_from"]
        q, y = p["p"][m], p["label"][m]
        edges = np.unique(np.quantile(q, np.linspace(0, 1, bins + 1)))
        k = np.clip(np.searchsorted(edges, q, side="right") - 1, 0, len(edges) - 2)
        mp = np.array([q[k == i].mean() for i in range(len(edges) - 1) if (k == i).any()])
        my = np.array([y[k == i].mean() for i in range(len(edges) - 1) if (k == i).any()])
        ok = my > 0
        ax.plot(mp[ok], my[ok], marker="o", lw=1, label=name)
        lo = min(lo, mp.min(), my[ok].min() if ok.any() else lo)
    lo = max(lo, 1e-6)
    ax.plot([lo, 1], [lo, 1], color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("mean predicted (decile of predictions)")
    ax.set_ylabel("observed rate")
    ax.set_title("calibration, evaluated impressions")
    ax.legend(fontsize=8)
    return _png(fig)


def _delay_figure(examples: list[dict], window_ms: int) -> str:
    import matplotlib.pyplot as plt

    delays = np.array([e["label_time"] - e["event_time"] for e in examples
                       if e.get("label_time") is not None and e["label"]], np.float64) / 1000.0
    fig, ax = plt.subplots(figsize=(8, 3.5))
    if len(delays):
        ax.hist(np.maximum(delays, 1.0), bins=np.logspace(0, np.log10(max(delays.max(), 10.0)), 40))
        ax.axvline(window_ms / 1000, color="red", ls="--", lw=1, label=f"attribution window W = {window_ms / HOUR:g} h")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
        late = float(np.mean(delays * 1000 >= window_ms))
        ax.set_title(f"label delay of {len(delays):,} positives: median {np.median(delays):,.0f} s, "
                     f"p90 {np.quantile(delays, 0.9):,.0f} s; {late:.0%} arrive after W")
    ax.set_xlabel("label time - impression time (s)")
    return _png(fig)


def _drift_figure(summary: dict, examples: list[dict]) -> tuple[str, dict]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    result: dict = {}
    bounds = summary.get("boundaries") or []
    if examples and bounds:
        rows = [e for e in examples if e["kind"] != "correction"]
        inputs = [json.loads(e["inputs"]) if isinstance(e["inputs"], str) else e["inputs"] for e in rows]
        names = sorted({k for i in inputs for k in i})
        window = max(summary["config"].get("window_ms", HOUR), 6 * HOUR) if summary["period_ms"] >= 86_400_000 \
            else summary["config"].get("window_ms", HOUR)
        result = drift.drift_over_time(np.array([e["event_time"] for e in rows]),
                                       {n: [i.get(n) for i in inputs] for n in names}, bounds[0], window)
        for name, pts in result.items():
            if pts:
                ax.plot(_dates(np.array([p["start"] for p in pts])), [p["jsd"] for p in pts], marker=".", label=name)
        ax.set_title(f"input drift: Jensen-Shannon divergence of each {window / HOUR:g}-hour window vs period 1")
        ax.legend(fontsize=8, ncol=4)
    return _png(fig), result


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _f(x, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


def _ci(d: dict | None) -> str:
    return f"{d['diff']:+.5f} [{d['low']:+.5f}, {d['high']:+.5f}]" if d else ""


def _section(run: Path, level: int = 1) -> str:
    """The report of one evaluation run folder, as HTML."""
    summary, preds, examples, outcomes = _load(run)
    rows = []
    for p in summary["periods"]:
        for name, m in p["strategies"].items():
            vs = p.get("hybrid_vs", {}).get(name, {})
            rows.append([p["period"], name, m["n"], m["positives"], _f(m["logloss"], ".5f"), _f(m["auc"], ".4f"),
                         _f(m["ne"], ".4f"), _f(m["calibration"], ".3f"), _ci(vs.get("logloss")), _ci(vs.get("auc"))])
    metric_table = _table(["period", "strategy", "impressions", "positives", "logloss", "AUC", "NE", "calibration",
                           "hybrid - this: logloss [95% CI]", "hybrid - this: AUC [95% CI]"], rows)
    variants = [[p["period"], v, *(_ci(vs.get(n)) for n in ("static", "periodic", "online"))]
                for p in summary["periods"] for v, vs in p.get("variants_vs", {}).items()]
    if variants:
        metric_table += ("<p>Each variant of the hybrid − the simpler options, log loss [95% CI] (negative: the "
                         "variant is better):</p>" + _table(["period", "variant", "− static", "− periodic",
                                                              "− online"], variants))
    retrains = _table(["cutoff", "status", "pushed", "train / eval examples", "candidate AUC / logloss / cal.",
                       "why not pushed", "drift warnings"],
                      [[_when(o["cutoff"]), o["status"], o.get("pushed"),
                        f"{o.get('counts', {}).get('train', {}).get('examples', '-')} / "
                        f"{o.get('counts', {}).get('eval', {}).get('examples', '-')}",
                        " / ".join(_f(o.get("evaluation", {}).get("candidate", {}).get(k), f)
                                   for k, f in (("auc", ".4f"), ("logloss", ".5f"), ("calibration", ".2f"))),
                        "; ".join(o.get("evaluation", {}).get("reasons", [])) or o.get("reason", "")[:200],
                        ", ".join(o.get("validation", {}).get("drift_warnings", {}) or {})] for o in outcomes])
    drift_png, drift_data = _drift_figure(summary, examples)
    (run / "drift.json").write_text(json.dumps(drift_data, indent=1) + "\n")
    window_ms = summary["config"]["join"]["window_ms"]
    tuning = summary.get("tuning")
    h, h2 = f"h{level}", f"h{level + 1}"
    parts = [
        f"<{h}>driftline evaluation: {html.escape(str(summary['data']))}</{h}>",
        f"<p>{summary['impressions']:,} impressions; evaluated from {_when(summary['evaluated_from'])} UTC "
        f"(period 1 trains the first base model); retrain boundaries: "
        f"{', '.join(_when(b) for b in summary.get('boundaries', []))}. Every impression is scored before any "
        f"label that arrives after it is learned (progressive validation, the job's tick semantics).</p>",
        "<p>Strategies: static = the first base model only; periodic = each period's TFX base model; online = "
        "FTRL from scratch over a constant prior; hybrid = periodic base + online delta (rebased at each swap); "
        "hybrid_replay = hybrid with replay-buffer mixing; hybrid_fn / hybrid_fnw = hybrid learning every "
        "impression at once as a negative and each label again as a positive when it arrives, unweighted / with "
        "fake-negative weighting (Ktena et al. 2019); hybrid_mix = hybrid serving a mixture of base + s × delta "
        "over scales s, weighted online by each one's log loss so far (fixed share); hybrid_mix_online = the same "
        "mixture with online-only FTRL as one more expert. CIs: paired bootstrap over "
        "hour blocks; a negative "
        "logloss difference favours the hybrid.</p>",
        (f"<p>FTRL hyperparameters chosen on period 1 only: online-only "
         f"{html.escape(json.dumps(tuning['online']['chosen']))}; the hybrids' delta "
         + (f"{html.escape(json.dumps(tuning['delta']['chosen']))} (over a base model retrained at mid-period 1)"
            if tuning.get("delta") else "the same (no base model came out of mid-period 1)")
         + (f"; hybrid_mix's share {html.escape(json.dumps(tuning['mix']['chosen']))}" if tuning.get("mix") else "")
         + (f"; hybrid_mix_online's share {html.escape(json.dumps(tuning['mix_online']['chosen']))}"
            if tuning.get("mix_online") else "")
         + "</p>"
         if tuning and "online" in tuning else ""),
        f"<{h2}>Metrics</{h2}>", metric_table,
        f"<{h2}>Over time</{h2}>", *_metric_figures(summary, preds), *_mixture_figure(summary),
        f"<{h2}>Calibration</{h2}>", _calibration_figure(summary, preds),
        f"<{h2}>Label delays</{h2}>", _delay_figure(examples, window_ms),
        f"<{h2}>Drift</{h2}>", drift_png,
        f"<{h2}>TFX retrains</{h2}>", retrains,
    ]
    return "".join(parts)


def runs_in(run_dir: str | Path) -> list[Path]:
    """The evaluation run folders of ``run_dir``: itself, or its subfolders (one per data set)."""
    run = Path(run_dir)
    if _is_run(run):
        return [run]
    return sorted(p for p in run.iterdir() if p.is_dir() and _is_run(p))


def _is_run(p: Path) -> bool:
    try:
        return "periods" in json.loads((p / "summary.json").read_text())
    except (OSError, ValueError):
        return False


def combined_summary(run_dir: str | Path) -> dict:
    """Per data set (subfolder) and strategy: the metrics over all evaluated impressions and per
    period, and the hybrid's CIs; written to ``RUN_DIR/summary.json`` for a multi-data-set run."""
    out: dict = {"datasets": {}}
    for run in runs_in(run_dir):
        s = json.loads((run / "summary.json").read_text())
        out["datasets"][run.name] = {
            "data": s["data"], "impressions": s["impressions"], "period_ms": s.get("period_ms"),
            "periods": {p["period"]: {"start": p["start"], "end": p["end"], "strategies": p["strategies"],
                                      "hybrid_vs": p.get("hybrid_vs", {}),
                                      "variants_vs": p.get("variants_vs", {})} for p in s["periods"]}}
    return out


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``out``) from the run folder; returns its path. A
    folder of several evaluation runs (one per data set) gives one report with a section per
    data set, and a combined ``RUN_DIR/summary.json``."""
    import matplotlib

    matplotlib.use("Agg")
    run = Path(run_dir)
    runs = runs_in(run)
    if not runs:
        raise FileNotFoundError(f"{run} holds no evaluation run (summary.json with periods)")
    if runs == [run]:
        body = _section(run)
    else:
        combined = combined_summary(run)
        (run / "summary.json").write_text(json.dumps(combined, indent=1, default=float) + "\n")
        rows = [[name, period, strat, _f(m["logloss"], ".5f"), _f(m["auc"], ".4f"), _f(m["calibration"], ".3f"),
                 *(_ci(d["hybrid_vs"].get(strat, {}).get(k)) for k in ("logloss", "auc"))]
                for name, ds in combined["datasets"].items() for period, d in ds["periods"].items()
                for strat, m in d["strategies"].items()]
        body = ("<h1>driftline evaluation: " + ", ".join(combined["datasets"]) + "</h1>"
                + _table(["data set", "period", "strategy", "logloss", "AUC", "calibration",
                          "hybrid - this: logloss [95% CI]", "hybrid - this: AUC [95% CI]"], rows)
                + "".join(_section(r, level=2) for r in runs))
    return write_html(Path(out) if out else run / "report.html", "driftline evaluation", body)


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;}table{border-collapse:collapse;"
         "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}")


def write_html(path: Path, title: str, body: str) -> Path:
    """One self-contained HTML page (the reports' shared style, no scripts, no links)."""
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{STYLE}</style></head><body>{body}</body></html>")
    return path
