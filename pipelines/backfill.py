"""Beam backfill of joined training examples from historical impression and label logs.

The same join semantics as the streaming job -- ``pipelines.join.reference_join``, applied
per event_id after a CoGroupByKey (window W, late horizon and policy, duplicates counted once,
unknown ids and labels before their impression as dead letters) -- and the same features:
the windowed aggregates computed by ``transforms.beam.AddWindowedCounts`` and the shared
numpy transforms of the transform artifact, applied in batches. It bootstraps the first base
model's training data, and re-derives examples with another window or policy.

DirectRunner by default; any runner through ``pipeline_args``. The outputs are sorted in the
pipeline (``SortedFiles``): rows go to buckets of their sort key's leading part (an example's
resolution time in ``bucket_ms`` slices, a late label's label time, a dead letter's reason), each
bucket is sorted by a worker and written as a file whose name sorts as its bucket, and an example's
``seq`` is its bucket's offset (the counts of every earlier bucket, a side input) plus its rank in
it. The driver only concatenates the files in name order (a byte copy, constant memory): the
streaming job's learning order (``example_order``) without one process holding every example.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import apache_beam as beam
import pyarrow as pa

from pipelines.eventlog import read_manifest
from pipelines.events import SourceSpec
from pipelines.join import JoinConfig, example_order, reference_join
from transforms.artifact import TransformArtifact

BUCKET_MS = 3_600_000  # an hour of resolution time per sorted bucket: one worker sorts one bucket


def bucket_file(bucket: "int | str") -> str:
    """A bucket's file name, sorting as the bucket does: an int as fixed-width digits (shifted so
    negatives sort too), a string as the hex of its UTF-8 (byte order = code point order).

    >>> sorted([bucket_file(10), bucket_file(-1), bucket_file(2)]) == [bucket_file(b) for b in (-1, 2, 10)]
    True
    >>> bucket_file("late") < bucket_file("late_label")
    True
    """
    text = f"{bucket + 2**63:020d}" if isinstance(bucket, int) else bucket
    return text.encode().hex() + ".jsonl"


class _WriteBucket(beam.DoFn):
    """(bucket, rows) -> the rows sorted by ``order`` as JSON lines in the bucket's file, numbered
    ``seq`` from its offset when ``counts`` (rows per bucket) is given; yields the row count."""

    def __init__(self, folder: str, order: Callable[[dict], tuple]):
        self.folder, self.order = folder, order

    def process(self, element, counts=None):
        from apache_beam.io.filesystems import FileSystems

        bucket, rows = element
        rows = sorted(rows, key=self.order)
        if counts is not None:
            first = 1 + sum(n for b, n in counts.items() if b < bucket)
            rows = [{**r, "seq": i} for i, r in enumerate(rows, first)]
        path = FileSystems.join(self.folder, bucket_file(bucket))
        tmp = path + ".inprogress"  # a retried bundle rewrites it; the rename publishes it whole
        with FileSystems.create(tmp) as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
        FileSystems.rename([tmp], [path])
        yield len(rows)


class SortedFiles(beam.PTransform):
    """Rows -> one sorted JSONL file per bucket in ``folder``; the files, concatenated in name
    order (``concat_sorted``), are all rows sorted by ``order``. ``bucket(row)`` must be monotone
    in ``order`` (an int or a string): a worker sorts one bucket in memory, so a bucket should
    be a slice of the data, not all of it. ``number``: add ``seq`` (1, 2, ... over all files)."""

    def __init__(self, folder: str, order: Callable[[dict], tuple], bucket: Callable[[dict], "int | str"],
                 number: bool = False):
        super().__init__()
        self.folder, self.order, self.bucket, self.number = folder, order, bucket, number

    def expand(self, rows):
        keyed = rows | "Bucket" >> beam.Map(lambda r, b=self.bucket: (b(r), r))
        side = ()
        if self.number:
            side = (beam.pvalue.AsDict(keyed | "Count" >> beam.combiners.Count.PerKey()),)
        return (keyed | "Group" >> beam.GroupByKey()
                | "Sort and write" >> beam.ParDo(_WriteBucket(self.folder, self.order), *side))


def concat_sorted(folder: Path, out: Path) -> int:
    """``SortedFiles``' files in name order into ``out`` (a streamed copy); returns the lines."""
    n = 0
    with out.open("wb") as dst:
        for f in sorted(folder.glob("*.jsonl")):
            with f.open("rb") as src:
                while chunk := src.read(1 << 20):
                    n += chunk.count(b"\n")
                    dst.write(chunk)
    return n


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
                      pipeline_args: list[str] | None = None, bucket_ms: int = BUCKET_MS) -> dict[str, int]:
    """Write ``out_dir/examples.jsonl`` (learning order, ``seq`` from 1), ``late_labels.jsonl``
    and ``dead_letter.jsonl``; returns their counts. ``bucket_ms``: event time sorted per worker
    (the files are the same for any value)."""
    from transforms.beam import AddWindowedCounts, ReadImpressions, _options

    event_dir, out_dir = Path(event_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = read_manifest(event_dir)["source"]
    tmp = out_dir / ".beam"
    shutil.rmtree(tmp, ignore_errors=True)
    outputs = {  # name: (file, order, bucket, numbered)
        "examples": ("examples.jsonl", example_order, lambda r: r["resolution_time"] // bucket_ms, True),
        "late": ("late_labels.jsonl", lambda r: (r["label_time"], r["event_id"]),
                 lambda r: r["label_time"] // bucket_ms, False),
        "dead": ("dead_letter.jsonl", lambda r: (r["reason"], r["event_id"]), lambda r: r["reason"], False)}
    for name in outputs:
        (tmp / name).mkdir(parents=True)
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
            _, order, bucket, number = outputs[name]
            _ = pcoll | f"Sort {name}" >> SortedFiles(str(tmp / name), order, bucket, number)
    counts = {name: concat_sorted(tmp / name, out_dir / file) for name, (file, *_) in outputs.items()}
    shutil.rmtree(tmp)
    return counts
