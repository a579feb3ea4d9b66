/*
 * driftline: buckets the joined examples by their event-time partition, dt=YYYY-MM-DD/hr=HH.
 *
 * The examples' rows carry their partition ("dt", "hr": fields 1 and 2, computed from the
 * event time where the row is made), so the bucket does not depend on when the row is
 * written: the same folders as the table sink's PARTITIONED BY (dt, hr), which the retrain
 * reads span by span.
 */
package driftline.flink;

import org.apache.flink.core.io.SimpleVersionedSerializer;
import org.apache.flink.streaming.api.functions.sink.filesystem.BucketAssigner;
import org.apache.flink.streaming.api.functions.sink.filesystem.bucketassigners.SimpleVersionedStringSerializer;
import org.apache.flink.types.Row;

public final class PartitionBucketAssigner implements BucketAssigner<Row, String> {
  private static final long serialVersionUID = 1L;

  @Override
  public String getBucketId(Row row, BucketAssigner.Context context) {
    return "dt=" + Fields.get(row, 1, "dt") + "/hr=" + Fields.get(row, 2, "hr");
  }

  @Override
  public SimpleVersionedSerializer<String> getSerializer() {
    return SimpleVersionedStringSerializer.INSTANCE;
  }

  @Override
  public String toString() {
    return "PartitionBucketAssigner(dt, hr)";
  }
}
