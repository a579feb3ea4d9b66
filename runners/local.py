"""Local runs: turn a source into a validated event directory, and the main job of `make run`.

These are engine-free (plain Python + pyarrow); the Flink, Beam and TFX runners of later
stages read the event directories written here.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.events import SourceSpec
from pipelines.eventlog import EventDirWriter
from pipelines.sources import elec2, talkingdata
from pipelines.sources.files import read_files
from pipelines.sources.generator import GENERATOR, GeneratorConfig, generate
from pipelines.validate import BatchCollector, ValidationConfig, Validator, validate_lines

LOADERS = {"talkingdata": talkingdata.load, "elec2": elec2.load}
# A replay's event directory is one part per stream: the Flink job reads a multi-part folder
# as one source per part (its file source does not read parts in name order), which is
# correct but buffers later parts in the join state until the earlier ones are done.
REPLAY_ROWS_PER_FILE = 10_000_000


def write_event_dir(out: str | Path, spec: SourceSpec, batches: Iterable[dict[str, pa.Table]],
                    collector: BatchCollector, fmt: str = "jsonl", rows_per_file: int = 100_000,
                    extra: dict | None = None, overwrite: bool = False) -> dict:
    """Drain validated batches into an event directory; returns its manifest (with counts).
    Refuses a folder that already holds one unless ``overwrite``."""
    writer = EventDirWriter(out, spec, fmt, rows_per_file, overwrite)
    for tables in batches:
        writer.write(tables)
    return writer.close(collector.counts, extra)


def write_raw_lines(folder: Path, lines: list[bytes], rows_per_file: int = 100_000) -> None:
    """The as-received stream, byte for byte (malformed lines included), as numbered parts."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, len(lines), rows_per_file)):
        name = f"part-{part:06d}.jsonl"
        tmp = folder / f".{name}.inprogress"
        tmp.write_bytes(b"\n".join(lines[start:start + rows_per_file]) + b"\n")
        os.replace(tmp, folder / name)



def free_port() -> int:
    """A port free on 127.0.0.1 now (a local job, or a local broker, binds it a moment later)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate_event_dir(out: str | Path, cfg: GeneratorConfig, fmt: str = "jsonl",
                       rows_per_file: int = 100_000, keep_raw: bool = True,
                       validation: ValidationConfig | None = None, overwrite: bool = False) -> dict:
    """Generate a seeded stream, validate it, and write events, dead letters and ground truth."""
    out = Path(out)
    writer = EventDirWriter(out, GENERATOR, fmt, rows_per_file, overwrite)  # checks the folder first
    stream = generate(cfg)
    for extra_dir in ("raw", "ground_truth"):
        shutil.rmtree(out / extra_dir, ignore_errors=True)
    if keep_raw:
        write_raw_lines(out / "raw", stream.lines, rows_per_file)
    validator = Validator(GENERATOR, validation)
    collector = BatchCollector(GENERATOR)
    batches = validate_lines(validator, collector, stream.lines, "generator")
    truth_dir = out / "ground_truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(stream.truth, truth_dir / "impressions.parquet")
    (truth_dir / "truth.json").write_text(json.dumps({
        "config": cfg.to_dict(), "drift_points_ms": stream.drift_points_ms,
        "counts": stream.counts, "malformed": stream.malformed}, indent=1) + "\n")
    for tables in batches:
        writer.write(tables)
    return writer.close(collector.counts, {"generator": cfg.to_dict(), "generator_counts": stream.counts})


def load_event_dir(source: str, out: str | Path, path: str | Path | None = None,
                   fmt: str = "jsonl", rows_per_file: int = 100_000, overwrite: bool = False) -> dict:
    """A real data set (talkingdata | elec2) as a validated event directory."""
    if source not in LOADERS:
        raise ValueError(f"unknown data set {source!r}; expected one of {sorted(LOADERS)}")
    collector = LOADERS[source](path)
    return write_event_dir(out, collector.spec, [collector.drain()], collector, fmt, rows_per_file,
                           overwrite=overwrite)


def ingest_event_dir(paths: list[str], spec: SourceSpec, out: str | Path, kind: str | None = None,
                     fmt: str = "jsonl", rows_per_file: int = 100_000, overwrite: bool = False) -> dict:
    """A user's JSONL/CSV/Parquet files as a validated event directory."""
    collector = BatchCollector(spec)
    batches = read_files(paths, spec, kind, collector=collector)
    return write_event_dir(out, spec, batches, collector, fmt, rows_per_file, overwrite=overwrite)


def prepare_events(data: str, run_dir: str | Path, events: int = 20_000, seed: int = 7,
                   data_dir_opt: str | Path | None = None, rate_per_s: float | None = None) -> tuple[Path, str]:
    """The event directory a run reads: generated or loaded into ``RUN_DIR/events``, or an
    existing event directory. Returns (event_dir, source name). ``rate_per_s``: the
    generator's impressions per second of event time (default: ``GeneratorConfig``'s)."""
    from pipelines.config import data_dir
    from pipelines.eventlog import read_manifest

    run_dir = Path(run_dir)
    if data == "generator":
        rate = {} if rate_per_s is None else {"rate_per_s": rate_per_s}
        generate_event_dir(run_dir / "events", GeneratorConfig(events=events, seed=seed, **rate),
                           rows_per_file=REPLAY_ROWS_PER_FILE, overwrite=True)
        return run_dir / "events", "generator"
    if data in LOADERS:
        rel = {"talkingdata": talkingdata.RELATIVE_PATH, "elec2": elec2.RELATIVE_PATH}[data]
        path = data_dir(data_dir_opt, need=rel) / rel
        load_event_dir(data, run_dir / "events", path, rows_per_file=REPLAY_ROWS_PER_FILE, overwrite=True)
        return run_dir / "events", data
    manifest = read_manifest(data)  # FileNotFoundError with a clear message otherwise
    return Path(data), manifest["source"]["name"]