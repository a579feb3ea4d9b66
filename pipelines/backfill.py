"""Beam backfill of joined training examples from historical impression and label logs.

The same join semantics as the streaming job -- ``pipelines.join.reference_join``, applied
per event_id after a CoGroupByKey (window W, late horizon and policy, duplicates counted once,
unknown ids and labels before their impression as dead letters) -- and the same features:
the windowed aggregates computed by ``transforms.beam.AddWindowedCounts`` and the shared
numpy transforms of the transform artifact, applied in batches. It bootstraps the first base
model's training data, and re-derives examples with another window or policy.

DirectRunner by default; any runner through ``pipeline_args``. The final ordering (the
streaming job's learning order, ``example_order``, numbered as ``seq``) is done by the
driver when it writes the outputs.
"""
from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa

from pipelines.eventlog import read_manifest
from pipelines.events import SourceSpec
from pipelines.join import JoinConfig, example_order, reference_join
from transforms.artifact import TransformArtifact


class JoinPerEvent(beam.DoFn):
    """(event_id, {imp: [(row_id, row)], lab: [label]}) -> (example, impression row) on the
    main output; late labels and dead letters on tagged outputs."""

    def __init__(self, join: JoinConfig):
        self.join = join

    def process(self, element):
        _, grouped = element
        rows = sorted((r for _, r in grouped["imp"]), key=lambda r: r["event_time"])
        labels = sorted(grouped["lab"], key=lambda r: (r["label_time"], r.get("label", 0)))
        res = reference_join(rows, labels, self.join)
        first = rows[0] if rows else None  # the impression the join keeps: the earliest
        for e in res["examples"]:
            yield e, first
        for late in res["late"]:
            yield beam.pvalue.TaggedOutput("late", late)
        for reason, eid in res["dead_letter"]:
            yield beam.pvalue.TaggedOutput("dead", {"reason": reason, "event_id": eid})


class Featurize(beam.DoFn):
    """A batch of (example, impression row with aggregates) -> examples with the served
    features (packed like the streaming job's: indices and values)."""

    def __init__(self, artifact: dict, source: dict):
        self.artifact_dict, self.source_dict = artifact, source

    def setup(self):
        from transforms.beam import feature_input_schema

        self.art = TransformArtifact.from_dict(self.artifact_dict)
        self.schema = feature_input_schema(self.art.spec, SourceSpec.from_dict(self.source_dict))

    def process(self, batch):
        from transforms.apply import apply

        rows = [{f.name: r.get(f.name) for f in self.schema} for _, r in batch]
        f = apply(self.art, pa.Table.from_pylist(rows, schema=self.schema))
        for (e, r), idx, val in zip(batch, f.indices.tolist(), f.values.tolist()):
            lt = e["label_time"]
            yield {**e, "event_time": r["event_time"], "label_delay_ms": None if lt is None else lt - r["event_time"],
                   "features": json.dumps({"indices": idx, "values": val}),
                   "inputs": json.dumps({f.name: r.get(f.name) for f in self.schema if f.name not in ("event_id", "event_time")}),
                   "spec_fingerprint": self.art.spec.fingerprint()}


def backfill_examples(event_dir: str | Path, artifact: TransformArtifact, join: JoinConfig, out_dir: str | Path,
                      pipeline_args: list[str] | None = None) -> dict[str, int]:
    """Write ``out_dir/examples.jsonl`` (learning order, ``seq`` from 1), ``late_labels.jsonl``
    and ``dead_letter.jsonl``; returns their counts."""
    from transforms.beam import AddWindowedCounts, ReadImpressions, _options

    event_dir, out_dir = Path(event_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = read_manifest(event_dir)["source"]
    tmp = out_dir / ".beam"
    with beam.Pipeline(options=_options(pipeline_args)) as p:
        imps = (p | ReadImpressions(event_dir) | "Aggregates" >> AddWindowedCounts(artifact.spec.aggregates)
                | "By event" >> beam.MapTuple(lambda _, r: (r["event_id"], (None, r))))
        labs = (p | "Read labels" >> beam.io.ReadFromText(str(event_dir / "labels" / "part-*.jsonl"))
                | "Parse labels" >> beam.Map(json.loads)
                | "Label by event" >> beam.Map(lambda r: (r["event_id"], r)))
        joined = ({"imp": imps, "lab": labs} | beam.CoGroupByKey()
                  | beam.ParDo(JoinPerEvent(join)).with_outputs("late", "dead", main="examples"))
        examples = (joined.examples
                    | beam.BatchElements(min_batch_size=256, max_batch_size=4096)
                    | beam.ParDo(Featurize(artifact.to_dict(), source)))
        for name, pcoll in (("examples", examples), ("late", joined.late), ("dead", joined.dead)):
            (pcoll | f"JSON {name}" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
             | f"Write {name}" >> beam.io.WriteToText(str(tmp / name)))
    counts = {}
    for name, out, key in (("examples", "examples.jsonl", example_order),
                           ("late", "late_labels.jsonl", lambda r: (r["label_time"], r["event_id"])),
                           ("dead", "dead_letter.jsonl", lambda r: (r["reason"], r["event_id"]))):
        rows = [json.loads(line) for f in sorted(tmp.glob(f"{name}-*")) for line in f.read_text().splitlines()]
        rows.sort(key=key)
        if name == "examples":
            rows = [{**r, "seq": i} for i, r in enumerate(rows, 1)]
        (out_dir / out).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        counts[name] = len(rows)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return counts
