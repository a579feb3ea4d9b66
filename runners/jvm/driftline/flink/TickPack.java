/*
 * driftline: all rows of an event-time tick in one value, an Arrow IPC stream (what
 * runners.packing.unpack reads), so that rows cross into the Python Learner once per tick.
 *
 * Ticks are tumbling windows of tickMs aligned to the epoch, as Flink SQL's TUMBLE: a row at
 * t belongs to the tick ending at e = t - floorMod(t, tickMs) + tickMs, and the tick is emitted
 * as (kind, payload) with timestamp e - 1 (TUMBLE_ROWTIME) when the watermark reaches e - 1,
 * its rows in arrival order. It replaces a TUMBLE window with a pandas aggregate function that
 * packed the rows in Python: measured as the job's busiest operator on sparse streams (many
 * ticks of few rows; the Python call costs per window). Its inputs are never late: their
 * producer (DedupJoin) emits rows only from event-time timers, each stamped with its timer's
 * time, which is ahead of the watermark it has forwarded (late rows were dead-lettered before
 * they were buffered there), so a row at or behind the watermark here is a bug and fails the
 * task with a clear error instead of being dropped silently.
 *
 * Column kinds: "string" (utf8), "long" (int64), "int" (int32), "double" (float64), "bytes"
 * (binary); nulls kept.
 * The operator is keyed (timers need keys): key every row alike to get one stream of ticks.
 */
package driftline.flink;

import java.io.ByteArrayOutputStream;
import java.nio.channels.Channels;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.python.shaded.org.apache.arrow.memory.BufferAllocator;
import org.apache.flink.api.python.shaded.org.apache.arrow.memory.RootAllocator;
import org.apache.flink.api.python.shaded.org.apache.arrow.vector.BigIntVector;
import org.apache.flink.api.python.shaded.org.apache.arrow.vector.FieldVector;
import org.apache.flink.api.python.shaded.org.apache.arrow.vector.Float8Vector;
import org.apache.flink.api.python.shaded.org.apache.arrow.vector.IntVector;
import org.apache.flink.api.python.shaded.org.apache.arrow.vector.VarBinaryVector;
import org.apache.flink.api.python.shaded.org.apache.arrow.vector.VarCharVector;
import org.apache.flink.api.python.shaded.org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.flink.api.python.shaded.org.apache.arrow.vector.ipc.ArrowStreamWriter;
import org.apache.flink.api.python.shaded.org.apache.arrow.vector.types.FloatingPointPrecision;
import org.apache.flink.api.python.shaded.org.apache.arrow.vector.types.pojo.ArrowType;
import org.apache.flink.api.python.shaded.org.apache.arrow.vector.types.pojo.Field;
import org.apache.flink.api.python.shaded.org.apache.arrow.vector.types.pojo.FieldType;
import org.apache.flink.api.python.shaded.org.apache.arrow.vector.types.pojo.Schema;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

public final class TickPack extends KeyedProcessFunction<String, Row, Row> {
  private static final long serialVersionUID = 1L;

  private final String kind;
  private final long tickMs;
  private final String[] inputNames; // the input's field names, in order
  private final String[] columns; // the packed columns (input field names)
  private final String[] kinds; // their kinds: string, long, int, double, bytes
  private final TypeInformation<Row> inputType;
  private transient int[] positions;
  private transient WaitingRows waiting;
  private transient BufferAllocator allocator;
  private transient Schema schema;

  public TickPack(String kind, long tickMs, String[] inputNames, String[] columns, String[] kinds,
      TypeInformation<Row> inputType) {
    if (tickMs <= 0 || columns.length != kinds.length) {
      throw new IllegalArgumentException("need tickMs > 0 and one kind per column");
    }
    this.kind = kind;
    this.tickMs = tickMs;
    this.inputNames = inputNames.clone();
    this.columns = columns.clone();
    this.kinds = kinds.clone();
    this.inputType = inputType;
  }

  private static ArrowType arrowType(String kind) {
    switch (kind) {
      case "string":
        return ArrowType.Utf8.INSTANCE;
      case "long":
        return new ArrowType.Int(64, true);
      case "int":
        return new ArrowType.Int(32, true);
      case "double":
        return new ArrowType.FloatingPoint(FloatingPointPrecision.DOUBLE);
      case "bytes":
        return ArrowType.Binary.INSTANCE;
      default:
        throw new IllegalArgumentException("unknown column kind " + kind);
    }
  }

  @Override
  public void open(OpenContext ctx) {
    positions = new int[columns.length];
    List<Field> fields = new ArrayList<>();
    for (int c = 0; c < columns.length; c++) {
      positions[c] = java.util.Arrays.asList(inputNames).indexOf(columns[c]);
      if (positions[c] < 0) {
        throw new IllegalArgumentException("no input field " + columns[c]);
      }
      fields.add(new Field(columns[c], FieldType.nullable(arrowType(kinds[c])), null));
    }
    schema = new Schema(fields);
    allocator = new RootAllocator(Long.MAX_VALUE);
    waiting = new WaitingRows(getRuntimeContext(), "waiting", inputType);
  }

  @Override
  public void close() throws Exception {
    if (allocator != null) {
      allocator.close();
    }
  }

  @Override
  public void processElement(Row row, Context ctx, Collector<Row> out) throws Exception {
    long t = ctx.timestamp();
    if (t <= ctx.timerService().currentWatermark()) { // see the class comment: never, by construction
      throw new IllegalStateException("tick " + kind + ": a row at " + t + " came at or behind the watermark "
          + ctx.timerService().currentWatermark() + " (its producer must emit rows from event-time timers)");
    }
    long last = t - Math.floorMod(t, tickMs) + tickMs - 1; // the tick's rowtime
    waiting.add(last, row, ctx.timerService());
  }

  @Override
  public void onTimer(long t, OnTimerContext ctx, Collector<Row> out) throws Exception {
    List<Row> rows = waiting.take(t);
    if (rows == null) {
      return;
    }
    out.collect(Row.of(kind, pack(rows)));
  }

  private byte[] pack(List<Row> rows) throws Exception {
    int n = rows.size();
    try (VectorSchemaRoot root = VectorSchemaRoot.create(schema, allocator)) {
      for (int c = 0; c < columns.length; c++) {
        FieldVector v = root.getVector(c);
        v.setInitialCapacity(n);
        v.allocateNew();
        for (int j = 0; j < n; j++) {
          Object x = Fields.get(rows.get(j), positions[c], columns[c]);
          if (x == null) {
            v.setNull(j);
            continue;
          }
          switch (kinds[c]) {
            case "string":
              ((VarCharVector) v).setSafe(j, ((String) x).getBytes(StandardCharsets.UTF_8));
              break;
            case "long":
              ((BigIntVector) v).setSafe(j, ((Number) x).longValue());
              break;
            case "int":
              ((IntVector) v).setSafe(j, ((Number) x).intValue());
              break;
            case "double":
              ((Float8Vector) v).setSafe(j, ((Number) x).doubleValue());
              break;
            default:
              ((VarBinaryVector) v).setSafe(j, (byte[]) x);
          }
        }
        v.setValueCount(n);
      }
      root.setRowCount(n);
      ByteArrayOutputStream bytes = new ByteArrayOutputStream();
      try (ArrowStreamWriter writer = new ArrowStreamWriter(root, null, Channels.newChannel(bytes))) {
        writer.start();
        writer.writeBatch();
        writer.end();
      }
      return bytes.toByteArray();
    }
  }
}
