/*
 * driftline: a windowed count per key in event time, the streaming side of an aggregate
 * feature (transforms.spec.Aggregate): for each row at time t, the number of earlier rows of
 * its key in [t - W, t) (rows at t itself, ties, not counted), appended as the last field.
 *
 * The same value as Flink SQL's
 *   COUNT(*) OVER (PARTITION BY key ORDER BY ts RANGE BETWEEN W PRECEDING AND CURRENT ROW)
 *   - COUNT(*) OVER (PARTITION BY key ORDER BY ts RANGE BETWEEN 0 PRECEDING AND CURRENT ROW)
 * which the job used before. Flink's RowTimeRangeBoundedPrecedingFunction scans every
 * timestamp the key holds (the window's rows and the rows still waiting for the watermark)
 * on every timer, O(rows of the key) per row: measured with Java Flight Recorder, 60 % of the
 * job's JVM samples on a dense generated stream. Here a key's state is the sorted event times
 * of its window (a long[] used as a queue: expired times drop off the front) and its rows
 * waiting for the watermark by time, so a row costs O(1) amortized, and the window keeps
 * 8 bytes per row instead of the whole row.
 *
 * Like the OVER, a row is processed when the watermark passes its time (rows of one time
 * together); a row at or behind the watermark on arrival (or at or before the last time
 * already processed for its key) is late: counted in the "numLateRecordsDropped" metric and
 * written as a dead letter ("behind_watermark", the row as its raw record; side output
 * lateTag()), not counted in any window. So an impression is late where it enters the job's
 * first keyed operator, decided by the impressions' own watermark (which Flink's watermark
 * assigner emits at once when it jumps by more than the auto-watermark interval), and later
 * operators never see a late impression; after a restore, by at least the watermark it had
 * reached (KeyedRowOperator keeps it in state). A key's state is cleared when its window has
 * emptied.
 *
 * Warm-up rows (a boolean field, warmIndex >= 0, true): impressions from before the stream (a
 * bootstrap's history) that fill the windows so that the stream's first window of counts is the
 * one the history's backfill computed, not an empty one. They are counted in the windows and
 * emitted like any row, flag and all (the dedup after the counts takes them out). A warm-up row
 * behind the watermark is not part of the job's input: counted in
 * "numWarmupRecordsBehindWatermark", no dead letter.
 */
package driftline.flink;

import java.util.List;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

public final class WindowedCount extends KeyedProcessFunction<String, Row, Row>
    implements KeyedRowOperator.WatermarkAware {
  private static final long serialVersionUID = 1L;

  private final long windowMs;
  private final String[] names; // the input's field names, in order (rows may be name-based)
  private final TypeInformation<Row> inputType;
  private final OutputTag<Row> deadLetters;
  private final int warmIndex; // the warm-up flag's field, -1: none
  private transient Counter warmLate;
  // queue of the window's event times: [0] = head index, [1] = end index, times in [head, end)
  private transient ValueState<long[]> window;
  private transient WaitingRows waiting;
  private transient KeptWatermarks watermarks; // its input's, kept across restores (KeyedRowOperator)

  public WindowedCount(long windowMs, String[] names, TypeInformation<Row> inputType, TypeInformation<Row> lineType) {
    this(windowMs, names, inputType, lineType, -1);
  }

  public WindowedCount(long windowMs, String[] names, TypeInformation<Row> inputType, TypeInformation<Row> lineType,
                       int warmIndex) {
    this.warmIndex = warmIndex;
    this.windowMs = windowMs;
    this.names = names.clone();
    this.inputType = inputType;
    this.deadLetters = new OutputTag<Row>("behind_watermark", lineType);
  }

  /** The dead-letter lines of the rows that came at or behind the watermark. */
  public OutputTag<Row> lateTag() {
    return deadLetters;
  }

  @Override
  public void attach(KeptWatermarks marks) {
    watermarks = marks;
  }

  @Override
  public void open(OpenContext ctx) {
    window = getRuntimeContext().getState(
        new ValueStateDescriptor<long[]>("window", PrimitiveArrayTypeInfo.LONG_PRIMITIVE_ARRAY_TYPE_INFO));
    waiting = new WaitingRows(getRuntimeContext(), "waiting", inputType);
    warmLate = getRuntimeContext().getMetricGroup().counter("numWarmupRecordsBehindWatermark");
  }

  private boolean warm(Row row) {
    return warmIndex >= 0 && Boolean.TRUE.equals(Fields.get(row, warmIndex, names[warmIndex]));
  }

  @Override
  public void processElement(Row row, Context ctx, Collector<Row> out) throws Exception {
    long t = ctx.timestamp();
    long[] w = window.value();
    // the watermark restored is never ahead of the one an uninterrupted run would have here
    long watermark = Math.max(ctx.timerService().currentWatermark(),
        watermarks == null ? Long.MIN_VALUE : watermarks.get(0));
    // at or behind the watermark, or its key is already past t
    boolean late = t <= watermark || (w != null && w[1] > 2 && t <= w[(int) w[1] - 1]);
    if (late && warm(row)) {
      warmLate.inc();
      return;
    }
    if (late) {
      waiting.drop();
      ctx.output(deadLetters, Row.of(Json.behindWatermark("impression", "flink:windowed_count", t,
          watermark, names, row)));
      return;
    }
    waiting.add(t, row, ctx.timerService());
  }

  @Override
  public void onTimer(long t, OnTimerContext ctx, Collector<Row> out) throws Exception {
    long[] w = window.value();
    if (w == null) {
      w = new long[] {2, 2, 0, 0, 0, 0, 0, 0};
    }
    int head = (int) w[0];
    int end = (int) w[1];
    while (head < end && w[head] < t - windowMs) {
      head++;
    }
    List<Row> rows = waiting.take(t);
    if (rows != null) {
      long count = end - head;
      for (Row row : rows) {
        Row o = Row.withPositions(names.length + 1);
        for (int i = 0; i < names.length; i++) {
          o.setField(i, Fields.get(row, i, names[i]));
        }
        o.setField(names.length, count);
        out.collect(o);
      }
      int need = end - head + rows.size();
      if (end + rows.size() > w.length) { // compact to the front, grow if more than half full
        long[] g = new long[Math.max(w.length, 2 * (need + 2))];
        System.arraycopy(w, head, g, 2, end - head);
        w = g;
        end = 2 + end - head;
        head = 2;
      }
      for (int i = 0; i < rows.size(); i++) {
        w[end++] = t;
      }
      ctx.timerService().registerEventTimeTimer(t + windowMs + 1); // the time t drops out
    }
    if (head == end && waiting.isEmpty()) {
      window.clear();
      return;
    }
    w[0] = head;
    w[1] = end;
    window.update(w);
  }
}
