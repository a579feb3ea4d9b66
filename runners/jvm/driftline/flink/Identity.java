/*
 * driftline: rows passed through unchanged, to give a stream a plain RowTypeInfo. A Table
 * converted to a DataStream is typed with the Table runtime's ExternalTypeInfo, whose
 * serializer converts every row to the internal format and back at each shuffle; our keyed
 * operators' inputs are shuffled (keyed), so their streams are re-typed first.
 */
package driftline.flink;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.types.Row;

public final class Identity implements MapFunction<Row, Row> {
  private static final long serialVersionUID = 1L;

  @Override
  public Row map(Row row) {
    return row;
  }
}
