"""The first base model from historical logs, before any stream runs: the offline half of the
hybrid, on Beam and TFX.

    history (an event directory) -> transform artifact fitted on all of it (Beam)
      -> joined examples with the job's join and features (the Beam backfill)
      -> one TFX retrain (``pipelines.retrain``) at the end of the history -> OUT/registry

Then ``driftline run --data LIVE --artifact OUT/transform --base-registry OUT/registry`` serves
that model from the stream's first tick (``runners.stream.seed_base``), and the online delta
learns on top of it. OUT is a run folder of its own (``job.json``, the examples as one segment,
``retrain/outcomes.jsonl``), so ``driftline retrain --run OUT --source segments`` can train
again, with other settings, on the same examples.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.join import JoinConfig
from pipelines.retrain import RetrainConfig


def bootstrap(event_dir: str | Path, out: str | Path, join: JoinConfig | None = None,
              retrain_cfg: RetrainConfig | None = None, spec_name: str | None = None,
              pipeline_args: list[str] | None = None) -> dict:
    """Fit, backfill and train on the history in ``event_dir``; returns the retrain's outcome
    (``pushed``, ``version``, counts, evaluation) with the artifact's version and the history's
    cut (``cut_ms``). The cutoff is the history's cut (``pipelines.eventlog.cut_time``: its last
    event + 1 ms), not a window after its last impression: an impression of the history's last
    attribution window without a label by then is still pending (its conversion may come in
    the stream), not a negative. Only the examples resolved before the cut are the history's
    (its segment); a job warmed up with the history joins the rest (``runners.stream.warmup_job``)."""
    from pipelines.backfill import backfill_examples
    from pipelines.eventlog import cut_time, read_manifest
    from pipelines.events import SourceSpec
    from pipelines.retrain import CONFIG, retrain, write_segment
    from runners.flink_job import JobConfig
    from transforms.beam import fit_event_dir
    from transforms.spec import load_spec

    event_dir, out = Path(event_dir), Path(out)
    if (out / "registry").exists() or (out / "transform").exists():
        # a second bootstrap there would fit another artifact beside the first one's model
        raise FileExistsError(f"{out} holds a bootstrap already: use a new folder")
    join = join or JoinConfig()
    cfg = retrain_cfg or RetrainConfig()
    source = read_manifest(event_dir)["source"]
    spec = load_spec(spec_name or source["name"])
    art = fit_event_dir(spec, SourceSpec.from_dict(source), event_dir, out / "transform", pipeline_args)
    backfill_examples(event_dir, art, join, out / "backfill", pipeline_args)
    cut = cut_time(event_dir)
    lines = [x for x in (out / "backfill" / "examples.jsonl").read_text().splitlines()
             if json.loads(x)["resolution_time"] < cut]
    if not lines:
        raise ValueError(f"{event_dir}: no joined examples to train on")
    (out / "job.json").write_text(json.dumps(JobConfig(
        event_dir=str(event_dir.resolve()), out=str(out.resolve()), artifact=str((out / "transform").resolve()),
        join=join).to_dict(), indent=1) + "\n")
    (out / CONFIG).parent.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    write_segment(out, "history", lines)
    outcome = retrain(out, cutoff=cut, cfg=cfg, source="segments")
    return {**outcome, "artifact_version": art.version, "examples": len(lines), "cut_ms": cut}
