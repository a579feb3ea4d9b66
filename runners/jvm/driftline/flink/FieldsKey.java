/*
 * driftline: the key of a row by some of its fields (an aggregate's keys), as one string:
 * the values joined by U+0001, a null as U+0000 (SQL's PARTITION BY groups nulls together).
 */
package driftline.flink;

import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.types.Row;

public final class FieldsKey implements KeySelector<Row, String> {
  private static final long serialVersionUID = 1L;

  private final int[] positions;
  private final String[] names;

  public FieldsKey(int[] positions, String[] names) {
    this.positions = positions.clone();
    this.names = names.clone();
  }

  @Override
  public String getKey(Row row) {
    StringBuilder b = new StringBuilder();
    for (int i = 0; i < positions.length; i++) {
      if (i > 0) {
        b.append('\u0001');
      }
      Object v = Fields.get(row, positions[i], names[i]);
      b.append(v == null ? "\u0000" : v.toString());
    }
    return b.toString();
  }
}
