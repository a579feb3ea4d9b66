/*
 * driftline: one record per JSON line of a job output's rows, in the JVM.
 *
 * The Learner emits each output as one row per tick whose "line" field holds all of the tick's
 * JSON records joined by newlines (one value per tick crosses from Python). A file sink writes
 * that text as it is (LineEncoder); a message sink (Kafka) wants one message per record: this
 * splits the text at its newlines, skipping empty lines, in order.
 */
package driftline.flink;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

public final class SplitLines implements FlatMapFunction<Row, String> {
  private static final long serialVersionUID = 1L;

  @Override
  public void flatMap(Row row, Collector<String> out) {
    Object field = Fields.get(row, 0, "line");
    if (field == null) {
      return;
    }
    String text = field.toString();
    int start = 0;
    while (start < text.length()) {
      int end = text.indexOf('\n', start);
      if (end < 0) {
        end = text.length();
      }
      if (end > start) {
        out.collect(text.substring(start, end));
      }
      start = end + 1;
    }
  }
}
