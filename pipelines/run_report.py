"""The report of a streaming run: one self-contained HTML file (plots embedded as PNG) built
only from what the job left in its run folder, so ``driftline report RUN_DIR`` can rebuild it
at any time, also while a ``--follow`` job runs:

* the outputs: predictions (served p, base logit, arm, base version), examples (labels, label
  delays), metrics (the Learner's window metrics, guard, feature drift), alerts, dead letters;
* ``swaps.jsonl`` and ``retrain/outcomes.jsonl``: base-model swaps, drift-started retrains, and
  each TFX retrain's outcome;
* ``summary.json`` when the job has ended (``final``); while it runs (or if it stopped before its
  end) the outputs committed so far are summarized afresh at every report, never read from a
  summary written earlier, and the report says its figures are not final.

Sections: counts and whether they reconcile; log loss per hour of what was served against the
base model alone, with the swaps; the Learner's sliding-window metrics and when the delta was
served; feature drift (PSI per feature) against the reference of the moment; label delays;
retrains, swaps and alerts; the A/B analysis when the run had two arms (``models.ab``).
"""
from __future__ import annotations

import html
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from models import metrics
from pipelines.report import HOUR, _dates, _delay_figure, _f, _png, _table, _when, write_html


def _swap_lines(ax, swaps: list[dict]) -> None:
    """Mark each base model going live on a time axis."""
    for s in (s for s in swaps if s.get("outcome") == "live"):
        at = _dates(np.array([s["live_at"]]))[0]
        ax.axvline(at, color="grey", ls=":", lw=1)
        ax.annotate(f"base {s['version']}", (at, 1.0), xycoords=("data", "axes fraction"),
                    fontsize=7, rotation=90, va="top", ha="right", color="grey")


def _quality_figure(preds: list[dict], first: dict, swaps: list[dict]) -> str:
    """Log loss per hour of the served predictions and of the base model alone (its own p for
    the same impressions), and the share served hybrid."""
    import matplotlib.pyplot as plt

    rows = [p for p in preds if p["event_id"] in first]
    fig, ax = plt.subplots(figsize=(10, 4))
    if rows:
        t = np.array([p["event_time"] for p in rows])
        y = np.array([first[p["event_id"]]["label"] for p in rows], np.float64)
        p = np.array([p["p"] for p in rows])
        base = 1.0 / (1.0 + np.exp(-np.array([r["base_logit"] for r in rows], np.float64)))
        hybrid = np.array([r["served"] == "hybrid" for r in rows])
        hours = t // HOUR
        keys = np.unique(hours)
        at = _dates(keys * HOUR)
        for q, label in ((p, "served"), (base, "base model alone")):
            ax.plot(at, [w["logloss"] for w in metrics.by_window(t, y, q, HOUR)], marker=".", label=label)
        ax.set_ylabel("log loss per hour")
        share = ax.twinx()
        share.fill_between(at, [hybrid[hours == k].mean() for k in keys], step="mid", alpha=0.15, color="green")
        share.set_ylim(0, 1)
        share.set_ylabel("share served hybrid (shaded)")
        _swap_lines(ax, swaps)
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title(f"{len(rows):,} impressions with their labels: served vs the base model alone")
    return _png(fig)


def _window_figure(lines: list[dict], swaps: list[dict]) -> str:
    """The Learner's progressive metrics over its sliding window, per tick."""
    import matplotlib.pyplot as plt

    # from 200 examples on: the first handful's log loss (the start's prior) would set the scale
    lines = [m for m in lines if m.get("tick") is not None and (m.get("window_n") or 0) >= 200]
    fig, ax = plt.subplots(figsize=(10, 3.5))
    if lines:
        at = _dates(np.array([m["tick"] for m in lines]))
        ax.plot(at, [np.nan if m.get("window_logloss") is None else m["window_logloss"] for m in lines],
                label="window log loss")
        auc = ax.twinx()
        auc.plot(at, [np.nan if m.get("window_auc") is None else m["window_auc"] for m in lines], color="tab:orange",
                 label="window AUC")
        auc.set_ylabel("AUC")
        ax.set_ylabel("log loss")
        _swap_lines(ax, swaps)
        ax.set_title(f"the Learner's last {lines[-1].get('window_n', 0):,} examples (p before each update), per tick")
        ax.legend(fontsize=8, loc="upper left")
        auc.legend(fontsize=8, loc="upper right")
    return _png(fig)


def _drift_figure(lines: list[dict], swaps: list[dict]) -> tuple[str, list[list]]:
    """PSI per monitored feature at each metrics line, against the reference of the moment."""
    import matplotlib.pyplot as plt

    points = [(m["tick"], m["feature_drift"]) for m in lines
              if m.get("tick") is not None and (m.get("feature_drift") or {}).get("features")]
    fig, ax = plt.subplots(figsize=(10, 4))
    changes: list[list] = []
    if points:
        names = sorted({n for _, fd in points for n in fd["features"]})
        at = _dates(np.array([t for t, _ in points]))
        for n in names:
            ax.plot(at, [fd["features"].get(n, {}).get("psi", np.nan) for _, fd in points], label=n, lw=1)
        ax.axhline(0.25, color="red", ls="--", lw=1)
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("PSI (red: the default alert level)")
        last = None
        for t, fd in points:
            if fd.get("reference") != last:
                last = fd.get("reference")
                changes.append([_when(t), last, fd.get("reference_n")])
        _swap_lines(ax, swaps)
        ax.legend(fontsize=7, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.1))
        ax.set_title("feature drift of the served traffic (window vs reference: the artifact's span, then each "
                     "swapped-in base model's training span)")
    return _png(fig), changes


def build_run_report(run_dir: str | Path, out: str | Path | None = None, ab_resamples: int = 200) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``out``) from a streaming run's folder; returns its path."""
    import matplotlib

    from models.hotswap import read_swaps
    from runners.stream import ab_report, read_output, summarize

    matplotlib.use("Agg")
    run = Path(run_dir)
    if not (run / "job.json").is_file():
        raise FileNotFoundError(f"{run} is not a streaming run folder (no job.json)")
    job = json.loads((run / "job.json").read_text())
    saved = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else None
    # a finished job's summary (before 2026-12-06 only those were written: no "final"); else the
    # outputs committed so far, read now and not written (the next report reads them afresh)
    final = saved is not None and saved.get("final", True)
    summary = saved if final else summarize(run, write=False)
    preds, examples = read_output(run, "predictions"), read_output(run, "examples")
    lines = sorted(read_output(run, "metrics"), key=lambda m: (m.get("tick") is None, m.get("tick") or 0))
    alerts = sorted(read_output(run, "alerts"), key=lambda a: a.get("at") or 0)
    swaps = read_swaps(run)
    first = {e["event_id"]: e for e in examples if e["kind"] != "correction"}
    c, rec, pr = summary["counts"], summary.get("reconciliation") or {}, summary["progressive"]
    counts = _table(["what", "value"], [
        ["predictions", f"{c['predictions']:,}"], ["joined examples", f"{c['examples']:,} ({c['positives']:,} positive)"],
        ["weight updates", f"{c['updates']:,}"], ["late labels", f"{c['late_labels']:,}"],
        *[[f"dead letter: {k}", f"{v:,}"] for k, v in sorted(c["dead_letter"].items())],
        ["pending (served, not yet resolved)", f"{c['pending']:,}"],
        *([["examples of warm-up impressions (pending at its cut; not served here)",
            f"{c['warmup_examples']:,}"]] if c.get("warmup_examples") else []),
        ["reconciles (in = out + dead letter + pending)", {True: "yes", False: "NO"}.get(rec.get("reconciles"), "-")],
        ["progressive log loss: served / base alone", f"{_f(pr['logloss'], '.5f')} / {_f(pr['base_only_logloss'], '.5f')}"],
        ["progressive AUC: served / base alone", f"{_f(pr['auc'], '.4f')} / {_f(pr['base_only_auc'], '.4f')}"],
        ["predictions per base version", ", ".join(f"{k}: {v:,}" for k, v in sorted(summary["base_versions"].items()))]])
    outcomes_path = run / "retrain" / "outcomes.jsonl"
    outcomes = [json.loads(x) for x in outcomes_path.read_text().splitlines() if x.strip()] \
        if outcomes_path.exists() else []
    retrains = _table(["cutoff", "status", "pushed", "train / eval examples", "candidate AUC / log loss", "seconds"],
                      [[_when(o["cutoff"]), o["status"], o.get("version") if o.get("pushed") else "no",
                        f"{o.get('counts', {}).get('train', {}).get('examples', '-')} / "
                        f"{o.get('counts', {}).get('eval', {}).get('examples', '-')}",
                        " / ".join(_f((o.get("evaluation") or {}).get("candidate", {}).get(k), f)
                                   for k, f in (("auc", ".4f"), ("logloss", ".5f"))), o.get("seconds")]
                       for o in outcomes])
    swap_rows = [[_when(s["live_at"]) if s.get("live_at") else _when(s.get("alert_at") or s["cutoff"]),
                  s["outcome"], s.get("version") or s.get("why") or "",
                  ", ".join(s.get("alerting") or []) or s.get("reason") or "",
                  s.get("relearned", ""), s.get("feature_reference") or ""] for s in swaps]
    swap_table = _table(["event time", "outcome", "version / why", "features / reason", "re-learned",
                         "feature reference (impressions)"], swap_rows)
    alert_counts = Counter(a["alert"] for a in alerts)
    alert_table = _table(["event time", "alert", "feature / reason", "PSI / detail", "reference", "base"],
                         [[_when(a["at"]), a["alert"], a.get("feature") or a.get("reason", ""),
                           _f(a.get("psi"), ".3f") if "psi" in a else a.get("detail", ""), a.get("reference", ""),
                           a.get("base_version", "")] for a in alerts[:200]])
    drift_png, changes = _drift_figure(lines, swaps)
    parts = [
        f"<h1>driftline run: {html.escape(str(run))}</h1>",
        f"<p>{html.escape(str(job['event_dir']))}; attribution window W = {job['join']['window_ms'] / HOUR:g} h; "
        f"ticks of {job['learn_tick_ms'] / 1000:g} s; hybrid share {job['online'].get('hybrid_share', 1.0)}. "
        "Every impression is scored before any label that arrives after it is learned.</p>",
        "<p>The job had finished: final figures.</p>" if final else
        f"<p><b>Not final</b>: the outputs the job had committed at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} "
        "(it is running, or stopped before its end); reconciliation is checked when a job ends.</p>",
        "<h2>Counts</h2>", counts,
        "<h2>Served vs the base model alone</h2>", _quality_figure(preds, first, swaps),
        "<h2>The Learner's window</h2>", _window_figure(lines, swaps),
        "<h2>Feature drift</h2>", drift_png,
        _table(["from", "reference", "impressions"], changes) if changes else "",
        "<h2>Label delays</h2>", _delay_figure(examples, job["join"]["window_ms"]),
        "<h2>TFX retrains</h2>", retrains if outcomes else "<p>none</p>",
        "<h2>Swaps and drift-started retrains</h2>", swap_table if swaps else "<p>none</p>",
        f"<h2>Alerts ({', '.join(f'{k}: {v}' for k, v in sorted(alert_counts.items())) or 'none'})</h2>",
        alert_table if alerts else "",
    ]
    if len({p["arm"] for p in preds}) > 1:
        ab = ab_report(run, n=ab_resamples, predictions=preds, examples=examples)
        parts += ["<h2>A/B: hybrid arm vs base arm</h2>",
                  _table(["arm", "units", "impressions", "positives", "log loss", "AUC", "NE", "calibration",
                          "served hybrid"],
                         [[a, m["units"], m["n"], m["positives"], _f(m["logloss"], ".5f"), _f(m["auc"], ".4f"),
                           _f(m["ne"], ".4f"), _f(m["calibration"], ".3f"), m["served_hybrid"]]
                          for a, m in ab["arms"].items()]),
                  _table(["base version", "arm", "impressions", "positives", "log loss", "AUC", "calibration"],
                         [[v, a, m["n"], m["positives"], _f(m["logloss"], ".5f"), _f(m["auc"], ".4f"),
                           _f(m["calibration"], ".3f")] for v, arms in ab["by_base_version"].items()
                          for a, m in arms.items()]),
                  _table(["difference", "metric", "value [95% interval, unit bootstrap]"],
                         [[title, k, f"{d['diff']:+.5f} [{d['low']:+.5f}, {d['high']:+.5f}]"]
                          for key, title in (("hybrid_minus_base", "hybrid arm - base arm"),
                                             ("hybrid_arm_served_minus_base_only", "hybrid arm: served - base alone"))
                          for k, d in ab[key].items()])]
    return write_html(Path(out) if out else run / "report.html", "driftline run", "".join(parts))
