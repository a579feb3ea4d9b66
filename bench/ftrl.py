"""Benchmark of per-event FTRL-Proximal learners on the same hashed streams, side by side in one
run: the driftline kernel (``models.ftrl_kernel``, numba), the plain-Python reference
(``models.ftrl.ReferenceFTRL``), River (``LogisticRegression(optimizer=FTRLProximal)``) and
Vowpal Wabbit ``--ftrl`` (its native driver loop over a file, and pyvw one example at a time).

    python bench/ftrl.py [--json] [--events 1000000] [--prefix 200000] [--data-dir DIR]

Streams: TalkingData (the shipped spec's hashed features, windowed counts included: 13 per
event) and a seeded synthetic 20-field stream (``--events``, labels from a planted logistic
model). Every learner predicts each event before learning it (progressive validation), one
event after another; events/s counts predict + learn. The slow learners (reference, River,
pyvw) run on the first ``--prefix`` events; logloss is reported on that prefix for every
learner, so the columns compare like with like (River's on its own shorter prefix,
``--river-prefix``: its logloss is then comparable only with that prefix). River and Vowpal Wabbit are benchmark-only
dependencies: ``pip install -c constraints.txt -e '.[bench]'``; a learner that is not
installed is reported as such. Prints a table; with --json the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

_here = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _here]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from models.metrics import logloss  # noqa: E402

PARAMS = {"alpha": 0.1, "beta": 1.0, "l1": 1.0, "l2": 1.0}
BITS = 20  # hash space 2^20 for the synthetic stream and VW


def synthetic(events: int, fields: int = 20, seed: int = 0) -> dict:
    """``events`` rows of ``fields`` one-hot categorical fields (cardinalities 10 to 100k),
    hashed into 2^BITS; labels from a planted logistic model (rate ~ 15 %)."""
    rng = np.random.default_rng(seed)
    card = np.array([10 ** (1 + f % 5) for f in range(fields)])
    # Zipf-like skew inside each field: small ids are frequent
    raw = np.floor(card[None, :] * rng.random((events, fields)) ** 3).astype(np.int64)
    keys = (np.arange(fields)[None, :] * 1_000_003 + raw) * 2_654_435_761 + 12_345
    idx = keys % (1 << BITS)
    truth = rng.normal(0.0, 0.6, 1 << BITS)
    z = truth[idx].sum(axis=1) / math.sqrt(fields) - 1.9
    y = (rng.random(events) < 1.0 / (1.0 + np.exp(-z))).astype(np.float64)
    return {"name": f"synthetic {fields} fields", "indices": idx, "values": np.ones(idx.shape), "label": y,
            "dimension": 1 << BITS, "keys": keys}


def talkingdata_stream(data_dir: str | None) -> dict:
    from pipelines.config import data_dir as find
    from pipelines.sources import talkingdata
    from transforms.aggregates import add_aggregates
    from transforms.apply import apply
    from transforms.artifact import fit
    from transforms.spec import load_spec

    path = find(data_dir, need=talkingdata.RELATIVE_PATH) / talkingdata.RELATIVE_PATH
    tables = talkingdata.load(path).drain()
    spec = load_spec("talkingdata")
    imp = tables["impression"]
    imp = imp.take(np.argsort(imp["event_time"].to_numpy(), kind="stable"))
    table = add_aggregates(spec, imp)
    f = apply(fit(spec, table), table)
    labels = tables["label"]
    pos = {e for e, v in zip(labels["event_id"].to_pylist(), labels["label"].to_pylist()) if v}
    y = np.array([e in pos for e in table["event_id"].to_pylist()], np.float64)
    return {"name": "talkingdata", "indices": f.indices.astype(np.int64), "values": f.values.astype(np.float64),
            "label": y, "dimension": spec.dimension}


def learn_all(m, s: dict, batch: int = 10_000, want_weights: bool = True) -> np.ndarray:
    """Every event of stream ``s`` through FTRL ``m``, in batches as the job calls the kernel;
    returns the prediction made before each update."""
    n = len(s["label"])
    p = np.empty(n)
    zeros = np.zeros(batch)
    for i in range(0, n, batch):
        j = slice(i, min(i + batch, n))
        p[j], _ = m.learn_batch(s["indices"][j], s["values"][j], s["label"][j], zeros[: j.stop - j.start],
                                want_weights=want_weights)
    return p


def run_kernel(s: dict, batch: int = 10_000, precision: str = "float64",
               want_weights: bool = True) -> tuple[float, np.ndarray]:
    """The kernel as the job calls it: batches of 10k, the new weights of each row returned
    (``want_weights=False``: predictions only, as the other learners here)."""
    from models.ftrl import FTRL, FTRLParams

    params = FTRLParams(**PARAMS, precision=precision)
    warm = FTRL(params, s["dimension"])  # compile outside the clock
    warm.learn_batch(s["indices"][:2], s["values"][:2], s["label"][:2], np.zeros(2))
    m = FTRL(params, s["dimension"])
    t0 = time.perf_counter()
    p = learn_all(m, s, batch, want_weights)
    return time.perf_counter() - t0, p


def run_reference(s: dict, n: int) -> tuple[float, np.ndarray]:
    from models.ftrl import FTRLParams, ReferenceFTRL

    m = ReferenceFTRL(FTRLParams(**PARAMS))
    idx, val, y = s["indices"][:n].tolist(), s["values"][:n].tolist(), s["label"][:n].tolist()
    p = np.empty(n)
    t0 = time.perf_counter()
    for j in range(n):
        p[j] = m.learn_one(idx[j], val[j], y[j])
    return time.perf_counter() - t0, p


def run_river(s: dict, n: int) -> tuple[float, np.ndarray]:
    from river import linear_model, optim

    model = linear_model.LogisticRegression(
        optimizer=optim.FTRLProximal(alpha=PARAMS["alpha"], beta=PARAMS["beta"], l1=PARAMS["l1"], l2=PARAMS["l2"]),
        intercept_lr=0.0)  # the hashed features carry everything (like the other learners: no intercept)
    xs = [dict(zip(map(str, i), v)) for i, v in zip(s["indices"][:n].tolist(), s["values"][:n].tolist())]
    ys = s["label"][:n].astype(bool).tolist()
    p = np.empty(n)
    t0 = time.perf_counter()
    for j in range(n):
        p[j] = model.predict_proba_one(xs[j])[True]
        model.learn_one(xs[j], ys[j])
    return time.perf_counter() - t0, p


def _vw_args(bits: int) -> str:
    return (f"--ftrl --ftrl_alpha {PARAMS['alpha']} --ftrl_beta {PARAMS['beta']} --l1 {PARAMS['l1']} "
            f"--l2 {PARAMS['l2']} -b {bits} --loss_function logistic --link logistic --noconstant --quiet")


def _vw_lines(s: dict, n: int) -> list[str]:
    return [f"{1 if y else -1} |f " + " ".join(f"{i}:{v:.6g}" for i, v in zip(ii, vv))
            for ii, vv, y in zip(s["indices"][:n].tolist(), s["values"][:n].tolist(), s["label"][:n].tolist())]


def run_pyvw(s: dict, n: int, bits: int) -> tuple[float, np.ndarray]:
    from vowpalwabbit import pyvw

    vw = pyvw.Workspace(_vw_args(bits))
    lines = _vw_lines(s, n)
    p = np.empty(n)
    t0 = time.perf_counter()
    for j, line in enumerate(lines):
        ex = vw.parse(line)
        vw.learn(ex)  # the prediction is made before the update (progressive)
        p[j] = ex.get_simplelabel_prediction()
        vw.finish_example(ex)
    secs = time.perf_counter() - t0
    vw.finish()
    return secs, p


def run_vw_native(s: dict, bits: int, tmp: Path) -> tuple[float, float, int]:
    """VW's own driver loop (parse + learn, as the ``vw`` command line runs it) over a data file;
    returns (seconds, its progressive logloss, examples)."""
    from vowpalwabbit import pyvw

    data = tmp / f"{s['name'].split()[0]}.vw"
    data.write_text("\n".join(_vw_lines(s, len(s["label"]))) + "\n")
    t0 = time.perf_counter()
    vw = pyvw.Workspace(f"{_vw_args(bits)} -d {data}")  # with -d, the constructor runs VW's driver loop
    secs = time.perf_counter() - t0  # includes VW's set-up (a few ms): conservative for the others
    loss, n = vw.get_sum_loss(), vw.get_weighted_examples()
    vw.finish()
    return secs, loss / max(n, 1.0), int(n)


def bench(s: dict, prefix: int, tmp: Path, river_prefix: int) -> list[dict]:
    n = len(s["label"])
    k = min(prefix, n)
    rows = []
    secs, p_kernel = run_kernel(s)
    rows.append({"learner": "driftline kernel", "events": n, "seconds": secs, "events_per_s": n / secs,
                 "logloss_prefix": logloss(s["label"][:k], p_kernel[:k]), "logloss_all": logloss(s["label"], p_kernel),
                 "state_bytes": 16 * s["dimension"]})
    secs, p_nw = run_kernel(s, want_weights=False)
    rows.append({"learner": "driftline kernel, no weights out", "events": n, "seconds": secs, "events_per_s": n / secs,
                 "logloss_all": logloss(s["label"], p_nw), "same_as_kernel": bool(np.array_equal(p_nw, p_kernel))})
    secs, p32 = run_kernel(s, precision="float32")  # reduced-precision state: the logloss it costs
    rows.append({"learner": "driftline kernel float32", "events": n, "seconds": secs, "events_per_s": n / secs,
                 "logloss_prefix": logloss(s["label"][:k], p32[:k]), "logloss_all": logloss(s["label"], p32),
                 "logloss_all_minus_float64": logloss(s["label"], p32) - logloss(s["label"], p_kernel),
                 "max_abs_p_diff_vs_float64": float(np.max(np.abs(p32 - p_kernel))), "state_bytes": 8 * s["dimension"]})
    secs, p = run_reference(s, k)
    rows.append({"learner": "plain-Python reference", "events": k, "seconds": secs, "events_per_s": k / secs,
                 "logloss_prefix": logloss(s["label"][:k], p),
                 "max_abs_diff_vs_kernel": float(np.max(np.abs(p - p_kernel[:k])))})
    bits = max(BITS, int(math.ceil(math.log2(s["dimension"]))))
    kr = min(river_prefix, k)
    for name, m, fn in (("River FTRLProximal", kr, lambda: run_river(s, kr)),
                        ("Vowpal Wabbit pyvw", k, lambda: run_pyvw(s, k, bits))):
        try:
            secs, p = fn()
            rows.append({"learner": name, "events": m, "seconds": secs, "events_per_s": m / secs,
                         "logloss_prefix": logloss(s["label"][:m], p),
                         "kernel_logloss_same_events": logloss(s["label"][:m], p_kernel[:m])})
        except ImportError as e:
            rows.append({"learner": name, "missing": f"not installed ({e.name}): pip install -e '.[bench]'"})
    try:
        secs, ll, m = run_vw_native(s, bits, tmp)
        rows.append({"learner": "Vowpal Wabbit native loop", "events": m, "seconds": secs, "events_per_s": m / secs,
                     "logloss_all": ll})
    except ImportError as e:
        rows.append({"learner": "Vowpal Wabbit native loop", "missing": f"not installed ({e.name})"})
    for r in rows:
        r["stream"] = s["name"]
    return rows


def state_sizes(events: int, bits_list=(16, 18, 20, 22, 24)) -> list[dict]:
    """FTRL state against hash-space size: the synthetic stream hashed into 2^bits (fewer bits:
    more collisions), learned by the kernel in float64 and float32; state bytes, non-zero
    weights, the compressed snapshot (``FTRL.to_bytes``) and the progressive logloss."""
    from models.ftrl import FTRL, FTRLParams

    base = synthetic(events)
    rows = []
    for bits in bits_list:
        hashed = {**base, "indices": base["keys"] % (1 << bits)}  # the same events and labels, in 2^bits
        for prec in ("float64", "float32"):
            m = FTRL(FTRLParams(**PARAMS, precision=prec), 1 << bits)
            p = learn_all(m, hashed)
            rows.append({"bits": bits, "precision": prec, "state_bytes": int(m.z.nbytes + m.n.nbytes),
                         "nonzero_weights": int(np.count_nonzero(m.weights())),
                         "snapshot_bytes": len(m.to_bytes()), "logloss": logloss(base["label"], p)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--events", type=int, default=1_000_000, help="synthetic stream length")
    ap.add_argument("--prefix", type=int, default=200_000, help="events for the slow learners")
    ap.add_argument("--river-prefix", type=int, default=20_000,
                    help="events for River (its per-event cost grows with the weights it holds: ~100 ev/s "
                         "after 20k events of the synthetic stream here)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--skip-talkingdata", action="store_true")
    ap.add_argument("--state-events", type=int, default=1_000_000,
                    help="synthetic events for the state-size table (0: skip it)")
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    streams = [] if args.skip_talkingdata else [talkingdata_stream(args.data_dir)]
    streams.append(synthetic(args.events))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in streams:
            rows += bench(s, args.prefix, Path(tmp), args.river_prefix)
    print(f"{'stream':<22}{'learner':<34}{'events':>10}{'events/s':>14}{'logloss(prefix)':>17}{'logloss(all)':>14}")
    for r in rows:
        if "missing" in r:
            print(f"{r['stream']:<22}{r['learner']:<34}  {r['missing']}")
            continue
        f = lambda k: f"{r[k]:.5f}" if k in r else "-"  # noqa: E731
        print(f"{r['stream']:<22}{r['learner']:<34}{r['events']:>10,}{r['events_per_s']:>14,.0f}"
              f"{f('logloss_prefix'):>17}{f('logloss_all'):>14}")
    result = {"rows": rows, "params": PARAMS, "prefix": args.prefix}
    by = {(r["stream"], r["learner"]): r.get("events_per_s") for r in rows}
    for s in streams:
        kern = by.get((s["name"], "driftline kernel"))
        vw, river = by.get((s["name"], "Vowpal Wabbit native loop")), by.get((s["name"], "River FTRLProximal"))
        result[f"{s['name']}: kernel / VW native"] = kern / vw if kern and vw else None
        result[f"{s['name']}: kernel / River"] = kern / river if kern and river else None
    result["goal"] = "kernel >= 2x VW native loop and >= 50x River"
    if args.state_events:
        result["state_sizes"] = state_sizes(args.state_events)
        print(f"\nFTRL state against hash-space size (synthetic, {args.state_events:,} events):")
        print(f"{'bits':>5}{'precision':>10}{'state MB':>10}{'non-zero w':>12}{'snapshot MB':>13}{'logloss':>10}")
        for r in result["state_sizes"]:
            print(f"{r['bits']:>5}{r['precision']:>10}{r['state_bytes'] / 1e6:>10.2f}{r['nonzero_weights']:>12,}"
                  f"{r['snapshot_bytes'] / 1e6:>13.2f}{r['logloss']:>10.5f}")
    for k, v in result.items():
        if k.endswith("VW native") or k.endswith("River"):
            print(f"{k}: {'-' if v is None else f'{v:.1f}x'}")
    if args.json:
        print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
