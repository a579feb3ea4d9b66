"""The offline half first: a base model bootstrapped from history (Beam fit and backfill, one
real TFX retrain), then a streaming job on later traffic that serves it from its first tick."""
import json
from collections import Counter
from pathlib import Path

import pytest

from models.registry import Registry, RegistryError
from pipelines.bootstrap import bootstrap
from pipelines.join import JoinConfig
from pipelines.retrain import RetrainConfig
from pipelines.events import GENERATOR
from pipelines.sources.generator import GeneratorConfig
from runners.local import generate_event_dir, ingest_event_dir
from runners.stream import prepare_run, read_output, run_stream
from transforms.artifact import TransformArtifact

JOIN = JoinConfig(window_ms=600_000, late_horizon_ms=3_600_000, watermark_delay_ms=60_000)
HISTORY = 8_000  # of 10,000 impressions, one a second on average: ~2.2 h of history, ~33 min live


def _split(ev, cut, out):
    """One generated world cut in event time: the history (the impressions and labels before
    ``cut``) and the live stream (everything from it on: the labels of the history's last
    impressions that came after the cut too)."""
    imps = [json.loads(x) for f in sorted((ev / "impressions").glob("part-*")) for x in f.open()]
    labels = [json.loads(x) for f in sorted((ev / "labels").glob("part-*")) for x in f.open()]
    parts = {"history": [{**r, "kind": "impression"} for r in imps if r["event_time"] < cut]
                        + [{**r, "kind": "label"} for r in labels if r["label_time"] < cut],
             "live": [{**r, "kind": "impression"} for r in imps if r["event_time"] >= cut]
                     + [{**r, "kind": "label"} for r in labels if r["label_time"] >= cut]}
    for name, rows in parts.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        ingest_event_dir([str(out / f"{name}.jsonl")], GENERATOR, out / name)


@pytest.fixture(scope="module")
def boot(tmp_path_factory):
    root = tmp_path_factory.mktemp("bootstrap")
    # clicks enough for a model that beats the prior; no sudden drift
    generate_event_dir(root / "world", GeneratorConfig(events=10_000, seed=21, base_ctr=0.1, drift_points=()))
    times = sorted(json.loads(x)["event_time"] for f in (root / "world" / "impressions").glob("part-*") for x in f.open())
    _split(root / "world", times[HISTORY], root)
    outcome = bootstrap(root / "history", root / "boot", JOIN, RetrainConfig(train_hours=1.5, eval_hours=0.5))
    return root, outcome


def test_the_bootstrapped_model_serves_from_the_streams_first_tick(boot):
    root, outcome = boot
    assert outcome["pushed"] and outcome["status"] == "ok", outcome
    art = TransformArtifact.load(root / "boot" / "transform")
    manifest = Registry(root / "boot" / "registry").verify("base", outcome["version"]).manifest
    assert manifest["artifact_version"] == art.version == outcome["artifact_version"]
    lo, hi = art.event_time_range  # fitted on the whole history (Beam), not a warm-up slice
    first = [json.loads(x)["event_time"] for x in (root / "history" / "impressions").glob("part-*").__next__().open()]
    assert lo == min(first) and hi == max(first)
    # a job that retrains itself (no boundary within this stream) starts from it
    s = run_stream(root / "live", root / "run", "generator", JOIN, artifact=root / "boot" / "transform",
                   base_registry=root / "boot" / "registry", retrain_every_ms=6 * 3_600_000,
                   replay_buffer_ms=6 * 3_600_000, feature_drift={"window": 500, "step": 100},
                   retrain={"train_hours": 1.5, "eval_hours": 0.5})
    assert s["reconciliation"]["reconciles"]
    start = s["swaps"][0]
    assert start["outcome"] == "live" and start["mode"] == "start" and start["version"] == outcome["version"]
    preds = read_output(root / "run", "predictions")
    assert s["base_versions"] == {outcome["version"]: len(preds)}  # every impression, the first included
    assert len({p["base_logit"] for p in preds}) > 100 and s["progressive"]["base_only_auc"] > 0.6
    # drift is judged against the model's own training span from the start
    lines = [m["feature_drift"] for m in read_output(root / "run", "metrics") if m["feature_drift"]["features"]]
    assert lines and {f["reference"] for f in lines} == {f"base {outcome['version']}"}
    seeded = Registry(root / "run" / "registry").verify("base", outcome["version"]).manifest
    assert seeded["seeded_from"] == str((root / "boot" / "registry").resolve())
    # the history's examples are the run's first segment: its scheduled retrains train on them too
    import pyarrow.parquet as pq

    (segment,) = (root / "run" / "retrain" / "segments").glob("*.parquet")
    assert segment.name == "0000000000000-history.parquet" and pq.read_table(segment).num_rows == outcome["examples"]


def test_a_model_of_other_features_is_refused_before_the_job_starts(boot, tmp_path):
    root, outcome = boot
    # the live stream's own warm-up artifact: the same spec, other statistics
    with pytest.raises(RegistryError, match="transform artifact"):
        prepare_run(root / "live", tmp_path / "run", "generator", JOIN, base_registry=root / "boot" / "registry")
    with pytest.raises(FileExistsError, match="use a new folder"):  # not over an earlier bootstrap
        bootstrap(root / "history", root / "boot", JOIN)
    with pytest.raises(RegistryError, match="no current base"):
        prepare_run(root / "live", tmp_path / "run", "generator", JOIN, artifact=root / "boot" / "transform",
                    base_registry=tmp_path / "empty")


def _inputs(example: dict) -> dict:
    return json.loads(example["inputs"]) if isinstance(example["inputs"], str) else example["inputs"]


def test_the_history_warms_the_windowed_counts_up(boot, tmp_path):
    """Without a warm-up the stream's first hour of ``user_count_1h`` is counted from empty: the
    history's users are new to it, and the features differ from the ones the bootstrap's model
    was trained on (the backfill counts over the history). With the history as warm-up, every
    live impression's count is the one over history and stream together (the reference
    semantics, ``transforms.aggregates``), and nothing of the history is served. The dedup is
    warmed up too: a stream impression that repeats a history one is a duplicate. And the join:
    the history's impressions still in their attribution window at its cut are joined with
    their labels from the stream (without a warm-up those labels are unknown impressions):
    bootstrap and warmed-up stream together give the join of the whole log streamed."""
    import numpy as np

    from transforms.aggregates import window_counts

    root, _ = boot
    # the live stream, and in it an impression that repeats the history's last one (re-sent)
    read = lambda folder, stream: [json.loads(x) for f in sorted((folder / stream).glob("part-*")) for x in f.open()]  # noqa: E731
    history, live = read(root / "history", "impressions"), read(root / "live", "impressions")
    planted = {**max(history, key=lambda r: r["event_time"]), "event_time": min(r["event_time"] for r in live)}
    (tmp_path / "live.jsonl").write_text("".join(json.dumps({**r, "kind": k}) + "\n" for k, rs in (
        ("impression", [planted, *live]), ("label", read(root / "live", "labels"))) for r in rs))
    ingest_event_dir([str(tmp_path / "live.jsonl")], GENERATOR, tmp_path / "live")
    rows = [("history", r) for r in history] + [("live", r) for r in read(tmp_path / "live", "impressions")]
    # every impression row counts, a duplicate too (the counts come before the dedup)
    both = window_counts([[r["user_id"] for _, r in rows]], np.array([r["event_time"] for _, r in rows]), 3_600_000)
    live = [r for folder, r in rows if folder == "live"]
    cold = window_counts([[r["user_id"] for r in live]], np.array([r["event_time"] for r in live]), 3_600_000)
    first: dict = {}  # an impression's first occurrence: the one served and joined
    for (folder, r), n, m in zip(rows, both, [None] * (len(rows) - len(live)) + list(cold)):
        if folder == "live":
            first.setdefault(r["event_id"], (int(n), int(m)))
    both, cold = {i: n for i, (n, _) in first.items()}, {i: m for i, (_, m) in first.items()}
    live_ids = set(first)
    history_ids = {r["event_id"] for r in history}
    # the live stream's own artifact (fitted on its first impressions): the feature-drift reference
    # then starts with the stream, a window after the history's first impression, before the stream's
    runs = {}
    for name, warmup in (("warm", root / "history"), ("cold", None)):
        artifact = None if name == "warm" else tmp_path / "warm" / "transform"
        s = run_stream(tmp_path / "live", tmp_path / name, "generator", JOIN, artifact=artifact, warmup=warmup,
                       feature_drift={"window": 500, "step": 100, "min_reference": 100})
        # with the warm-up the dedup remembers the history's ids: the re-sent impression is a
        # duplicate (as in the whole log streamed); without, it is served as new
        dups = [d for d in read_output(tmp_path / name, "dead_letter") if d["reason"] == "duplicate_event_id"]
        repeated = [d for d in dups if planted["event_id"] in d["raw"]]
        assert s["reconciliation"]["reconciles"] and len(repeated) == (name == "warm")
        assert s["counts"]["predictions"] == len(live_ids) - (name == "warm")
        assert (s["warmup"] or {}).get("dir") == (str(warmup.resolve()) if warmup else None)
        examples = read_output(tmp_path / name, "examples")
        # the history's impressions still pending at its cut are joined (their labels came in the
        # stream) and learned with the warm-up only; nothing else of the history
        carried = {e["event_id"] for e in examples} - {p["event_id"] for p in read_output(tmp_path / name, "predictions")}
        assert len(examples) > 1_000 and carried <= history_ids and (len(carried) > 10) == (name == "warm")
        assert s["counts"]["warmup_examples"] == len(carried)
        metrics = [m["feature_drift"] for m in read_output(tmp_path / name, "metrics")]
        deferred = {f for m in metrics for f in m.get("deferred", [])}
        judged = {f for m in metrics for f in m["features"] if f not in m.get("deferred", [])}
        runs[name] = ({e["event_id"]: _inputs(e)["user_count_1h"] for e in examples if e["event_id"] not in carried},
                      deferred, judged)
    job = json.loads((tmp_path / "warm" / "job.json").read_text())
    assert job["warmup_dir"] == str((root / "history").resolve())
    assert not json.loads((tmp_path / "cold" / "job.json").read_text())["warmup_dir"]
    (warm, warm_deferred, warm_judged), (cold_got, cold_deferred, _) = runs["warm"], runs["cold"]
    assert all(warm[i] == both[i] for i in warm) and all(cold_got[i] == cold[i] for i in cold_got)
    assert sum(warm[i] != cold[i] for i in warm) > 100  # the warm-up made a difference
    # drift: judged from the start with the warm-up; deferred (counts filling) without it
    assert "user_count_1h" in cold_deferred and "user_count_1h" not in warm_deferred
    assert "user_count_1h" in warm_judged
    print(f"warm-up: {len(warm)} examples, {sum(warm[i] != cold[i] for i in warm)} counts differ from the cold ones")
    _assert_the_whole_log(root, boot[1], tmp_path)
    # a warm-up that overlaps the stream would count impressions twice: refused
    with pytest.raises(ValueError, match="before the stream"):
        prepare_run(root / "history", tmp_path / "bad", "generator", JOIN, artifact=root / "boot" / "transform",
                    warmup=root / "live")


def _outcomes(run: Path) -> tuple[dict, dict, Counter]:
    """A run's join outcomes: its examples (what decided them, and their inputs), its late labels
    and the dead letters of labels without their impression (reason, label time)."""
    examples = {(e["event_id"], e["kind"]): (e["label"], e["resolution_time"], e["label_time"], _inputs(e))
                for e in read_output(run, "examples")}
    late = {r["event_id"]: (r["label_time"], r["label"]) for r in read_output(run, "late_labels")}
    dead = Counter((d["reason"], json.loads(d["raw"])["label_time"]) for d in read_output(run, "dead_letter")
                   if d["reason"] in ("unknown_impression", "label_before_impression"))
    return examples, late, dead


def _assert_the_whole_log(root: Path, outcome: dict, tmp_path: Path) -> None:
    """The whole log (history and the stream of ``tmp_path/live``) streamed at once: its join
    outcomes resolved before the history's cut are the bootstrap's examples, the rest the ones
    the warmed-up run (``tmp_path/warm``) gave."""
    cut = outcome["cut_ms"]
    ingest_event_dir([str(root / "history.jsonl"), str(tmp_path / "live.jsonl")], GENERATOR, tmp_path / "whole_log")
    s = run_stream(tmp_path / "whole_log", tmp_path / "whole", "generator", JOIN, artifact=root / "boot" / "transform")
    assert s["reconciliation"]["reconciles"]
    whole, whole_late, whole_dead = _outcomes(tmp_path / "whole")
    warm, warm_late, warm_dead = _outcomes(tmp_path / "warm")
    assert warm == {k: v for k, v in whole.items() if v[1] >= cut}
    assert warm_late == {i: v for i, v in whole_late.items() if v[0] >= cut}
    assert warm_dead == Counter({k: n for k, n in whole_dead.items() if k[1] >= cut})
    history_ids = {json.loads(x)["event_id"] for x in (root / "history.jsonl").open()}
    across = [k for k, v in warm.items() if k[0] in history_ids and v[0] == 1]
    assert across  # positives of history impressions, labelled after the cut
    # the bootstrap trained on the rest (its segment: examples resolved before the cut)
    boot = {(e["event_id"], e["kind"]): (e["label"], e["resolution_time"], e["label_time"], _inputs(e))
            for e in map(json.loads, (root / "boot" / "backfill" / "examples.jsonl").open()) if e["resolution_time"] < cut}
    assert boot == {k: v for k, v in whole.items() if v[1] < cut}
    print(f"cut {cut}: {len(warm)} examples after it ({len(across)} positives of history impressions), "
          f"{len(boot)} before it")


def test_a_warm_up_under_the_correction_policy_gives_the_whole_logs_corrections(boot, tmp_path):
    """Under ``late_policy="correction"`` a label after its window becomes a correction example
    (resolved at its label time) of an impression already learned as a negative. A history
    impression learned as a negative before the cut and labelled late after it: the warmed-up
    stream must emit its correction, as the whole log streamed does; nothing resolved before the
    cut is emitted twice."""
    from dataclasses import replace

    root, outcome = boot
    cut = outcome["cut_ms"]
    join = replace(JOIN, late_policy="correction")
    ingest_event_dir([str(root / "history.jsonl"), str(root / "live.jsonl")], GENERATOR, tmp_path / "whole_log")
    runs = {}
    for name, events, warmup in (("warm", root / "live", root / "history"), ("whole", tmp_path / "whole_log", None)):
        s = run_stream(events, tmp_path / name, "generator", join, artifact=root / "boot" / "transform", warmup=warmup)
        assert s["reconciliation"]["reconciles"]
        runs[name] = _outcomes(tmp_path / name)
    (warm, warm_late, warm_dead), (whole, whole_late, whole_dead) = runs["warm"], runs["whole"]
    assert warm == {k: v for k, v in whole.items() if v[1] >= cut}
    assert warm_late == {i: v for i, v in whole_late.items() if v[0] >= cut}
    # every late label is also a correction example now
    assert {(i, "correction") for i in whole_late} <= set(whole) and {(i, "correction") for i in warm_late} <= set(warm)
    assert warm_dead == Counter({k: n for k, n in whole_dead.items() if k[1] >= cut})
    # corrections in the stream of negatives the bootstrap's segment learned (resolved before the cut)
    across = [k for k in warm if k[1] == "correction" and whole.get((k[0], "expired"), (0, cut))[1] < cut]
    assert across and all((k[0], "expired") not in warm for k in across)
    print(f"correction policy, cut {cut}: {len(warm)} outcomes after it, {len(across)} corrections of history impressions")
