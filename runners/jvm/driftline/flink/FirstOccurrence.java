/*
 * driftline: which occurrence of its key (an event_id) a row is, in event time, appended as
 * the last field ("nth": 1 for the first occurrence, 2, 3, ... for duplicates). Rows of one
 * time keep their arrival order (ties), as pipelines.join states the dedup.
 *
 * The same value as Flink SQL's
 *   COUNT(*) OVER (PARTITION BY key ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
 * which the job used before (runners.flink_job._first_flag), with one difference that makes
 * the job deterministic: the SQL state expires after a span of processing time (the table's
 * state TTL), so whether a late duplicate was recognized depended on how fast the job ran.
 * Here a key's state (a count and the last time seen, 16 bytes, plus its rows waiting for the
 * watermark) is forgotten once the last occurrence is more than the retention behind, in
 * event time: a duplicate more than the retention after the previous occurrence of its id
 * counts as a first occurrence again, on every run and runner alike. The state is freed by a
 * sweep over all keys every retention / 16 of event time (SweepingProcessOperator), not by a
 * timer per key: what a key's row sees never depends on when the sweep ran.
 *
 * Like the OVER, a row is processed when the watermark passes its time; a row at or behind
 * the watermark when it arrives is late and dropped (the "numLateRecordsDropped" metric).
 */
package driftline.flink;

import java.util.List;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

public final class FirstOccurrence extends KeyedProcessFunction<String, Row, Row>
    implements SweepingProcessOperator.Sweepable {
  private static final long serialVersionUID = 1L;
  private static final String SEEN = "seen"; // the id memory's state: created and swept by this name

  private final long retentionMs;
  private final String[] names; // the input's field names, in order (rows may be name-based)
  private final TypeInformation<Row> inputType;
  // [occurrences processed, time of the last one]
  private transient ValueState<long[]> seen;
  private transient WaitingRows waiting;
  private transient long nextSweep; // the watermark at which the next sweep is due

  public FirstOccurrence(long retentionMs, String[] names, TypeInformation<Row> inputType) {
    if (retentionMs <= 0) {
      throw new IllegalArgumentException("retentionMs must be > 0");
    }
    this.retentionMs = retentionMs;
    this.names = names.clone();
    this.inputType = inputType;
  }

  @Override
  public void open(OpenContext ctx) {
    seen = getRuntimeContext().getState(
        new ValueStateDescriptor<long[]>(SEEN, PrimitiveArrayTypeInfo.LONG_PRIMITIVE_ARRAY_TYPE_INFO));
    waiting = new WaitingRows(getRuntimeContext(), inputType);
    nextSweep = Long.MIN_VALUE;
  }

  /** Frees every key whose last occurrence the watermark has passed by the retention: no row
   * still to come (all are after the watermark) can count it. */
  @Override
  public void sweep(long watermark, SweepingProcessOperator op) throws Exception {
    if (watermark < nextSweep) {
      return;
    }
    long period = Math.max(1, retentionMs / 16);
    nextSweep = watermark >= Long.MAX_VALUE - period ? Long.MAX_VALUE : watermark + period;
    for (String key : op.keys(SEEN)) {
      op.setCurrentKey(key);
      long[] s = seen.value();
      if (s != null && watermark >= s[1] + retentionMs) {
        seen.clear();
      }
    }
  }

  @Override
  public void processElement(Row row, Context ctx, Collector<Row> out) throws Exception {
    long t = ctx.timestamp();
    if (waiting.dropIfLate(t, ctx.timerService())) {
      return;
    }
    waiting.add(t, row, ctx.timerService());
  }

  @Override
  public void onTimer(long t, OnTimerContext ctx, Collector<Row> out) throws Exception {
    long[] s = seen.value();
    List<Row> rows = waiting.take(t);
    if (s != null && t > s[1] + retentionMs) {
      s = null; // forgotten: more than the retention after the last occurrence (swept or not)
    }
    if (rows != null) {
      if (s == null) {
        s = new long[2];
      }
      for (Row row : rows) {
        Row o = Row.withPositions(names.length + 1);
        for (int i = 0; i < names.length; i++) {
          o.setField(i, Fields.get(row, i, names[i]));
        }
        o.setField(names.length, ++s[0]);
        out.collect(o);
      }
      s[1] = t;
      seen.update(s);
    }
  }
}
