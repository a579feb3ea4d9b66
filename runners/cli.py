"""The ``driftline`` command line. Every subcommand has ``--help``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from pipelines.config import DataDirMissing, data_dir
from pipelines.eventlog import FORMATS, read_manifest
from pipelines.events import KINDS, SOURCES, get_source
from pipelines.sources.generator import GeneratorConfig
from runners.savepoints import STOPPED

app = typer.Typer(help="driftline: a TFX base model + an online FTRL delta learned in Flink, "
                       "with delayed labels joined in event time.", no_args_is_help=True,
                  add_completion=False)
console = Console()


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise typer.BadParameter(f"expected one of {FORMATS}")
    return fmt


def print_summary(manifest: dict, title: str, seconds: float | None = None) -> None:
    c = manifest["counts"]
    t = Table(title=title)
    t.add_column("what")
    t.add_column("count", justify="right")
    t.add_row("input records", f"{c['input']:,}")
    for k, v in c["valid"].items():
        t.add_row(f"valid {k}s", f"{v:,}")
    for k, v in c["dead_letter"].items():
        t.add_row(f"dead letter: {k}", f"{v:,}")
    t.add_row("dead letter total", f"{c['dead_letter_total']:,}")
    t.add_row("reconciles (input = valid + dead letter)", "yes" if c["reconciles"] else "NO")
    console.print(t)
    console.print(f"source={manifest['source']['name']} fingerprint={manifest['fingerprint']} "
                  f"format={manifest['format']}" + (f" time={seconds:.2f}s" if seconds else ""))


def _print_run(summary: dict) -> None:
    c, r, pr = summary["counts"], summary["reconciliation"], summary["progressive"]
    t = Table(title=f"driftline run -> {summary['run_dir']}")
    t.add_column("what")
    t.add_column("value", justify="right")
    if "kafka_messages_in" in r:
        t.add_row("Kafka messages read / accounted for", f"{r['kafka_messages_in']:,} / {r['kafka_messages_out']:,}")
    if "impressions_in" in r:
        t.add_row("impressions in / labels in", f"{r['impressions_in']:,} / {r['labels_in']:,}")
    t.add_row("predictions", f"{c['predictions']:,}")
    t.add_row("joined examples (positives)", f"{c['examples']:,} ({c['positives']:,})")
    t.add_row("weight updates", f"{c['updates']:,}")
    t.add_row("late labels", f"{c['late_labels']:,}")
    for k, v in sorted(c["dead_letter"].items()):
        t.add_row(f"dead letter: {k}", f"{v:,}")
    t.add_row("pending", f"{c['pending']:,}")
    if c.get("warmup_examples"):
        t.add_row("examples of warm-up impressions (pending at its cut)", f"{c['warmup_examples']:,}")
    if r:
        t.add_row("reconciles", "yes" if r["reconciles"] else "NO" if summary.get("final", True)
                  else "not yet (stopped before the end of its input)")
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    t.add_row("progressive logloss (hybrid / base only)", f"{fmt(pr['logloss'])} / {fmt(pr['base_only_logloss'])}")
    t.add_row("progressive AUC (hybrid / base only)", f"{fmt(pr['auc'])} / {fmt(pr['base_only_auc'])}")
    w = summary.get("window") or {}
    if w:
        t.add_row(f"online, last {w['window_n']} examples (logloss / AUC)",
                  f"{fmt(w['window_logloss'])} / {fmt(w['window_auc'])}")
    if summary.get("warmup"):
        w = summary["warmup"]
        t.add_row("counts, dedup and join warmed up from",
                  f"{w['dir']} (from {w['from_ms']}, cut {w.get('cut_ms')})")
    if summary.get("seconds"):
        t.add_row("job seconds (incl. start-up)", f"{summary['seconds']:.1f}")
    for r in summary.get("retrains") or []:
        what = f"pushed {r['version']}" if r["pushed"] else (
            "not blessed" if r.get("blessed") is False else f"{r['status']}")
        t.add_row(f"retrain, cutoff {r['cutoff']}", f"{what} ({r['seconds']} s)")
    for w in summary.get("swaps") or []:
        if w["outcome"] in ("drift_alert", "feature_drift_alert"):
            what = (f"window NE {w['window_ne']:.4f}" if w["outcome"] == "drift_alert"
                    else "features " + ", ".join(w.get("alerting") or []))
            when = ("retrain started" if w.get("cutoff") is not None else f"retrain due at {w['retrain_due']}"
                    if w.get("retrain_due") else f"no retrain ({w.get('retrain')})")
            t.add_row(f"{w['outcome'].replace('_', ' ')} at {w.get('alert_at', w.get('cutoff'))}", f"{what}: {when}")
        elif w["outcome"] == "retrain_started":
            t.add_row(f"retrain started at {w['cutoff']}", f"after the {w['why'].replace('_', ' ')} alert at {w['alert_at']}")
        elif w["outcome"] == "live":
            t.add_row(f"swap to base {w['version']}", f"live at {w['live_at']}, re-learned {w['relearned']:,}")
        else:
            t.add_row(f"swap at {w.get('live_at')}", f"{w['outcome']}: {w.get('reason') or w.get('version')}")
    if summary.get("base_versions"):
        t.add_row("predictions per base version",
                  ", ".join(f"{k}: {v:,}" for k, v in sorted(summary["base_versions"].items())))
    console.print(t)
    console.print("outputs: " + ", ".join(f"{k}={v}" for k, v in summary["outputs"].items()))
    console.print(f"summary: {summary['run_dir']}/summary.json")


def _boot_artifact(base_registry: Optional[Path], artifact: Optional[Path]) -> Optional[Path]:
    """The artifact a run starting from ``base_registry`` serves: the given one, else the
    bootstrap folder's (``OUT/transform`` next to ``OUT/registry``: the features it was trained on)."""
    if artifact is None and base_registry is not None and (base_registry.parent / "transform").is_dir():
        return base_registry.parent / "transform"
    return artifact


def _warmup(base_registry: Optional[Path], warmup: Optional[Path], no_warmup: bool) -> Optional[Path]:
    """The event directory that warms the windowed counts, the dedup and the join up: the given
    one, else a bootstrap's history (``OUT/job.json``'s event_dir next to ``OUT/registry``), so
    the stream's first window of counts is the one the bootstrap's examples had and the
    history's impressions still pending at its cut join their labels; ``--no-warmup``: none."""
    if no_warmup:
        return None
    if warmup is not None or base_registry is None:
        return warmup
    boot = base_registry.parent / "job.json"
    if not boot.is_file():
        return None
    history = Path(json.loads(boot.read_text())["event_dir"])
    if not (history / "impressions").is_dir():
        console.print(f"[yellow]note:[/yellow] the bootstrap's history {history} is gone: the windowed counts "
                      "start empty (--warmup EVENT_DIR to give it)")
        return None
    return history


WARMUP_OPT = typer.Option(None, "--warmup", help="Event directory of the traffic before the stream (default with "
                                                 "--base-registry: the bootstrap's history): its end fills the "
                                                 "windowed counts, the dedup and the join (its impressions "
                                                 "pending at its cut join their labels); never served.")
NO_WARMUP_OPT = typer.Option(False, "--no-warmup", help="Start the windowed counts, the dedup and the join empty.")


MAX_PARALLELISM_OPT = typer.Option(None, help="Key groups: the highest parallelism the job can ever be rescaled "
                                              "to, fixed for its life (default 128; a resume keeps its run's).")
CHECKPOINT_OPT = typer.Option(None, "--checkpoint-interval",
                              help="Checkpoints this often, e.g. 30s (default 5s; a resume keeps its run's unless "
                                   "given): outputs commit at checkpoints, so with --kafka-exactly-once also how "
                                   "late read_committed consumers see them, and how many transactions there are.")
KAFKA_OPT = typer.Option(None, "--kafka", help="Read the impressions and labels from Kafka topics on these "
                                                "bootstrap servers (host:port[,...]) instead of the event "
                                                "directory (which still fits the transforms and is the run's "
                                                "log in its summary; see `driftline publish`).")
KAFKA_TOPICS_OPT = typer.Option("impressions,labels", "--kafka-topics", help="With --kafka: the impressions' "
                                                                             "and the labels' topic.")
KAFKA_GROUP_OPT = typer.Option("driftline", "--kafka-group", help="With --kafka: the consumer group id.")
KAFKA_REPLAY_OPT = typer.Option(None, "--kafka-replay", help="With --kafka: read exactly up to these end "
                                                             "offsets (the file `driftline publish --offsets` "
                                                             "wrote), then end: a replay; without it the job "
                                                             "reads on until stopped.")

KAFKA_OUTPUT_OPT = typer.Option(None, "--kafka-output", help="With --kafka: also write this output of the "
                                                              "job to a Kafka topic, OUTPUT=TOPIC (repeatable; "
                                                              "outputs: predictions, examples, updates, "
                                                              "late_labels, dead_letter, metrics, alerts): a "
                                                              "JSON record per message, at least once (exactly "
                                                              "once with --kafka-exactly-once).")

KAFKA_EXACTLY_ONCE_OPT = typer.Option(False, "--kafka-exactly-once", help="With --kafka-output: write the "
                                                                         "output topics in Kafka transactions, "
                                                                         "one per checkpoint (read them with "
                                                                         "isolation.level=read_committed).")

KAFKA_VALIDATE_OPT = typer.Option(False, "--kafka-validate", help="With --kafka: the topics carry producers' raw "
                                                                  "records: validate each in the stream (the "
                                                                  "ingest rules); an invalid one becomes a dead "
                                                                  "letter with its reason and the job goes on.")


def _kafka_preflight(kafka: dict) -> None:
    """``runners.kafka.preflight`` of a job's Kafka settings: errors end the command (exit 2)
    before anything starts, warnings are printed."""
    if not kafka:
        return
    from runners.kafka import KafkaConfig, preflight

    errors, warnings = preflight(KafkaConfig(**kafka))
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    if errors:
        for e in errors:
            console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)


def _kafka(servers: Optional[str], topics: str, group: str, replay: Optional[Path],
           outputs: Optional[List[str]] = None, validate: bool = False, exactly_once: bool = False) -> dict:
    """The job's ``kafka`` settings from the command line ({} without --kafka)."""
    from runners.kafka import KafkaConfig

    if servers is None:
        if replay is not None or outputs or validate or exactly_once:
            raise typer.BadParameter("--kafka-replay, --kafka-output, --kafka-exactly-once and --kafka-validate "
                                     "need --kafka")
        return {}
    if exactly_once and not outputs:
        raise typer.BadParameter("--kafka-exactly-once applies to --kafka-output topics: none given")
    names = topics.split(",")
    if len(names) != 2:
        raise typer.BadParameter("--kafka-topics: IMPRESSIONS,LABELS")
    pairs = [o.split("=", 1) for o in outputs or []]
    if any(len(p) != 2 for p in pairs) or len({p[0] for p in pairs}) != len(pairs):
        raise typer.BadParameter("--kafka-output: OUTPUT=TOPIC, each output once")
    try:
        ends = json.loads(replay.read_text()) if replay is not None else {}
        return KafkaConfig(servers, names[0], names[1], group, end_offsets=ends,
                           output_topics=dict(pairs), validate=validate, exactly_once=exactly_once).to_dict()
    except (OSError, ValueError) as e:
        raise typer.BadParameter(str(e))


@app.command()
def publish(event_dir: Path = typer.Argument(..., help="An event directory (JSONL parts)."),
            kafka: str = typer.Option(..., "--kafka", help="Bootstrap servers, host:port[,...]."),
            kafka_topics: str = KAFKA_TOPICS_OPT,
            partitions: int = typer.Option(1, help="Partitions of a topic made here (an existing topic keeps its)."),
            offsets: Optional[Path] = typer.Option(None, help="Write the end offsets here (JSON), for "
                                                              "`driftline run --kafka-replay`.")):
    """Write an event directory's impressions and labels to Kafka topics, each in event-time
    order, keyed by event_id: what `driftline run --kafka` reads. Prints the end offsets."""
    from kafka.errors import KafkaError

    from runners.kafka import KafkaConfig, publish as publish_topics

    cfg = KafkaConfig(**_kafka(kafka, kafka_topics, "driftline", None))
    try:
        ends = publish_topics(event_dir, cfg, partitions)
    except (FileNotFoundError, ValueError, KafkaError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    text = json.dumps({k: {str(p): o for p, o in v.items()} for k, v in ends.items()}, sort_keys=True)
    if offsets is not None:
        offsets.write_text(text + "\n")
    for stream, topic in zip(("impressions", "labels"), kafka_topics.split(",")):
        console.print(f"{stream} -> {topic}: {sum(ends[stream].values()):,} records")
    print(text)


@app.command()
def run(data: str = typer.Option("generator", help="generator | talkingdata | elec2 | an event directory"),
        out: Path = typer.Option(Path("runs/local"), help="Run folder (RUN_DIR)."),
        events: int = typer.Option(20_000, help="Impressions to generate (--data generator)."),
        seed: int = typer.Option(7, help="Generator seed."),
        spec: Optional[str] = typer.Option(None, help="Feature spec (default: the source's)."),
        artifact: Optional[Path] = typer.Option(None, help="A fitted transform artifact (default: fit "
                                                           "on the first 10% of impressions)."),
        window_ms: int = typer.Option(3_600_000, help="Attribution window W."),
        watermark_delay_ms: int = typer.Option(60_000, help="Bounded out-of-orderness."),
        late_policy: str = typer.Option("sink", help="sink | correction"),
        hybrid_share: float = typer.Option(1.0, help="A/B: share of units served hybrid."),
        precision: str = typer.Option("float64", help="FTRL state: float64 | float32 (half the memory)."),
        hold: bool = typer.Option(True, help="After a start or rebase, positives of open windows wait for "
                                             "their window to close (see models/online.py)."),
        delta_scales: str = typer.Option("1", help="Serve a mixture of base + s * delta over these comma-separated "
                                                   "scales s, weighted online by each one's log loss (models/mixer.py; "
                                                   "e.g. 0,0.25,0.5,0.75,1). 1: the delta whole (the plain hybrid)."),
        mix_share: float = typer.Option(0.001, help="The mixture's fixed-share rate (with --delta-scales)."),
        online_expert: bool = typer.Option(False, help="One more expert in the mixture: online-only FTRL over the "
                                                       "prior, never rebased (served when the stream alone "
                                                       "predicts better than base + delta; models/online.py)."),
        follow: bool = typer.Option(False, help="Keep monitoring the event directory (unbounded)."),
        speedup: float = typer.Option(0.0, help="Replay at most this many times event-time speed (e.g. 3600: "
                                                "an hour per second; 0: as fast as possible). Outputs are "
                                                "the same at any pace."),
        retrain_every: Optional[str] = typer.Option(None, help="Scheduled TFX retrains every this much event "
                                                                "time (e.g. 6h, 90m); default: none (the job "
                                                                "watches the registry instead)."),
        swap_delay: str = typer.Option("30m", help="Event time from a retrain boundary to its model going live."),
        retrain_on_drift: float = typer.Option(0.0, help="Also retrain when the online window's normalized "
                                                         "entropy rises this many times above its best (e.g. "
                                                         "1.2; 0: off)."),
        retrain_on_feature_drift: bool = typer.Option(False, help="Also retrain when a feature-drift alert "
                                                                  "fires (PSI above the monitor's threshold)."),
        triggered_retrain_delay: str = typer.Option("0", help="A retrain a drift alert starts waits this much "
                                                              "event time (e.g. 2h): its train split ends W + E "
                                                              "before its cutoff, so only then does it hold "
                                                              "traffic from after the alert."),
        train_hours: float = typer.Option(24.0, help="Retrains: K, hours of event time to train on."),
        eval_hours: float = typer.Option(2.0, help="Retrains: E, the most recent hours, evaluated on."),
        min_eval_positives: int = typer.Option(0, help="Retrains: a trained champion is replaced only on an "
                                                       "eval slice with at least this many positives."),
        data_dir_opt: Optional[Path] = typer.Option(None, "--data-dir", help="Data folder for real data sets."),
        report: bool = typer.Option(True, help="At the end, write RUN_DIR/report.html (driftline report)."),
        updates: bool = typer.Option(True, help="Write the per-event weight-update records (RUN_DIR/updates, "
                                                "the largest output); --no-updates: none are made."),
        base_registry: Optional[Path] = typer.Option(None, help="Start from this registry's current base model "
                                                                "(e.g. driftline bootstrap's OUT/registry; its "
                                                                "OUT/transform is the default --artifact)."),
        warmup: Optional[Path] = WARMUP_OPT, no_warmup: bool = NO_WARMUP_OPT,
        prometheus_ports: str = typer.Option("", "--prometheus-ports", help="Serve the job's Flink metrics "
                                             "(the Learner's too) for Prometheus on 127.0.0.1, on a free port "
                                             "of this range, e.g. 9250-9259."),
        rest_port: int = typer.Option(0, "--rest-port", help="The local job's REST port on 127.0.0.1 (0: a free "
                                                              "one, in RUN_DIR/job.json): `driftline savepoint "
                                                              "--run RUN_DIR` and Ctrl-C (stop with a savepoint) "
                                                              "use it."),
        parallelism: Optional[int] = typer.Option(None, help="Parallelism of the SQL operators (sources, "
                                                             "windowed counts, dedup and join; the Learner always "
                                                             "1). Default 1; a resume keeps its run's unless given."),
        max_parallelism: Optional[int] = MAX_PARALLELISM_OPT,
        checkpoint_interval: Optional[str] = CHECKPOINT_OPT,
        from_savepoint: Optional[str] = typer.Option(None, help="Resume RUN_DIR's job (its job.json decides "
                                                                "the data and settings; --follow, --speedup, "
                                                                "--[no-]updates, --rest-port, --prometheus-ports "
                                                                "and a given --parallelism or --checkpoint-interval "
                                                                "apply) from this savepoint."),
        allow_non_restored_state: bool = typer.Option(
            False, "--allow-non-restored-state",
            help="With --from-savepoint: skip its state that maps to no operator of this build."),
        kafka: Optional[str] = KAFKA_OPT, kafka_topics: str = KAFKA_TOPICS_OPT, kafka_group: str = KAFKA_GROUP_OPT,
        kafka_replay: Optional[Path] = KAFKA_REPLAY_OPT, kafka_output: Optional[List[str]] = KAFKA_OUTPUT_OPT,
        kafka_validate: bool = KAFKA_VALIDATE_OPT, kafka_exactly_once: bool = KAFKA_EXACTLY_ONCE_OPT):
    """The main job on the Flink mini-cluster: events -> features -> score -> delayed-label join
    -> FTRL (-> scheduled TFX retrains -> base-model swaps); writes outputs and
    RUN_DIR/summary.json, prints a summary. Stopped with a savepoint (Ctrl-C, or `driftline
    savepoint --run RUN_DIR --stop`), it resumes with `driftline run --out RUN_DIR
    --from-savepoint PATH`."""
    from pipelines.join import JoinConfig
    from models.online import OnlineConfig
    from runners.local import prepare_events
    from runners.stream import run_stream

    if speedup < 0:
        raise typer.BadParameter("--speedup must be >= 0")
    if allow_non_restored_state and not from_savepoint:
        console.print("[red]error:[/red] --allow-non-restored-state needs --from-savepoint")
        raise typer.Exit(2)
    from runners.local import free_port

    rest_port = rest_port or free_port()
    rest = {"rest.port": str(rest_port), "rest.bind-port": str(rest_port)}
    scale = _given(parallelism=parallelism, max_parallelism=max_parallelism, checkpoint_interval=checkpoint_interval)
    if from_savepoint:
        try:
            summary = _resume_local(out, from_savepoint, allow_non_restored_state, rest, follow=follow,
                                    replay_speedup=speedup, write_updates=updates, prometheus_ports=prometheus_ports,
                                    **scale)
        except typer.Exit:  # a refused resume (click's Exit is a RuntimeError too)
            raise
        except RuntimeError as e:  # the job failed (its log's end says why)
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1)
        _end_run(out, summary, report)
        return

    try:
        join = JoinConfig(window_ms=window_ms, watermark_delay_ms=watermark_delay_ms, late_policy=late_policy)
        from models.ftrl import FTRLParams

        online = OnlineConfig(hybrid_share=hybrid_share, ftrl=FTRLParams(precision=precision), hold_after_reset=hold,
                              delta_scales=tuple(float(x) for x in delta_scales.split(",") if x.strip()),
                              mix_share=mix_share, online_expert=online_expert)
    except ValueError as e:
        raise typer.BadParameter(str(e))
    try:
        event_dir, source = prepare_events(data, out, events, seed, data_dir_opt)
    except (DataDirMissing, ValueError, FileNotFoundError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    job: dict = {"follow": follow, "replay_speedup": speedup, "write_updates": updates, **scale,
                 "prometheus_ports": prometheus_ports, "flink_conf": rest,
                 "kafka": _kafka(kafka, kafka_topics, kafka_group, kafka_replay, kafka_output, kafka_validate,
                                 kafka_exactly_once)}
    _kafka_preflight(job["kafka"])
    retrain_cfg = {"train_hours": train_hours, "eval_hours": eval_hours, "min_eval_positives": min_eval_positives}
    if retrain_every or retrain_on_drift or retrain_on_feature_drift:
        every = _duration_ms(retrain_every) if retrain_every else 0
        delay = _duration_ms(swap_delay)
        # the rebase re-learns from the new model's train_end = boundary - W - E, up to its live time
        job.update(retrain_every_ms=every, swap_delay_ms=delay, drift_retrain_ratio=retrain_on_drift,
                   replay_buffer_ms=max(every, window_ms + int(eval_hours * 3_600_000) + delay + 3_600_000),
                   triggered_retrain_delay_ms=_duration_ms(triggered_retrain_delay))
        if retrain_on_feature_drift:
            job["feature_drift"] = {"retrain": True}
    if base_registry is not None:
        artifact = _boot_artifact(base_registry, artifact)
        job["base_registry"] = base_registry
    job["warmup"] = _warmup(base_registry, warmup, no_warmup)
    from models.registry import RegistryError

    try:
        summary = run_stream(event_dir, out, spec or source, join, online, artifact, retrain=retrain_cfg, **job)
    except (RegistryError, ValueError) as e:  # the base model or warm-up does not fit the run
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    except RuntimeError as e:  # the job failed (its log's end says why), e.g. a record it cannot parse
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1)
    _end_run(out, summary, report)


def _end_run(out: Path, summary: dict, report: bool) -> None:
    """After a local job: its summary (and report); a job stopped with a savepoint says how to
    resume it; exit 1 if the counts do not reconcile."""
    _print_run(summary)
    stopped = out / STOPPED
    if stopped.is_file():
        import time

        deadline = time.time() + 60  # `driftline savepoint --stop` writes the path once it has it
        while (path := json.loads(stopped.read_text())["savepoint"]) is None and time.time() < deadline:
            time.sleep(0.5)
        # plain print: a command to copy must not be wrapped
        print(f"stopped with a savepoint: {path}\nresume: driftline run --out {out} --from-savepoint {path}"
              if path else "stopped with a savepoint (its path: the output of `driftline savepoint --stop`)")
    elif report:
        from pipelines.run_report import build_run_report

        console.print(f"report: {build_run_report(out)}")
    # a stopped job has not read all of its input yet: its counts reconcile once the resumed one ends
    if summary["reconciliation"] and not summary["reconciliation"]["reconciles"] and summary["final"]:
        raise typer.Exit(1)


def _resume_local(out: Path, savepoint: str, allow_non_restored: bool, rest: dict, **changes) -> dict:
    """``driftline run --from-savepoint``: the run of ``out/job.json`` resumed on the
    mini-cluster (its outputs, registry and retrains kept, as ``submit --from-savepoint`` on a
    cluster), ``changes`` applied to its job.json once the savepoint is checked against it."""
    from pipelines.eventlog import read_manifest
    from pipelines.examples import export_parquet
    from runners.flink_job import JobConfig
    from runners.stream import run_job, summarize

    if not (out / "job.json").is_file():
        console.print(f"[red]error:[/red] nothing to resume: no {out / 'job.json'} (a run folder of driftline run)")
        raise typer.Exit(2)
    job = json.loads((out / "job.json").read_text())
    conf = {k: v for k, v in (job.get("flink_conf") or {}).items()
            if not k.startswith(("execution.state-recovery.", "rest.port", "rest.bind-port"))}
    conf["execution.state-recovery.path"] = savepoint
    if allow_non_restored:  # Flink's --allowNonRestoredState
        conf["execution.state-recovery.ignore-unclaimed-state"] = "true"
    job.update(changes, flink_conf={**conf, **rest})
    _kafka_preflight(job.get("kafka") or {})
    _stage_resume(out, job, savepoint, allow_non_restored)
    (out / STOPPED).unlink(missing_ok=True)
    if (out / "flink.log").is_file():  # the stopped part's log, kept
        (out / "flink.log").replace(out / f"flink.{len(list(out.glob('flink.*.log'))) + 1}.log")
    cfg = JobConfig.from_dict(job)
    seconds = run_job(cfg, out)
    export_parquet(out)
    return summarize(out, read_manifest(cfg.event_dir), seconds, final=not (out / STOPPED).is_file())


@app.command()
def bootstrap(event_dir: Path = typer.Argument(..., help="Historical event directory (JSONL)."),
              out: Path = typer.Option(..., help="Folder for the artifact, the examples and the registry."),
              window_ms: int = typer.Option(3_600_000, help="Attribution window W (the stream's)."),
              late_policy: str = typer.Option("sink", help="sink | correction"),
              train_hours: float = typer.Option(24.0, help="K: hours of history to train on."),
              eval_hours: float = typer.Option(2.0, help="E: the most recent hours, evaluated on."),
              beam_arg: List[str] = typer.Option([], "--beam-arg", help="Beam pipeline option for the fit and "
                                                                       "the backfill, repeatable.")):
    """The first base model from history, offline: fit the transforms (Beam), backfill joined
    examples (Beam), one TFX retrain -> OUT/registry. Then `driftline run --base-registry
    OUT/registry` serves it from the stream's first tick."""
    from pipelines.bootstrap import bootstrap as run_bootstrap
    from pipelines.join import JoinConfig
    from pipelines.retrain import RetrainConfig

    try:
        join = JoinConfig(window_ms=window_ms, late_policy=late_policy)
    except ValueError as e:
        raise typer.BadParameter(str(e))
    try:
        outcome = run_bootstrap(event_dir, out, join, RetrainConfig(train_hours=train_hours, eval_hours=eval_hours),
                                pipeline_args=list(beam_arg) or None)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    print_retrain(outcome)
    if not outcome.get("pushed"):
        console.print("[red]no base model pushed[/red] (see the outcome above)")
        raise typer.Exit(1)
    console.print(f"base {outcome['version']} (artifact {outcome['artifact_version']}, {outcome['examples']:,} "
                  f"examples); next: driftline run --data LIVE_EVENT_DIR --base-registry {out / 'registry'} "
                  f"(the history warms its windowed counts, dedup and join up)")


@app.command()
def backfill(event_dir: Path = typer.Argument(..., help="Historical event directory (JSONL)."),
             artifact: Path = typer.Option(..., help="A fitted transform artifact (e.g. RUN_DIR/transform)."),
             out: Path = typer.Option(..., help="Folder for examples.jsonl, late_labels.jsonl, dead_letter.jsonl."),
             window_ms: int = typer.Option(3_600_000, help="Attribution window W."),
             late_policy: str = typer.Option("sink", help="sink | correction"),
             beam_arg: List[str] = typer.Option([], "--beam-arg", help="Beam pipeline option, repeatable.")):
    """Joined examples from historical logs with Beam: the streaming job's join and features."""
    from pipelines.backfill import backfill_examples
    from pipelines.join import JoinConfig
    from transforms.artifact import TransformArtifact

    try:
        join = JoinConfig(window_ms=window_ms, late_policy=late_policy)
    except ValueError as e:
        raise typer.BadParameter(str(e))
    counts = backfill_examples(event_dir, TransformArtifact.load(artifact), join, out, beam_arg or None)
    console.print(f"backfill -> {out}: " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))


def _given(checkpoint_interval: Optional[str] = None, **settings) -> dict:
    """The JobConfig settings of the options given (None: not given, so the default, or on a
    resume its run's), ``checkpoint_interval`` as ``checkpoint_interval_ms``."""
    out = {k: v for k, v in settings.items() if v is not None}
    if checkpoint_interval is not None:
        out["checkpoint_interval_ms"] = _duration_ms(checkpoint_interval)
    return out


def _duration_ms(text: str) -> int:
    """'6h', '90m', '2d', '3600000' (ms) -> milliseconds."""
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
    for u in ("ms", "s", "m", "h", "d"):
        if text.endswith(u) and text[: -len(u)].replace(".", "", 1).isdigit():
            return int(float(text[: -len(u)]) * units[u])
    if text.isdigit():
        return int(text)
    raise typer.BadParameter(f"not a duration: {text!r} (e.g. 6h, 90m, 2d)")


def print_retrain(o: dict) -> None:
    t = Table(title=f"TFX retrain, cutoff {o['cutoff']}: {o['status']}")
    t.add_column("what")
    t.add_column("value", justify="right")
    for split in ("train", "eval"):
        c = o["counts"][split]
        t.add_row(f"{split} examples (positives)", f"{c['examples']:,} ({c['positives']:,})")
    ev = o.get("evaluation") or {}
    for who in ("candidate", "champion"):
        if who in ev:
            m = ev[who]
            auc = "-" if m["auc"] is None else f"{m['auc']:.4f}"
            t.add_row(f"{who} logloss / AUC / calibration", f"{m['logloss']:.5f} / {auc} / {m['calibration']:.3f}")
    if "infra" in o:
        t.add_row("infra check", "ok" if o["infra"]["blessed"] else f"FAILED: {o['infra'].get('reason')}")
    if ev:
        t.add_row("blessed", "yes" if ev["blessed"] else "no: " + "; ".join(ev["reasons"]))
    t.add_row("pushed version", str(o.get("version") or "-"))
    t.add_row("wall time", f"{o['seconds']:.1f} s")
    console.print(t)
    if o.get("reason"):
        console.print(f"[yellow]{o['reason']}[/yellow]")


@app.command()
def retrain(run: Path = typer.Option(Path("runs/local"), "--run", help="The run folder (RUN_DIR) whose joined "
                                                                        "examples to train on."),
            cutoff: Optional[int] = typer.Option(None, help="Event-time cutoff (epoch ms); default: everything "
                                                            "resolved so far."),
            train_hours: Optional[float] = typer.Option(None, help="K: hours of event time to train on "
                                                                   "(default: the run's setting, else 24)."),
            eval_hours: Optional[float] = typer.Option(None, help="E: the most recent hours, evaluated on "
                                                                  "(default: the run's setting, else 2)."),
            source: str = typer.Option("sink", help="sink (the committed examples) | segments (what a "
                                                    "scheduled job wrote at its boundaries)."),
            runner: Optional[str] = typer.Option(None, help="local (LocalDagRunner) | beam (BeamDagRunner)."),
            beam_arg: List[str] = typer.Option([], "--beam-arg", help="Beam pipeline option, repeatable "
                                                                     "(e.g. --beam-arg=--runner=...).")):
    """One TFX retrain of the base model now: rolling span -> validate -> Transform -> Trainer ->
    infra check + evaluation vs the champion -> push into RUN_DIR/registry if blessed."""
    from dataclasses import replace

    from pipelines.retrain import retrain as run_retrain, run_config

    if runner not in (None, "local", "beam"):
        raise typer.BadParameter("runner must be local or beam")
    if source not in ("sink", "segments"):
        raise typer.BadParameter("source must be sink or segments")
    given = {"train_hours": train_hours, "eval_hours": eval_hours, "runner": runner,
             "beam_pipeline_args": tuple(beam_arg) or None}
    cfg = replace(run_config(run), **{k: v for k, v in given.items() if v is not None})
    outcome = run_retrain(run, cutoff, cfg, source)
    print_retrain(outcome)
    if outcome["status"] == "failed":
        raise typer.Exit(1)


@app.command()
def evaluate(data: str = typer.Option("generator", help="generator | talkingdata | elec2 | an event directory; "
                                                        "comma-separated: one run folder each under --out, one "
                                                        "report over all"),
             out: Path = typer.Option(Path("runs/eval"), help="Run folder for the evaluation (RUN_DIR)."),
             strategies: str = typer.Option(",".join(("static", "periodic", "online", "hybrid", "hybrid_replay",
                                                      "hybrid_fn", "hybrid_fnw", "hybrid_mix", "hybrid_mix_online")),
                                            help="Comma-separated: static, periodic, online, hybrid, hybrid_replay "
                                                 "(replay-buffer mixing), hybrid_fn / hybrid_fnw (learn negatives at "
                                                 "once: fake negatives, unweighted / fake-negative weighted), "
                                                 "hybrid_mix (serve a mixture over scales of the delta, weighted "
                                                 "online: models.mixer), hybrid_mix_online (the same with online-only "
                                                 "FTRL as one more expert)."),
             events: int = typer.Option(20_000, help="Impressions to generate (--data generator)."),
             seed: int = typer.Option(7, help="Generator seed."),
             period: Optional[str] = typer.Option(None, help="Retrain period in event time (default: talkingdata "
                                                               "1d, elec2 7d, generator 2h)."),
             window_ms: int = typer.Option(3_600_000, help="Attribution window W."),
             eval_hours: Optional[float] = typer.Option(None, help="Each retrain's evaluation slice E (hours; "
                                                                    "default: a quarter period)."),
             align: str = typer.Option("start", help="Period boundaries: start (data start + k periods: "
                                                     "train day 1, serve day 2) | calendar."),
             bootstrap: int = typer.Option(200, help="Bootstrap resamples for the confidence intervals."),
             tune: bool = typer.Option(True, help="Choose FTRL alpha/l1 on the first period only."),
             data_dir_opt: Optional[Path] = typer.Option(None, "--data-dir", help="Data folder for real data sets."),
             overwrite: bool = typer.Option(False, help="Replace what --out holds (it must be new or empty "
                                                        "otherwise).")):
    """Does the hybrid win? Progressive replay of a data source: strategies side by side."""
    from pipelines.evaluate import EvalConfig
    from pipelines.evaluate import evaluate as run_evaluation
    from pipelines.join import JoinConfig

    names = [d.strip() for d in data.split(",") if d.strip()]
    if len(names) > 1:  # one run folder per data set, then one report and summary over them
        from pipelines.report import build_report

        for name in names:
            evaluate(data=name, out=out / Path(name).name, strategies=strategies, events=events, seed=seed,
                     period=period, window_ms=window_ms, eval_hours=eval_hours, align=align, bootstrap=bootstrap,
                     tune=tune, data_dir_opt=data_dir_opt, overwrite=overwrite)
        console.print(f"report over {', '.join(names)} -> {build_report(out)}; summary: {out / 'summary.json'}")
        return
    try:
        cfg = EvalConfig(data=data, events=events, seed=seed, period_ms=_duration_ms(period) if period else None,
                         strategies=tuple(s.strip() for s in strategies.split(",") if s.strip()),
                         join=JoinConfig(window_ms=window_ms, late_policy="correction"), bootstrap=bootstrap,
                         align=align, tune=tune,
                         retrain={} if eval_hours is None else {"eval_hours": eval_hours})
    except ValueError as e:
        raise typer.BadParameter(str(e))
    try:
        r = run_evaluation(out, cfg, str(data_dir_opt) if data_dir_opt else None, overwrite=overwrite)
    except FileExistsError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1)
    table = Table(title=f"progressive evaluation: {r['data']} ({r['impressions']:,} impressions)")
    for col in ("period", "strategy", "logloss", "AUC", "NE", "calibration", "hybrid - this: logloss [95% CI]"):
        table.add_column(col)
    for p in r["periods"]:
        for name, m in p["strategies"].items():
            ci = p["hybrid_vs"].get(name, {}).get("logloss")
            table.add_row(p["period"], name, f"{m['logloss']:.5f}", f"{m['auc']:.4f}", f"{m['ne']:.4f}",
                          f"{m['calibration']:.3f}",
                          f"{ci['diff']:+.5f} [{ci['low']:+.5f}, {ci['high']:+.5f}]" if ci else "")
    console.print(table)
    console.print(f"summary: {Path(out) / 'summary.json'}; report: {Path(out) / 'report.html'}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run folder of `driftline evaluate` or `driftline run`."),
           out: Optional[Path] = typer.Option(None, help="HTML file to write (default RUN_DIR/report.html).")):
    """Build the report (one self-contained HTML file) of a run folder: an evaluation's
    strategies, or a streaming run's quality, drift, swaps, retrains, alerts and A/B arms."""
    from pipelines.report import build_report, runs_in
    from pipelines.run_report import build_run_report

    try:
        if not runs_in(run_dir) and (run_dir / "job.json").is_file():
            console.print(f"report -> {build_run_report(run_dir, out)}")
        else:
            console.print(f"report -> {build_report(run_dir, out)}")
    except FileNotFoundError as e:
        console.print(f"[red]{e}: not a `driftline evaluate` or `driftline run` folder[/red]")
        raise typer.Exit(1)


@app.command("export-examples")
def export_examples(run_dir: Path = typer.Argument(..., help="A run folder (RUN_DIR) of the streaming job.")):
    """Export the committed joined-example partitions of RUN_DIR as Parquet (by event-time
    hour) into RUN_DIR/examples_parquet; incremental, safe while a --follow job runs."""
    from pipelines.examples import export_parquet

    written = export_parquet(run_dir)
    console.print(f"{len(written)} partition(s) written -> {run_dir / 'examples_parquet'}")


@app.command()
def generate(out: Path = typer.Option(..., help="Event directory to write."),
             events: int = typer.Option(100_000, help="Impressions to generate."),
             seed: int = typer.Option(7, help="Seed: the same seed gives the same bytes."),
             config: Optional[Path] = typer.Option(None, help="YAML/JSON GeneratorConfig overrides."),
             fmt: str = typer.Option("jsonl", "--format", callback=_check_format, help="jsonl | parquet"),
             raw: bool = typer.Option(True, help="Also keep the as-received stream in raw/.")):
    """Generate a seeded synthetic CTR stream (drift, delayed labels, dirt) with its ground truth."""
    import yaml

    from runners.local import generate_event_dir

    overrides = yaml.safe_load(config.read_text()) if config else {}
    cfg = GeneratorConfig.from_dict({**overrides, "events": events, "seed": seed})
    print_summary(generate_event_dir(out, cfg, fmt, keep_raw=raw), f"generated -> {out}")


@app.command()
def load(source: str = typer.Argument(..., help="talkingdata | elec2"),
         out: Path = typer.Option(..., help="Event directory to write."),
         data_dir_opt: Optional[Path] = typer.Option(None, "--data-dir",
                                                     help="Data folder (default $DRIFTLINE_DATA_DIR "
                                                          "or ../shared/data)."),
         fmt: str = typer.Option("jsonl", "--format", callback=_check_format, help="jsonl | parquet")):
    """Turn a real data set into a validated event directory."""
    from runners.local import LOADERS, load_event_dir
    from pipelines.sources import elec2, talkingdata

    rel = {"talkingdata": talkingdata.RELATIVE_PATH, "elec2": elec2.RELATIVE_PATH}
    if source not in LOADERS:
        raise typer.BadParameter(f"expected one of {sorted(LOADERS)}", param_hint="SOURCE")
    try:
        path = data_dir(data_dir_opt, need=rel[source]) / rel[source]
    except DataDirMissing as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    print_summary(load_event_dir(source, out, path, fmt), f"{source} -> {out}")


@app.command()
def ingest(paths: List[Path] = typer.Argument(..., help="Files or folders (JSONL, CSV, Parquet)."),
           out: Path = typer.Option(..., help="Event directory to write."),
           source: str = typer.Option(..., help=f"A built-in source {sorted(SOURCES)} or a spec file."),
           kind: Optional[str] = typer.Option(None, help=f"Kind for files without a 'kind' field: {KINDS}"),
           fmt: str = typer.Option("jsonl", "--format", callback=_check_format, help="jsonl | parquet")):
    """Validate a user's event files into an event directory (bad records to dead_letter/)."""
    from runners.local import ingest_event_dir

    try:
        spec = get_source(source)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--source")
    print_summary(ingest_event_dir([str(p) for p in paths], spec, out, kind, fmt), f"ingested -> {out}")


@app.command()
def summary(event_dir: Path = typer.Argument(..., help="An event directory."),
            as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON.")):
    """Print the counts of an event directory."""
    try:
        manifest = read_manifest(event_dir)
    except FileNotFoundError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        print_summary(manifest, str(event_dir))


@app.command()
def ab(run_dir: Path = typer.Argument(..., help="A run folder (driftline run --hybrid-share S)."),
       bootstrap: int = typer.Option(200, help="Unit-bootstrap resamples for the intervals."),
       seed: int = typer.Option(0, help="Bootstrap seed."),
       as_json: bool = typer.Option(False, "--json", help="Print the analysis as JSON.")):
    """A/B analysis of a run's served predictions: per arm (hybrid, base only) and base version
    log loss, AUC, NE, calibration; hybrid arm - base arm, and in the hybrid arm served - base
    model alone, with intervals from a bootstrap over units (what the arms randomize). Writes
    RUN_DIR/ab.json."""
    from runners.stream import ab_report

    if not (run_dir / "job.json").is_file():
        console.print(f"[red]error:[/red] {run_dir} is not a run folder (no job.json)")
        raise typer.Exit(2)
    r = ab_report(run_dir, n=bootstrap, seed=seed)
    if as_json:
        print(json.dumps(r, indent=1, sort_keys=True, default=float))
        return
    fmt = lambda x: "n/a" if x is None or x != x else f"{x:.4f}"  # noqa: E731
    t = Table(title=f"A/B of {run_dir} (hybrid share {r['hybrid_share']}, unit: {r['unit']})")
    for col in ("arm", "units", "impressions", "positives", "logloss", "AUC", "NE", "calibration", "served hybrid"):
        t.add_column(col)
    for arm, m in r["arms"].items():
        t.add_row(arm, f"{m['units']:,}", f"{m['n']:,}", f"{m['positives']:,}", fmt(m["logloss"]), fmt(m["auc"]),
                  fmt(m["ne"]), fmt(m["calibration"]), f"{m['served_hybrid']:,}")
    console.print(t)
    v = Table(title="per base version (the model served)")
    for col in ("base version", "arm", "impressions", "positives", "logloss", "AUC", "calibration"):
        v.add_column(col)
    for version, arms in r["by_base_version"].items():
        for arm, m in arms.items():
            v.add_row(version, arm, f"{m['n']:,}", f"{m['positives']:,}", fmt(m["logloss"]), fmt(m["auc"]),
                      fmt(m["calibration"]))
    console.print(v)
    titles = {"hybrid_minus_base": "hybrid arm - base arm (different units)",
              "hybrid_arm_served_minus_base_only": "hybrid arm: served - base model alone (same impressions)"}
    for key, title in titles.items():
        if not r[key]:
            continue
        d = Table(title=f"{title}, 95 % interval over {bootstrap} unit resamples")
        for col in ("metric", "difference", "interval", "excludes 0"):
            d.add_column(col)
        for metric, x in r[key].items():
            d.add_row(metric, fmt(x["diff"]), f"[{fmt(x['low'])}, {fmt(x['high'])}]", "yes" if x["excludes_zero"] else "no")
        console.print(d)
    if not r["hybrid_minus_base"]:
        console.print("one arm only: no comparison between arms (run with --hybrid-share between 0 and 1)")
    if r["arms_check"]["mismatched"]:
        console.print(f"[red]warning:[/red] {r['arms_check']['mismatched']} predictions' arms differ from their "
                      f"units' ({r['unit']}): the unit field is not what the job used")
    console.print(f"ab: {run_dir / 'ab.json'}")


@app.command()
def sources():
    """List the built-in data sources and their fields."""
    t = Table(title="sources")
    for col in ("name", "entity ids", "categorical", "numeric", "labels", "fingerprint"):
        t.add_column(col)
    for s in SOURCES.values():
        t.add_row(s.name, ", ".join(s.entity_fields), ", ".join(s.categorical_fields),
                  ", ".join(s.numeric_fields), ", ".join(s.label_types), s.fingerprint())
    console.print(t)


transforms_app = typer.Typer(help="Feature transforms: show specs, fit artifacts, backfill aggregates.",
                             no_args_is_help=True)
app.add_typer(transforms_app, name="transforms")


def _spec(name: str):
    from transforms.spec import load_spec

    try:
        return load_spec(name)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="SPEC")


@transforms_app.command("show")
def transforms_show(spec: str = typer.Argument(..., help="A shipped spec (generator, talkingdata, "
                                                         "elec2) or a YAML path."),
                    artifact: Optional[Path] = typer.Option(None, help="Also show a fitted artifact.")):
    """Print a feature spec, its fingerprint and its sparse layout (and a fitted artifact)."""
    s = _spec(spec)
    t = Table(title=f"spec {s.name} fingerprint={s.fingerprint()} dimension={s.dimension:,}")
    t.add_column("sparse feature")
    t.add_column("offset", justify="right")
    t.add_column("buckets", justify="right")
    offsets = s.offsets()
    for name, buckets in s.sparse_features():
        t.add_row(name, f"{offsets[name]:,}", f"{buckets:,}")
    console.print(t)
    for a in s.aggregates:
        console.print(f"aggregate {a.name}: count of impressions with the same {'+'.join(a.keys)} "
                      f"in [t - {a.window_ms} ms, t), ties at t excluded")
    if artifact:
        from transforms.artifact import TransformArtifact

        try:
            art = TransformArtifact.load(artifact)
        except (OSError, ValueError) as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2)
        if art.spec_fingerprint != s.fingerprint():
            console.print(f"[red]error:[/red] artifact was fitted for spec {art.spec_fingerprint}, "
                          f"not {s.fingerprint()}")
            raise typer.Exit(2)
        console.print(f"artifact version={art.version} rows={art.rows:,} "
                      f"event_time_range={list(art.event_time_range)}")
        for k, v in sorted(art.numeric.items()):
            console.print(f"  {k}: mean={v.mean:.6g} std={v.std:.6g} boundaries={len(v.boundaries)}")


def _impressions_of(event_dir: Path) -> None:
    try:
        read_manifest(event_dir)
    except FileNotFoundError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)


@transforms_app.command("fit")
def transforms_fit(spec: str = typer.Argument(..., help="Spec name or YAML path."),
                   event_dir: Path = typer.Argument(..., help="Event directory (JSONL) to analyze."),
                   out: Path = typer.Option(..., help="Folder for transform_artifact.json."),
                   beam_arg: List[str] = typer.Option([], "--beam-arg",
                                                      help="Beam pipeline option, repeatable "
                                                           "(default --runner=DirectRunner).")):
    """Fit (analyze) a transform artifact over an event directory with Beam."""
    from transforms.beam import fit_event_dir

    _impressions_of(event_dir)
    s = _spec(spec)
    source = get_source(read_manifest(event_dir)["source"]["name"])
    art = fit_event_dir(s, source, event_dir, out, beam_arg or None)
    console.print(f"artifact version={art.version} spec={art.spec_fingerprint} rows={art.rows:,} "
                  f"-> {out}")


@transforms_app.command("backfill")
def transforms_backfill(spec: str = typer.Argument(..., help="Spec name or YAML path."),
                        event_dir: Path = typer.Argument(..., help="Event directory (JSONL)."),
                        out: Path = typer.Option(..., help="JSONL file to write."),
                        beam_arg: List[str] = typer.Option([], "--beam-arg",
                                                           help="Beam pipeline option, repeatable.")):
    """Backfill the windowed aggregate features of every impression with Beam (batch)."""
    from transforms.beam import backfill_event_dir

    _impressions_of(event_dir)
    backfill_event_dir(_spec(spec), event_dir, out, beam_arg or None)
    console.print(f"aggregates -> {out}")


models_app = typer.Typer(help="The model registry: versioned base (TFX) and delta (FTRL) models.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")
REGISTRY_OPT = typer.Option(Path("runs/local/registry"), "--registry", help="Registry root (RUN_DIR/registry).")
KIND_OPT = typer.Option("delta", "--kind", help="base | delta")


def _registry_call(fn):
    """Run a registry operation; a refused model is a clear message and exit 1, not a trace."""
    from models.registry import RegistryError

    try:
        return fn()
    except RegistryError as e:
        console.print(f"[red]refused:[/red] {e}")
        raise typer.Exit(1)


@models_app.command("list")
def models_list(registry: Path = REGISTRY_OPT, kind: str = KIND_OPT):
    """Versions of a kind, oldest first; * marks the current one."""
    from models.registry import Registry

    reg = Registry(registry)
    current = _registry_call(lambda: reg.current(kind))
    t = Table(title=f"{kind} models in {registry}")
    for col in ("", "version", "created (unix)", "spec fingerprint"):
        t.add_column(col)
    for v in _registry_call(lambda: reg.versions(kind)):
        m = json.loads((registry / kind / v / "manifest.json").read_text()) if (registry / kind / v / "manifest.json").exists() else {}
        t.add_row("*" if v == current else "", v, f"{m.get('created_unix', 0):.0f}", str(m.get("spec_fingerprint", "?")))
    console.print(t)


@models_app.command("show")
def models_show(version: str = typer.Argument(...), registry: Path = REGISTRY_OPT, kind: str = KIND_OPT,
                full: bool = typer.Option(False, "--full", help="the feature reference's every bin, too")):
    """Verify a version (checksums) and print its manifest (a base model's feature reference
    as its size and bins per feature, unless --full)."""
    from models.registry import Registry

    ref = _registry_call(lambda: Registry(registry).verify(kind, version))
    manifest = dict(ref.manifest)
    fr = manifest.get("feature_reference")
    if fr and not full:
        manifest["feature_reference"] = {**{k: v for k, v in fr.items() if k != "features"},
                                         "bins": {n: len(f["keys"]) for n, f in fr.get("features", {}).items()}}
    console.print_json(json.dumps(manifest))


@models_app.command("promote")
def models_promote(version: str = typer.Argument(...), registry: Path = REGISTRY_OPT, kind: str = KIND_OPT):
    """Make VERSION current (refused, and the current one kept, if it is corrupted)."""
    from models.registry import Registry

    _registry_call(lambda: Registry(registry).promote(kind, version))
    console.print(f"{kind} {version} is current")


@models_app.command("rollback")
def models_rollback(version: str = typer.Argument(...), registry: Path = REGISTRY_OPT, kind: str = KIND_OPT):
    """Make an earlier VERSION current again."""
    from models.registry import Registry

    _registry_call(lambda: Registry(registry).rollback(kind, version))
    console.print(f"{kind} rolled back to {version}")


cluster_app = typer.Typer(help="A standalone Flink cluster from the pip-installed PyFlink "
                                "(127.0.0.1 only).", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
ROOT_OPT = typer.Option(Path("runs/cluster"), "--root", help="Folder for its conf, logs, pids, checkpoints.")
PORT_OPT = typer.Option(18081, "--rest-port", help="REST port (bound to 127.0.0.1).")


def _cluster(root: Path, rest_port: int):
    from runners.cluster import ClusterConfig

    return ClusterConfig(root=str(root), rest_port=rest_port)


@cluster_app.command("up")
def cluster_up(root: Path = ROOT_OPT, rest_port: int = PORT_OPT,
               slots: int = typer.Option(2, help="Task slots of the TaskManager."),
               buffer_debloat: bool = typer.Option(
                   True, help="Size in-flight data to ~1 s of throughput: checkpoints and savepoints "
                              "of a back-pressured job in seconds, for some throughput."),
               prometheus_ports: str = typer.Option(
                   "", "--prometheus-ports", help="Serve Prometheus metrics (the job's operators and the "
                                                  "Learner's too) on 127.0.0.1, each daemon on a free port of "
                                                  "this range, e.g. 9250-9259.")):
    """Start one JobManager and one TaskManager with our conf dir."""
    from runners.cluster import ClusterConfig, up

    try:
        s = up(ClusterConfig(root=str(root), rest_port=rest_port, slots=slots, parallelism=slots,
                             buffer_debloat=buffer_debloat, prometheus_ports=prometheus_ports))
    except RuntimeError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1)
    console.print(f"cluster up: {s['rest']} pids={s['pids']} taskmanagers={s['overview']['taskmanagers']} "
                  f"slots={s['overview']['slots-total']}")
    for url in s["metrics"]:
        console.print(f"metrics: {url}")


@cluster_app.command("down")
def cluster_down(root: Path = ROOT_OPT, rest_port: int = PORT_OPT):
    """Stop only the processes that `cluster up` started from this folder."""
    from runners.cluster import down

    console.print(f"stopped pids {down(_cluster(root, rest_port))}")


@cluster_app.command("status")
def cluster_status(root: Path = ROOT_OPT, rest_port: int = PORT_OPT):
    """Is the cluster up (our pids alive and its REST endpoint answering)?"""
    from runners.cluster import status

    s = status(_cluster(root, rest_port))
    print(json.dumps(s, indent=1))
    raise typer.Exit(0 if s["up"] else 1)


@cluster_app.command("lib")
def cluster_lib():
    """The lib folder a Flink cluster of your own needs (FLINK_LIB_DIR, or copy its jars): Flink's
    jars with our JVM classes (driftline-jvm-*.jar) and the patched flink-connector-files jar."""
    from runners import jvm

    folder, patched = jvm.lib_dir(with_flink_python=True), jvm.patched_jars()
    print(folder)
    for jar in sorted(folder.glob("*.jar")):
        print(f"  {jar.name}{'  (patched)' if jar.name in patched else ''}")


@app.command()
def submit(data: str = typer.Option("generator", help="generator | talkingdata | elec2 | an event directory"),
           out: Path = typer.Option(Path("runs/submitted"), help="Run folder (RUN_DIR) for the outputs."),
           events: int = typer.Option(20_000, help="Impressions to generate (--data generator)."),
           parallelism: int = typer.Option(2, help="Parallelism of the SQL operators."),
           max_parallelism: Optional[int] = MAX_PARALLELISM_OPT,
           checkpoint_interval: Optional[str] = CHECKPOINT_OPT,
           wait_for_end: bool = typer.Option(True, "--wait/--no-wait", help="Wait for a bounded job to end."),
           from_savepoint: Optional[str] = typer.Option(None, help="Resume from this savepoint path."),
           allow_non_restored_state: bool = typer.Option(
               False, "--allow-non-restored-state",
               help="With --from-savepoint: skip its state that maps to no operator of this build (by uid; "
                    "see `driftline operators`). That state is lost."),
           updates: bool = typer.Option(True, help="Write the per-event weight-update records; --no-updates: "
                                                   "none, and no updates sink (resuming a savepoint of a job "
                                                   "with one then needs --allow-non-restored-state)."),
           base_registry: Optional[Path] = typer.Option(None, help="Start from this registry's current base model "
                                                                   "(driftline bootstrap's OUT/registry; its "
                                                                   "OUT/transform is the artifact)."),
           speedup: float = typer.Option(0.0, help="Replay at most this many times event-time speed (0: as fast "
                                                   "as possible); outputs are the same at any pace."),
           warmup: Optional[Path] = WARMUP_OPT, no_warmup: bool = NO_WARMUP_OPT,
           root: Path = ROOT_OPT, rest_port: int = PORT_OPT,
           data_dir_opt: Optional[Path] = typer.Option(None, "--data-dir", help="Data folder for real data sets."),
           kafka: Optional[str] = KAFKA_OPT, kafka_topics: str = KAFKA_TOPICS_OPT, kafka_group: str = KAFKA_GROUP_OPT,
           kafka_replay: Optional[Path] = KAFKA_REPLAY_OPT, kafka_output: Optional[List[str]] = KAFKA_OUTPUT_OPT,
           kafka_validate: bool = KAFKA_VALIDATE_OPT, kafka_exactly_once: bool = KAFKA_EXACTLY_ONCE_OPT):
    """Package the job config and run it on the standalone cluster with `flink run -py`;
    prints the job id. With --from-savepoint into a run folder that has a job.json: the same run
    resumed (its outputs, registry and retrains kept; --parallelism, --[no-]updates, --speedup and
    a given --max-parallelism applied to its job.json; refused unless the savepoint fits), not a
    new one."""
    from runners import cluster
    from runners.local import prepare_events
    from runners.stream import prepare_run, summarize
    from pipelines.eventlog import read_manifest

    if allow_non_restored_state and not from_savepoint:
        console.print("[red]error:[/red] --allow-non-restored-state needs --from-savepoint")
        raise typer.Exit(2)
    cfg = _cluster(root, rest_port)
    if not cluster.status(cfg)["up"]:
        console.print(f"[red]error:[/red] no cluster at {cfg.rest_url}; run `driftline cluster up` first")
        raise typer.Exit(2)
    if speedup < 0:
        raise typer.BadParameter("--speedup must be >= 0")
    keys = _given(max_parallelism=max_parallelism, checkpoint_interval=checkpoint_interval)
    if from_savepoint and (out / "job.json").is_file():
        # resuming this run: preparing it again would delete what it committed before the stop
        # (outputs, the registry its state's models come from, its retrains)
        if base_registry is not None:
            console.print("[red]error:[/red] a resumed job serves the base model in its state; no --base-registry")
            raise typer.Exit(2)
        job = json.loads((out / "job.json").read_text())
        job.update(parallelism=parallelism, write_updates=updates, replay_speedup=speedup, **keys)
        _stage_resume(out, job, from_savepoint, allow_non_restored_state)
        _kafka_preflight(job.get("kafka") or {})
        event_dir = Path(job["event_dir"])
    else:
        event_dir, source = prepare_events(data, out, events, 7, data_dir_opt)
        from models.registry import RegistryError

        artifact = _boot_artifact(base_registry, None)
        kafka_job = _kafka(kafka, kafka_topics, kafka_group, kafka_replay, kafka_output, kafka_validate,
                           kafka_exactly_once)
        _kafka_preflight(kafka_job)
        try:
            prepare_run(event_dir, out, source, artifact=artifact, parallelism=parallelism, write_updates=updates,
                        **keys, base_registry=base_registry, replay_speedup=speedup,
                        warmup=_warmup(base_registry, warmup, no_warmup), kafka=kafka_job)
        except (RegistryError, ValueError) as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2)
        if from_savepoint:
            _check_resume(out / "job.json", from_savepoint, allow_non_restored_state)
    job_id = cluster.submit(cfg, out / "job.json", savepoint=from_savepoint,
                            allow_non_restored=allow_non_restored_state)
    console.print(f"job id: {job_id}")
    if wait_for_end:
        from contextlib import nullcontext

        from runners.flink_job import JobConfig
        from runners.stream import draining_restored_kafka_replay

        job_cfg = JobConfig.from_dict(json.loads((out / "job.json").read_text()))
        try:
            with (draining_restored_kafka_replay(job_cfg, out, cfg.rest_url, job_id) if from_savepoint  # FLINK-31006
                  else nullcontext()):
                state = cluster.wait(cfg, job_id)
        except KeyboardInterrupt:  # the job is the cluster's: Ctrl-C only stops waiting for it
            console.print(f"\nno longer waiting: job {job_id} keeps running on the cluster; stop it with "
                          f"`driftline savepoint {job_id} --stop` (then resume with --from-savepoint)")
            raise typer.Exit(130)
        console.print(f"job {job_id}: {state}")
        if state == "FINISHED":
            _print_run(summarize(out, read_manifest(event_dir), final=True))
        else:
            why = cluster.failure(cfg, job_id) if state == "FAILED" else None
            if why:
                from rich.markup import escape

                console.print(f"[red]error:[/red] {escape(why)}")
            raise typer.Exit(1)


def _stage_resume(out: Path, job: dict, savepoint: str, allow_non_restored: bool) -> None:
    """``out/job.json`` becomes ``job`` only once ``_check_resume`` accepts the savepoint for it."""
    staged = out / ".job.resume.json"
    staged.write_text(json.dumps(job, indent=1) + "\n")
    try:
        _check_resume(staged, savepoint, allow_non_restored)
    except typer.Exit:
        staged.unlink(missing_ok=True)
        raise
    staged.replace(out / "job.json")


def _check_resume(job_json: Path, savepoint: str, allow_non_restored: bool) -> None:
    """Before a job is submitted from a savepoint: what it restores (``runners.savepoints``).
    State no operator of this build takes is an error (as Flink would fail the job, only later)
    unless ``allow_non_restored``, and so is a build Flink would refuse the savepoint whatever
    the flags (its finished operators); a source the savepoint has no position for reads its
    input from the start: warned."""
    from runners import savepoints

    try:
        resume = savepoints.check(job_json, savepoint)
    except (ValueError, RuntimeError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    if resume.refused:
        console.print("[red]error:[/red] Flink cannot restore this savepoint into this build: "
                      + "; ".join(resume.refused) + ". Start a new run instead (or resume with the build "
                      "that took the savepoint).")
        raise typer.Exit(2)
    lost = ", ".join(f"{s['uid'] or s['id']} ({s['bytes']:,} B)" for s in resume.unmapped)
    if resume.unmapped and not allow_non_restored:
        console.print(f"[red]error:[/red] the savepoint has state for operators this build does not have: {lost}. "
                      "Resume with --allow-non-restored-state to drop it (see `driftline operators RUN "
                      "--savepoint PATH`).")
        raise typer.Exit(2)
    if resume.unmapped:
        console.print(f"[yellow]dropping[/yellow] the savepoint's state of: {lost}")
    for o in resume.new_sources:
        console.print(f"[yellow]warning:[/yellow] the savepoint has no position for source {o['uid']} "
                      f"({o['name']}): it reads its input from the start")
    console.print(f"savepoint: {len(resume.restored)} operators restored, {len(resume.new)} new, "
                  f"{len(resume.unmapped)} states dropped")


@app.command()
def savepoint(job_id: Optional[str] = typer.Argument(None, help="The job (default with --run: the running one)."),
              stop: bool = typer.Option(False, help="Stop the job with it."),
              run: Optional[Path] = typer.Option(None, help="A local job instead: the `driftline run --rest-port "
                                                            "P` of this run folder; into RUN_DIR/savepoints."),
              root: Path = ROOT_OPT, rest_port: int = PORT_OPT):
    """Trigger a savepoint (`flink savepoint` / `flink stop`) on the standalone cluster, into
    its savepoints folder, or (--run RUN_DIR) of a local run through its REST port; prints the
    savepoint's path (for `driftline submit --from-savepoint` / `driftline run --out RUN_DIR
    --from-savepoint`)."""
    import re

    from runners.cluster import CLIENT_TIMEOUT_S, flink_cli, stop_with_savepoint

    if run is not None:
        from runners import savepoints

        job = json.loads((run / "job.json").read_text()) if (run / "job.json").is_file() else {}
        port = int((job.get("flink_conf") or {}).get("rest.port", 0))
        if not port:
            console.print(f"[red]error:[/red] no REST port in {run / 'job.json'}: start the run with --rest-port")
            raise typer.Exit(2)
        url = f"http://127.0.0.1:{port}"
        try:
            path = (savepoints.stop_local(run, url, job_id) if stop
                    else savepoints.trigger(url, run / "savepoints", job_id))
        except (OSError, RuntimeError, TimeoutError) as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1)
        print(f"savepoint: {path}")
        return
    if job_id is None:
        console.print("[red]error:[/red] name the job (`driftline cluster status` lists them) or use --run")
        raise typer.Exit(2)
    cfg = _cluster(root, rest_port)
    try:
        if stop:
            path = stop_with_savepoint(cfg, job_id)
        else:
            out = flink_cli(cfg, "savepoint", "-m", f"127.0.0.1:{rest_port}", job_id,
                            (cfg.path / "savepoints").as_uri(), timeout=CLIENT_TIMEOUT_S + 60)
            path = re.search(r"Savepoint completed\. Path: (\S+)", out).group(1)
    except (RuntimeError, AttributeError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1)
    print(f"savepoint: {path}")


@app.command()
def operators(job: Path = typer.Argument(..., help="A run folder (RUN_DIR, its job.json) or a job.json."),
              savepoint: Optional[str] = typer.Option(None, help="Also what this savepoint restores into "
                                                                "each operator, and its state no operator takes."),
              as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table.")):
    """The job's operators (built, not run): name, uid and operator id, the id its state has in
    checkpoints and savepoints. A savepoint restores into a build whose stateful operators have
    the same ids: compare two builds' before resuming one, or a build with a savepoint
    (--savepoint)."""
    from runners import savepoints
    from runners.stream import job_operators

    job_json = job / "job.json" if job.is_dir() else job
    if savepoint is None:
        ops, unmapped, refused = job_operators(job_json), [], []
    else:
        try:
            resume = savepoints.check(job_json, savepoint)
        except (ValueError, RuntimeError) as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2)
        ops = [{**{k: v for k, v in o.items() if k != "state"}, "savepoint": _restored(o)} for o in resume.operators]
        unmapped = [{"uid": s["uid"], "id": s["id"], "name": s["name"], "savepoint": f"not restored: {s['bytes']:,} B"}
                    for s in resume.unmapped]
        refused = resume.refused
    if as_json:
        for o in ops + unmapped:
            print(json.dumps(o))
        for reason in refused:
            print(json.dumps({"refused": reason}))
        return
    table = Table()
    table.add_column("uid", overflow="fold")
    table.add_column("operator id", no_wrap=True, min_width=32)
    table.add_column("name", overflow="fold")
    if savepoint is not None:
        table.add_column("savepoint", overflow="fold")
    for o in ops + unmapped:
        table.add_row(o["uid"] or "", o["id"], o["name"] or "", *([o["savepoint"]] if savepoint is not None else []))
    console.print(table)
    for reason in refused:
        console.print(f"[red]Flink refuses this restore:[/red] {reason}")


def _restored(op: dict) -> str:
    """An operator's row in `driftline operators --savepoint`: what the savepoint gives it."""
    state = op["state"]
    if state is None:
        return "new: reads its input from the start" if op["name"].startswith("Source:") else "new: starts empty"
    if state["finished"]:
        return "finished"
    return f"{state['bytes']:,} B" if state["has_state"] else "no state"


@app.command()
def cancel(job_id: str = typer.Argument(...), root: Path = ROOT_OPT, rest_port: int = PORT_OPT):
    """Cancel a job on the standalone cluster."""
    from runners.cluster import flink_cli

    console.print(flink_cli(_cluster(root, rest_port), "cancel", "-m", f"127.0.0.1:{rest_port}", job_id))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
