"""One TFX retrain of the base model over a run's joined examples, as a rolling span.

``retrain(run_dir, cutoff)`` selects the span from ``RUN_DIR/examples_parquet`` (exported
first), stages it as Parquet, and runs this TFX pipeline with LocalDagRunner (or
BeamDagRunner with ``beam_pipeline_args``) and a sqlite ML Metadata store:

    ExampleGen(Parquet) -> StatisticsGen -> [ImportSchemaGen | SchemaGen] -> ValidateSpan
      -> Transform(shared TF transforms + the stream's artifact) -> Trainer(wide+deep, warm start)
      -> InfraCheck + EvaluateCandidate (vs the champion) -> RegistryPush

The span, in event time, with W the attribution window: every example in it was resolved
before ``cutoff`` (no label the stream did not have at the cutoff):

    train: [cutoff - W - E - K, cutoff - W - E)    eval: [cutoff - W - E, cutoff - W)

K = ``train_hours``, E = ``eval_hours``. The pushed model's manifest records
``train_end`` = cutoff - W - E: when the stream swaps it in, the online delta re-learns the
examples from ``train_end`` on (``runners.learner``), so no example counts twice.

The schema is frozen: ``pipelines/schemas/<spec>.pbtxt`` (the curated one, in the repo) if
present, else the one SchemaGen inferred on this run dir's first retrain (kept as
``RUN_DIR/retrain/schema.pbtxt``; copy it into the repo to curate it).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

HOUR_MS = 3_600_000
SCHEMAS = Path(__file__).resolve().parent / "schemas"
SEGMENTS = "retrain/segments"
CONFIG = "retrain/config.json"
SPAN_COLUMNS = ("event_id", "event_time", "resolution_time", "label", "weight", "feature_indices", "feature_values")
SPAN_ROW = "span_row"  # the example's place in its split: the Trainer learns in this order


@dataclass(frozen=True)
class RetrainConfig:
    train_hours: float = 24.0  # K
    eval_hours: float = 2.0  # E
    epochs: int = 2
    batch_size: int = 512
    embedding: int = 4
    hidden: int = 8
    l2: float = 1e-6
    learning_rate: float = 0.01
    seed: int = 0
    warm_start: bool = True
    recalibrate: bool = True  # after fitting, shift the bias so mean(p) = the train split's rate
    # ValidateSpan: drift vs the previous span (L-infinity for strings, JS divergence for numbers)
    drift_linf: float = 0.3
    drift_jsd: float = 0.3
    skew_linf: float = 0.3
    drift_action: str = "fail"  # fail | warn: drift vs the previous span blocks the retrain, or is reported
    # EvaluateCandidate: no worse than the champion
    min_auc_delta: float = -0.005
    max_logloss_ratio: float = 1.01
    calibration_low: float = 0.5
    calibration_high: float = 2.0
    infra_sample: int = 256
    min_examples: int = 200
    # a champion that is a trained model is replaced only on an eval slice with at least this many
    # positives: on a handful the gate cannot tell two models apart (0: no minimum). The prior
    # champion (no model yet) does not need it
    min_eval_positives: int = 0
    runner: str = "local"  # local | beam
    beam_pipeline_args: tuple[str, ...] = ("--direct_num_workers=1", "--direct_running_mode=in_memory")
    schema: str | None = None  # an explicit schema.pbtxt; default: the curated one, else frozen per run

    def __post_init__(self) -> None:
        if self.drift_action not in ("fail", "warn"):
            raise ValueError(f"drift_action must be 'fail' or 'warn', got {self.drift_action!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RetrainConfig":
        d = dict(d)
        if "beam_pipeline_args" in d:
            d["beam_pipeline_args"] = tuple(d["beam_pipeline_args"])
        return cls(**d)


@dataclass
class Span:
    cutoff: int
    train: tuple[int, int]
    eval: tuple[int, int]
    dir: Path
    counts: dict = field(default_factory=dict)


def _job(run_dir: Path) -> dict:
    return json.loads((run_dir / "job.json").read_text())


def stage_span(run_dir: Path, cutoff: int, cfg: RetrainConfig, window_ms: int, source: str = "sink") -> Span:
    """Write the span's train and eval Parquet files under ``RUN_DIR/retrain/spans/<cutoff>``,
    from the exported example sink (``source="sink"``) or the job's segments (``"segments"``)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipelines.examples import FILE, read_examples

    e_ms, k_ms = int(cfg.eval_hours * HOUR_MS), int(cfg.train_hours * HOUR_MS)
    eval_range = (cutoff - window_ms - e_ms, cutoff - window_ms)
    train_range = (eval_range[0] - k_ms, eval_range[0])
    span = Span(cutoff, train_range, eval_range, run_dir / "retrain" / "spans" / str(cutoff))
    if span.dir.exists():
        shutil.rmtree(span.dir)
    if source == "segments":  # written by the job itself at each boundary (runners.learner)
        files = sorted((run_dir / SEGMENTS).glob("*.parquet"))
        table = pa.concat_tables([pq.read_table(f) for f in files]) if files else None
    else:  # the committed example sink, exported to Parquet
        src = run_dir / "examples_parquet"
        files = sorted(src.rglob(FILE))
        table = read_examples(src, files) if files else None
    for split, (lo, hi) in (("train", train_range), ("eval", eval_range)):
        (span.dir / split).mkdir(parents=True)
        if table is None:
            span.counts[split] = {"examples": 0, "positives": 0}
            continue
        t = table.filter(pc.and_(pc.and_(pc.greater_equal(table["event_time"], lo), pc.less(table["event_time"], hi)),
                                 pc.less(table["resolution_time"], cutoff)))
        if "kind" in t.schema.names:
            # a late label's correction known before the cutoff replaces the negative it fixes:
            # offline, the final label is known (point in time: the cutoff), train on it once
            corrected = pc.filter(t["event_id"], pc.equal(t["kind"], "correction"))
            if len(corrected):
                t = t.filter(pc.or_(pc.equal(t["kind"], "correction"),
                                    pc.invert(pc.is_in(t["event_id"], value_set=pc.unique(corrected)))))
        inputs = [f.name for f in table.schema if f.name not in {*SPAN_COLUMNS, "dt", "hr", "label_time",
                                                                 "label_delay_ms", "kind", "spec_fingerprint",
                                                                 "seq"}]
        t = t.select([*SPAN_COLUMNS, *inputs])
        t = t.set_column(t.schema.get_field_index("label"), "label", pc.cast(t["label"], pa.int64()))
        # TFX components may reorder examples (ExampleGen reshuffles before writing); SGD is
        # order-dependent, so the learning order travels with each example
        t = t.append_column(SPAN_ROW, pa.array(range(t.num_rows), pa.int64()))
        pq.write_table(t, span.dir / split / "data.parquet")
        span.counts[split] = {"examples": t.num_rows, "positives": int(pc.sum(t["label"]).as_py() or 0)}
    return span


def span_reference(span: Span, names: list[str]) -> dict:
    """The served features' distribution over the span's train split (one row per impression),
    for the pushed model's manifest: the stream's feature-drift monitor compares with it once
    the model is live (``models.feature_drift.use_reference``)."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from models.feature_drift import reference_counts

    t = pq.read_table(span.dir / "train" / "data.parquet", columns=["feature_indices", "feature_values"])
    rows, width = t.num_rows, len(names)
    idx = pc.list_flatten(t["feature_indices"]).to_numpy()
    vals = pc.list_flatten(t["feature_values"]).to_numpy()
    if len(idx) != rows * width or len(vals) != rows * width:
        raise ValueError(f"span {span.cutoff}: examples do not have {width} features each")
    ref = reference_counts(idx.reshape(rows, width), vals.reshape(rows, width).astype(np.float64), names)
    return {**ref, "train_range": list(span.train)}


def _logit(positives: int, n: int) -> float:
    import math

    p = (positives + 0.5) / (n + 1.0)
    return math.log(p / (1 - p))


def _schema_file(run_dir: Path, spec_name: str, cfg: RetrainConfig) -> Path | None:
    for p in (cfg.schema, SCHEMAS / f"{spec_name}.pbtxt", run_dir / "retrain" / "schema.pbtxt"):
        if p and Path(p).is_file():
            return Path(p)
    return None


def build_pipeline(run_dir: Path, span: Span, cfg: RetrainConfig, job: dict, champion: dict | None,
                   previous_stats: str | None):
    from tfx import v1 as tfx
    from tfx.components import FileBasedExampleGen
    from tfx.dsl.components.base import executor_spec

    from models.registry import Registry
    from pipelines import parquet_example_gen
    from pipelines.tfx_components import EvaluateCandidate, InfraCheck, RegistryPush, ValidateSpan
    from transforms.artifact import TransformArtifact

    art = TransformArtifact.load(job["artifact"])
    spec = art.spec
    fingerprint = spec.fingerprint()
    report_dir = str(span.dir / "reports")
    input_config = tfx.proto.Input(splits=[tfx.proto.Input.Split(name="train", pattern="train/*.parquet"),
                                           tfx.proto.Input.Split(name="eval", pattern="eval/*.parquet")])
    example_gen = FileBasedExampleGen(
        input_base=str(span.dir), input_config=input_config,
        custom_executor_spec=executor_spec.BeamExecutorSpec(parquet_example_gen.Executor))
    import tensorflow_data_validation as tfdv

    # top-k and unique counts from sketches: exact ones shuffle every distinct value (every
    # event_id) through Beam, which doubled the component's time on 100k examples
    stats = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"],
        stats_options=tfdv.StatsOptions(use_sketch_based_topk_uniques=True, desired_batch_size=8192))
    schema_file = _schema_file(run_dir, spec.name, cfg)
    if schema_file is not None:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=str(schema_file))
    else:
        schema_gen = tfx.components.SchemaGen(statistics=stats.outputs["statistics"], infer_feature_shape=True)
    raw_inputs = ["event_time", *spec.input_fields()]
    # drift and skew are watched on the model's inputs and the label; event time moves by design
    validate = ValidateSpan(statistics=stats.outputs["statistics"], schema=schema_gen.outputs["schema"],
                            report_dir=report_dir, previous_statistics=previous_stats or "",
                            drift_linf=cfg.drift_linf, drift_jsd=cfg.drift_jsd, skew_linf=cfg.skew_linf,
                            drift_action=cfg.drift_action,
                            features=json.dumps([*spec.input_fields(), "label"]))
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn="pipelines.tfx_module.preprocessing_fn",
        custom_config={"artifact": str(Path(job["artifact"]).resolve())},
        # the fitted artifact is constants (no analyzers, nothing to cache), and the span's
        # statistics are StatisticsGen's: TFDV inside Transform would compute them twice more
        disable_statistics=True, disable_analyzer_cache=True)
    transform.add_upstream_node(validate)  # a span that fails validation trains nothing
    width = len(spec.sparse_features())
    train_cfg = {"dimension": spec.dimension, "width": width, "embedding": cfg.embedding, "hidden": cfg.hidden,
                 "l2": cfg.l2, "learning_rate": cfg.learning_rate, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                 "seed": cfg.seed, "recalibrate": cfg.recalibrate, "spec_fingerprint": fingerprint, "raw_inputs": raw_inputs,
                 "warm_start": champion if (cfg.warm_start and champion and "path" in champion) else None,
                 "prior_logit": _logit(span.counts["train"]["positives"], span.counts["train"]["examples"])}
    trainer = tfx.components.Trainer(
        run_fn="pipelines.tfx_module.run_fn", examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"], schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"]), eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=train_cfg)
    infra = InfraCheck(model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
                       report_dir=report_dir, sample=cfg.infra_sample)
    evaluate = EvaluateCandidate(model=trainer.outputs["model"], examples=example_gen.outputs["examples"],
                                 report_dir=report_dir, champion=json.dumps(champion) if champion else "",
                                 min_auc_delta=cfg.min_auc_delta, max_logloss_ratio=cfg.max_logloss_ratio,
                                 calibration_low=cfg.calibration_low, calibration_high=cfg.calibration_high)
    evaluate.add_upstream_node(infra)  # the evaluation report is read by the pusher after both
    manifest = {"spec_fingerprint": fingerprint, "spec_name": spec.name, "dimension": spec.dimension,
                "artifact_version": art.version,  # the features it learned: the same spec, other statistics skew
                "cutoff": span.cutoff, "train_range": list(span.train), "eval_range": list(span.eval),
                "train_end": span.train[1], "counts": span.counts,
                "parent": (champion or {}).get("version"), "run_dir": str(run_dir),
                "retrain": cfg.to_dict(),
                "feature_reference": span_reference(span, [n for n, _ in spec.sparse_features()])}
    push = RegistryPush(model=trainer.outputs["model"], blessing=evaluate.outputs["blessing"],
                        infra_blessing=infra.outputs["blessing"], registry=str(Registry(run_dir / "registry").root),
                        manifest=json.dumps(manifest), report_dir=report_dir)
    root = run_dir / "retrain"
    return tfx.dsl.Pipeline(
        pipeline_name="driftline-retrain", pipeline_root=str(root / "tfx"),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(root / "metadata.sqlite")),
        components=[example_gen, stats, schema_gen, validate, transform, trainer, infra, evaluate, push],
        enable_cache=False, beam_pipeline_args=beam_args(cfg.beam_pipeline_args))


# what TFX takes as "the workers' dependencies are given" (tfx.utils.dependency_utils)
_DEPENDENCY_OPTIONS = ("extra_packages", "setup_file", "requirements_file", "worker_harness_container_image",
                       "sdk_container_image")


def beam_args(args: tuple[str, ...] | list[str]) -> list[str]:
    """The Beam arguments the retrain's components run with. Given any arguments but none
    naming the workers' dependencies, each of TFX's Beam executors repackages TFX's whole
    install as an sdist for remote workers (``tfx.utils.dependency_utils``): ~1.6 s of copying
    and setuptools per component, and 49 MB left behind in the temp folder every time (its
    ``mkdtemp`` is never removed: three per retrain, 147 MB; retrains every 2 h, ~1.8 GB a
    day). A local runner (Beam's DirectRunner, the default) stages nothing, so for it our own
    ``setup.py`` is named, which is what a remote runner would need anyway (driftline, and TFX
    through its requirements). Other runners, or arguments that name dependencies, are left as
    given.

    >>> beam_args(["--direct_num_workers=1"])[-1].startswith("--setup_file=")
    True
    >>> beam_args(["--runner=DataflowRunner"])
    ['--runner=DataflowRunner']
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    args = list(args)
    options = PipelineOptions(flags=args)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    setup = Path(__file__).resolve().parents[1] / "setup.py"
    given = any(options.get_all_options().get(name) for name in _DEPENDENCY_OPTIONS)
    if runner in ("DirectRunner", "direct") and not given and setup.is_file():
        args.append(f"--setup_file={setup}")
    return args


def champion_of(run_dir: Path, fingerprint: str) -> dict | None:
    """The current base model of the run's registry (if it verifies and fits the spec)."""
    from models.base import FILE
    from models.registry import Registry, RegistryError

    reg = Registry(run_dir / "registry")
    version = reg.current("base")
    if version is None:
        return None
    try:
        ref = reg.verify("base", version, fingerprint=fingerprint)
    except RegistryError:
        return None
    return {"path": str(ref.path / "assets.extra" / FILE), "version": version,
            "spec_fingerprint": ref.manifest.get("spec_fingerprint")}


def run_config(run_dir: str | Path) -> RetrainConfig:
    """The run's retrain settings (``RUN_DIR/retrain/config.json``, written by ``driftline
    run``), else the defaults."""
    p = Path(run_dir) / CONFIG
    return RetrainConfig.from_dict(json.loads(p.read_text())) if p.exists() else RetrainConfig()


def write_segment(run_dir: str | Path, name: str, lines: list[str]) -> Path:
    """The job's examples since its last boundary (its JSON lines) as a Parquet segment, for
    scheduled retrains: they need no checkpoint-committed sink. Idempotent (atomic rename)."""
    import pyarrow.parquet as pq

    from pipelines.examples import rows_to_table, run_inputs_schema

    d = Path(run_dir) / SEGMENTS
    d.mkdir(parents=True, exist_ok=True)
    target = d / f"{name}.parquet"
    tmp = d / f".{name}.{os.getpid()}.tmp"
    pq.write_table(rows_to_table([json.loads(x) for x in lines], run_inputs_schema(run_dir)), tmp)
    os.replace(tmp, target)
    return target


def launch(run_dir: str | Path, cutoff: int, python: str):
    """Start ``driftline retrain --source segments --cutoff CUTOFF`` in the background (a
    process of its own: TensorFlow stays out of the stream's Python worker); log in
    ``RUN_DIR/retrain/logs/CUTOFF.log``."""
    import subprocess

    logs = Path(run_dir) / "retrain" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{cutoff}.log", "wb") as log:
        return subprocess.Popen([python, "-m", "runners.cli", "retrain", "--run", str(run_dir), "--cutoff",
                                 str(cutoff), "--source", "segments"], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})


def outcome_for(run_dir: str | Path, cutoff: int) -> dict | None:
    """The last recorded outcome of the retrain with this cutoff, if any."""
    p = Path(run_dir) / "retrain" / "outcomes.jsonl"
    found = None
    if p.exists():
        for line in p.read_text().splitlines():
            if line.strip() and json.loads(line).get("cutoff") == cutoff:
                found = json.loads(line)
    return found


def retrain(run_dir: str | Path, cutoff: int | None = None, cfg: RetrainConfig | None = None,
            source: str = "sink") -> dict:
    """Run one retrain; returns (and appends to ``RUN_DIR/retrain/outcomes.jsonl``) its outcome:
    span, counts, validation, infra check, evaluation, pushed version, wall seconds.
    ``source``: the exported example sink, or the segments a scheduled job writes."""
    from pipelines.examples import export_parquet, read_examples
    from transforms.artifact import TransformArtifact

    t0 = time.perf_counter()
    run_dir = Path(run_dir).resolve()
    cfg = cfg or run_config(run_dir)
    job = _job(run_dir)
    window_ms = int(job["join"]["window_ms"])
    if source not in ("sink", "segments"):
        raise ValueError(f"source must be sink or segments, not {source!r}")
    if source == "sink":
        export_parquet(run_dir)
    if cutoff is None:  # everything resolved so far
        if source == "segments":
            raise ValueError("a retrain from segments needs its cutoff")
        files = sorted((run_dir / "examples_parquet").rglob("examples.parquet"))
        if not files:
            raise ValueError(f"{run_dir} has no exported examples yet")
        cutoff = int(max(read_examples(run_dir / "examples_parquet", files)["resolution_time"].to_pylist())) + 1
    span = stage_span(run_dir, int(cutoff), cfg, window_ms, source)
    state_file = run_dir / "retrain" / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    fingerprint = TransformArtifact.load(job["artifact"]).spec.fingerprint()
    champion = champion_of(run_dir, fingerprint)
    outcome = {"cutoff": span.cutoff, "source": source, "train_range": list(span.train), "eval_range": list(span.eval),
               "train_end": span.train[1], "counts": span.counts, "champion": (champion or {}).get("version"),
               "pushed": False}
    small = [s for s, c in span.counts.items() if c["examples"] < (cfg.min_examples if s == "train" else 1)]
    if small or span.counts["eval"]["positives"] in (0, span.counts["eval"]["examples"]):
        outcome["status"] = "skipped"
        outcome["reason"] = f"not enough data in the span: {span.counts} (min_examples={cfg.min_examples})"
    elif champion and span.counts["eval"]["positives"] < cfg.min_eval_positives:
        outcome["status"] = "skipped"
        outcome["reason"] = (f"{span.counts['eval']['positives']} positives in the eval slice, fewer than "
                             f"min_eval_positives={cfg.min_eval_positives}: the champion stays")
    else:
        pipeline = build_pipeline(run_dir, span, cfg, job, champion, state.get("previous_train_stats"))
        try:
            if cfg.runner == "beam":
                from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

                BeamDagRunner().run(pipeline)
            else:
                from tfx import v1 as tfx

                tfx.orchestration.LocalDagRunner().run(pipeline)
            outcome["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - reported in the outcome, and re-raised below
            outcome["status"], outcome["reason"] = "failed", f"{type(e).__name__}: {e}"
        reports = span.dir / "reports"
        for name in ("validation", "infra", "evaluation", "push"):
            if (reports / f"{name}.json").exists():
                outcome[name] = json.loads((reports / f"{name}.json").read_text())
        push = outcome.get("push") or {}
        outcome.update(pushed=bool(push.get("pushed")), version=push.get("version"))
        if (reports / "train_stats.pb").exists():  # kept out of the span folder: a rerun clears that
            kept = run_dir / "retrain" / "stats" / f"{span.cutoff}.pb"
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(reports / "train_stats.pb", kept)
            state["previous_train_stats"] = str(kept)
        frozen = run_dir / "retrain" / "schema.pbtxt"
        if _schema_file(run_dir, TransformArtifact.load(job["artifact"]).spec.name, cfg) is None:
            inferred = sorted((run_dir / "retrain" / "tfx").glob("SchemaGen/schema/*/schema.pbtxt"))
            if inferred:
                shutil.copyfile(inferred[-1], frozen)
                outcome["schema_frozen"] = str(frozen)
    outcome["seconds"] = round(time.perf_counter() - t0, 1)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state, indent=1) + "\n")
    with open(run_dir / "retrain" / "outcomes.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(outcome, sort_keys=True, default=str) + "\n")
    return outcome
