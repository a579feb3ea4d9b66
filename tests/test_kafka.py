"""The streaming job on Kafka topics: a real Kafka-compatible broker (Tansu, ``runners.kafka.
local_broker``), Flink's own Kafka connector, the job on the mini-cluster."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from models.ftrl import FTRL
from pipelines.eventlog import read_stream
from pipelines.sources.generator import GeneratorConfig
from runners.kafka import KafkaConfig, local_broker, publish, topic_values
from runners.local import generate_event_dir
from runners.stream import read_output, run_stream

OUTPUTS = ("predictions", "examples", "late_labels", "dead_letter", "updates")


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
    topics = run_stream(root / "ev", root / "kafka", "generator", kafka=kafka.to_dict())
    return root, published, files, topics, kafka


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

    def weights(run):
        return FTRL.from_bytes((sorted((run / "registry" / "delta").iterdir())[-1] / "weights.npz").read_bytes())

    a, b = weights(root / "files"), weights(root / "kafka")
    assert a.z.tobytes() == b.z.tobytes() and a.n.tobytes() == b.n.tobytes()
    job = json.loads((root / "kafka" / "job.json").read_text())
    assert job["kafka"]["bootstrap_servers"] and job["kafka"]["end_offsets"]


def test_kafka_settings_that_would_break_the_ddl_are_refused():
    with pytest.raises(ValueError, match="quote"):
        KafkaConfig("127.0.0.1:9092', 'path' = '/etc")
    with pytest.raises(ValueError, match="startup_mode"):
        KafkaConfig("127.0.0.1:9092", startup_mode="anywhere")
