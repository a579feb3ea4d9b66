/*
 * driftline: the dedup and the delayed-label join in one keyed operator per event_id
 * (pipelines.join states both; reference_join in plain Python), in event time.
 *
 * Input 1: the impressions (the windowed counts' rows: event_id, event_time, the inputs...),
 * timestamped at t. Input 2: the labels (event_id, label_time, label), timestamped at lt + 1,
 * so a label at exactly the impression's time comes after it. A key's rows wait for the
 * watermark (the minimum of both inputs'); when it passes their time, in arrival order:
 *
 *   - each impression gets its occurrence number (Occurrences, retention in event time): a
 *     first occurrence goes on, main output, as (event_id, event_time, unit, the inputs...),
 *     what the tick packing sends to the Learner, and into the join, keeping its inputs as one
 *     JSON array of values; a duplicate becomes a dead-letter line (side output DEAD_LETTERS);
 *   - each label too: a duplicate label is a dead-letter line and nothing more (an earlier or
 *     equal label was counted first, so it never decides); a first occurrence goes into the
 *     join, whose first (earliest) label decides.
 *
 * The join (side output JOIN, rows event_id, resolution_time, event_time, label, label_time,
 * info, inputs, stamped with the deciding row's time) adds each key's deadlines itself, as
 * event-time timers: the impression's at t + W + 1, its first label's at lt + W + 1. At one
 * time the order is label, impression, deadline, label deadline (then arrival), so a label at
 * t - 1 (stamped t) comes before an impression at t. The first label decides:
 *   - at the label, with the impression seen: "label" (a positive, or its 0/1 value) if
 *     lt < t + W; else "late" if lt - t <= H, "unknown_impression" beyond;
 *   - at the impression's deadline: "expired" (a negative) unless the first label fell in
 *     [t, t + W);
 *   - at the label's deadline, if no impression had come before the label:
 *     "label_before_impression" if one came since (lt < t <= lt + W), else "unknown_impression".
 * The join's state of a key is freed in event time: the inputs at the impression's deadline
 * (unless late labels become corrections, which need them), everything when no row can change
 * an outcome any more: after t + H + 1 (the last late label's stamp) and the first label's
 * deadline. From then on the key's join state counts as gone for every row, whenever it
 * arrived (a first label then is an unknown impression, reported at its deadline); it is freed
 * by the sweeps of the ids' memory (which lives longer, the dedup's retention R), every R / 16
 * of event time (SweepingCoProcessOperator; with R below H + 2, the join's state has its own
 * sweep every H / 16). No clear timer per key: the heap of those, one per impression of the
 * last H, was most of the operator's timers and of their checkpoint.
 *
 * One operator instead of three (a dedup of the impressions, one of the labels, the join) and
 * the labels read once: each impression is buffered and shuffled once, not twice (measured:
 * README "Where the streaming time goes"). A row at or behind its own input's watermark on
 * arrival is late (a row behind the operator's watermark, the minimum of both, cannot be
 * processed in event time any more: Flink's OVER and windows drop such rows; judging by its
 * own input's makes the decision depend on that stream alone): it is counted
 * ("numLateRecordsDropped") and written as a dead letter, "behind_watermark", with the row as
 * its raw record (DEAD_LETTERS), so nothing is lost silently.
 *
 * Warm-up rows (warmField(name, cut) for the impressions, warmLabels(position) for the labels:
 * a boolean field, true; the history before the stream, JobConfig.warmup_dir) are processed
 * as if the whole log had been streamed: they take their occurrence numbers (a stream
 * impression that repeats one within the retention is a duplicate) and go into the join, so
 * an impression still pending at the history's cut joins its label from the stream and a
 * late label finds its impression. They are never emitted as first occurrences or dead
 * letters (one behind the watermark counts in "numWarmupRecordsBehindWatermark"), and a key
 * that has had only warm-up rows emits only the outcomes resolved at or after the cut (the
 * earlier ones are the history's: a bootstrap trained on them, pipelines.bootstrap). So the
 * outcomes out of warm-up + stream are the ones of the whole log resolved from the cut on.
 */
package driftline.flink;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.streaming.api.TimerService;
import org.apache.flink.streaming.api.functions.co.KeyedCoProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

public final class DedupJoin extends KeyedCoProcessFunction<String, Row, Row, Row>
    implements SweepingCoProcessOperator.Sweepable {
  private static final long serialVersionUID = 1L;
  private static final String[] LABEL = {"event_id", "label_time", "label"}; // input 2's fields
  // the join's state slots
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
  // what the join processes at one time, in this order
  private static final int K_LABEL = 1;
  private static final int K_IMP = 0;
  private static final int K_DEADLINE = 2;
  private static final int K_LABEL_DEADLINE = 3;
  private static final long STREAM_ROW = 16; // flag bit 4: a row of the stream (not the warm-up) seen

  private final long retentionMs;
  private final long windowMs;
  private final long horizonMs;
  private final boolean keepInputsOfLate;
  private final long noTime;
  private final String[] names; // input 1's field names, in order (rows may be name-based)
  private final String unit; // input 1's field that is the row's unit (A/B arm), null if none
  private final String[] inputs; // the inputs, in the order of the JSON array and the main output
  private final TypeInformation<Row> impType;
  private final TypeInformation<Row> labelType;
  private final OutputTag<Row> join;
  private final OutputTag<Row> deadLetters; // duplicates, and rows behind the watermark
  private transient Occurrences impSeen;
  private transient Occurrences labelSeen;
  private transient WaitingRows waitingImps;
  private transient WaitingRows waitingLabels;
  private transient ValueState<long[]> acc;
  private transient ValueState<String> pendingInputs;
  private transient int time;
  private transient int unitPos;
  private transient int[] inputPos;
  private transient long nextSweep; // the watermark at which the join's next sweep is due
  private transient SweepingCoProcessOperator operator; // the operator it runs in (its inputs' watermarks)
  private String warm; // input 1's warm-up flag field, null if none
  private long cutMs = Long.MIN_VALUE; // the warm-up's cut (see above)
  private int labelWarmPos = -1; // input 2's warm-up flag position, -1 if none
  private transient int warmPos;
  private transient org.apache.flink.metrics.Counter warmLate;

  public DedupJoin(long retentionMs, long windowMs, long horizonMs, boolean keepInputsOfLate, long noTime,
      String[] names, String unit, String[] inputs, TypeInformation<Row> impType, TypeInformation<Row> labelType,
      TypeInformation<Row> joinType, TypeInformation<Row> lineType) {
    if (windowMs <= 0 || horizonMs < windowMs || retentionMs <= 0) {
      throw new IllegalArgumentException("need 0 < windowMs <= horizonMs and retentionMs > 0");
    }
    this.retentionMs = retentionMs;
    this.windowMs = windowMs;
    this.horizonMs = horizonMs;
    this.keepInputsOfLate = keepInputsOfLate;
    this.noTime = noTime;
    this.names = names.clone();
    this.unit = unit;
    this.inputs = inputs.clone();
    this.impType = impType;
    this.labelType = labelType;
    this.join = new OutputTag<Row>("join", joinType);
    this.deadLetters = new OutputTag<Row>("dead_letters", lineType);
  }

  /** Input 1's rows with ``field`` true are warm-up rows, the warm-up's outcomes those resolved
   * before ``cutMs`` (see above); returns this. */
  public DedupJoin warmField(String field, long cutMs) {
    this.warm = field;
    this.cutMs = cutMs;
    return this;
  }

  /** Input 2's rows with the boolean field at ``position`` true are warm-up rows; returns this. */
  public DedupJoin warmLabels(int position) {
    if (position < LABEL.length) {
      throw new IllegalArgumentException("the labels' warm-up flag comes after their fields " + Arrays.toString(LABEL));
    }
    this.labelWarmPos = position;
    return this;
  }

  private boolean isWarm(Row row) {
    return warmPos >= 0 && Boolean.TRUE.equals(Fields.get(row, warmPos, names[warmPos]));
  }

  private boolean isWarmLabel(Row row) {
    return labelWarmPos >= 0 && Boolean.TRUE.equals(Fields.get(row, labelWarmPos, "_warm"));
  }

  public OutputTag<Row> joinTag() {
    return join;
  }

  /** The dead-letter lines: duplicate impressions and labels, and rows behind the watermark. */
  public OutputTag<Row> deadLettersTag() {
    return deadLetters;
  }

  private int position(String field) {
    int p = Arrays.asList(names).indexOf(field);
    if (p < 0) {
      throw new IllegalArgumentException("no input field " + field);
    }
    return p;
  }

  @Override
  public void open(OpenContext ctx) {
    impSeen = new Occurrences(getRuntimeContext(), "seen", retentionMs);
    labelSeen = new Occurrences(getRuntimeContext(), "seen_labels", retentionMs);
    waitingImps = new WaitingRows(getRuntimeContext(), "waiting", impType);
    waitingLabels = new WaitingRows(getRuntimeContext(), "waiting_labels", labelType);
    acc = getRuntimeContext().getState(
        new ValueStateDescriptor<long[]>("acc", PrimitiveArrayTypeInfo.LONG_PRIMITIVE_ARRAY_TYPE_INFO));
    pendingInputs = getRuntimeContext().getState(new ValueStateDescriptor<>("inputs", Types.STRING));
    time = position("event_time");
    unitPos = unit == null ? -1 : position(unit);
    inputPos = new int[inputs.length];
    for (int i = 0; i < inputs.length; i++) {
      inputPos[i] = position(inputs[i]);
    }
    nextSweep = Long.MIN_VALUE;
    warmPos = warm == null ? -1 : position(warm);
    warmLate = getRuntimeContext().getMetricGroup().counter("numWarmupRecordsBehindWatermark");
  }

  @Override
  public void attach(SweepingCoProcessOperator op) {
    operator = op;
  }

  @Override
  public void sweep(long watermark, SweepingCoProcessOperator op) throws Exception {
    // the join's state is checked in the same passes over the ids: a key's ids are remembered
    // until its last row is the retention behind the watermark, and with a retention >= H + 2
    // that is past the key's clear time (see expired), so every key's state is freed by them
    impSeen.sweep(watermark, op, () -> dropJoin(watermark));
    labelSeen.sweep(watermark, op, () -> dropJoin(watermark));
    if (retentionMs >= horizonMs + 2 || watermark < nextSweep) {
      return;
    }
    // a retention shorter than that: the join's state needs its own sweep
    long period = Math.max(1, horizonMs / 16);
    nextSweep = watermark >= Long.MAX_VALUE - period ? Long.MAX_VALUE : watermark + period;
    for (String key : op.keys("acc")) {
      op.setCurrentKey(key);
      dropJoin(watermark);
    }
  }

  /** Frees the current key's join state if it has expired at {@code watermark}. */
  private void dropJoin(long watermark) throws Exception {
    if (expired(acc.value(), watermark)) {
      acc.clear();
      pendingInputs.clear();
    }
  }

  /** Whether a key's join state ``a`` is cleared at time ``t``: past its clear time, no row can
   * change an outcome; a row at or after it finds the state gone, whether or not the sweep has
   * freed it yet (so no timer per key, and no answer that depends on when rows arrived). */
  private static boolean expired(long[] a, long t) {
    return a != null && a[CLEAR] != 0 && t >= a[CLEAR];
  }

  @Override
  public void processElement1(Row row, Context ctx, Collector<Row> out) throws Exception {
    buffer(waitingImps, row, ctx, 1, "impression", "flink:impressions", names);
  }

  @Override
  public void processElement2(Row row, Context ctx, Collector<Row> out) throws Exception {
    buffer(waitingLabels, row, ctx, 2, "label", "flink:labels", LABEL);
  }

  /** Buffers ``row`` until the watermark passes its time, or, if it came at or behind the
   * watermark of its own input, writes it as a dead letter (its reason "behind_watermark").
   * Its own input's: the operator's watermark (the minimum of both inputs') is never ahead of
   * it, so every row this operator could no longer process is caught, and which rows are late
   * depends on their own stream alone, not on how the two streams' sources interleave. */
  private void buffer(WaitingRows waiting, Row row, Context ctx, int input, String kind, String origin,
      String[] fields) throws Exception {
    long t = ctx.timestamp();
    TimerService timers = ctx.timerService();
    long watermark = Math.max(timers.currentWatermark(), operator == null ? Long.MIN_VALUE
        : operator.inputWatermark(input));
    if (t <= watermark && (input == 1 ? isWarm(row) : isWarmLabel(row))) {
      warmLate.inc();
    } else if (waiting.late(t, watermark)) {
      ctx.output(deadLetters, Row.of(Json.behindWatermark(kind, origin, t, watermark, fields, row)));
    } else {
      waiting.add(t, row, timers);
    }
  }

  private static long num(Row row, int i) {
    return ((Number) row.getField(i)).longValue();
  }

  @Override
  public void onTimer(long t, OnTimerContext ctx, Collector<Row> out) throws Exception {
    List<Row> labels = waitingLabels.take(t);
    List<Row> imps = waitingImps.take(t);
    String key = ctx.getCurrentKey();
    // the join's rows (event_id, k, event_time, inputs, label_time, label, of the stream) in its order
    List<Row> rows = new ArrayList<>();
    if (labels != null) {
      labelSeen.begin(t);
      for (Row row : labels) {
        long n = labelSeen.next();
        boolean warmRow = isWarmLabel(row);
        if (n > 1) { // never the first label (an earlier or equal one was counted): decides nothing
          if (!warmRow) {
            ctx.output(deadLetters, Row.of(Json.deadLetter("duplicate_label", n, "label", "flink:labels", key)));
          }
          continue;
        }
        Object lv = Fields.get(row, 2, LABEL[2]);
        rows.add(Row.of(key, K_LABEL, null, null, ((Number) Fields.get(row, 1, LABEL[1])).longValue(),
            lv == null ? 0L : ((Number) lv).longValue(), !warmRow));
      }
      labelSeen.end();
    }
    if (imps != null) {
      impSeen.begin(t);
      for (Row row : imps) {
        long n = impSeen.next();
        boolean warmRow = isWarm(row);
        if (n > 1) {
          if (!warmRow) {
            ctx.output(deadLetters, Row.of(Json.deadLetter("duplicate_event_id", n, "impression",
                "flink:impressions", key)));
          }
          continue;
        }
        rows.add(joinRow(row, key, warmRow ? null : out));
      }
      impSeen.end();
    }
    resolve(t, rows, key, ctx);
  }

  /** A first occurrence: out as (event_id, event_time, unit, the inputs...) unless ``out`` is
   * null (a warm-up row); returns its join row, which keeps the inputs as one JSON array of values. */
  private Row joinRow(Row row, String key, Collector<Row> out) {
    Object eventTime = Fields.get(row, time, names[time]);
    Row o = Row.withPositions(3 + inputs.length);
    o.setField(0, key);
    o.setField(1, eventTime);
    Object u = unitPos < 0 ? key : Fields.get(row, unitPos, names[unitPos]);
    o.setField(2, u == null ? "" : u.toString());
    Object[] values = new Object[inputs.length];
    for (int i = 0; i < inputs.length; i++) {
      values[i] = Fields.get(row, inputPos[i], names[inputPos[i]]);
      o.setField(3 + i, values[i]);
    }
    if (out != null) {
      out.collect(o);
    }
    return Row.of(key, K_IMP, ((Number) eventTime).longValue(), Json.array(values), null, null, out != null);
  }

  /** The join at time t: the key's labels and first impressions of t (in that order), then
   * its deadlines due at t. */
  private void resolve(long t, List<Row> rows, String key, OnTimerContext ctx) throws Exception {
    long[] a = acc.value();
    if (expired(a, t)) {
      acc.clear();
      pendingInputs.clear();
      a = null;
    }
    boolean deadline = a != null && (a[FLAGS] & 4) != 0 && a[DL_DUE] == t;
    boolean labelDeadline = a != null && (a[FLAGS] & 8) != 0 && a[LDL_DUE] == t;
    if (rows.isEmpty() && !deadline && !labelDeadline) {
      return;
    }
    if (a == null) {
      a = new long[SLOTS];
    }
    if (deadline) {
      rows.add(Row.of(key, K_DEADLINE, null, null, null, null, false));
    }
    if (labelDeadline) {
      rows.add(Row.of(key, K_LABEL_DEADLINE, null, null, a[FIRST], a[FIRST_VALUE], false));
    }
    String in = pendingInputs.value();
    boolean inputsChanged = false;
    long lastLabel = Long.MIN_VALUE / 2; // the latest label time among these rows
    for (Row row : rows) {
      int k = (Integer) row.getField(1);
      if ((Boolean) row.getField(6)) {
        a[FLAGS] |= STREAM_ROW;
      }
      long labelTime = 0;
      long label = 0;
      if (k == K_IMP) {
        long et = num(row, 2);
        a[IMP] = (a[FLAGS] & 1) != 0 ? Math.max(a[IMP], et) : et;
        a[FLAGS] |= 1;
        if ((a[FLAGS] & 4) == 0) { // the first impression's deadline decides (later ones never do)
          a[DL_DUE] = et + windowMs + 1;
          a[FLAGS] |= 4;
          ctx.timerService().registerEventTimeTimer(a[DL_DUE]);
        }
        in = (String) row.getField(3);
        inputsChanged = true;
      } else if (k == K_LABEL || k == K_LABEL_DEADLINE) {
        labelTime = num(row, 4);
        label = num(row, 5);
        a[FIRST] = (a[FLAGS] & 2) != 0 ? Math.min(a[FIRST], labelTime) : labelTime;
        a[FLAGS] |= 2;
        a[k == K_LABEL ? N_LAB : N_LDL]++;
        lastLabel = Math.max(lastLabel, labelTime);
        if (k == K_LABEL && (a[FLAGS] & 8) == 0) { // the first label (the earliest: rows come in time order)
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
      if (k == K_LABEL && a[N_LAB] == 1 && hasImp) {
        info = labelTime < a[IMP] + windowMs ? "label"
            : labelTime - a[IMP] <= horizonMs ? "late" : "unknown_impression";
      } else if (k == K_DEADLINE && a[N_DL] == 1 && hasImp) {
        boolean inWindow = (a[FLAGS] & 2) != 0 && a[FIRST] >= a[IMP] && a[FIRST] < a[IMP] + windowMs;
        if (!inWindow) {
          info = "expired";
        }
      } else if (k == K_LABEL_DEADLINE && a[N_LDL] == 1 && labelTime == a[FIRST]
          && (!hasImp || a[IMP] > a[FIRST])) {
        info = hasImp && a[IMP] <= a[FIRST] + windowMs ? "label_before_impression" : "unknown_impression";
      }
      long resolution = k == K_DEADLINE ? a[IMP] + windowMs : labelTime;
      if (info != null && (resolution >= cutMs || (a[FLAGS] & STREAM_ROW) != 0)) { // else the warm-up's
        boolean example = info.equals("label") || info.equals("expired");
        String outInputs = (keepInputsOfLate || example) && in != null ? in : "";
        Row o = Row.withPositions(7);
        o.setField(0, key);
        o.setField(1, resolution);
        o.setField(2, info.equals("unknown_impression") ? noTime : a[IMP]);
        o.setField(3, k == K_DEADLINE ? 0 : (int) label);
        o.setField(4, k == K_DEADLINE ? noTime : labelTime);
        o.setField(5, info);
        o.setField(6, outInputs);
        ctx.output(join, o);
      }
      if (k == K_DEADLINE && !keepInputsOfLate && in != null) {
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
    a[CLEAR] = clear; // no timer: the state expires at it (expired), the sweep frees it
    acc.update(a);
    if (inputsChanged) {
      if (in == null) {
        pendingInputs.clear();
      } else {
        pendingInputs.update(in);
      }
    }
  }
}
