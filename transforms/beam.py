"""Beam adapters for the shared transforms: batch backfill of windowed aggregates and the
"analyze" step that fits the transform artifact. DirectRunner by default; any runner through
pipeline options.

Both are thin: the per-key window counting is ``transforms.aggregates.window_counts`` and the
statistics are ``transforms.artifact.analyze_batch`` / ``AnalyzeState.merge``, whose merge is
exact, so the artifact does not depend on how a runner splits or orders bundles.
"""
from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.events import SourceSpec
from transforms.aggregates import window_counts
from transforms.artifact import AnalyzeState, TransformArtifact, analyze_batch, finalize
from transforms.spec import Aggregate, FeatureSpec


class _CountInWindow(beam.DoFn):
    """One key's rows -> (row_id, count of same-key rows in [t - w, t))."""

    def __init__(self, window_ms: int):
        self.window_ms = window_ms

    def process(self, element):
        _, rows = element
        rows = list(rows)  # (row_id, event_time)
        counts = window_counts([], [t for _, t in rows], self.window_ms)
        for (row_id, _), c in zip(rows, counts.tolist()):
            yield row_id, c


class AddWindowedCounts(beam.PTransform):
    """PCollection[(row_id, row dict)] -> same, with one int column per aggregate of the spec.

    ``row_id`` must be unique per row (event ids may repeat: duplicates are rows too).
    """

    def __init__(self, aggregates: tuple[Aggregate, ...]):
        super().__init__()
        self.aggregates = aggregates

    def expand(self, rows):
        counted = {}
        for a in self.aggregates:
            counted[a.name] = (
                rows
                | f"Key {a.name}" >> beam.Map(
                    lambda kv, keys=a.keys: (tuple(kv[1][k] for k in keys), (kv[0], kv[1]["event_time"])))
                | f"Group {a.name}" >> beam.GroupByKey()
                | f"Count {a.name}" >> beam.ParDo(_CountInWindow(a.window_ms)))
        return ({"row": rows, **counted}
                | "Join counts" >> beam.CoGroupByKey()
                | "Attach" >> beam.MapTuple(self._attach))

    def _attach(self, row_id, grouped):
        (row,) = grouped["row"]
        out = dict(row)
        for a in self.aggregates:
            (out[a.name],) = grouped[a.name]
        return row_id, out


class _AnalyzeFn(beam.CombineFn):
    def __init__(self, spec: FeatureSpec):
        self.spec = spec

    def create_accumulator(self):
        return AnalyzeState()

    def add_input(self, acc, batch: pa.Table):
        return acc.merge(analyze_batch(self.spec, batch))

    def merge_accumulators(self, accs):
        out = AnalyzeState()
        for a in accs:
            out = out.merge(a)
        return out

    def extract_output(self, acc):
        return finalize(self.spec, acc).to_dict()


class AnalyzeTransform(beam.PTransform):
    """PCollection[row dict] (aggregate columns included) -> singleton PCollection holding the
    fitted artifact as a dict (``TransformArtifact.from_dict`` loads it)."""

    def __init__(self, spec: FeatureSpec, schema: pa.Schema):
        super().__init__()
        self.spec, self.schema = spec, schema

    def expand(self, rows):
        schema = self.schema
        return (rows
                | "Batch" >> beam.BatchElements(min_batch_size=1_000, max_batch_size=20_000)
                | "To Arrow" >> beam.Map(lambda b: pa.Table.from_pylist(b, schema))
                | "Analyze" >> beam.CombineGlobally(_AnalyzeFn(self.spec)))


def feature_input_schema(spec: FeatureSpec, source: SourceSpec) -> pa.Schema:
    """Impression schema plus one int64 column per aggregate."""
    schema = source.impression_schema()
    for a in spec.aggregates:
        schema = schema.append(pa.field(a.name, pa.int64()))
    return schema


class ReadImpressions(beam.PTransform):
    """An event directory's JSONL impressions as (unique row id, row dict). Exact duplicates
    (same event_id and time) stay rows of their own, numbered within their group."""

    def __init__(self, event_dir: str | Path):
        super().__init__()
        self.pattern = str(Path(event_dir) / "impressions" / "part-*.jsonl")

    def expand(self, p):
        return (p
                | "Read" >> beam.io.ReadFromText(self.pattern)
                | "Parse" >> beam.Map(json.loads)
                | "Id" >> beam.Map(lambda r: (f"{r['event_id']}@{r['event_time']}", r))
                | "Group ids" >> beam.GroupByKey()
                | "Unique ids" >> beam.FlatMapTuple(lambda k, rs: [(f"{k}#{i}", r) for i, r in enumerate(rs)]))


def _options(pipeline_args: list[str] | None) -> PipelineOptions:
    return PipelineOptions(pipeline_args or ["--runner=DirectRunner"])


def _write_single(pcoll, path: Path, label: str):
    return pcoll | label >> beam.io.WriteToText(str(path), num_shards=1, shard_name_template="")


def backfill_event_dir(spec: FeatureSpec, event_dir: str | Path, out_path: str | Path,
                       pipeline_args: list[str] | None = None) -> None:
    """Batch backfill: write ``out_path`` (JSONL) with ``event_id, event_time, <aggregates>``
    for every impression row of an event directory."""
    names = [a.name for a in spec.aggregates]
    with beam.Pipeline(options=_options(pipeline_args)) as p:
        rows = (p | ReadImpressions(event_dir) | AddWindowedCounts(spec.aggregates) | beam.Values()
                | beam.Map(lambda r: json.dumps({k: r[k] for k in ["event_id", "event_time", *names]})))
        _write_single(rows, Path(out_path), "Write")


def fit_event_dir(spec: FeatureSpec, source: SourceSpec, event_dir: str | Path, out_dir: str | Path,
                  pipeline_args: list[str] | None = None) -> TransformArtifact:
    """Backfill aggregates over an event directory's JSONL impressions and fit the artifact,
    with Beam. Writes ``out_dir/transform_artifact.json`` and returns the artifact."""
    schema = feature_input_schema(spec, source)
    tmp = Path(out_dir) / ".beam_artifact"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with beam.Pipeline(options=_options(pipeline_args)) as p:
        art = (p
               | ReadImpressions(event_dir)
               | "Aggregates" >> AddWindowedCounts(spec.aggregates)
               | "Drop ids" >> beam.Values()
               | "Analyze" >> AnalyzeTransform(spec, schema)
               | "JSON" >> beam.Map(lambda d: json.dumps(d, sort_keys=True)))
        _write_single(art, tmp, "Write")
    artifact = TransformArtifact.from_dict(json.loads(tmp.read_text()))
    tmp.unlink()
    artifact.save(out_dir)
    return artifact
