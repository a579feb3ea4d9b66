/*
 * driftline: Flink's KeyedProcessOperator for our keyed row functions, keeping its input's
 * watermark across restores (KeptWatermarks) for a function that judges rows late by it
 * (WatermarkAware: WindowedCount).
 */
package driftline.flink;

import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.runtime.state.StateSnapshotContext;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.operators.KeyedProcessOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.types.Row;

public final class KeyedRowOperator extends KeyedProcessOperator<String, Row, Row> {
  private static final long serialVersionUID = 1L;

  /** A function that asks the operator it runs in for its inputs' watermarks. */
  public interface WatermarkAware {
    /** Called when the operator opens, before any row. */
    void attach(KeptWatermarks watermarks);
  }

  private transient KeptWatermarks watermarks;

  public KeyedRowOperator(KeyedProcessFunction<String, Row, Row> function) {
    super(function);
  }

  @Override
  public void initializeState(StateInitializationContext ctx) throws Exception {
    super.initializeState(ctx);
    watermarks = new KeptWatermarks(1, ctx);
  }

  @Override
  public void open() throws Exception {
    super.open();
    if (userFunction instanceof WatermarkAware) {
      ((WatermarkAware) userFunction).attach(watermarks);
    }
  }

  @Override
  public void processWatermark(Watermark mark) throws Exception {
    watermarks.advance(0, mark.getTimestamp());
    super.processWatermark(mark);
  }

  @Override
  public void snapshotState(StateSnapshotContext ctx) throws Exception {
    super.snapshotState(ctx);
    watermarks.snapshot();
  }
}
