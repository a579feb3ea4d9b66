/*
 * driftline: the rows of a key waiting for the watermark, by event time: what each of our
 * keyed operators buffers (Flink processes a key's rows in time order only once the watermark
 * has passed them). The first row of a time registers an event-time timer at that time; the
 * operator takes the rows in its onTimer, in arrival order. A row at or behind the watermark
 * is late (late()); an operator with its own rule calls drop(); both count it in
 * "numLateRecordsDropped", and the operator writes it as a dead letter.
 */
package driftline.flink;

import java.util.ArrayList;
import java.util.List;
import org.apache.flink.api.common.functions.RuntimeContext;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.ListTypeInfo;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.TimerService;
import org.apache.flink.types.Row;

final class WaitingRows {
  private final MapState<Long, List<Row>> rows;
  private final Counter lateDropped;

  WaitingRows(RuntimeContext ctx, String name, TypeInformation<Row> rowType) {
    rows = ctx.getMapState(new MapStateDescriptor<>(name, Types.LONG, new ListTypeInfo<>(rowType)));
    lateDropped = ctx.getMetricGroup().counter("numLateRecordsDropped");
  }

  /** Buffers ``row`` under time ``t`` (a timer at ``t`` with the first row of that time). */
  void add(long t, Row row, TimerService timers) throws Exception {
    List<Row> at = rows.get(t);
    if (at == null) {
      at = new ArrayList<>();
      timers.registerEventTimeTimer(t);
    }
    at.add(row);
    rows.put(t, at);
  }

  /** The rows buffered under ``t``, in arrival order, removed; null if none. */
  List<Row> take(long t) throws Exception {
    List<Row> at = rows.get(t);
    if (at != null) {
      rows.remove(t);
    }
    return at;
  }

  boolean isEmpty() throws Exception {
    return rows.isEmpty();
  }

  /** Counts a late row (the caller dead-letters it: nothing is dropped silently). */
  void drop() {
    lateDropped.inc();
  }

  /** Whether a row at ``t`` is late, and if so counts it: at or behind ``watermark`` (at least
   * the operator's own) on arrival, the rule of a buffer processed at the watermark (Flink's
   * OVER and windows drop such rows). The caller dead-letters it (``Json.behindWatermark``). */
  boolean late(long t, long watermark) {
    if (t <= watermark) {
      drop();
      return true;
    }
    return false;
  }
}
