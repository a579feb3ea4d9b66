/*
 * driftline: the JSON text our JVM operators write: a pending impression's inputs as one array
 * of values (strings escaped, doubles as Double.toString, which Python's json reads back to the
 * same double; NaN and infinities as Python's json writes them; transforms.apply.inputs_table
 * reads it), and a duplicate's dead-letter line (the fields of every dead letter).
 */
package driftline.flink;

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
