/*
 * driftline: the delayed-label join (pipelines.join states it; reference_join in plain
 * Python), one keyed operator per event_id in event time, without watermark hold-back.
 *
 * Input rows (event_id, k, event_time, inputs, label_time, label), timestamped: k = 0 the
 * impression at t, k = 1 a label at lt + 1. The operator adds each key's deadlines itself, as
 * event-time timers: the impression's at t + W + 1 and its first label's at lt + W + 1 (to
 * decide a label that came before any impression). A key's rows are processed when the
 * watermark passes their time, in time order; at one time in the order label, impression,
 * deadline, label deadline (then arrival), so a label at t - 1 (stamped t) always comes
 * before an impression at t: it is before the impression. The first label (the earliest)
 * decides:
 *   - at the label, with the impression seen: "label" (a positive, or its 0/1 value) if
 *     lt < t + W; else "late" if lt - t <= H, "unknown_impression" beyond;
 *   - at the impression's deadline: "expired" (a negative) unless the first label fell in
 *     [t, t + W);
 *   - at the label's deadline, if no impression had come before the label:
 *     "label_before_impression" if one came since (lt < t <= lt + W), else "unknown_impression".
 * Output rows (event_id, resolution_time, event_time, label, label_time, info, inputs) are
 * stamped with the deciding row's time.
 *
 * This replaces a Flink SQL OVER (MAX/LAST_VALUE/MIN/SUM ... ROWS UNBOUNDED PRECEDING) over
 * the impressions, the labels and both deadlines read as two more sources (the impressions and
 * labels again, stamped later), which registered a processing-time cleanup timer on every row
 * and kept a key's state until a processing-time TTL (2 days), resolved or not; its ties were
 * broken by arrival order, and every deadline row waited in its state for W. Here a
 * key's state is freed in event time: the inputs at the impression's deadline (unless late
 * labels become corrections, which need them), everything when no row can change an outcome
 * any more: after t + H + 1 (the last late label's stamp) and the first label's deadline. A
 * label arriving later than that is an unknown impression either way (reported at its
 * deadline instead of at its time). A late row (at or behind the watermark on arrival) is
 * dropped and counted in "numLateRecordsDropped", as the OVER did.
 */
package driftline.flink;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

public final class ExampleJoin extends KeyedProcessFunction<String, Row, Row> {
  private static final long serialVersionUID = 1L;
  // input fields
  private static final String[] IN = {"event_id", "k", "event_time", "inputs", "label_time", "label"};
  private static final int[] RANK = {1, 0, 2, 3}; // processing order of the kinds at one time
  // state slots
  private static final int IMP = 0; // impression time (valid if HAS_IMP)
  private static final int FIRST = 1; // earliest label time (valid if HAS_LABEL)
  private static final int N_LAB = 2;
  private static final int N_DL = 3;
  private static final int N_LDL = 4;
  private static final int FLAGS = 5; // bit 0: an impression seen; bit 1: a label seen
  private static final int CLEAR = 6; // the time the key's state is cleared (0: none yet)
  private static final int DL_DUE = 7; // the impression's deadline (valid if flag bit 2)
  private static final int LDL_DUE = 8; // the first label's deadline (valid if flag bit 3)
  private static final int FIRST_VALUE = 9; // the first label's value
  private static final int SLOTS = 10;

  private final long windowMs;
  private final long horizonMs;
  private final boolean keepInputsOfLate;
  private final long noTime;
  private final TypeInformation<Row> inputType;
  private transient ValueState<long[]> acc;
  private transient ValueState<String> inputs;
  private transient WaitingRows waiting;

  public ExampleJoin(long windowMs, long horizonMs, boolean keepInputsOfLate, long noTime,
      TypeInformation<Row> inputType) {
    if (windowMs <= 0 || horizonMs < windowMs) {
      throw new IllegalArgumentException("need 0 < windowMs <= horizonMs");
    }
    this.windowMs = windowMs;
    this.horizonMs = horizonMs;
    this.keepInputsOfLate = keepInputsOfLate;
    this.noTime = noTime;
    this.inputType = inputType;
  }

  @Override
  public void open(OpenContext ctx) {
    acc = getRuntimeContext().getState(
        new ValueStateDescriptor<long[]>("acc", PrimitiveArrayTypeInfo.LONG_PRIMITIVE_ARRAY_TYPE_INFO));
    inputs = getRuntimeContext().getState(new ValueStateDescriptor<>("inputs", Types.STRING));
    waiting = new WaitingRows(getRuntimeContext(), inputType);
  }

  @Override
  public void processElement(Row row, Context ctx, Collector<Row> out) throws Exception {
    long t = ctx.timestamp();
    int k = kind(row);
    if (k != 0 && k != 1) {
      throw new IllegalArgumentException("input rows are impressions (k = 0) or labels (k = 1), got k = " + k);
    }
    if (waiting.dropIfLate(t, ctx.timerService())) {
      return;
    }
    waiting.add(t, row, ctx.timerService());
  }

  private static long num(Row row, int i) {
    return ((Number) Fields.get(row, i, IN[i])).longValue();
  }

  private static int kind(Row row) {
    return (int) num(row, 1);
  }

  @Override
  public void onTimer(long t, OnTimerContext ctx, Collector<Row> out) throws Exception {
    long[] a = acc.value();
    List<Row> rows = waiting.take(t);
    boolean deadline = a != null && (a[FLAGS] & 4) != 0 && a[DL_DUE] == t;
    boolean labelDeadline = a != null && (a[FLAGS] & 8) != 0 && a[LDL_DUE] == t;
    if (rows == null && !deadline && !labelDeadline) {
      if (a != null && a[CLEAR] != 0 && t >= a[CLEAR] && waiting.isEmpty()) {
        acc.clear();
        inputs.clear();
      }
      return;
    }
    if (rows != null) {
      rows.sort(Comparator.comparingInt(r -> RANK[kind(r)])); // stable: arrival order within a kind
    } else {
      rows = new ArrayList<>();
    }
    if (a == null) {
      a = new long[SLOTS];
    }
    String key = ctx.getCurrentKey();
    if (deadline) {
      rows.add(Row.of(key, 2, null, null, null, null));
    }
    if (labelDeadline) {
      rows.add(Row.of(key, 3, null, null, a[FIRST], (int) a[FIRST_VALUE]));
    }
    String in = inputs.value();
    boolean inputsChanged = false;
    long lastLabel = Long.MIN_VALUE / 2; // the latest label time among these rows
    for (Row row : rows) {
      int k = kind(row);
      Long labelTime = null;
      long label = 0;
      if (k == 0) {
        long et = num(row, 2);
        a[IMP] = (a[FLAGS] & 1) != 0 ? Math.max(a[IMP], et) : et;
        a[FLAGS] |= 1;
        if ((a[FLAGS] & 4) == 0) { // the first impression's deadline decides (later ones never do)
          a[DL_DUE] = et + windowMs + 1;
          a[FLAGS] |= 4;
          ctx.timerService().registerEventTimeTimer(a[DL_DUE]);
        }
        Object v = Fields.get(row, 3, IN[3]);
        if (v != null) {
          in = (String) v;
          inputsChanged = true;
        }
      } else if (k == 1 || k == 3) {
        labelTime = num(row, 4);
        Object lv = Fields.get(row, 5, IN[5]);
        label = lv == null ? 0 : ((Number) lv).longValue();
        a[FIRST] = (a[FLAGS] & 2) != 0 ? Math.min(a[FIRST], labelTime) : labelTime;
        a[FLAGS] |= 2;
        a[k == 1 ? N_LAB : N_LDL]++;
        lastLabel = Math.max(lastLabel, labelTime);
        if (k == 1 && (a[FLAGS] & 8) == 0) { // the first label (the earliest: rows come in time order)
          a[LDL_DUE] = labelTime + windowMs + 1;
          a[FIRST_VALUE] = label;
          a[FLAGS] |= 8;
          ctx.timerService().registerEventTimeTimer(a[LDL_DUE]);
        }
      } else {
        a[N_DL]++;
      }
      boolean hasImp = (a[FLAGS] & 1) != 0;
      String info = null;
      if (k == 1 && a[N_LAB] == 1 && hasImp) {
        info = labelTime < a[IMP] + windowMs ? "label"
            : labelTime - a[IMP] <= horizonMs ? "late" : "unknown_impression";
      } else if (k == 2 && a[N_DL] == 1 && hasImp) {
        boolean inWindow = (a[FLAGS] & 2) != 0 && a[FIRST] >= a[IMP] && a[FIRST] < a[IMP] + windowMs;
        if (!inWindow) {
          info = "expired";
        }
      } else if (k == 3 && a[N_LDL] == 1 && labelTime == a[FIRST] && (!hasImp || a[IMP] > a[FIRST])) {
        info = hasImp && a[IMP] <= a[FIRST] + windowMs ? "label_before_impression" : "unknown_impression";
      }
      if (info != null) {
        boolean example = info.equals("label") || info.equals("expired");
        String outInputs = (keepInputsOfLate || example) && in != null ? in : "";
        Row o = Row.withPositions(7);
        o.setField(0, Fields.get(row, 0, IN[0]));
        o.setField(1, k == 2 ? a[IMP] + windowMs : labelTime);
        o.setField(2, info.equals("unknown_impression") ? noTime : a[IMP]);
        o.setField(3, k == 2 ? 0 : (int) label);
        o.setField(4, k == 2 ? noTime : labelTime);
        o.setField(5, info);
        o.setField(6, outInputs);
        out.collect(o);
      }
      if (k == 2 && !keepInputsOfLate && in != null) {
        in = null; // resolved: a later label is late or unknown, neither needs the inputs
        inputsChanged = true;
      }
    }
    // no row can change an outcome after the last late label's stamp (t + H + 1) and the
    // deadline of every label seen (lt + W + 1); never before the rows just processed
    long clear = Math.max(a[CLEAR], t + 1);
    if ((a[FLAGS] & 1) != 0) {
      clear = Math.max(clear, a[IMP] + horizonMs + 2);
    }
    if ((a[FLAGS] & 2) != 0) {
      clear = Math.max(clear, a[FIRST] + windowMs + 2);
    }
    clear = Math.max(clear, lastLabel + windowMs + 2);
    if (clear != a[CLEAR]) {
      a[CLEAR] = clear;
      ctx.timerService().registerEventTimeTimer(clear);
    }
    acc.update(a);
    if (inputsChanged) {
      if (in == null) {
        inputs.clear();
      } else {
        inputs.update(in);
      }
    }
  }
}
