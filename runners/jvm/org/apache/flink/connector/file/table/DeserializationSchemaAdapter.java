/*
 * driftline: a drop-in replacement for the class of this name in flink-connector-files, the
 * reader the filesystem table source uses for line formats ('format' = 'json' here): it reads
 * a split's lines, decodes each with the format's DeserializationSchema and reports each
 * row's position as "rows after the split's start", which a checkpoint stores.
 *
 * Why: Flink 2.3's reader, restored from a checkpoint, skips the rows already read but then
 * counts its positions from zero again. The first restore is right; the position the next
 * checkpoint stores is short by the rows skipped, so a second restore re-reads rows the job
 * had already processed: duplicates (the dedup dead-letters them) and, behind the watermarks
 * our operators keep across restores, late rows. tests/test_fault_tolerance.py's three
 * TaskManager kills found it once the impressions source was still reading at the kills
 * (4,324 rows restored, then 4,543 checkpointed 8,867 rows in); tests/test_file_source.py
 * checks positions across three restores directly.
 *
 * Binary-compatible with the class it replaces (same name, constructor, public methods and
 * nested Reader type; tests/test_jvm.py); compiled against the installed jars by runners/jvm.py,
 * which writes a copy of flink-connector-files' jar with it instead of Flink's classes and links
 * that copy into the lib folders (runners.jvm.lib_dir), locally and on our cluster.
 */
package org.apache.flink.connector.file.table;

import java.io.IOException;
import java.util.ArrayDeque;
import java.util.Arrays;
import org.apache.flink.api.common.io.DelimitedInputFormat;
import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.connector.file.src.FileSourceSplit;
import org.apache.flink.connector.file.src.reader.BulkFormat;
import org.apache.flink.connector.file.src.util.ArrayResultIterator;
import org.apache.flink.connector.file.src.util.CheckpointedPosition;
import org.apache.flink.core.fs.FileInputSplit;
import org.apache.flink.core.fs.Path;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.metrics.groups.UnregisteredMetricsGroup;
import org.apache.flink.table.data.RowData;
import org.apache.flink.util.Collector;
import org.apache.flink.util.InstantiationUtil;
import org.apache.flink.util.UserCodeClassLoader;

public class DeserializationSchemaAdapter implements BulkFormat<RowData, FileSourceSplit> {
  private static final long serialVersionUID = 1L;
  private static final int ROWS_PER_BATCH = 100;

  private final DeserializationSchema<RowData> schema;

  public DeserializationSchemaAdapter(DeserializationSchema<RowData> schema) {
    this.schema = schema;
  }

  @Override
  public Reader createReader(Configuration config, FileSourceSplit split) throws IOException {
    return new Reader(config, split, 0L);
  }

  /** Reads on from the checkpointed position: the rows before it are decoded and dropped. */
  @Override
  public Reader restoreReader(Configuration config, FileSourceSplit split) throws IOException {
    long done = split.getReaderPosition().map(CheckpointedPosition::getRecordsAfterOffset).orElse(0L);
    return new Reader(config, split, done);
  }

  @Override
  public boolean isSplittable() {
    return true;
  }

  @Override
  public TypeInformation<RowData> getProducedType() {
    return schema.getProducedType();
  }

  /** Each reader decodes with its own opened copy of the schema (schemas are not thread-safe). */
  private DeserializationSchema<RowData> openCopy() throws IOException {
    try {
      DeserializationSchema<RowData> copy = InstantiationUtil.clone(schema);
      copy.open(new DeserializationSchema.InitializationContext() {
        @Override
        public MetricGroup getMetricGroup() {
          return new UnregisteredMetricsGroup();
        }

        @Override
        public UserCodeClassLoader getUserCodeClassLoader() {
          ClassLoader loader = Thread.currentThread().getContextClassLoader();
          return new UserCodeClassLoader() {
            @Override
            public ClassLoader asClassLoader() {
              return loader;
            }

            @Override
            public void registerReleaseHookIfAbsent(String name, Runnable hook) {}
          };
        }
      });
      return copy;
    } catch (Exception e) {
      throw new IOException("could not open the format's deserialization schema", e);
    }
  }

  /** A split's rows in batches; ``emitted``: rows after the split's start handed out so far. */
  public final class Reader implements BulkFormat.Reader<RowData> {
    private final Lines lines;
    private long emitted;

    private Reader(Configuration config, FileSourceSplit split, long skip) throws IOException {
      lines = new Lines(split.path(), config, openCopy());
      lines.open(new FileInputSplit(0, split.path(), split.offset(), split.length(), null));
      while (emitted < skip && lines.next() != null) {
        emitted++; // the fix: skipped rows count, so later positions stay from the split's start
      }
    }

    @Override
    public RecordIterator<RowData> readBatch() throws IOException {
      RowData[] batch = new RowData[ROWS_PER_BATCH];
      int n = 0;
      RowData row;
      while (n < ROWS_PER_BATCH && (row = lines.next()) != null) {
        batch[n++] = row;
      }
      if (n == 0) {
        return null;
      }
      ArrayResultIterator<RowData> it = new ArrayResultIterator<>();
      // the i-th row's position: ``emitted + i + 1`` rows after the split's start
      it.set(batch, n, CheckpointedPosition.NO_OFFSET, emitted);
      emitted += n;
      return it;
    }

    @Override
    public void close() throws IOException {
      lines.close();
    }
  }

  /** The split's lines (a trailing '\r' dropped), each decoded to zero or more rows. */
  private static final class Lines extends DelimitedInputFormat<RowData> {
    private static final long serialVersionUID = 1L;
    private final transient DeserializationSchema<RowData> decoder;
    private final transient ArrayDeque<RowData> decoded = new ArrayDeque<>();
    private final transient Collector<RowData> sink = new Collector<RowData>() {
      @Override
      public void collect(RowData row) {
        decoded.add(row);
      }

      @Override
      public void close() {}
    };

    Lines(Path path, Configuration config, DeserializationSchema<RowData> decoder) {
      super(path, config);
      this.decoder = decoder;
    }

    /** The next decoded row, or null at the split's end. */
    RowData next() throws IOException {
      while (decoded.isEmpty()) {
        if (!readLine()) {
          return null;
        }
        int len = currLen;
        if (len > 0 && currBuffer[currOffset + len - 1] == '\r') {
          len--;
        }
        decoder.deserialize(Arrays.copyOfRange(currBuffer, currOffset, currOffset + len), sink);
      }
      return decoded.poll();
    }

    @Override
    public RowData readRecord(RowData reuse, byte[] bytes, int offset, int numBytes) {
      throw new UnsupportedOperationException("rows are read with next()");
    }
  }
}
