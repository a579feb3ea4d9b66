/*
 * driftline: the JSON text our JVM operators write: a pending impression's inputs as one array
 * of values (strings escaped, doubles as Double.toString, which Python's json reads back to the
 * same double; NaN and infinities as Python's json writes them; transforms.apply.inputs_table
 * reads it), and the dead-letter lines of duplicates and of rows behind the watermark (the fields
 * of every dead letter).
 */
package driftline.flink;

import org.apache.flink.types.Row;

public final class Json {
  private Json() {}

  /** The values as one JSON array. */
  public static String array(Object[] values) {
    StringBuilder json = new StringBuilder(16 * values.length + 2).append('[');
    for (int i = 0; i < values.length; i++) {
      if (i > 0) {
        json.append(',');
      }
      appendJson(json, values[i]);
    }
    return json.append(']').toString();
  }

  /** The dead-letter line of a duplicate: its reason, "occurrence n", its kind and origin,
   * and its event_id as the raw record. */
  static String deadLetter(String reason, long n, String kind, String origin, String eventId) {
    StringBuilder s = new StringBuilder(128).append("{\"reason\":\"").append(reason)
        .append("\",\"detail\":\"occurrence ").append(n).append("\",\"kind\":\"").append(kind)
        .append("\",\"origin\":\"").append(origin).append("\",\"raw\":");
    appendJson(s, eventId);
    return s.append('}').toString();
  }

  /** The dead-letter line of a row that arrived at or behind the watermark (more out of order
   * than the sources' watermark delay), which a keyed operator cannot process in event time any
   * more: reason "behind_watermark", the row's time (a label's: label_time + 1) and the
   * watermark as its detail, and the row itself as the raw record (one JSON object of its
   * fields ``names``; values that are not strings, numbers or booleans, such as the rowtime,
   * left out). */
  static String behindWatermark(String kind, String origin, long t, long watermark, String[] names, Row row) {
    StringBuilder raw = new StringBuilder(32 * names.length + 2).append('{');
    boolean first = true;
    for (int i = 0; i < names.length; i++) {
      Object v = Fields.get(row, i, names[i]);
      if (v != null && !(v instanceof String) && !(v instanceof Number) && !(v instanceof Boolean)) {
        continue;
      }
      if (!first) {
        raw.append(',');
      }
      first = false;
      appendJson(raw, names[i]);
      raw.append(':');
      appendJson(raw, v);
    }
    raw.append('}');
    StringBuilder s = new StringBuilder(raw.length() + 192).append("{\"reason\":\"behind_watermark\",\"detail\":")
        .append("\"stamped at ").append(t).append(" ms, at or behind the watermark ").append(watermark)
        .append(" ms: more out of order than watermark_delay_ms\",\"kind\":\"").append(kind)
        .append("\",\"origin\":\"").append(origin).append("\",\"raw\":");
    appendJson(s, raw.toString());
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
