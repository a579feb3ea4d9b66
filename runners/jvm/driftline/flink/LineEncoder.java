/*
 * driftline: writes a job output's rows to part files as text lines, in the JVM.
 *
 * Every output of the job is a row whose first field ("line") is text: one JSON record, or
 * several joined by newlines. This encoder writes that text and a newline (what the table
 * filesystem sink's raw format wrote), so outputs can go through the DataStream FileSink,
 * which commits part files only on checkpoints, including the final one of a bounded job.
 */
package driftline.flink;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import org.apache.flink.api.common.serialization.Encoder;
import org.apache.flink.types.Row;

public final class LineEncoder implements Encoder<Row> {
  private static final long serialVersionUID = 1L;

  @Override
  public void encode(Row row, OutputStream out) throws IOException {
    Object line = Fields.get(row, 0, "line");
    if (line != null) {
      out.write(line.toString().getBytes(StandardCharsets.UTF_8));
      out.write('\n');
    }
  }
}
