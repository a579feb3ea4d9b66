"""The streaming job on a real Flink mini-cluster, checked against the engine-free references:
the delayed-label join (``pipelines.join.reference_join``) and FTRL Algorithm 1 in plain
Python (``models.ftrl.ReferenceFTRL``)."""
import itertools
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from models.ftrl import FTRL, ReferenceFTRL
from models.online import OnlineConfig
from pipelines.eventlog import read_stream
from pipelines.join import JoinConfig, example_order, reference_join
from pipelines.sources.generator import GeneratorConfig
from runners.flink_job import JobConfig
from runners.local import generate_event_dir
from runners.stream import read_output, run_stream

# a short attribution window and a tiny stream: labels land inside, after and before windows
JOIN = JoinConfig(window_ms=600_000, late_horizon_ms=3_600_000, watermark_delay_ms=60_000)
ONLINE = OnlineConfig(hybrid_share=0.5)


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    generate_event_dir(root / "ev", GeneratorConfig(events=4_000, seed=11, duplicate_rate=0.01))
    _plant_boundary_labels(root / "ev")
    return root


def _plant_boundary_labels(ev) -> None:
    """Labels at the join's boundaries for impressions without one (as a part of their own,
    counted in the manifest): every label class the reference knows, so each comparison with
    ``reference_join`` below covers them."""
    W, H = JOIN.window_ms, JOIN.late_horizon_ms
    imps = read_stream(ev, "impression").to_pylist()
    labelled = {r["event_id"] for r in read_stream(ev, "label").to_pylist()}
    n = Counter(r["event_id"] for r in imps)
    free = [r for r in imps if n[r["event_id"]] == 1 and r["event_id"] not in labelled]
    a, b, c, d, e, f = free[100:106]
    t = lambda r: r["event_time"]  # noqa: E731
    planted = [(a, t(a)), (a, t(a) + 5), (b, t(b) + W - 1), (c, t(c) + W), (d, t(d) - 1), (e, t(e) + H + 1),
               (f, t(f) + W + 1), ({"event_id": "no-such-impression"}, t(f))]
    rows = sorted(({"event_id": r["event_id"], "label_time": lt, "label": 1, "label_type": "click"}
                   for r, lt in planted), key=lambda x: x["label_time"])
    (ev / "labels" / "part-000099.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    manifest = json.loads((ev / "_manifest.json").read_text())
    manifest["counts"]["valid"]["label"] += len(rows)
    (ev / "_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


@pytest.fixture(scope="module")
def run(events):
    return run_stream(events / "ev", events / "run", "generator", JOIN, ONLINE)


def test_counts_reconcile(run):
    r = run["reconciliation"]
    assert r["reconciles"], run
    assert r["every_impression_one_example"]
    assert run["counts"]["dead_letter"].get("duplicate_event_id", 0) > 0  # the generator planted some
    assert run["counts"]["late_labels"] > 0 and run["counts"]["examples_by_kind"]["label"] > 0
    # the planted boundary labels: every label outcome class occurs
    assert {"duplicate_label", "label_before_impression", "unknown_impression"} <= set(run["counts"]["dead_letter"])


def _disorder(src, dst, n: int = 5) -> tuple[set, set]:
    """A copy of the event folder ``src`` with ``n`` impressions and ``n`` labels from the first
    fifth of their part files moved to the end: hours more out of order than the watermark
    delay. The labels become one part file in label-time order first (several parts are read
    as sources of their own, and their union's watermark would depend on how they interleave).
    Returns the moved impressions' event_ids and the moved labels' (event_id, label_time)."""
    import shutil

    shutil.copytree(src, dst)
    parts = sorted((dst / "labels").glob("part-*"))
    rows = sorted((x for p in parts for x in p.read_text().splitlines(keepends=True) if x.strip()),
                  key=lambda x: json.loads(x)["label_time"])
    for p in parts:
        p.unlink()
    (dst / "labels" / "part-000000.jsonl").write_text("".join(rows))
    moved = []
    for stream in ("impressions", "labels"):
        part = dst / stream / "part-000000.jsonl"
        lines = part.read_text().splitlines(keepends=True)
        ids = Counter(json.loads(x)["event_id"] for x in lines)
        pick = [i for i in range(len(lines) // 20, len(lines) // 5) if ids[json.loads(lines[i])["event_id"]] == 1]
        pick = set(pick[:: max(1, len(pick) // n)][:n])
        part.write_text("".join(x for i, x in enumerate(lines) if i not in pick)
                        + "".join(lines[i] for i in sorted(pick)))
        moved.append([json.loads(lines[i]) for i in sorted(pick)])
    return {r["event_id"] for r in moved[0]}, {(r["event_id"], r["label_time"]) for r in moved[1]}


def test_records_behind_the_watermark_are_dead_letters_and_counts_reconcile(events, run):
    """Impressions and labels hours more out of order than the watermark delay cannot be
    processed in event time: each is a ``behind_watermark`` dead letter with the record as its
    raw payload (never dropped silently), the counts reconcile, and everything else is the
    reference join of the records that were not late. Each stream is judged by its own
    watermark (the impressions where they enter the windowed count, the labels at the join),
    so exactly the moved records are dead letters, however the two sources interleave."""
    moved_imps, moved_labels = _disorder(events / "ev", events / "ev_disordered")
    got = run_stream(events / "ev_disordered", events / "run_disordered", "generator", JOIN, ONLINE,
                     artifact=events / "run" / "transform")
    rec = got["reconciliation"]
    assert rec["reconciles"] and rec["impressions_in"] == run["reconciliation"]["impressions_in"], rec
    dead = read_output(events / "run_disordered", "dead_letter")
    behind = [r for r in dead if r["reason"] == "behind_watermark"]
    raws = [json.loads(r["raw"]) for r in behind]
    late_imps = {x["event_id"] for r, x in zip(behind, raws) if r["kind"] == "impression"}
    late_labels = {(x["event_id"], x["label_time"]) for r, x in zip(behind, raws) if r["kind"] == "label"}
    assert late_imps == moved_imps and len(moved_imps) == 5
    assert late_labels == moved_labels and len(moved_labels) == 5
    assert {(r["kind"], r["origin"]) for r in behind} == {("impression", "flink:windowed_count"),
                                                          ("label", "flink:labels")}
    imps = [r for r in read_stream(events / "ev", "impression").to_pylist() if r["event_id"] not in late_imps]
    for r, x in zip(behind, raws):  # the raw record is the impression as read
        if r["kind"] == "impression":
            orig = next(i for i in read_stream(events / "ev", "impression").to_pylist() if i["event_id"] == x["event_id"])
            assert x["event_time"] == orig["event_time"] and x["user_id"] == orig["user_id"]
    labs = [r for r in read_stream(events / "ev", "label").to_pylist()
            if (r["event_id"], r["label_time"]) not in late_labels]
    ref = reference_join([{"event_id": r["event_id"], "event_time": r["event_time"]} for r in imps], labs, JOIN)
    examples = sorted(read_output(events / "run_disordered", "examples"), key=lambda e: e["seq"])
    assert [(e["event_id"], e["label"], e["resolution_time"], e["kind"]) for e in examples] == \
           [(e["event_id"], e["label"], e["resolution_time"], e["kind"]) for e in ref["examples"]]
    others = sorted((r["reason"], json.loads(r["raw"])["event_id"] if r["raw"].startswith("{") else r["raw"])
                    for r in dead if r["reason"] != "behind_watermark")
    assert others == ref["dead_letter"]
    assert not late_imps & {p["event_id"] for p in read_output(events / "run_disordered", "predictions")}


# the operators that hold state (the SQL sources' split positions, the windowed counts', the
# dedup-join's, the tick packing's, the Learner's model, the sinks' pending files): their uids
# are a contract with every savepoint taken; renaming one breaks resuming it
STATEFUL_UIDS = {"impressions/impressions", "windowed_count_user_count_1h", "dedup_join", "tick_pack_imp",
                 "tick_pack_ex", "learner", *(f"sink_{n}" for n in ("predictions", "updates", "examples",
                                                                     "late_labels", "dead_letter", "metrics",
                                                                     "alerts", "dead_letter_keyed"))}


def test_operator_ids_survive_a_change_of_topology(events, run):
    """Every operator has a uid, so its state's id in checkpoints and savepoints is its uid's
    hash, not its place in the graph: the same job over the impressions as two part files
    (a source more, a union) and the labels as one (a source less) keeps every id downstream of
    the sources. Without uids each of those ids hashes its inputs' (Flink's
    StreamGraphHasherV2), and all of them changed."""
    import shutil

    from runners.stream import job_operators

    ev2 = events / "ev_reparted"
    shutil.copytree(events / "ev", ev2)
    imps = (ev2 / "impressions" / "part-000000.jsonl").read_text().splitlines(keepends=True)
    assert len(list((ev2 / "impressions").glob("part-*"))) == 1 and len(imps) > 100
    (ev2 / "impressions" / "part-000000.jsonl").write_text("".join(imps[:len(imps) // 2]))
    (ev2 / "impressions" / "part-000001.jsonl").write_text("".join(imps[len(imps) // 2:]))
    label_parts = sorted((ev2 / "labels").glob("part-*"))
    assert len(label_parts) > 1
    labels = sorted((x for p in label_parts for x in p.read_text().splitlines(keepends=True)),
                    key=lambda x: json.loads(x)["label_time"])
    for p in label_parts:
        p.unlink()
    (ev2 / "labels" / "part-000000.jsonl").write_text("".join(labels))
    cfg = json.loads((events / "run" / "job.json").read_text())
    (events / "job_reparted.json").write_text(json.dumps({**cfg, "event_dir": str(ev2)}))

    one, two = job_operators(events / "run" / "job.json"), job_operators(events / "job_reparted.json")
    for ops in (one, two):
        uids = [o["uid"] for o in ops]
        assert all(uids) and len(set(uids)) == len(uids), ops
    by_uid = [{o["uid"]: o["id"] for o in ops} for ops in (one, two)]
    assert STATEFUL_UIDS <= set(by_uid[0])
    sources = lambda ops: {u for u in ops if u.split("/")[0] in ("impressions", "labels")}  # noqa: E731
    assert sources(by_uid[0]) != sources(by_uid[1])  # the topology did change
    assert "impressions/impressions_p1" in by_uid[1] and "labels/labels" in by_uid[1]
    downstream = set(by_uid[0]) - sources(by_uid[0])
    assert len(downstream) >= 20 and downstream <= set(by_uid[1])
    assert {u: by_uid[0][u] for u in downstream} == {u: by_uid[1][u] for u in downstream}


def test_join_matches_the_reference(events, run):
    imps = read_stream(events / "ev", "impression").select(["event_id", "event_time"]).to_pylist()
    labs = read_stream(events / "ev", "label").to_pylist()
    ref = reference_join(imps, labs, JOIN)
    got = sorted(read_output(events / "run", "examples"), key=lambda e: e["seq"])
    # the same examples, with the same labels and resolution times, learned in the same order
    assert [(e["event_id"], e["label"], e["resolution_time"], e["kind"]) for e in got] == \
           [(e["event_id"], e["label"], e["resolution_time"], e["kind"]) for e in ref["examples"]]
    assert [example_order(e) for e in got] == sorted(example_order(e) for e in got)
    late = sorted((r["event_id"], r["label_time"]) for r in read_output(events / "run", "late_labels"))
    assert late == sorted((r["event_id"], r["label_time"]) for r in ref["late"])
    dead = sorted((r["reason"], json.loads(r["raw"])["event_id"] if r["raw"].startswith("{") else r["raw"])
                  for r in read_output(events / "run", "dead_letter"))
    assert dead == ref["dead_letter"]
    # label delay and point-in-time: a positive is resolved at its label time, within W
    for e in got:
        if e["kind"] == "label":
            assert e["label_delay_ms"] == e["label_time"] - e["event_time"] and 0 <= e["label_delay_ms"] < JOIN.window_ms


def test_examples_carry_the_served_features(events, run):
    """Features in a joined example are the ones served: the join keeps the raw inputs and the
    Learner recomputes them with the same artifact, bit for bit (as a batch apply)."""
    from transforms.aggregates import add_aggregates
    from transforms.apply import apply
    from transforms.artifact import TransformArtifact

    art = TransformArtifact.load(events / "run" / "transform")
    imps = read_stream(events / "ev", "impression")
    feats = apply(art, add_aggregates(art.spec, imps))
    first = {}
    for i, eid in enumerate(imps.column("event_id").to_pylist()):
        first.setdefault(eid, i)
    for e in read_output(events / "run", "examples")[:500]:
        f = json.loads(e["features"])
        i = first[e["event_id"]]
        assert f["indices"] == feats.indices[i].tolist()
        np.testing.assert_allclose(f["values"], feats.values[i], rtol=0, atol=0)


def test_examples_exported_as_parquet_by_event_hour(events, run):
    """Every joined example is in the Parquet export, in learning order, in the partition of
    its impression's event-time hour, with the served features."""
    from datetime import datetime, timezone

    from pipelines.examples import read_examples

    assert run["outputs"]["examples_parquet"].endswith("examples_parquet")
    got = read_examples(events / "run" / "examples_parquet").to_pylist()
    want = sorted(read_output(events / "run", "examples"), key=lambda e: e["seq"])
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        f = json.loads(w["features"])
        assert (g["event_id"], g["seq"], g["label"], g["kind"], g["label_time"]) == \
               (w["event_id"], w["seq"], w["label"], w["kind"], w["label_time"])
        assert g["feature_indices"] == f["indices"]
        np.testing.assert_allclose(g["feature_values"], f["values"], rtol=1e-7)
        hour = datetime.fromtimestamp(g["event_time"] / 1000, timezone.utc)
        assert (g["dt"], g["hr"]) == (hour.strftime("%Y-%m-%d"), hour.strftime("%H"))


def test_metrics_report_the_sliding_window(events, run):
    """The learner's metrics output: progressive logloss/AUC over the last N examples, each
    scored before it was learned (the update stream's p_before), and the delay histogram."""
    from sklearn.metrics import log_loss, roc_auc_score

    ups = sorted(read_output(events / "run", "updates"), key=lambda u: u["seq"])
    reports = read_output(events / "run", "metrics")
    assert len(reports) > 10 and run["window"]["examples_seen"] == len(ups)
    n = JobConfig(event_dir="", out="", artifact="").metrics_window
    for m in reports[::7]:
        last = [u for u in ups if u["seq"] <= m["delta_version"]][-n:]
        y, p = [u["label"] for u in last], [u["p_before"] for u in last]
        assert m["window_n"] == len(last)
        assert m["window_logloss"] == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-9)
        if 0 < sum(y) < len(y):
            assert m["window_auc"] == pytest.approx(roc_auc_score(y, p), rel=1e-9)
    hist = run["window"]["label_delay_hist"]
    assert sum(hist.values()) == run["counts"]["examples_by_kind"]["label"]
    assert hist["le_1m"] + hist["le_5m"] > 0 and hist["le_15m"] > 0


def test_predictions_carry_versions_and_ab_arms(run, events):
    preds = read_output(events / "run", "predictions")
    arms = {p["arm"] for p in preds}
    assert arms == {"hybrid", "base"}
    for p in preds:
        assert p["spec_fingerprint"] and p["base_version"] == "prior" and p["delta_version"] >= 0
        logit = p["base_logit"] + (p["delta_logit"] if p["served"] == "hybrid" else 0.0)
        assert p["p"] == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-12)
        # base-only: the A/B arm, or the guard (models.guard: warming up after the start, ...)
        assert (p["served"] == "base_only") == (p["arm"] == "base" or p["base_only_reason"] != "")
        assert p["base_only_reason"] == ("" if p["served"] == "hybrid" else "ab_arm" if p["arm"] == "base"
                                         else p["base_only_reason"])
    first = min(preds, key=lambda p: p["event_time"])
    assert first["served"] == "base_only" and first["base_only_reason"] in ("ab_arm", "warming_up")
    assert any(p["served"] == "hybrid" for p in preds)


def test_the_ab_analysis_recovers_the_arms_units_and_metrics(run, events):
    """``driftline ab``: every prediction's unit (read back from its example's inputs) hashes to
    the arm it was served in; each arm's figures are the metrics of its own predictions; the
    difference has a unit-bootstrap interval around it; the CLI prints and writes it."""
    from typer.testing import CliRunner

    from models.metrics import logloss
    from runners.cli import app
    from runners.stream import ab_report

    r = ab_report(events / "run", n=100)
    assert r["unit"] == "user_id" and r["hybrid_share"] == ONLINE.hybrid_share
    assert r["arms_check"] == {"rows": run["progressive"]["n"], "mismatched": 0}
    preds = read_output(events / "run", "predictions")
    first = {e["event_id"]: e for e in read_output(events / "run", "examples") if e["kind"] != "correction"}
    for arm in ("hybrid", "base"):
        mine = [p for p in preds if p["arm"] == arm and p["event_id"] in first]
        users = {json.loads(first[p["event_id"]]["inputs"])["user_id"] for p in mine}
        a = r["arms"][arm]
        assert a["n"] == len(mine) and a["units"] == len(users) and a["positives"] == sum(
            first[p["event_id"]]["label"] for p in mine)
        assert a["logloss"] == pytest.approx(logloss([first[p["event_id"]]["label"] for p in mine],
                                                     [p["p"] for p in mine]), rel=1e-12)
        assert a["served_hybrid"] == sum(p["served"] == "hybrid" for p in mine)
    assert r["arms"]["base"]["served_hybrid"] == 0 and r["arms"]["hybrid"]["served_hybrid"] > 0
    d = r["hybrid_minus_base"]["logloss"]
    assert d["diff"] == pytest.approx(r["arms"]["hybrid"]["logloss"] - r["arms"]["base"]["logloss"])
    assert d["low"] < d["diff"] < d["high"] and d["units"] == [r["arms"]["hybrid"]["units"], r["arms"]["base"]["units"]]
    assert set(r["by_base_version"]) == {"prior"}
    # in the hybrid arm: served against the base model alone, on the same impressions
    mine = [p for p in preds if p["arm"] == "hybrid" and p["event_id"] in first]
    y = [first[p["event_id"]]["label"] for p in mine]
    paired = r["hybrid_arm_served_minus_base_only"]["logloss"]
    assert paired["diff"] == pytest.approx(logloss(y, [p["p"] for p in mine]) - logloss(
        y, [1 / (1 + math.exp(-p["base_logit"])) for p in mine]), rel=1e-9)
    assert paired["low"] <= paired["diff"] <= paired["high"] and paired["units"] == r["arms"]["hybrid"]["units"]
    out = CliRunner().invoke(app, ["ab", str(events / "run"), "--bootstrap", "100", "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["hybrid_minus_base"] == r["hybrid_minus_base"]
    assert json.loads((events / "run" / "ab.json").read_text())["arms"] == json.loads(out.output)["arms"]
    assert CliRunner().invoke(app, ["ab", str(events)]).exit_code == 2  # not a run folder
    # the run's report has the A/B section, with both arms
    from pipelines.run_report import build_run_report

    doc = build_run_report(events / "run", events / "report.html", ab_resamples=50).read_text()
    assert "A/B: hybrid arm vs base arm" in doc
    assert f"<td>base</td><td>{r['arms']['base']['units']}</td><td>{r['arms']['base']['n']}</td>" in doc


def _reference_weights(examples, online: OnlineConfig, window_ms: int) -> ReferenceFTRL:
    """Algorithm 1 in plain Python; the prior base counts an example once its window closed.
    The hold after the start (models.online): in the first window, a positive whose window is
    open is applied only in the first tick batch that reaches its window close, before it."""
    tick = JobConfig(event_dir="", out="", artifact="").learn_tick_ms
    ref = ReferenceFTRL(online.ftrl)
    pos = n = 0
    waiting = []  # (window close, label) of examples resolved before their window closed
    held = []  # (window close, arrival, indices, values, label, weight)
    rows = sorted(examples, key=lambda e: e["seq"])
    hold_until = rows[0]["resolution_time"] + window_ms if online.hold_after_reset else -1

    def base():
        rate = (pos + online.prior_rate * online.prior_strength) / (n + online.prior_strength)
        return math.log(rate / (1 - rate))

    for _, batch in itertools.groupby(rows, key=lambda e: (e["resolution_time"] + 1) // tick):
        batch = list(batch)
        last = batch[-1]["resolution_time"]
        for h in sorted(h for h in held if h[0] <= last):
            ref.learn_one(h[2], h[3], h[4], base_logit=base(), weight=h[5])
        held = [h for h in held if h[0] > last]
        for e in batch:
            closed = [x for x in waiting if x[0] <= e["resolution_time"]]
            waiting = [x for x in waiting if x[0] > e["resolution_time"]]
            pos, n = pos + sum(label for _, label in closed), n + len(closed)
            f = json.loads(e["features"])
            close = e["event_time"] + window_ms
            if e["label"] > 0 and close > e["resolution_time"] and e["resolution_time"] < hold_until:
                held.append((close, e["seq"], f["indices"], f["values"], e["label"], e["weight"]))
            else:
                ref.learn_one(f["indices"], f["values"], e["label"], base_logit=base(), weight=e["weight"])
            if close > e["resolution_time"]:
                waiting.append((close, e["label"]))
            else:
                pos, n = pos + e["label"], n + 1
    return ref


def _final_snapshot(run_dir) -> FTRL:
    snaps = sorted((run_dir / "registry" / "delta").iterdir())
    return FTRL.from_bytes((snaps[-1] / "weights.npz").read_bytes())


def test_final_weights_equal_the_plain_python_reference(events, run):
    model = _final_snapshot(events / "run")
    ref = _reference_weights(read_output(events / "run", "examples"), ONLINE, JOIN.window_ms)
    assert model.updates == run["counts"]["updates"]
    coords = sorted(set(ref.z) | set(np.flatnonzero(model.z).tolist()))
    w = model.weights_at(np.array(coords))
    np.testing.assert_allclose(w, [ref.weight(i) for i in coords], rtol=0, atol=1e-9)
    assert any(ref.weight(i) != 0 for i in coords) and any(ref.weight(i) == 0 for i in ref.z)  # L1 sparsity


def test_same_log_same_weights(events, run, warm_jobs, tmp_path_factory):
    """Run again, right after a job that failed (in the suite, both in the tests' warm process,
    ``runners.warm``, where ``run`` ran too: a failed job leaves nothing behind there)."""
    from runners.stream import prepare_run, run_job

    cfg = prepare_run(events / "ev", events / "run_failed", "generator", JOIN, ONLINE,
                      artifact=events / "run" / "transform", restart_attempts=0)
    (events / "run_failed" / "checkpoints").write_text("a file where the checkpoints go: the job cannot start")
    with pytest.raises(RuntimeError, match="streaming job failed"):
        run_job(cfg, events / "run_failed")
    again = run_stream(events / "ev", events / "run2", "generator", JOIN, ONLINE,
                       artifact=events / "run" / "transform")
    if warm_jobs is not None:  # both ran there, one after the other
        log = (tmp_path_factory.getbasetemp() / "warm.log").read_text()
        assert "run_failed/job.json'] exit 1" in log and "run2/job.json'] exit 0" in log, log[-2000:]
    assert again["counts"] == run["counts"]
    a, b = _final_snapshot(events / "run"), _final_snapshot(events / "run2")
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()
    # predictions too: each tick is scored with the weights of the ticks before it
    key = lambda r: (r["event_id"], r["p"], r["delta_version"])  # noqa: E731
    assert sorted(map(key, read_output(events / "run", "predictions"))) == \
           sorted(map(key, read_output(events / "run2", "predictions")))


def test_no_label_reaches_its_own_prediction(events, run):
    """An impression in the tick starting at S is scored after learning exactly the examples
    resolved before S - 1 (their rows are stamped resolution + 1 ms): never its own label."""
    tick = JobConfig(event_dir="", out="", artifact="").learn_tick_ms
    res = np.sort([e["resolution_time"] for e in read_output(events / "run", "examples")])
    preds = read_output(events / "run", "predictions")
    for p in preds:
        start = p["event_time"] // tick * tick
        assert p["delta_version"] == np.searchsorted(res, start - 1, side="left")
    assert len({p["delta_version"] for p in preds}) > 10  # the scorer did see the weights move


def test_correction_policy_learns_late_labels_in_order(events):
    join = JoinConfig(window_ms=JOIN.window_ms, late_horizon_ms=JOIN.late_horizon_ms,
                      watermark_delay_ms=JOIN.watermark_delay_ms, late_policy="correction", correction_weight=0.5)
    s = run_stream(events / "ev", events / "run_corr", "generator", join, ONLINE, artifact=events / "run" / "transform")
    assert s["reconciliation"]["reconciles"], s
    imps = read_stream(events / "ev", "impression").select(["event_id", "event_time"]).to_pylist()
    ref = reference_join(imps, read_stream(events / "ev", "label").to_pylist(), join)
    got = sorted(read_output(events / "run_corr", "examples"), key=lambda e: e["seq"])
    assert [(e["event_id"], e["resolution_time"], e["kind"], e["weight"]) for e in got] == \
           [(e["event_id"], e["resolution_time"], e["kind"], e["weight"]) for e in ref["examples"]]
    assert sum(e["kind"] == "correction" for e in got) == len(ref["late"]) > 0
    model = _final_snapshot(events / "run_corr")
    rw = _reference_weights(got, ONLINE, join.window_ms)
    coords = sorted(set(rw.z))
    np.testing.assert_allclose(model.weights_at(np.array(coords)), [rw.weight(i) for i in coords], rtol=0, atol=1e-9)


def test_beam_backfill_gives_the_streaming_examples(events, run, tmp_path):
    """The Beam backfill (DirectRunner) of the same log: identical joined examples (order,
    labels, timing, served features), late labels and dead letters as the Flink job."""
    from pipelines.backfill import backfill_examples
    from transforms.artifact import TransformArtifact

    art = TransformArtifact.load(events / "run" / "transform")
    counts = backfill_examples(events / "ev", art, JOIN, tmp_path / "bf")
    beam_ex = [json.loads(line) for line in (tmp_path / "bf" / "examples.jsonl").read_text().splitlines()]
    flink_ex = sorted(read_output(events / "run", "examples"), key=lambda e: e["seq"])
    cols = ("seq", "event_id", "event_time", "resolution_time", "label", "label_time", "label_delay_ms", "kind",
            "weight", "spec_fingerprint")
    assert counts["examples"] == len(flink_ex) > 0
    assert [tuple(e[c] for c in cols) for e in beam_ex] == [tuple(e[c] for c in cols) for e in flink_ex]
    for b, f in zip(beam_ex, flink_ex):
        bf, ff = json.loads(b["features"]), json.loads(f["features"])
        assert bf["indices"] == ff["indices"]
        np.testing.assert_allclose(bf["values"], ff["values"], rtol=0, atol=0)
        assert json.loads(b["inputs"]) == json.loads(f["inputs"])  # the raw inputs, aggregates included
    late = [json.loads(line) for line in (tmp_path / "bf" / "late_labels.jsonl").read_text().splitlines()]
    assert sorted((r["event_id"], r["label_time"]) for r in late) == \
           sorted((r["event_id"], r["label_time"]) for r in read_output(events / "run", "late_labels"))
    dead = [json.loads(line) for line in (tmp_path / "bf" / "dead_letter.jsonl").read_text().splitlines()]
    flink_dead = sorted((r["reason"], json.loads(r["raw"])["event_id"] if r["raw"].startswith("{") else r["raw"])
                        for r in read_output(events / "run", "dead_letter"))
    assert sorted((r["reason"], r["event_id"]) for r in dead) == flink_dead


def test_progressive_replay_serves_what_the_job_served(events, run):
    """The evaluation's replay (pipelines.progressive) on the job's own examples, with the job's
    tick: every impression gets the job's base and delta logits and delta version."""
    from pipelines.progressive import Examples, Strategy, replay
    from transforms.artifact import TransformArtifact

    run_dir = events / "run"
    examples = sorted(read_output(run_dir, "examples"), key=lambda e: e["seq"])
    tick = JobConfig(event_dir="", out="", artifact="").learn_tick_ms
    dim = TransformArtifact.load(run_dir / "transform").spec.dimension
    out = replay(Examples.from_rows(examples), Strategy("hybrid", online=ONLINE), dim, JOIN.window_ms, tick)
    served = {p["event_id"]: p for p in read_output(run_dir, "predictions")}
    assert set(out.event_id) == set(served) and len(out.event_id) == len(served)
    job = [served[e] for e in out.event_id]
    np.testing.assert_array_equal(out.delta_version, [p["delta_version"] for p in job])
    np.testing.assert_allclose(out.delta_logit, [p["delta_logit"] for p in job], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.base_logit, [p["base_logit"] for p in job], rtol=0, atol=1e-12)


def test_the_job_serves_the_delta_mixture_the_replay_serves(events, run, tmp_path):
    """With a mixture over delta scales (``OnlineConfig.delta_scales``, models.mixer) and the
    online expert (``online_expert``: online-only FTRL as one more expert) the job serves what
    the evaluation's replay of its own examples serves, p included; the mixture took effect
    (the plain run served other p to the same hybrid-arm impressions)."""
    from dataclasses import replace

    from models.ftrl import FTRLParams
    from pipelines.progressive import Examples, Strategy, replay
    from transforms.artifact import TransformArtifact

    mix = replace(ONLINE, delta_scales=(0.0, 0.5, 1.0), mix_share=0.01, online_expert=True,
                  expert_ftrl=FTRLParams(alpha=0.3, l1=0.0))
    summary = run_stream(events / "ev", tmp_path / "mix", "generator", JOIN, mix)
    assert summary["reconciliation"]["reconciles"] and summary["counts"] == run["counts"]
    examples = sorted(read_output(tmp_path / "mix", "examples"), key=lambda e: e["seq"])
    tick = JobConfig(event_dir="", out="", artifact="").learn_tick_ms
    dim = TransformArtifact.load(tmp_path / "mix" / "transform").spec.dimension
    out = replay(Examples.from_rows(examples), Strategy("mix", online=mix), dim, JOIN.window_ms, tick)
    served = {p["event_id"]: p for p in read_output(tmp_path / "mix", "predictions")}
    job = [served[e] for e in out.event_id]
    # the replay scores every unit alike (no A/B arms): compared are the logits, and the job's
    # p where it served the hybrid (the mixture's part of the delta on top of the base)
    np.testing.assert_allclose(out.delta_logit, [p["delta_logit"] for p in job], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.base_logit, [p["base_logit"] for p in job], rtol=0, atol=1e-12)
    plain = {p["event_id"]: p for p in read_output(events / "run", "predictions")}
    hybrid = [e for e in out.event_id if served[e]["served"] == "hybrid"]
    z = np.array([served[e]["base_logit"] + served[e]["delta_logit"] for e in hybrid])
    np.testing.assert_allclose([served[e]["p"] for e in hybrid], 1 / (1 + np.exp(-z)), rtol=1e-12)
    changed = sum(not math.isclose(served[e]["p"], plain[e]["p"], abs_tol=1e-9) for e in hybrid)
    assert hybrid and changed > len(hybrid) // 2


def test_flinks_working_files_stay_in_the_run_folder_and_go_with_the_job(events, tmp_path, monkeypatch):
    """The mini-cluster's working files (TaskManager and JobManager folders, blobs) go to the run
    folder's TMP_DIR, not /tmp, and are removed when the job's process has ended."""
    import shutil

    import runners.stream as stream
    from runners.flink_job import TMP_DIR

    seen = []
    real = shutil.rmtree

    def rmtree(path, *a, **k):
        if str(path).endswith(TMP_DIR):
            seen.append(" ".join(sorted(p.name for p in Path(path).iterdir())) if Path(path).is_dir() else "")
        return real(path, *a, **k)

    monkeypatch.setattr(stream.shutil, "rmtree", rmtree)
    summary = run_stream(events / "ev", tmp_path / "run", "generator", JOIN, ONLINE)
    assert summary["reconciliation"]["reconciles"]
    assert seen and "flink-rpc-akka" in seen[-1] and "minicluster" in seen[-1], seen  # Flink worked there
    assert not (tmp_path / "run" / TMP_DIR).exists()
