package driftline.flink;

import org.apache.flink.types.Row;

/** A row's field by position, or by name when the row is in name-based mode. */
final class Fields {
  private Fields() {}

  static Object get(Row row, int pos, String name) {
    try {
      return row.getField(pos);
    } catch (IllegalArgumentException nameBased) {
      return row.getField(name);
    }
  }
}
