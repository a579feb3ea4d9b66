"""The streaming job on Kafka topics: a real Kafka-compatible broker (Tansu, ``runners.kafka.
local_broker``), Flink's own Kafka connector, the job on the mini-cluster."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from models.ftrl import FTRL
from pipelines.eventlog import read_stream
from pipelines.sources.generator import GeneratorConfig
from runners.kafka import KafkaConfig, local_broker, publish, topic_records, topic_values
from runners.local import generate_event_dir
from runners.stream import read_output, run_stream

OUTPUTS = ("predictions", "examples", "late_labels", "dead_letter", "updates")
TO_TOPICS = (*OUTPUTS, "metrics")  # the outputs the Kafka run also writes to topics


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with local_broker(log=tmp_path_factory.mktemp("broker") / "tansu.log") as servers:
        yield servers


@pytest.fixture(scope="module")
def runs(tmp_path_factory, broker):
    root = tmp_path_factory.mktemp("kafka")
    # several parts per stream (publish merges them by time); duplicates and late labels
    generate_event_dir(root / "ev", GeneratorConfig(events=3_000, seed=5, duplicate_rate=0.01),
                       rows_per_file=700)
    kafka = KafkaConfig(broker, impressions_topic="imp", labels_topic="lab")
    published = publish(root / "ev", kafka, partitions=2)
    kafka.end_offsets = published
    files = run_stream(root / "ev", root / "files", "generator")
    topics = run_stream(root / "ev", root / "kafka", "generator",
                        kafka={**kafka.to_dict(), "output_topics": {name: f"out_{name}" for name in TO_TOPICS}})
    return root, published, files, topics, kafka


def _weights(run_dir) -> FTRL:
    return FTRL.from_bytes((sorted((run_dir / "registry" / "delta").iterdir())[-1] / "weights.npz").read_bytes())


def _lines(run_dir, name) -> Counter:
    return Counter(json.dumps(r, sort_keys=True) for r in read_output(run_dir, name))


def test_publish_writes_each_stream_in_event_time_order_keyed_by_event_id(runs, broker):
    root, published, _, _, kafka = runs
    imps, labels = read_stream(root / "ev", "impression"), read_stream(root / "ev", "label")
    assert {k: sum(v.values()) for k, v in published.items()} == {"impressions": imps.num_rows,
                                                                   "labels": labels.num_rows}
    assert len(published["impressions"]) == 2  # keyed: both partitions
    records = [json.loads(v) for v in topic_values(broker, "imp")]
    assert Counter(r["event_id"] for r in records) == Counter(imps.column("event_id").to_pylist())
    label_records = [json.loads(v) for v in topic_values(broker, "lab")]
    assert sorted(r["label_time"] for r in label_records) == sorted(labels.column("label_time").to_pylist())


def test_the_job_on_kafka_topics_gives_the_event_directorys_outputs_and_model(runs):
    """The same log through Kafka (two partitions per topic, Flink's per-partition watermarks)
    and through the event directory: the same predictions, examples, late labels, dead letters
    and weight updates, line for line, and bit-identical FTRL weights; both reconcile."""
    root, _, files, topics, _ = runs
    assert topics["reconciliation"]["reconciles"] and topics["final"], topics
    assert topics["counts"] == files["counts"]
    assert files["counts"]["late_labels"] > 0 and files["counts"]["dead_letter"].get("duplicate_event_id", 0) > 0
    for name in OUTPUTS:
        assert _lines(root / "kafka", name) == _lines(root / "files", name), name

    a, b = _weights(root / "files"), _weights(root / "kafka")
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()
    job = json.loads((root / "kafka" / "job.json").read_text())
    assert job["kafka"]["bootstrap_servers"] and job["kafka"]["end_offsets"]
    # the messages the replay read (end - start offsets, the start taken when it was prepared)
    manifest = json.loads((root / "ev" / "_manifest.json").read_text())
    rec = topics["reconciliation"]
    assert rec["kafka_messages_in"] == rec["kafka_messages_out"] == sum(manifest["counts"]["valid"].values())
    assert job["kafka"]["start_offsets"] == {s: {p: 0 for p in ends} for s, ends in job["kafka"]["end_offsets"].items()}


def _file_lines(run_dir, name) -> Counter:
    return Counter(line for p in sorted((run_dir / name).rglob("*")) if p.is_file()
                   for line in p.read_bytes().splitlines() if line)


@pytest.mark.parametrize("name", TO_TOPICS)
def test_outputs_also_go_to_kafka_topics_one_record_per_message(runs, broker, name):
    """``output_topics``: every record of the output that the run folder holds, as its own
    message (the per-tick rows split in the JVM), the same JSON text; nothing else on the topic;
    keyed by the record's event_id where it has one (``driftline.flink.JsonFieldKey``), else
    unkeyed. Dead letters come from three operators (the dedup and join, the windowed counts,
    the Learner), united into one topic."""
    root = runs[0]
    written = _file_lines(root / "kafka", name)
    assert sum(written.values()) > 0
    assert name != "predictions" or sum(written.values()) == runs[3]["counts"]["predictions"]
    records = topic_records(broker, f"out_{name}")
    assert Counter(value for _, value in records) == written
    keys = [(key, json.loads(value).get("event_id")) for key, value in records]
    assert all(k == (None if e is None else str(e).encode()) for k, e in keys), keys[:3]
    assert (name in ("metrics", "dead_letter")) == any(k is None for k, _ in keys)  # these have records without one


def test_exactly_once_outputs_are_written_in_kafka_transactions_each_record_once(runs, broker):
    """``exactly_once``: the output topics written by Flink's transactional KafkaSink (ids
    ``<group>.<output>-…``, one transaction per checkpoint, the last at the end): the broker
    accepts the transactional protocol (the job would fail otherwise) and a read_committed
    consumer gets every record of the run folder's output once. What this broker cannot show:
    Tansu (the local broker) ignores read_committed and writes no commit markers — by hand,
    records of a transaction aborted by a failure were returned to read_committed consumers,
    Java's and kafka-python's alike (README, Kafka) — so that a failure's aborted records stay
    hidden is Kafka's own guarantee, untested here."""
    root = runs[0]
    log = root / "tansu-eos.log"
    with local_broker(log=log, log_level="debug") as servers:  # a broker that logs each request
        kafka = KafkaConfig(servers, group_id="eos", exactly_once=True,
                            output_topics={"predictions": "eos_predictions", "examples": "eos_examples"})
        kafka.end_offsets = publish(root / "ev", kafka, partitions=2)
        run = run_stream(root / "ev", root / "eos", "generator", kafka=kafka.to_dict())
        assert run["final"] and run["reconciliation"]["reconciles"], run
        for name in ("predictions", "examples"):
            written = _file_lines(root / "eos", name)
            assert sum(written.values()) > 0 and written == _file_lines(root / "kafka", name), name
            assert Counter(topic_values(servers, f"eos_{name}", committed=True)) == written, name
    requests = Counter(re.findall(r'message_name\S*"(InitProducerIdRequest|AddPartitionsToTxnRequest|EndTxnRequest)"',
                                  re.sub(r"\x1b\[[0-9;]*m", "", log.read_text())))
    # each sink's transactions: begun (its partitions added) and ended
    assert requests["InitProducerIdRequest"] >= 2 and requests["EndTxnRequest"] >= 2, requests
    assert requests["AddPartitionsToTxnRequest"] >= 2, requests


def test_a_message_that_is_not_an_event_fails_the_job_with_a_clear_error(runs, broker):
    """The topics must carry validated events (README, Kafka): a malformed message is not
    skipped silently; the job fails (after its restarts) naming the record it could not parse."""
    from kafka import KafkaProducer

    root = runs[0]
    kafka = KafkaConfig(broker, impressions_topic="imp3", labels_topic="lab3")
    kafka.end_offsets = publish(root / "ev", kafka)
    producer = KafkaProducer(bootstrap_servers=broker)
    bad = producer.send("lab3", value=b'{"event_id": "e-bad", "label_time": "soon"}').get(timeout=30)
    producer.close()
    kafka.end_offsets["labels"][0] = bad.offset + 1
    with pytest.raises(RuntimeError, match="streaming job failed") as failed:
        # no restart (Flink's "none" strategy: 0 attempts): the first failure is the job's
        run_stream(root / "ev", root / "bad", "generator", kafka=kafka.to_dict(), restart_attempts=0)
    assert "Failed to deserialize JSON" in str(failed.value) and "e-bad" in str(failed.value)
    assert "NoRestartBackoffTimeStrategy" in (root / "bad" / "flink.log").read_text()


def test_raw_topics_are_validated_in_the_stream_bad_records_dead_lettered_with_their_reasons(runs, broker):
    """``validate``: producers' raw records, checked in the stream by ``pipelines.validate``'s
    rules. Bad records planted first on both topics (one far in the future: it must not move the
    watermark) become dead letters with their reasons and Kafka origins; the job goes on and
    every other output equals the file run's. A message that is not UTF-8 and one without a
    value (a tombstone) are dead letters too, not a failed job."""
    from kafka import KafkaProducer

    root, _, files, _, _ = runs
    kafka = KafkaConfig(broker, impressions_topic="imp4", labels_topic="lab4", validate=True,
                        output_topics={"dead_letter": "dl4"})
    producer = KafkaProducer(bootstrap_servers=broker)
    bad = {"imp4": [b'{"event_id": "b1", "event_time": 1700000000000', b'{"event_id": "b2"}',
                    b'{"event_id": "b3", "event_time": 4102444800000, "user_id": "u", "item_id": "i"}',
                    b'{"kind": "label", "event_id": "b4", "label_time": 1700000000000, "label": 1, '
                    b'"label_type": "conversion"}'],
           "lab4": [b'{"event_id": "b5", "label_time": "soon", "label": 1}', b'[1, 2]',
                    b'{"event_id": "b\xff6", "label_time": 1700000000000, "label": 1}', None]}  # not UTF-8; no value
    for topic, values in bad.items():
        for v in values:
            producer.send(topic, value=v, key=None if v else b"gone").get(timeout=30)  # a tombstone has a key
    producer.close()
    ends = publish(root / "ev", kafka)
    kafka.end_offsets = ends
    run = run_stream(root / "ev", root / "raw", "generator", kafka=kafka.to_dict())
    assert run["final"] and run["reconciliation"]["reconciles"], run
    # every message read accounted for: the published log's records and the 8 planted ones
    rec, manifest = run["reconciliation"], json.loads((root / "ev" / "_manifest.json").read_text())
    assert rec["kafka_messages_in"] == rec["kafka_messages_out"] == sum(manifest["counts"]["valid"].values()) + 8
    for name in ("predictions", "examples", "late_labels", "updates"):
        assert _lines(root / "raw", name) == _lines(root / "files", name), name
    dead = [r for r in read_output(root / "raw", "dead_letter") if r["origin"].startswith("kafka:")]
    why = ["malformed_json", "missing_field", "future_timestamp", "unknown_event_kind", "wrong_type", "malformed_json",
           "invalid_utf8", "malformed_json"]
    planted = [(f"kafka:{topic}", (v or b"").decode("utf-8", "replace"))
               for topic, values in bad.items() for v in values]
    got = {(r["origin"].split("/")[0], r["raw"]): r["reason"] for r in dead}
    assert len(dead) == 8 and got == dict(zip(planted, why))
    assert all(re.fullmatch(r"kafka:\w+/\d+:\d+", r["origin"]) for r in dead)  # topic/partition:offset
    others = Counter(json.dumps(r, sort_keys=True) for r in read_output(root / "raw", "dead_letter")
                     if not r["origin"].startswith("kafka:"))
    assert others == _lines(root / "files", "dead_letter")
    # to Kafka too: the validation's dead letters with the job's others, on one topic
    assert Counter(topic_values(broker, "dl4")) == _file_lines(root / "raw", "dead_letter")


@pytest.mark.parametrize("kind", ["impression", "label"])
def test_the_in_stream_validation_gives_each_records_row_path_verdict(kind):
    """CheckRecords (batch path for ordinary records, ``parse_line`` for the rest) = each
    record through ``parse_line`` alone: the same dead letters (reason, origin, raw) and the
    same typed columns, in order, on a mix of valid, invalid (invalid UTF-8 among them: the
    messages' bytes as they came) and other-kind records, and a message without a value."""
    import pandas as pd

    from pipelines.events import SOURCES
    from pipelines.validate import Validator
    from runners.kafka import CheckRecords, checked_columns
    from test_validate import _batch_corpus

    lines = [*_batch_corpus(seed=11, mutants=1500), None]
    assert any(b"\xff" in line for line in lines[:-1])  # not UTF-8
    parts, offs = pd.Series([i % 3 for i in range(len(lines))]), pd.Series(range(100, 100 + len(lines)))
    out = CheckRecords(SOURCES["generator"].to_dict(), kind, "t")(pd.Series(lines), parts, offs)
    v, names = Validator(SOURCES["generator"]), [n for n, _ in checked_columns(SOURCES["generator"], kind)]
    assert list(out.columns) == ["dl", *names]
    valid = 0
    for i, line in enumerate(lines[:-1]):
        origin = f"kafka:t/{i % 3}:{100 + i}"
        got_kind, rec = v.parse_line(line, origin, kind)
        row = out.iloc[i]
        if got_kind == kind:
            valid += 1
            assert row["dl"] is None and [row[n] for n in names] == [rec[n] for n in names], (line, row)
        else:
            dl = json.loads(row["dl"])
            raw = rec["raw"] if got_kind is None else line  # an oversize one cut
            assert dl["origin"] == origin and dl["raw"] == raw.decode("utf-8", "replace")
            assert all(row[n] is None for n in names)
            assert dl["reason"] == (rec["reason"] if got_kind is None else "unknown_event_kind"), (line, dl)
    assert 0 < valid < len(lines)
    tombstone = json.loads(out.iloc[-1]["dl"])
    assert tombstone["reason"] == "malformed_json" and "tombstone" in tombstone["detail"]
    assert tombstone["raw"] == "" and tombstone["origin"] == f"kafka:t/{(len(lines) - 1) % 3}:{99 + len(lines)}"


def test_kafka_settings_that_would_break_the_ddl_are_refused():
    with pytest.raises(ValueError, match="quote"):
        KafkaConfig("127.0.0.1:9092', 'path' = '/etc")
    with pytest.raises(ValueError, match="startup_mode"):
        KafkaConfig("127.0.0.1:9092", startup_mode="anywhere")
    with pytest.raises(ValueError, match="not snapshots"):
        KafkaConfig("127.0.0.1:9092", output_topics={"snapshots": "s"})
    with pytest.raises(ValueError, match="quote"):
        KafkaConfig("127.0.0.1:9092", output_topics={"examples": "ex'"})


def test_kafka_outputs_cover_every_output_the_job_writes():
    from runners.kafka import OUTPUTS as KAFKA_OUTPUTS
    from runners.learner import OUTPUT_TAGS

    assert set(KAFKA_OUTPUTS) == {"predictions", *OUTPUT_TAGS}


def test_cli_kafka_output_option():
    import typer

    from runners.cli import _kafka

    got = _kafka("h:1", "i,l", "g", None, ["predictions=p", "dead_letter=dl"])
    assert got["output_topics"] == {"predictions": "p", "dead_letter": "dl"}
    for bad in (["predictions"], ["predictions=a", "predictions=b"], ["snapshots=s"]):
        with pytest.raises(typer.BadParameter):
            _kafka("h:1", "i,l", "g", None, bad)
    with pytest.raises(typer.BadParameter, match="need --kafka"):
        _kafka(None, "i,l", "g", None, ["predictions=p"])
    assert _kafka("h:1", "i,l", "g", None, ["predictions=p"], exactly_once=True)["exactly_once"]
    with pytest.raises(typer.BadParameter, match="--kafka-output topics: none"):
        _kafka("h:1", "i,l", "g", None, None, exactly_once=True)


def test_cli_a_kafka_run_stopped_with_a_savepoint_resumes_from_its_offsets(runs, tmp_path):
    """A live topic: its first half published, ``driftline run --kafka … --kafka-replay
    OFFSETS`` (its own process, reading towards the whole log's end offsets) serves what is
    there, is stopped by ``driftline savepoint --run RUN_DIR --stop``; the second half is
    published and ``driftline run --out RUN_DIR --from-savepoint PATH`` reads on from the
    savepoint's offsets to the end: nothing read twice or skipped, so the two parts give
    exactly the file run's outputs and weights. (A restored bounded Kafka source does not end
    by itself, FLINK-31006: the resumed run drains its job once the sources reached the end
    offsets, ``runners.stream.end_restored_kafka_replay``.)"""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from runners.cli import app
    from tests_helpers import rest, wait_for

    root, _, files, _, kafka = runs
    imps = read_stream(root / "ev", "impression").column("event_time").to_pylist()
    half = sorted(imps)[len(imps) // 2]
    live = KafkaConfig(kafka.bootstrap_servers, impressions_topic="imp2", labels_topic="lab2")
    first = publish(root / "ev", live, until=half)
    offsets = tmp_path / "offsets.json"  # one partition each: the whole log's end offsets are its counts
    offsets.write_text(json.dumps({"impressions": {"0": files["reconciliation"]["impressions_in"]},
                                   "labels": {"0": files["reconciliation"]["labels_in"]}}))
    run, log = tmp_path / "run", tmp_path / "part1.log"
    proc = subprocess.Popen([sys.executable, "-m", "runners.cli", "run", "--data", str(root / "ev"), "--out", str(run),
                             "--kafka", kafka.bootstrap_servers, "--kafka-topics", "imp2,lab2",
                             "--kafka-replay", str(offsets), "--no-report"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)

    def served_and_checkpointed() -> bool:
        try:
            port = int(json.loads((run / "job.json").read_text())["flink_conf"]["rest.port"])
            jobs = [j["id"] for j in rest(port, "/jobs")["jobs"] if j["status"] == "RUNNING"]
            return (bool(jobs) and rest(port, f"/jobs/{jobs[0]}/checkpoints")["counts"]["completed"] > 1
                    and len(read_output(run, "predictions")) > 0)
        except (OSError, FileNotFoundError):
            return False

    try:
        wait_for(proc, log, served_and_checkpointed, "the first half served")
        r = CliRunner().invoke(app, ["savepoint", "--run", str(run), "--stop"])
        assert r.exit_code == 0, r.output
        assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.terminate()
    savepoint = r.output.split("savepoint: ", 1)[1].split()[0]
    part1 = json.loads((run / "summary.json").read_text())
    assert not part1["final"] and 0 < part1["counts"]["predictions"] < files["counts"]["predictions"]
    rest_of_it = publish(root / "ev", live, since=half)
    assert all(0 < first[s][0] < rest_of_it[s][0] for s in first)
    assert {s: o[0] for s, o in rest_of_it.items()} == \
        {s: int(o["0"]) for s, o in json.loads(offsets.read_text()).items()}  # the ends planned for
    r = CliRunner().invoke(app, ["run", "--out", str(run), "--from-savepoint", savepoint, "--no-report"])
    assert r.exit_code == 0, r.output
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["final"] and resumed["reconciliation"]["reconciles"] and resumed["counts"] == files["counts"]
    for name in OUTPUTS:
        assert _lines(run, name) == _lines(root / "files", name), name
    a, b = _weights(root / "files"), _weights(run)
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()


def test_cli_refuses_a_kafka_run_without_a_broker_or_a_replays_topics(runs, broker, tmp_path):
    """``driftline run --kafka``: no broker answering, or a replay of a topic that does not
    exist, ends the command with a clear error before any job starts (Flink would start and
    retry, or wait, in silence); a live job on a missing topic only warns."""
    from typer.testing import CliRunner

    from runners.cli import app
    from runners.kafka import preflight
    from runners.local import free_port

    cli = CliRunner()
    offsets = tmp_path / "offsets.json"
    offsets.write_text(json.dumps({"impressions": {"0": 5}, "labels": {"0": 5}}))
    r = cli.invoke(app, ["run", "--data", "generator", "--events", "200", "--out", str(tmp_path / "a"),
                         "--kafka", f"127.0.0.1:{free_port()}", "--no-report"])
    assert r.exit_code == 2 and "no Kafka broker answered" in r.output, r.output
    r = cli.invoke(app, ["run", "--data", "generator", "--events", "200", "--out", str(tmp_path / "b"),
                         "--kafka", broker, "--kafka-topics", "imp,no_such_labels", "--kafka-replay", str(offsets),
                         "--no-report"])
    assert r.exit_code == 2 and "topic no_such_labels does not exist" in r.output and "imp" in r.output, r.output
    assert not (tmp_path / "b" / "job.json").exists()  # nothing started
    errors, warnings = preflight(KafkaConfig(broker, impressions_topic="imp", labels_topic="no_such_labels"))
    assert not errors and "the job will wait for it" in warnings[0]
    assert preflight(KafkaConfig(broker, impressions_topic="imp", labels_topic="lab")) == ([], [])
