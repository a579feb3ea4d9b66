"""The streaming job on PyFlink: one plan for the embedded mini-cluster and a standalone cluster.

Plan (state-heavy work in Flink's native operators, Python only where it must be):

    impressions (JSONL, watermark) ─ OVER: aggregates ─ OVER: first of its event_id? ─┬─ dup ─▶ dead letter
                                                         pandas UDF: features (packed) ┤
    labels (JSONL, watermark) ─ OVER: first label of its event_id? ─┬─ dup ─▶ dead letter
                                                                    │
    impressions ⟕ first labels, interval [t, t+W)  ─▶ one example per impression
    first labels ⟕ impressions, interval [lt−H, lt+W] ─▶ late / unknown / label-before-impression
                         │
    impressions ∪ examples ∪ label outcomes ─▶ key 0 ─▶ Learner (Python, parallelism 1):
        impression: score now (base + delta, A/B arm)            ─▶ predictions
        example / label outcome: buffer until the watermark passes its resolution time, then
        learn in (resolution_time, event_id) order                ─▶ weight updates, joined
                                                                      examples, late labels,
                                                                      dead letters, snapshots

Pending impressions live in the interval join's state (Java); the Learner's state is the online
layer (FTRL z/n arrays) and the few examples between their emission and the watermark.
Outputs are Flink filesystem sinks (JSON lines; joined examples partitioned by event-time
date and hour), committed on checkpoints: exactly-once.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models.online import OnlineConfig
from pipelines.events import SourceSpec
from pipelines.join import JoinConfig
from transforms.flink_sql import _q, aggregates_sql, impressions_ddl, interval

OUTPUTS = ("predictions", "updates", "examples", "late_labels", "dead_letter")


@dataclass
class JobConfig:
    event_dir: str
    out: str
    artifact: str  # a fitted transform artifact (transform_artifact.json or its folder)
    join: JoinConfig = field(default_factory=JoinConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    parallelism: int = 1  # of the SQL operators; the Learner always runs with 1
    checkpoint_interval_ms: int = 5_000
    follow: bool = False  # keep monitoring the event directory for new part files
    monitor_interval_ms: int = 1_000
    idle_timeout_ms: int = 5_000
    restart_attempts: int = 3
    dedup_ttl_ms: int = 2 * 86_400_000
    learn_tick_ms: int = 10_000  # examples are learned once the watermark passes this grid
    snapshot_every: int = 0  # write a full FTRL snapshot every N updates (0: only at the end)
    python_executable: str = field(default_factory=lambda: sys.executable)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JobConfig":
        d = dict(d)
        d["join"] = JoinConfig(**d.get("join", {}))
        d["online"] = OnlineConfig.from_dict(d.get("online", {}))
        return cls(**d)


# ---- SQL ------------------------------------------------------------------------------------

def labels_ddl(table: str, path: str, watermark_delay_ms: int, monitor: str = "") -> str:
    return (f"CREATE TABLE {table} (`event_id` STRING, `label_time` BIGINT, `label` INT, "
            f"`label_type` STRING, lts AS TO_TIMESTAMP_LTZ(`label_time`, 3), "
            f"WATERMARK FOR lts AS lts - {interval(watermark_delay_ms + 1)}) WITH ("
            f"'connector' = 'filesystem', 'path' = '{path}', 'format' = 'json'{monitor})")


def _first_flag(table: str, rowtime: str) -> str:
    """Adds ``nth``: 1 for the first row of its event_id in event time (ties: arrival order)."""
    return (f"SELECT *, COUNT(*) OVER (PARTITION BY `event_id` ORDER BY {rowtime} "
            f"ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS nth FROM {table}")


def sink_ddl(name: str, path: str, columns: list[tuple[str, str]], partitioned: bool = False,
             roll_ms: int = 60_000) -> str:
    """A JSON-lines filesystem sink. Part files become visible (committed) on the first
    checkpoint after they roll, at the latest ``roll_ms`` after they were opened."""
    cols = ", ".join(f"{_q(n)} {t}" for n, t in columns)
    part = " PARTITIONED BY (`dt`, `hr`)" if partitioned else ""
    extra = (", 'sink.partition-commit.policy.kind' = 'success-file', "
             "'partition.time-extractor.timestamp-pattern' = '$dt $hr:00:00'") if partitioned else ""
    return (f"CREATE TABLE {name} ({cols}){part} WITH ('connector' = 'filesystem', "
            f"'path' = '{path}', 'format' = 'json', 'sink.rolling-policy.rollover-interval' = '{roll_ms} ms', "
            f"'sink.rolling-policy.check-interval' = '{min(roll_ms, 1000)} ms'{extra})")


PREDICTION_COLUMNS = [("event_id", "STRING"), ("event_time", "BIGINT"), ("p", "DOUBLE"),
                      ("base_logit", "DOUBLE"), ("delta_logit", "DOUBLE"), ("base_version", "STRING"),
                      ("delta_version", "BIGINT"), ("spec_fingerprint", "STRING"), ("arm", "STRING"),
                      ("served", "STRING"), ("base_only_reason", "STRING")]
UPDATE_COLUMNS = [("seq", "BIGINT"), ("event_id", "STRING"), ("resolution_time", "BIGINT"),
                  ("p_before", "DOUBLE"), ("label", "INT"), ("indices", "ARRAY<BIGINT>"),
                  ("weights", "ARRAY<DOUBLE>")]
EXAMPLE_COLUMNS = [("event_id", "STRING"), ("event_time", "BIGINT"), ("resolution_time", "BIGINT"),
                   ("label", "INT"), ("label_time", "BIGINT"), ("label_delay_ms", "BIGINT"),
                   ("kind", "STRING"), ("weight", "DOUBLE"), ("features", "STRING"),
                   ("spec_fingerprint", "STRING"), ("seq", "BIGINT"), ("dt", "STRING"), ("hr", "STRING")]
LATE_COLUMNS = [("event_id", "STRING"), ("event_time", "BIGINT"), ("label_time", "BIGINT"),
                ("label", "INT"), ("delay_ms", "BIGINT"), ("policy", "STRING")]
DEAD_COLUMNS = [("reason", "STRING"), ("detail", "STRING"), ("kind", "STRING"), ("origin", "STRING"),
                ("raw", "STRING")]
COLUMNS = {"predictions": PREDICTION_COLUMNS, "updates": UPDATE_COLUMNS, "examples": EXAMPLE_COLUMNS,
           "late_labels": LATE_COLUMNS, "dead_letter": DEAD_COLUMNS}


def _flink_type(sql_type: str):
    from pyflink.common import Types

    if sql_type.startswith("ARRAY<"):
        inner = _flink_type(sql_type[6:-1])
        return Types.LIST(inner)
    return {"STRING": Types.STRING(), "BIGINT": Types.LONG(), "DOUBLE": Types.DOUBLE(),
            "INT": Types.INT()}[sql_type]


def row_type(columns: list[tuple[str, str]]):
    from pyflink.common import Types

    return Types.ROW_NAMED([n for n, _ in columns], [_flink_type(t) for _, t in columns])


# ---- the job --------------------------------------------------------------------------------

def configure(cfg: JobConfig):
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import EnvironmentSettings, StreamTableEnvironment

    conf = Configuration()
    conf.set_string("python.executable", cfg.python_executable)
    conf.set_string("python.client.executable", cfg.python_executable)
    conf.set_string("parallelism.default", str(cfg.parallelism))
    conf.set_string("execution.checkpointing.interval", f"{cfg.checkpoint_interval_ms} ms")
    # the JobManager's memory storage caps state at 5 MB: checkpoints go to the run folder
    conf.set_string("execution.checkpointing.storage", "filesystem")
    conf.set_string("execution.checkpointing.dir", (Path(cfg.out).resolve() / "checkpoints").as_uri())
    # a fault restarts from the last checkpoint a few times; a deterministic failure then fails
    # the job instead of looping
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", str(cfg.restart_attempts))
    conf.set_string("restart-strategy.fixed-delay.delay", "1 s")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    t_env = StreamTableEnvironment.create(env, EnvironmentSettings.in_streaming_mode())
    if cfg.follow:
        t_env.get_config().set("table.exec.source.idle-timeout", f"{cfg.idle_timeout_ms} ms")
    # keyed SQL state without a time bound (first-of-event_id counts) expires after this much
    # processing time: duplicates further apart than that are not recognized
    t_env.get_config().set("table.exec.state.ttl", f"{cfg.dedup_ttl_ms} ms")
    return env, t_env


def build(env, t_env, cfg: JobConfig, source: SourceSpec, artifact) -> None:
    """Add the whole job to ``env``/``t_env`` (executed by the caller)."""
    from pyflink.common import Types

    from runners.learner import Learner, OUTPUT_TAGS

    spec = artifact.spec
    ev = Path(cfg.event_dir).resolve()
    out = Path(cfg.out).resolve()
    W, H, D = cfg.join.window_ms, cfg.join.late_horizon_ms, cfg.join.watermark_delay_ms
    monitor = f", 'source.monitor-interval' = '{cfg.monitor_interval_ms} ms'" if cfg.follow else ""

    ddl = impressions_ddl("impressions", source, str(ev / "impressions"), D)
    if monitor:
        ddl = ddl[:-1] + monitor + ")"
    t_env.execute_sql(ddl)
    t_env.execute_sql(labels_ddl("labels", str(ev / "labels"), D, monitor))

    raw_cols = ["event_id", "event_time", *source.string_fields, *source.numeric_fields]
    t_env.create_temporary_view("imp_agg", t_env.sql_query(aggregates_sql(spec, "impressions", raw_cols)))
    t_env.create_temporary_view("imp_nth", t_env.sql_query(_first_flag("imp_agg", "ts")))
    t_env.create_temporary_view("lab_nth", t_env.sql_query(_first_flag("labels", "lts")))

    feature_cols = [*source.string_fields, *source.numeric_fields, *[a.name for a in spec.aggregates]]
    featurize = make_featurize(artifact.to_dict(), ["event_time", *feature_cols], source)
    t_env.create_temporary_function("featurize", featurize)
    unit = source.entity_fields[0] if source.entity_fields else "event_id"
    args = ", ".join(_q(c) for c in ["event_time", *feature_cols])
    t_env.create_temporary_view("imp", t_env.sql_query(
        f"SELECT `event_id`, `event_time`, ts, featurize({args}) AS feat, "
        f"COALESCE(CAST({_q(unit)} AS STRING), '') AS unit FROM imp_nth WHERE nth = 1"))
    t_env.create_temporary_view("lab", t_env.sql_query("SELECT * FROM lab_nth WHERE nth = 1"))

    w, h = interval(W), interval(H)
    examples = (f"SELECT 'ex' AS `kind`, i.`event_id`, COALESCE(l.`label_time`, i.`event_time` + {W}) AS t, "
                f"i.`event_time`, i.feat, i.unit, COALESCE(l.`label`, 0) AS label, l.`label_time`, "
                f"CASE WHEN l.`event_id` IS NULL THEN 'expired' ELSE 'label' END AS info "
                f"FROM imp i LEFT JOIN lab l ON i.`event_id` = l.`event_id` "
                f"AND l.lts >= i.ts AND l.lts < i.ts + {w}")
    carry_feat = "i.feat" if cfg.join.late_policy == "correction" else "CAST(NULL AS BYTES)"
    outcomes = (f"SELECT 'lab' AS `kind`, l.`event_id`, l.`label_time` AS t, i.`event_time`, {carry_feat} AS feat, "
                f"'' AS unit, l.`label` AS label, l.`label_time`, "
                f"CASE WHEN i.`event_id` IS NULL THEN 'unknown_impression' "
                f"WHEN l.`label_time` < i.`event_time` THEN 'label_before_impression' ELSE 'late' END AS info "
                f"FROM lab l LEFT JOIN (SELECT `event_id`, `event_time`, ts, feat FROM imp) i "
                f"ON l.`event_id` = i.`event_id` AND i.ts >= l.lts - {h} AND i.ts <= l.lts + {w} "
                f"WHERE i.`event_id` IS NULL OR l.`label_time` < i.`event_time` "
                f"OR l.`label_time` >= i.`event_time` + {W}")
    scoring = ("SELECT 'imp' AS `kind`, `event_id`, `event_time` AS t, `event_time`, feat, unit, "
               "CAST(NULL AS INT) AS label, CAST(NULL AS BIGINT) AS `label_time`, '' AS info FROM imp")
    # The label-side join holds the watermark back by the late horizon H. Under the "sink"
    # policy its rows never touch the model, so they go straight to their sinks and learning
    # only waits for W; under "correction" they must be learned in order, so learning waits H.
    through_learner = cfg.join.late_policy == "correction"
    learner_in = t_env.sql_query(f"{scoring} UNION ALL {examples}" + (f" UNION ALL {outcomes}" if through_learner else ""))

    for name in OUTPUTS:
        t_env.execute_sql(sink_ddl(f"sink_{name}", str(out / name), COLUMNS[name], name == "examples",
                                   max(cfg.checkpoint_interval_ms, 1000)))
    stmts = t_env.create_statement_set()
    # duplicates never reach the learner: straight to the dead-letter output, with their reason
    dups = t_env.sql_query(
        "SELECT 'duplicate_event_id' AS `reason`, CONCAT('occurrence ', CAST(nth AS STRING)) AS `detail`, "
        "'impression' AS `kind`, 'flink:impressions' AS `origin`, `event_id` AS `raw` FROM imp_nth WHERE nth > 1 "
        "UNION ALL SELECT 'duplicate_label', CONCAT('occurrence ', CAST(nth AS STRING)), 'label', "
        "'flink:labels', `event_id` FROM lab_nth WHERE nth > 1")

    ds = t_env.to_data_stream(learner_in)
    learner = Learner(json.dumps({"job": cfg.to_dict(), "dimension": spec.dimension,
                                  "spec_fingerprint": spec.fingerprint(), "registry": str(out / "registry")}))
    preds = (ds.key_by(lambda r: 0, key_type=Types.INT())
             .process(learner, output_type=row_type(PREDICTION_COLUMNS))
             .name("learner").set_parallelism(1))
    stmts.add_insert("sink_predictions", t_env.from_data_stream(preds))
    if not through_learner:
        t_env.create_temporary_view("outcomes", t_env.sql_query(outcomes))
        late = t_env.sql_query(f"SELECT `event_id`, `event_time`, `label_time`, label, "
                               f"`label_time` - `event_time` AS delay_ms, 'sink' AS policy "
                               f"FROM outcomes WHERE info = 'late'")
        bad = t_env.sql_query("SELECT info AS `reason`, CONCAT('label at ', CAST(`label_time` AS STRING)) AS `detail`, "
                              "'label' AS `kind`, 'flink:labels' AS `origin`, JSON_OBJECT('event_id' VALUE `event_id`, "
                              "'label_time' VALUE `label_time`, 'label' VALUE label, 'impression_time' VALUE `event_time`) "
                              "AS `raw` FROM outcomes WHERE info <> 'late'")
        dups = dups.union_all(bad)
    for name, tag in OUTPUT_TAGS.items():
        side = t_env.from_data_stream(preds.get_side_output(tag))
        if name == "dead_letter":
            side = side.union_all(dups)
        elif name == "late_labels" and not through_learner:
            side = side.union_all(late)
        stmts.add_insert(f"sink_{name}", side)
    stmts.attach_as_datastream()


def make_featurize(artifact_dict: dict, columns: list[str], source: SourceSpec):
    """A vectorized (pandas) UDF: raw columns -> packed sparse features, the numpy apply."""
    from pyflink.table import DataTypes
    from pyflink.table.udf import udf

    numeric, strings = set(source.numeric_fields), set(source.string_fields)
    loaded: dict = {}

    def featurize(*cols):
        import numpy as np
        import pandas as pd
        import pyarrow as pa

        from transforms.apply import apply
        from transforms.artifact import TransformArtifact

        if "art" not in loaded:  # parsed once per worker, not per batch
            loaded["art"] = TransformArtifact.from_dict(artifact_dict)
        art = loaded["art"]
        arrays = {}
        for name, col in zip(columns, cols):
            if name not in numeric and name not in strings:  # event_time, aggregates: BIGINT
                arrays[name] = pa.array(col.to_numpy(np.int64))
            elif name in numeric:
                arrays[name] = pa.array(col.to_numpy(np.float64, na_value=np.nan), from_pandas=True)
            else:
                arrays[name] = pa.array(col.tolist(), pa.string())
        return pd.Series(apply(art, pa.table(arrays)).packed())

    in_types = [DataTypes.BIGINT()]
    for c in columns[1:]:
        in_types.append(DataTypes.DOUBLE() if c in numeric else
                        DataTypes.STRING() if c in source.string_fields else DataTypes.BIGINT())
    return udf(featurize, input_types=in_types, result_type=DataTypes.BYTES(), func_type="pandas")


def run(cfg: JobConfig) -> str:
    """Build and execute the job (blocks until a bounded replay ends); returns the job id."""
    from pipelines.eventlog import read_manifest
    from transforms.artifact import TransformArtifact

    source = SourceSpec.from_dict(read_manifest(cfg.event_dir)["source"])  # as read_stream does
    artifact = TransformArtifact.load(cfg.artifact)
    if artifact.spec.source != source.name:
        raise ValueError(f"artifact is for source {artifact.spec.source!r}, events are {source.name!r}")
    env, t_env = configure(cfg)
    build(env, t_env, cfg, source, artifact)
    result = env.execute(f"driftline {source.name}")
    return str(result.get_job_id()) if hasattr(result, "get_job_id") else ""


if __name__ == "__main__":  # `python -m runners.flink_job CONFIG.json`, also what `flink run -py` runs
    print(run(JobConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))))
