"""Child process of tests/test_file_source.py (a Flink gateway of its own: PyFlink and Beam
never share a process): reads a JSON-lines file the way the filesystem table source's line
reader does (``org.apache.flink.connector.file.table.DeserializationSchemaAdapter``, the class
on the job's class path), stopping and restoring from the position a checkpoint would store.

argv: FILE PLAN OUT. PLAN: a JSON list, rows to read before each restore (then to the end).
OUT: {"phases": [[n, ...], ...], "positions": [...], "jar": where the class came from}."""
import json
import sys

from runners.jvm import prepare_local


def main(path: str, plan: list[int], out: str) -> None:
    prepare_local()  # our jar ahead of Flink's on the gateway's class path, as in a local job
    from pyflink.java_gateway import get_gateway

    gw = get_gateway()
    j = gw.jvm
    flink = j.org.apache.flink
    row_type = flink.table.types.logical.RowType.of(_types(gw), _names(gw))
    info = flink.table.runtime.typeutils.InternalTypeInfo.of(row_type)
    schema = flink.formats.json.JsonRowDataDeserializationSchema(
        row_type, info, False, True, flink.formats.common.TimestampFormat.SQL)
    fmt = flink.connector.file.table.DeserializationSchemaAdapter(schema)
    size = j.java.io.File(path).length()
    split = flink.connector.file.src.FileSourceSplit("1", flink.core.fs.Path(path), 0, size, 0, size)
    conf = flink.configuration.Configuration()
    reader = fmt.createReader(conf, split)
    phases, positions = [], []
    for budget in [*plan, None]:
        got, position = [], None
        while budget is None or len(got) < budget:
            batch = reader.readBatch()
            if batch is None:
                break
            while budget is None or len(got) < budget:
                rec = batch.next()
                if rec is None:
                    break
                got.append(rec.getRecord().getLong(0))
                position = rec.getRecordSkipCount()  # rows after the split's start, this one included
        phases.append(got)
        reader.close()
        if budget is None:
            break
        positions.append(position)
        restored = split.updateWithCheckpointedPosition(
            flink.connector.file.src.util.CheckpointedPosition(-1, position))
        reader = fmt.restoreReader(conf, restored)
    where = fmt.getClass().getProtectionDomain().getCodeSource().getLocation().toString()
    with open(out, "w") as f:
        json.dump({"phases": phases, "positions": positions, "jar": where}, f)


def _types(gw):
    arr = gw.new_array(gw.jvm.org.apache.flink.table.types.logical.LogicalType, 1)
    arr[0] = gw.jvm.org.apache.flink.table.types.logical.BigIntType()
    return arr


def _names(gw):
    arr = gw.new_array(gw.jvm.String, 1)
    arr[0] = "n"
    return arr


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3])
