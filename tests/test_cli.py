"""The command line: every subcommand has --help; the main job and loaders run end to end."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from runners.cli import app

runner = CliRunner()
SUBCOMMANDS = ["run", "generate", "load", "ingest", "summary", "sources", "ab"]


def test_help_lists_subcommands():
    # the installed console script, as a user runs it
    out = subprocess.run([sys.executable, "-m", "runners.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in SUBCOMMANDS:
        assert cmd in out


@pytest.mark.parametrize("cmd", SUBCOMMANDS + ["transforms", "transforms show", "transforms fit",
                                               "transforms backfill", "cluster", "cluster up", "cluster down",
                                               "cluster status", "cluster lib", "submit", "savepoint", "cancel",
                                               "export-examples", "backfill", "models", "models list", "models show",
                                               "models promote", "models rollback", "operators", "bootstrap"])
def test_every_subcommand_has_help(cmd):
    r = runner.invoke(app, [*cmd.split(), "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


def test_transforms_fit_show_backfill(tmp_path):
    r = runner.invoke(app, ["generate", "--out", str(tmp_path / "ev"), "--events", "1500"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["transforms", "fit", "generator", str(tmp_path / "ev"), "--out", str(tmp_path / "art")])
    assert r.exit_code == 0, r.output
    art = json.loads((tmp_path / "art" / "transform_artifact.json").read_text())
    assert art["rows"] >= 1500 and art["version"] in r.output
    r = runner.invoke(app, ["transforms", "show", "generator", "--artifact", str(tmp_path / "art")])
    assert r.exit_code == 0 and art["version"] in r.output and art["spec_fingerprint"] in r.output
    # an artifact fitted for another spec is refused
    r = runner.invoke(app, ["transforms", "show", "talkingdata", "--artifact", str(tmp_path / "art")])
    assert r.exit_code == 2 and "fitted for spec" in r.output
    r = runner.invoke(app, ["transforms", "backfill", "generator", str(tmp_path / "ev"),
                            "--out", str(tmp_path / "agg.jsonl")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "agg.jsonl").read_text().splitlines()]
    counts = [row["user_count_1h"] for row in rows]
    assert len(rows) == art["rows"] and min(counts) == 0 and max(counts) > 0


def test_transforms_unknown_spec_is_a_clear_error():
    r = runner.invoke(app, ["transforms", "show", "nope"])
    assert r.exit_code == 2 and "unknown feature spec" in r.output


def test_run_the_streaming_job_end_to_end(tmp_path):
    r = runner.invoke(app, ["run", "--out", str(tmp_path), "--events", "1500", "--window-ms", "600000", "--no-updates",
                            "--checkpoint-interval", "1s", "--delta-scales", "0,0.5,1", "--mix-share", "0.01",
                            "--online-expert"])
    assert r.exit_code == 0, r.output
    job = json.loads((tmp_path / "job.json").read_text())
    assert job["checkpoint_interval_ms"] == 1000
    assert job["online"]["delta_scales"] == [0.0, 0.5, 1.0] and job["online"]["mix_share"] == 0.01
    assert job["online"]["online_expert"] is True
    assert "reconciles" in r.output and "progressive logloss" in r.output
    assert (tmp_path / "report.html").stat().st_size > 10_000 and "report:" in r.output  # rich wraps paths
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["reconciliation"]["reconciles"] and s["counts"]["predictions"] >= 1500
    # --no-updates: no update records, the delta version from the metrics
    assert s["counts"]["updates"] == 0 and s["final_delta_version"] == s["counts"]["examples"] > 0
    m = json.loads(runner.invoke(app, ["summary", str(tmp_path / "events"), "--json"]).output)
    assert m["counts"]["reconciles"] and m["counts"]["valid"]["impression"] >= 1500
    r = runner.invoke(app, ["operators", str(tmp_path), "--json"])  # what a savepoint maps state by
    assert r.exit_code == 0, r.output
    ops = {o["uid"]: o["id"] for o in map(json.loads, r.output.splitlines())}
    assert {"learner", "dedup_join", "sink_predictions"} <= set(ops) and all(len(i) == 32 for i in ops.values())
    assert "sink_updates" not in ops and "sink_examples" in ops


def test_run_rejects_a_bad_policy(tmp_path):
    r = runner.invoke(app, ["run", "--out", str(tmp_path), "--events", "100", "--late-policy", "drop"])
    assert r.exit_code != 0 and "late_policy" in r.output


def test_run_rejects_bad_delta_scales(tmp_path):
    r = runner.invoke(app, ["run", "--out", str(tmp_path), "--events", "100", "--delta-scales", "-1,1"])
    assert r.exit_code == 2 and "scales" in r.output
    r = runner.invoke(app, ["run", "--out", str(tmp_path), "--events", "100", "--delta-scales", "0,1", "--mix-share", "1"])
    assert r.exit_code == 2 and "share" in r.output


def test_run_rejects_a_negative_speedup(tmp_path):
    r = runner.invoke(app, ["run", "--out", str(tmp_path), "--events", "100", "--speedup", "-1"])
    assert r.exit_code != 0 and "--speedup" in r.output
    from runners.flink_job import JobConfig

    with pytest.raises(ValueError, match="replay_speedup"):
        JobConfig(event_dir=str(tmp_path), out=str(tmp_path), artifact=str(tmp_path), replay_speedup=-1.0)


def test_a_job_cannot_run_above_its_max_parallelism(tmp_path):
    from runners.flink_job import JobConfig

    paths = dict(event_dir=str(tmp_path), out=str(tmp_path), artifact=str(tmp_path))
    assert JobConfig(**paths).max_parallelism == 128  # explicit, Flink's default for small jobs
    assert JobConfig(**paths, parallelism=128).parallelism == 128
    for bad in ({"parallelism": 129}, {"parallelism": 0}, {"max_parallelism": 40_000}):
        with pytest.raises(ValueError, match="max_parallelism"):
            JobConfig(**paths, **bad)
    r = runner.invoke(app, ["run", "--out", str(tmp_path / "run"), "--events", "200", "--parallelism", "64",
                            "--max-parallelism", "32"])
    assert r.exit_code == 2 and "max_parallelism (32)" in " ".join(r.output.split()), r.output


def test_run_rejects_a_bad_checkpoint_interval(tmp_path):
    r = runner.invoke(app, ["run", "--out", str(tmp_path), "--events", "100", "--checkpoint-interval", "soon"])
    assert r.exit_code == 2 and "not a duration" in r.output
    r = runner.invoke(app, ["run", "--out", str(tmp_path), "--events", "100", "--checkpoint-interval", "5ms"])
    assert r.exit_code == 2 and "checkpoint_interval_ms must be >= 10" in " ".join(r.output.split()), r.output


def test_run_rejects_a_bad_triggered_retrain_delay(tmp_path):
    r = runner.invoke(app, ["run", "--out", str(tmp_path), "--events", "100", "--retrain-on-feature-drift",
                            "--triggered-retrain-delay", "soon"])
    assert r.exit_code == 2 and "not a duration" in r.output
    from runners.flink_job import JobConfig

    with pytest.raises(ValueError, match="triggered_retrain_delay_ms"):
        JobConfig(event_dir=str(tmp_path), out=str(tmp_path), artifact=str(tmp_path), triggered_retrain_delay_ms=-1)


def test_load_without_data_is_a_clear_error(tmp_path):
    r = runner.invoke(app, ["load", "talkingdata", "--out", str(tmp_path), "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "DRIFTLINE_DATA_DIR" in r.output


def test_load_elec2_and_ingest_roundtrip(shared_data, tmp_path):
    r = runner.invoke(app, ["load", "elec2", "--out", str(tmp_path / "e"), "--data-dir", str(shared_data),
                            "--format", "parquet"])
    assert r.exit_code == 0, r.output
    # re-ingesting an event directory's impressions gives the same records again
    r = runner.invoke(app, ["ingest", str(tmp_path / "e" / "impressions"), "--out", str(tmp_path / "i"),
                            "--source", "elec2", "--kind", "impression"])
    assert r.exit_code == 0, r.output
    m = json.loads(runner.invoke(app, ["summary", str(tmp_path / "i"), "--json"]).output)
    assert m["counts"]["valid"]["impression"] == 45_312 and m["counts"]["dead_letter_total"] == 0


def test_bad_options_are_refused(tmp_path):
    assert runner.invoke(app, ["run", "--out", str(tmp_path), "--format", "xml"]).exit_code == 2
    assert runner.invoke(app, ["ingest", str(tmp_path), "--out", str(tmp_path), "--source", "nope"]).exit_code == 2
    assert runner.invoke(app, ["summary", str(tmp_path)]).exit_code == 2


def test_a_local_resume_that_cannot_start_is_a_usage_error(tmp_path):
    """Refused before a job starts (nothing to resume, no savepoint there): exit 2 with the
    reason, not the exit 1 of a failed job (click's Exit is a RuntimeError, which the run's
    handler of failed jobs caught: it printed "error: 2" and exited 1)."""
    r = runner.invoke(app, ["run", "--out", str(tmp_path / "run"), "--from-savepoint", str(tmp_path / "sp")])
    assert r.exit_code == 2 and "nothing to resume" in r.output and "error: 2" not in r.output, r.output
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "job.json").write_text(json.dumps(
        {"event_dir": str(tmp_path), "out": str(tmp_path / "run"), "artifact": str(tmp_path)}))
    r = runner.invoke(app, ["run", "--out", str(tmp_path / "run"), "--from-savepoint", str(tmp_path / "sp")])
    assert r.exit_code == 2 and "no savepoint at" in " ".join(r.output.split()), r.output


def test_submit_resumes_a_savepoint_skipping_unmapped_state_only_when_asked(tmp_path):
    from runners import cluster

    cfg = cluster.ClusterConfig(root=str(tmp_path))
    job = tmp_path / "job.json"
    plain = cluster.run_args(cfg, job, savepoint="file:///sp/savepoint-1")
    assert plain[plain.index("-s") + 1] == "file:///sp/savepoint-1" and "--allowNonRestoredState" not in plain
    skip = cluster.run_args(cfg, job, savepoint="file:///sp/savepoint-1", allow_non_restored=True)
    assert "--allowNonRestoredState" in skip and skip.index("--allowNonRestoredState") < skip.index("-py")
    with pytest.raises(ValueError, match="savepoint"):
        cluster.run_args(cfg, job, allow_non_restored=True)
    r = runner.invoke(app, ["submit", "--out", str(tmp_path / "run"), "--allow-non-restored-state"])
    assert r.exit_code == 2 and "--from-savepoint" in r.output


def test_run_from_a_registry_without_a_base_model_is_a_clear_error(tmp_path):
    r = runner.invoke(app, ["run", "--out", str(tmp_path / "run"), "--events", "200",
                            "--base-registry", str(tmp_path / "nothing" / "registry")])
    assert r.exit_code == 2 and "no current base model" in r.output
    assert not list((tmp_path / "run").glob("predictions/*"))  # refused before any job started


def test_cluster_lib_prints_the_jars_an_own_cluster_needs():
    from runners import jvm

    r = runner.invoke(app, ["cluster", "lib"])
    assert r.exit_code == 0, r.output
    folder = Path(r.output.splitlines()[0].strip())
    assert folder == jvm.lib_dir(with_flink_python=True) and (folder / jvm.patch_jar().name).exists()
    assert "flink-connector-files-2.3.0.jar  (patched)" in r.output and jvm.flink_python_jar().name in r.output
