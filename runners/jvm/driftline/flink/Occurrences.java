/*
 * driftline: which occurrence of its key (an event_id) a row is, in event time ("nth": 1 for
 * the first occurrence, 2, 3, ... for duplicates); rows of one time in arrival order (ties),
 * as pipelines.join states the dedup. A key's memory (a count and the last time seen, 16
 * bytes) is forgotten once the last occurrence is more than the retention behind, in event
 * time: a duplicate more than the retention after the previous occurrence of its id counts as
 * a first occurrence again, on every run and runner alike (the Flink SQL OVER this replaced
 * expired its state after a span of processing time, so its answer depended on how fast the
 * job ran). The memory is freed by a sweep over all keys every retention / 16 of event time,
 * not by a timer per key: what a key's row sees never depends on when the sweep ran.
 */
package driftline.flink;

import org.apache.flink.api.common.functions.RuntimeContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;

final class Occurrences {
  private final String name; // the keyed state: created and swept by this name
  private final long retentionMs;
  private final ValueState<long[]> seen; // [occurrences counted, time of the last one]
  private long nextSweep = Long.MIN_VALUE; // the watermark at which the next sweep is due
  private long[] current; // the key's memory while its rows of one time are counted

  Occurrences(RuntimeContext ctx, String name, long retentionMs) {
    if (retentionMs <= 0) {
      throw new IllegalArgumentException("retentionMs must be > 0");
    }
    this.name = name;
    this.retentionMs = retentionMs;
    seen = ctx.getState(new ValueStateDescriptor<long[]>(name, PrimitiveArrayTypeInfo.LONG_PRIMITIVE_ARRAY_TYPE_INFO));
  }

  /** Starts counting the current key's rows of time {@code t} (then {@link #next}, {@link #end}). */
  void begin(long t) throws Exception {
    long[] s = seen.value();
    if (s != null && t > s[1] + retentionMs) {
      s = null; // forgotten: more than the retention after the last occurrence (swept or not)
    }
    current = s == null ? new long[2] : s;
    current[1] = t;
  }

  /** The next row's occurrence number. */
  long next() {
    return ++current[0];
  }

  /** Stores the count after the rows of this time. */
  void end() throws Exception {
    seen.update(current);
    current = null;
  }

  /** More to do for each key a sweep visits (called with that key current). */
  interface Visit {
    void visit() throws Exception;
  }

  /** Frees every key whose last occurrence the watermark has passed by the retention: no row
   * still to come (all are after the watermark) can count it. {@code then} (may be null) runs
   * for every key visited, with it current: other state of the key can be checked in the same
   * pass, without a sweep of its own. */
  void sweep(long watermark, SweepingCoProcessOperator op, Visit then) throws Exception {
    if (watermark < nextSweep) {
      return;
    }
    long period = Math.max(1, retentionMs / 16);
    nextSweep = watermark >= Long.MAX_VALUE - period ? Long.MAX_VALUE : watermark + period;
    for (String key : op.keys(name)) {
      op.setCurrentKey(key);
      long[] s = seen.value();
      if (s != null && watermark >= s[1] + retentionMs) {
        seen.clear();
      }
      if (then != null) {
        then.visit();
      }
    }
  }
}
