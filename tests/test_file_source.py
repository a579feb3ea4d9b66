"""The filesystem table source's line reader (``'format' = 'json'``: the job's impressions and
labels) resumes where it was at every restore: ``runners/jvm/.../
DeserializationSchemaAdapter.java`` in place of Flink 2.3's, whose positions after a restore
restart from zero (a second restore re-read rows: duplicates and late rows after three
TaskManager kills). Read in a child process with a Flink gateway (tests/file_source_reads.py)."""
import json
from pathlib import Path

from runners import jvm, warm

READS = Path(__file__).with_name("file_source_reads.py")


def _reads(tmp_path, lines: list[str], plan: list[int]) -> dict:
    path = tmp_path / "rows.jsonl"
    path.write_bytes("".join(lines).encode())
    out = tmp_path / "out.json"
    proc = warm.run([str(READS), str(path), json.dumps(plan), str(out)])
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(out.read_text())


def test_the_line_reader_resumes_at_its_position_after_each_restore(tmp_path):
    n = 1_000
    # CRLF lines and a line the format skips (ignore-parse-errors) on the way: a position counts rows
    lines = [json.dumps({"n": i}) + ("\r\n" if i % 7 == 0 else "\n") for i in range(n)]
    lines.insert(400, "{not json\n")
    got = _reads(tmp_path, lines, [250, 300, 120])
    assert got["positions"] == [250, 550, 670]  # Flink's: [250, 300, 120]
    assert [len(p) for p in got["phases"]] == [250, 300, 120, n - 670]
    assert sum(got["phases"], []) == list(range(n))  # nothing read twice, nothing skipped
    assert got["jar"].endswith(".jar") and str(jvm.cache_root()) in got["jar"]  # the patched copy ran

