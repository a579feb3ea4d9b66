/*
 * driftline: what the job does with each deduplicated impression (FirstOccurrence's rows, "nth"
 * last), in the JVM and in one pass:
 *
 *   - a first occurrence (nth = 1) goes on, main output, as (event_id, event_time, unit, the
 *     inputs...): what the tick packing sends to the Learner, which featurizes it;
 *   - and, side output JOIN, as the example join's impression row (event_id, 0, event_time,
 *     inputs as one JSON array of values, null, null, rowtime): what a pending impression keeps;
 *   - a duplicate (nth > 1) becomes a dead-letter line, side output DUPLICATES, with its reason.
 *
 * It replaces a Flink SQL view over the dedup's stream, read by three queries: every impression
 * converted into the Table runtime, filtered and projected, and converted back, once per query
 * (measured as the job's busiest JVM chain on a dense stream). Output timestamps are the input's.
 *
 * The JSON array holds the values only (JSON text: strings escaped, doubles as
 * Double.toString, which Python's json reads back to the same double; NaN and infinities as
 * Python's json writes them); transforms.apply.inputs_table reads it.
 */
package driftline.flink;

import java.time.Instant;
import java.util.Arrays;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

public final class ImpressionRows extends ProcessFunction<Row, Row> {
  private static final long serialVersionUID = 1L;

  private final String[] names; // the input's field names, in order
  private final String unit; // the input field that is the row's unit (A/B arm), null if none
  private final String[] inputs; // the inputs, in the order of the JSON array and the main output
  private final OutputTag<Row> join;
  private final OutputTag<Row> duplicates;
  private transient int id;
  private transient int time;
  private transient int nth;
  private transient int unitPos;
  private transient int[] inputPos;

  public ImpressionRows(String[] names, String unit, String[] inputs, TypeInformation<Row> joinType,
      TypeInformation<Row> lineType) {
    this.names = names.clone();
    this.unit = unit;
    this.inputs = inputs.clone();
    this.join = new OutputTag<Row>("join", joinType);
    this.duplicates = new OutputTag<Row>("duplicates", lineType);
  }

  public OutputTag<Row> joinTag() {
    return join;
  }

  public OutputTag<Row> duplicatesTag() {
    return duplicates;
  }

  private int position(String field) {
    int p = Arrays.asList(names).indexOf(field);
    if (p < 0) {
      throw new IllegalArgumentException("no input field " + field);
    }
    return p;
  }

  @Override
  public void open(org.apache.flink.api.common.functions.OpenContext ctx) {
    id = position("event_id");
    time = position("event_time");
    nth = position("nth");
    unitPos = unit == null ? -1 : position(unit);
    inputPos = new int[inputs.length];
    for (int i = 0; i < inputs.length; i++) {
      inputPos[i] = position(inputs[i]);
    }
  }

  private Object get(Row row, int pos) {
    return Fields.get(row, pos, names[pos]);
  }

  @Override
  public void processElement(Row row, Context ctx, Collector<Row> out) {
    String eventId = (String) get(row, id);
    long n = ((Number) get(row, nth)).longValue();
    if (n > 1) {
      ctx.output(duplicates, Row.of(deadLetter(eventId, n)));
      return;
    }
    Object eventTime = get(row, time);
    Row o = Row.withPositions(3 + inputs.length);
    o.setField(0, eventId);
    o.setField(1, eventTime);
    Object u = unitPos < 0 ? eventId : get(row, unitPos);
    o.setField(2, u == null ? "" : u.toString());
    Object[] values = new Object[inputs.length];
    for (int i = 0; i < inputs.length; i++) {
      values[i] = get(row, inputPos[i]);
      o.setField(3 + i, values[i]);
    }
    out.collect(o);
    ctx.output(join, Row.of(eventId, 0, eventTime, jsonArray(values), null, null,
        Instant.ofEpochMilli(ctx.timestamp())));
  }

  /** The values as one JSON array (what a pending impression keeps as its inputs). */
  public static String jsonArray(Object[] values) {
    StringBuilder json = new StringBuilder(16 * values.length + 2).append('[');
    for (int i = 0; i < values.length; i++) {
      if (i > 0) {
        json.append(',');
      }
      appendJson(json, values[i]);
    }
    return json.append(']').toString();
  }

  /** The dead-letter line of a duplicate impression (the fields of every dead letter). */
  static String deadLetter(String eventId, long n) {
    StringBuilder s = new StringBuilder(128)
        .append("{\"reason\":\"duplicate_event_id\",\"detail\":\"occurrence ").append(n)
        .append("\",\"kind\":\"impression\",\"origin\":\"flink:impressions\",\"raw\":");
    appendJson(s, eventId);
    return s.append('}').toString();
  }

  private static void appendJson(StringBuilder s, Object v) {
    if (v == null) {
      s.append("null");
    } else if (v instanceof String) {
      String x = (String) v;
      s.append('"');
      for (int i = 0; i < x.length(); i++) {
        char c = x.charAt(i);
        switch (c) {
          case '"':
            s.append("\\\"");
            break;
          case '\\':
            s.append("\\\\");
            break;
          case '\n':
            s.append("\\n");
            break;
          case '\r':
            s.append("\\r");
            break;
          case '\t':
            s.append("\\t");
            break;
          default:
            if (c < 0x20) {
              s.append(String.format("\\u%04x", (int) c));
            } else {
              s.append(c);
            }
        }
      }
      s.append('"');
    } else if (v instanceof Double) {
      double d = (Double) v;
      s.append(Double.isNaN(d) ? "NaN" : Double.isInfinite(d) ? (d > 0 ? "Infinity" : "-Infinity")
          : Double.toString(d));
    } else {
      s.append(v.toString()); // longs (the windowed counts), ints
    }
  }
}
