"""TFX retrains and hot swaps with real parts: a Flink mini-cluster job with scheduled retrains
(each one a TFX LocalDagRunner run with a sqlite ML Metadata store, started by the job itself)
swaps the pushed base model in at its recorded event time; then direct retrains on the same run
folder: a deliberately worse candidate, and a span that fails validation."""
import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest

from models.hotswap import Schedule, load_base
from models.online import OnlineConfig
from models.registry import Registry, RegistryError
from pipelines.join import JoinConfig
from pipelines.sources.generator import GeneratorConfig
from runners.local import generate_event_dir
from runners.stream import read_output, run_stream

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

HOUR = 3_600_000
JOIN = JoinConfig(window_ms=600_000, late_horizon_ms=HOUR, watermark_delay_ms=60_000)
SCHEDULE = Schedule(every_ms=HOUR, swap_delay_ms=900_000)
# 5,400 impressions at one per second: 1.5 h of event time from midnight; one boundary (01:00),
# its model live at the first tick from 01:15, with 15 minutes of impressions still to serve
EVENTS = 5_400
RETRAIN = {"train_hours": 24.0, "eval_hours": 0.25, "epochs": 2, "min_examples": 200}
DRIFT = {"window": 300, "step": 100, "min_reference": 300}  # comparisons in the 15 min after the swap


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    generate_event_dir(root / "ev", GeneratorConfig(events=EVENTS, seed=21))
    summary = run_stream(root / "ev", root / "run", "generator", JOIN, OnlineConfig(), retrain=RETRAIN,
                         retrain_every_ms=SCHEDULE.every_ms, swap_delay_ms=SCHEDULE.swap_delay_ms,
                         replay_buffer_ms=3 * HOUR, feature_drift=DRIFT)
    return root / "run", summary


def _fingerprint(run_dir):
    from transforms.artifact import TransformArtifact

    return TransformArtifact.load(run_dir / "transform").spec.fingerprint()


def test_scheduled_retrain_leaves_a_pushed_blessed_model(run):
    run_dir, summary = run
    (o,) = summary["retrains"]
    assert o["status"] == "ok" and o["blessed"] and o["pushed"], o
    start = min(p["event_time"] for p in read_output(run_dir, "predictions"))
    assert o["cutoff"] == SCHEDULE.first_boundary(start)
    ref = Registry(run_dir / "registry").verify("base", o["version"], fingerprint=_fingerprint(run_dir))
    m = ref.manifest
    assert m["blessing"]["blessed"] and m["blessing"]["infra"]["blessed"]
    assert m["cutoff"] == o["cutoff"] and m["train_end"] == o["cutoff"] - JOIN.window_ms - HOUR // 4
    assert m["metrics"]["auc"] > 0.5 and m["parent"] is None  # the first one: the prior was champion
    assert (ref.path / "saved_model.pb").is_file() and (ref.path / "assets.extra" / "base_model.npz").is_file()
    # every component ran, recorded in the sqlite ML Metadata store
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = str(run_dir / "retrain" / "metadata.sqlite")
    store = metadata_store.MetadataStore(cfg)
    done = {c.name.split(".")[-1] for c in store.get_contexts_by_type("node")}
    assert {"FileBasedExampleGen", "StatisticsGen", "ImportSchemaGen", "ValidateSpan", "Transform", "Trainer",
            "InfraCheck", "EvaluateCandidate", "RegistryPush"} <= done, done
    complete = [e for e in store.get_executions()
                if e.last_known_state == metadata_store_pb2.Execution.COMPLETE]
    assert len(complete) >= 9


def test_examples_carry_their_learning_order(run):
    """TFX may reorder examples (ExampleGen reshuffles before writing); each one carries its
    place in the staged split (``span_row``), from which the Trainer restores the order."""
    import glob

    import pyarrow.parquet as pq
    import tensorflow as tf

    run_dir, summary = run
    cutoff = summary["retrains"][0]["cutoff"]
    for split in ("train", "eval"):
        staged = pq.read_table(run_dir / "retrain" / "spans" / str(cutoff) / split / "data.parquet",
                               columns=["event_id"])["event_id"].to_pylist()
        first = min((run_dir / "retrain" / "tfx" / "FileBasedExampleGen" / "examples").iterdir(),
                    key=lambda p: int(p.name))  # the job's own retrain
        files = sorted(glob.glob(str(first / f"Split-{split}" / "*")))
        written = {}
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            f = tf.train.Example.FromString(r.numpy()).features.feature
            written[f["span_row"].int64_list.value[0]] = f["event_id"].bytes_list.value[0].decode()
        assert staged and [written[i] for i in range(len(staged))] == staged and len(written) == len(staged)


def test_a_correction_known_before_the_cutoff_replaces_the_negative_it_fixes(run, tmp_path):
    """Offline the final label is known: a late label's correction resolved before the cutoff
    is trained on instead of the negative it corrects (once); one after the cutoff is not."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.retrain import SEGMENTS, RetrainConfig, stage_span

    run_dir, _ = run
    table = pa.concat_tables([pq.read_table(f) for f in sorted((run_dir / SEGMENTS).glob("*.parquet"))])
    rows = table.to_pylist()
    neg = next(r for r in rows if r["kind"] == "expired")
    fix = {**neg, "kind": "correction", "label": 1, "resolution_time": neg["resolution_time"] + 5_000,
           "label_time": neg["resolution_time"] + 5_000}
    (tmp_path / SEGMENTS).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows + [fix], schema=table.schema), tmp_path / SEGMENTS / "s.parquet")
    cfg = RetrainConfig(train_hours=10_000, eval_hours=0)
    for cutoff, expect in ((fix["resolution_time"] + 1, [("correction", 1)]),
                           (fix["resolution_time"], [("expired", 0)])):
        span = stage_span(tmp_path, cutoff, cfg, window_ms=0, source="segments")
        staged = pq.read_table(span.dir / "train" / "data.parquet").to_pylist()
        mine = [(r.get("kind", "?"), r["label"]) for r in staged if r["event_id"] == neg["event_id"]]
        assert len(mine) == 1 and mine[0][1] == expect[0][1]
        assert len(staged) == sum(1 for r in rows if r["resolution_time"] < cutoff)


def test_hot_swap_takes_effect_at_the_recorded_event_time(run):
    run_dir, summary = run
    (swap,) = [s for s in summary["swaps"] if s["outcome"] == "live"]
    version = summary["retrains"][0]["version"]
    assert swap["version"] == version and swap["mode"] == "scheduled"
    live_at = swap["live_at"]
    assert SCHEDULE.live_at(summary["retrains"][0]["cutoff"]) <= live_at < \
        SCHEDULE.live_at(summary["retrains"][0]["cutoff"]) + 60_000  # the first tick from then
    preds = sorted(read_output(run_dir, "predictions"), key=lambda p: p["event_time"])
    versions = [p["base_version"] for p in preds]
    switch = versions.index(version)
    # one switch, at the tick boundary: the prior before, the new base model from then on
    assert set(versions[:switch]) == {"prior"} and set(versions[switch:]) == {version}
    assert live_at - 60_000 <= preds[switch]["event_time"] <= live_at
    # nothing dropped or counted twice: counts reconcile, every update has its own sequence number
    assert summary["reconciliation"]["reconciles"], summary["reconciliation"]
    dup = summary["counts"]["dead_letter"].get("duplicate_event_id", 0)
    assert summary["counts"]["predictions"] == summary["reconciliation"]["impressions_in"] - dup == EVENTS
    seqs = sorted(u["seq"] for u in read_output(run_dir, "updates"))
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) == summary["counts"]["examples"]
    # the rebase re-learned exactly the examples learned before the swap that the new base did
    # not train on (event time from its train_end on)
    examples = read_output(run_dir, "examples")
    after = [e for e in examples if e["event_time"] >= swap["train_end"] and e["seq"] <= swap["delta_version"]]
    assert max(e["resolution_time"] for e in after) < live_at
    assert swap["buffer_complete"] and swap["relearned"] == len(after) > 0
    # served logits: the base part is the pushed model on the served features
    model, _ = load_base(run_dir / "registry", version, _fingerprint(run_dir), _spec_dim(run_dir))
    feats = {e["event_id"]: json.loads(e["features"]) for e in examples if e["kind"] != "correction"}
    sample = [p for p in preds[switch:switch + 50] if p["event_id"] in feats]
    idx = np.array([feats[p["event_id"]]["indices"] for p in sample])
    val = np.array([feats[p["event_id"]]["values"] for p in sample], np.float32)
    np.testing.assert_allclose([p["base_logit"] for p in sample], model.logits(idx, val), rtol=1e-9, atol=1e-9)


def test_the_pushed_model_carries_its_training_features_and_the_job_compares_with_them(run):
    """The manifest's feature reference is the served features of the train span's impressions
    (recomputed here from the job's examples), and from the swap on the job's feature-drift
    monitor compares with it instead of the artifact's span."""
    from models.feature_drift import reference_counts
    from transforms.artifact import TransformArtifact

    run_dir, summary = run
    (o,) = summary["retrains"]
    manifest = Registry(run_dir / "registry").verify("base", o["version"]).manifest
    ref = manifest["feature_reference"]
    lo, hi = ref["train_range"]
    assert [lo, hi] == manifest["train_range"] and hi == manifest["train_end"]
    feats = {e["event_id"]: json.loads(e["features"]) for e in read_output(run_dir, "examples")
             if lo <= e["event_time"] < hi and e["resolution_time"] < o["cutoff"]}
    names = [n for n, _ in TransformArtifact.load(run_dir / "transform").spec.sparse_features()]
    want = reference_counts(np.array([f["indices"] for f in feats.values()]),
                            np.array([f["values"] for f in feats.values()], np.float64), names)
    assert ref["n"] == want["n"] == o["counts"]["train"]["examples"] and ref["features"] == want["features"]
    (swap,) = [s for s in summary["swaps"] if s["outcome"] == "live"]
    assert swap["feature_reference"] == ref["n"]
    lines = sorted((m for m in read_output(run_dir, "metrics") if m["tick"] is not None), key=lambda m: m["tick"])
    before = [m["feature_drift"]["reference"] for m in lines if m["tick"] < swap["live_at"]]
    after = [m["feature_drift"] for m in lines if m["tick"] >= swap["live_at"]]
    assert set(before) == {"artifact"} and after
    assert all(m["reference"] == f"base {o['version']}" and m["reference_n"] == ref["n"] for m in after)
    assert after[-1]["features"] and "site" in after[-1]["features"]  # compared after the swap


def test_the_replay_serves_what_the_job_served_across_a_swap(run):
    """The evaluation's replay (pipelines.progressive) on the job's own examples, with the job's
    swap (its model, live tick, train_end): the rebase and the hold after it included, every
    impression gets the job's base and delta logits and delta version."""
    from pipelines.progressive import BaseSwap, Examples, Strategy, replay
    from runners.flink_job import JobConfig

    run_dir, summary = run
    (swap,) = [s for s in summary["swaps"] if s["outcome"] == "live"]
    model, _ = load_base(run_dir / "registry", swap["version"], _fingerprint(run_dir), _spec_dim(run_dir))
    examples = sorted(read_output(run_dir, "examples"), key=lambda e: e["seq"])
    tick = JobConfig(event_dir="", out="", artifact="").learn_tick_ms
    strategy = Strategy("hybrid", swaps=(BaseSwap(swap["live_at"], swap["version"], model, swap["train_end"]),),
                        online=OnlineConfig())
    out = replay(Examples.from_rows(examples), strategy, _spec_dim(run_dir), JOIN.window_ms, tick)
    served = {p["event_id"]: p for p in read_output(run_dir, "predictions")}
    job = [served[e] for e in out.event_id]
    assert len(job) == len(served) and {p["base_version"] for p in job} == {"prior", swap["version"]}
    np.testing.assert_array_equal(out.delta_version, [p["delta_version"] for p in job])
    np.testing.assert_allclose(out.base_logit, [p["base_logit"] for p in job], rtol=0, atol=1e-9)
    np.testing.assert_allclose(out.delta_logit, [p["delta_logit"] for p in job], rtol=0, atol=1e-9)


def _spec_dim(run_dir):
    from transforms.artifact import TransformArtifact

    return TransformArtifact.load(run_dir / "transform").spec.dimension


def test_savedmodel_transform_equals_the_streaming_features(run):
    """Skew check: the transform graph inside the pushed SavedModel, fed raw tf.Examples, gives
    the features the streaming job served (numpy path), and its logits the streaming scorer's."""
    import pyarrow.parquet as pq
    import tensorflow as tf

    from pipelines.parquet_example_gen import table_to_examples

    run_dir, summary = run
    version = summary["retrains"][0]["version"]
    ref = Registry(run_dir / "registry").verify("base", version)
    span = pq.read_table(run_dir / "retrain" / "spans" / str(ref.manifest["cutoff"]) / "eval" / "data.parquet")
    rows = span.slice(0, 300).to_pylist()
    loaded = tf.saved_model.load(str(ref.path))
    batch = tf.constant(table_to_examples(span.slice(0, 300)))
    t = loaded.signatures["transform_features"](examples=batch)
    np.testing.assert_array_equal(t["ftrl_indices"].numpy(), np.array([r["feature_indices"] for r in rows]))
    np.testing.assert_allclose(t["ftrl_values"].numpy(), np.array([r["feature_values"] for r in rows]),
                               rtol=0, atol=1e-6)
    model, _ = load_base(run_dir / "registry", version, _fingerprint(run_dir), _spec_dim(run_dir))
    served = loaded.signatures["serving_default"](examples=batch)["logit"].numpy()
    np.testing.assert_allclose(served, model.logits(np.array([r["feature_indices"] for r in rows]),
                                                    np.array([r["feature_values"] for r in rows], np.float32)),
                               rtol=0, atol=1e-4)


def _ephemeral_packages() -> set[str]:
    """TFX's repackaged installs (``tfx.utils.dependency_utils.build_ephemeral_package``)."""
    import glob
    import tempfile

    return set(glob.glob(os.path.join(tempfile.gettempdir(), "tmp*", "build", "tfx")))


def test_worse_candidate_is_not_blessed_and_not_pushed(run):
    from pipelines.retrain import retrain, run_config

    run_dir, summary = run
    reg = Registry(run_dir / "registry")
    before, current = reg.versions("base"), reg.current("base")
    cutoff = summary["retrains"][0]["cutoff"]
    # no learning and no warm start: the candidate is the constant span rate, worse than the champion
    cfg = replace(run_config(run_dir), learning_rate=1e-12, warm_start=False)
    packaged = _ephemeral_packages()
    o = retrain(run_dir, cutoff, cfg, source="segments")
    assert o["status"] == "ok" and o["infra"]["blessed"], o
    # TFX did not repackage itself for remote Beam workers (pipelines.retrain.beam_args): before,
    # three 49-MB copies per retrain were left in the temp folder
    assert _ephemeral_packages() <= packaged
    assert not o["evaluation"]["blessed"] and o["evaluation"]["reasons"] and not o["pushed"]
    assert o["champion"] == current
    assert reg.versions("base") == before and reg.current("base") == current


def test_drift_as_a_warning_is_reported_and_does_not_block(run):
    """drift_action="warn" (what the evaluation uses): drift against the previous span is
    listed per feature in the outcome, and the retrain goes on; without it the span fails."""
    from pipelines.retrain import retrain, run_config

    run_dir, summary = run
    cutoff = summary["retrains"][0]["cutoff"] - 600_000  # another span: 10 minutes fewer examples
    state = run_dir / "retrain" / "state.json"  # the previous span: the job's first retrain
    first_stats = run_dir / "retrain" / "stats" / f"{summary['retrains'][0]['cutoff']}.pb"
    assert first_stats.exists()
    state.write_text(json.dumps({**json.loads(state.read_text()), "previous_train_stats": str(first_stats)}))
    # never blessed (nothing pushed: the module's later tests keep the job's champion)
    cfg = replace(run_config(run_dir), drift_jsd=1e-9, drift_linf=1e-9, drift_action="warn", max_logloss_ratio=0.0)
    o = retrain(run_dir, cutoff, cfg, source="segments")
    assert o["status"] == "ok" and o["infra"]["blessed"], o
    v = o["validation"]
    assert v["drift_checked_against"] and v["drift_warnings"] and not v["anomalies"], v
    assert all(k.startswith("train:") for k in v["drift_warnings"])


def test_span_failing_validation_is_refused_with_a_report(run):
    from pipelines.retrain import retrain, run_config

    run_dir, summary = run
    before = Registry(run_dir / "registry").versions("base")
    # the same span again: no drift from itself, but train vs eval can never be this close
    cfg = replace(run_config(run_dir), skew_linf=1e-9)
    o = retrain(run_dir, summary["retrains"][0]["cutoff"], cfg, source="segments")
    assert o["status"] == "failed" and "data validation failed" in o["reason"], o
    assert o["validation"]["anomalies"] and not o["pushed"]
    assert any("Linfty distance between training and serving" in v for v in o["validation"]["anomalies"].values())
    assert Registry(run_dir / "registry").versions("base") == before


def test_a_trained_champion_stays_on_an_eval_slice_with_too_few_positives(run):
    """``min_eval_positives``: with a TFX model as the champion, a span whose eval slice has fewer
    positives is not trained on (the gate could not tell the two apart); nothing is pushed."""
    from pipelines.retrain import retrain, run_config

    run_dir, summary = run
    before = Registry(run_dir / "registry").versions("base")
    first = summary["retrains"][0]
    o = retrain(run_dir, first["cutoff"], replace(run_config(run_dir), min_eval_positives=10**6), source="segments")
    assert o["status"] == "skipped" and "min_eval_positives" in o["reason"] and not o["pushed"], o
    assert 0 < o["counts"]["eval"]["positives"] < 10**6 and o["champion"] is not None
    assert Registry(run_dir / "registry").versions("base") == before


def test_corrupted_or_foreign_model_is_refused(run, tmp_path):
    run_dir, summary = run
    version = summary["retrains"][0]["version"]
    reg_copy = tmp_path / "registry"
    shutil.copytree(run_dir / "registry", reg_copy)
    fp, dim = _fingerprint(run_dir), _spec_dim(run_dir)
    load_base(reg_copy, version, fp, dim)  # intact: loads
    with pytest.raises(RegistryError, match="fingerprint"):
        load_base(reg_copy, version, "another-spec", dim)
    from transforms.artifact import TransformArtifact

    served = TransformArtifact.load(json.loads((run_dir / "job.json").read_text())["artifact"]).version
    load_base(reg_copy, version, fp, dim, served)  # trained on the features the job serves
    with pytest.raises(RegistryError, match="transform artifact"):  # the same spec, other statistics
        load_base(reg_copy, version, fp, dim, "another-artifact")
    npz = reg_copy / "base" / version / "assets.extra" / "base_model.npz"
    npz.write_bytes(npz.read_bytes()[:-7] + b"garbage")
    with pytest.raises(RegistryError, match="corrupted"):
        load_base(reg_copy, version, fp, dim)
    with pytest.raises(RegistryError):
        Registry(reg_copy).promote("base", version, fingerprint=fp)


def test_drift_alert_starts_a_retrain_whose_outcome_is_applied_at_its_live_time(tmp_path):
    """A drift alert (the online window's normalized entropy rising above its best) starts a
    retrain at that tick, through the same path as a scheduled one; here the span is too small
    to train on, so the outcome is "skipped" and the champion is kept at the live time."""
    generate_event_dir(tmp_path / "ev", GeneratorConfig(events=6_000, seed=7))
    summary = run_stream(tmp_path / "ev", tmp_path / "run", "generator", JOIN, OnlineConfig(),
                         retrain={"min_examples": 10**9}, metrics_window=1_000, drift_retrain_ratio=1.1,
                         drift_min_examples=1_000, drift_cooldown_ms=HOUR, swap_delay_ms=600_000,
                         replay_buffer_ms=2 * HOUR)
    alerts = [s for s in summary["swaps"] if s["outcome"] == "drift_alert"]
    assert alerts, summary["swaps"]
    outcomes = {r["cutoff"]: r for r in summary["retrains"]}
    for a in alerts:
        assert a["window_ne"] > 1.1 * a["best_ne"] and outcomes[a["cutoff"]]["status"] == "skipped"
        (after,) = [s for s in summary["swaps"] if s["outcome"] in ("kept", "after_end") and s["cutoff"] == a["cutoff"]]
        assert after["outcome"] == "after_end" or a["cutoff"] + 600_000 <= after["live_at"] < a["cutoff"] + 660_000
    assert len({a["cutoff"] for a in alerts}) == len(alerts)
    assert all(b["cutoff"] - a["cutoff"] >= HOUR for a, b in zip(alerts, alerts[1:]))  # the cooldown
    assert set(summary["base_versions"]) == {"prior"} and summary["reconciliation"]["reconciles"]


def test_watched_registry_version_goes_live_at_the_next_tick(tmp_path):
    """Without a schedule the job follows the registry: a version promoted there (here before
    the job starts) is verified and served from the next tick, and the swap is logged."""
    from models.base import BaseModel
    from pipelines.eventlog import read_manifest
    from runners.stream import prepare_run, run_job, summarize
    from transforms.artifact import TransformArtifact

    generate_event_dir(tmp_path / "ev", GeneratorConfig(events=1_500, seed=3))
    cfg = prepare_run(tmp_path / "ev", tmp_path / "run", "generator", JOIN, OnlineConfig())
    spec = TransformArtifact.load(cfg.artifact).spec
    reg = Registry(tmp_path / "run" / "registry")
    ref = reg.publish("base", {"assets.extra/base_model.npz": BaseModel.zeros(spec.dimension, bias=-3.0).to_bytes()},
                      {"spec_fingerprint": spec.fingerprint(), "train_end": 0})
    reg.promote("base", ref.version, fingerprint=spec.fingerprint())
    summary = summarize(tmp_path / "run", read_manifest(tmp_path / "ev"), run_job(cfg, tmp_path / "run"))
    (swap,) = summary["swaps"]
    assert swap["outcome"] == "live" and swap["mode"] == "watched" and swap["version"] == ref.version
    assert swap["previous"] == "prior" and swap["relearned"] == 0  # the first tick: nothing learned yet
    preds = read_output(tmp_path / "run", "predictions")
    assert summary["base_versions"] == {ref.version: len(preds)}
    assert {p["base_logit"] for p in preds} == {-3.0}
    assert summary["reconciliation"]["reconciles"]


def test_same_span_gives_the_same_model_on_beam_dag_runner(run):
    """Determinism across runners: the job's first retrain (cold, LocalDagRunner) again, cold,
    on BeamDagRunner: bit-identical base weights, hence identical eval metrics."""
    from pipelines.retrain import retrain, run_config

    run_dir, summary = run
    first = Registry(run_dir / "registry").verify("base", summary["retrains"][0]["version"])
    o = retrain(run_dir, summary["retrains"][0]["cutoff"], replace(run_config(run_dir), warm_start=False,
                                                                   runner="beam"), source="segments")
    assert o["status"] == "ok" and o["pushed"], o
    again = Registry(run_dir / "registry").verify("base", o["version"])
    assert (again.path / "assets.extra" / "base_model.npz").read_bytes() == \
        (first.path / "assets.extra" / "base_model.npz").read_bytes()
    # scored on ExampleGen's (reshuffled) examples: equal up to summation order
    flat = lambda m: {k: v for k, v in m.items() if not isinstance(v, list)}  # noqa: E731
    assert flat(o["evaluation"]["candidate"]) == pytest.approx(flat(first.manifest["metrics"]), rel=1e-9)
    assert o["evaluation"]["candidate"]["calibration_ci95"] == pytest.approx(first.manifest["metrics"]["calibration_ci95"],
                                                                             rel=1e-9)
