"""Unbounded mode: the job monitors an event directory continuously and serves part files that
appear after it started (committed on checkpoints), while impressions whose window is still
open stay pending."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from pipelines.join import JoinConfig
from pipelines.sources.generator import GeneratorConfig
from runners.local import generate_event_dir
from runners.stream import fit_warmup_artifact, prepare_run, read_output, summarize


TICK = 10_000


def _publish(src, dst_dir):
    """Atomically, as the event-directory writer does: hidden temp name, then rename."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    tmp = dst_dir / f".{src.name}.inprogress"
    shutil.copy(src, tmp)
    os.replace(tmp, dst_dir / src.name)


def test_follow_mode_picks_up_new_files(tmp_path):
    generate_event_dir(tmp_path / "ev", GeneratorConfig(events=2_000, seed=4, duplicate_rate=0.0,
                                                       out_of_order_rate=0.0))
    live = tmp_path / "live"
    (live / "impressions").mkdir(parents=True)
    (live / "labels").mkdir()
    shutil.copy(tmp_path / "ev" / "_manifest.json", live / "_manifest.json")
    join = JoinConfig(window_ms=600_000, late_horizon_ms=3_600_000, watermark_delay_ms=10_000)
    fit_warmup_artifact(tmp_path / "ev", "generator", tmp_path / "art")
    prepare_run(live, tmp_path / "run", "generator", join, artifact=tmp_path / "art", follow=True,
                checkpoint_interval_ms=2_000, monitor_interval_ms=500, learn_tick_ms=TICK)

    proc = subprocess.Popen([sys.executable, "-m", "runners.flink_job", str(tmp_path / "run" / "job.json")],
                            stdout=open(tmp_path / "flink.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        time.sleep(15)  # the job is up and watching an empty directory
        for stream in ("impressions", "labels"):
            for part in sorted((tmp_path / "ev" / stream).glob("part-*")):
                _publish(part, live / stream)
        times = [json.loads(line)["event_time"] for line in open(next((tmp_path / "ev" / "impressions").glob("part-*")))]
        # served once the watermark (newest event time - delay - 1 ms) passes the end of their
        # tick: the OVER aggregates are point-in-time and impressions reach the scorer in ticks,
        # so the newest impressions wait for more input
        watermark = max(times) - join.watermark_delay_ms - 1
        n_imp = sum(t // TICK * TICK + TICK - 1 <= watermark for t in times)
        deadline = time.time() + 240
        s = None
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "flink.log").read_text()[-3000:]
            s = summarize(tmp_path / "run", json.loads((live / "_manifest.json").read_text()))
            if s["counts"]["predictions"] == n_imp and s["counts"]["examples"] > 0:
                break
            time.sleep(3)
        assert s["counts"]["predictions"] == n_imp, s["counts"]
        # the stream never ends: the newest impressions are still inside their window, and
        # nothing beyond the watermark was served
        assert max(p["event_time"] for p in read_output(tmp_path / "run", "predictions")) <= watermark
        assert 0 < s["counts"]["examples"] < n_imp and s["counts"]["pending"] == n_imp - s["counts"]["examples"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
