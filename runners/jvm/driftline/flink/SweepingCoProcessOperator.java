/*
 * driftline: Flink's KeyedCoProcessOperator (two inputs, one keyed state), and after each
 * watermark (the minimum of both inputs') a sweep of the function's long-lived keyed state.
 * Why: state that only expires (an event_id remembered for days) would otherwise need one
 * event-time timer per key. Flink's heap timer queue holds all of them (every timer of the
 * operator pays O(log n) in that heap) and every checkpoint writes each again with its key; a
 * sweep every so often in event time frees the same state with no timer per key (measured:
 * bench/stream.py, README "Where the streaming time goes"). It also keeps each input's own
 * watermark (inputWatermark), so the function can judge a row late by its own stream alone,
 * in state across restores (KeptWatermarks).
 */
package driftline.flink;

import java.util.List;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.apache.flink.runtime.state.KeyedStateBackend;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.runtime.state.StateSnapshotContext;
import org.apache.flink.runtime.state.VoidNamespace;
import org.apache.flink.streaming.api.functions.co.KeyedCoProcessFunction;
import org.apache.flink.streaming.api.operators.co.KeyedCoProcessOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.types.Row;

public final class SweepingCoProcessOperator extends KeyedCoProcessOperator<String, Row, Row, Row> {
  private static final long serialVersionUID = 1L;

  /** A keyed function with state to sweep: {@link #sweep} runs after the watermark's timers. */
  public interface Sweepable {
    /** Called after every watermark (the function decides when it is due). */
    void sweep(long watermark, SweepingCoProcessOperator op) throws Exception;

    /** Called when the operator opens, before any row: the operator it runs in. */
    default void attach(SweepingCoProcessOperator op) {}
  }

  private transient KeptWatermarks watermarks;

  public <F extends KeyedCoProcessFunction<String, Row, Row, Row> & Sweepable> SweepingCoProcessOperator(
      F function) {
    super(function);
  }

  /** Every key that has a value in the keyed state {@code stateName}, collected first, so the
   * caller may clear state while it visits them. */
  public List<String> keys(String stateName) {
    KeyedStateBackend<String> backend = getKeyedStateBackend();
    try (Stream<String> keys = backend.getKeys(stateName, VoidNamespace.INSTANCE)) {
      return keys.collect(Collectors.toList());
    }
  }

  @Override
  public void initializeState(StateInitializationContext ctx) throws Exception {
    super.initializeState(ctx);
    watermarks = new KeptWatermarks(2, ctx);
  }

  @Override
  public void open() throws Exception {
    super.open();
    ((Sweepable) userFunction).attach(this);
  }

  @Override
  public void snapshotState(StateSnapshotContext ctx) throws Exception {
    super.snapshotState(ctx);
    watermarks.snapshot();
  }

  /** The newest watermark of input 1 or 2 alone (the operator's own is the minimum of both),
   * at least the one restored. */
  public long inputWatermark(int input) {
    return watermarks.get(input - 1);
  }

  @Override
  public void processWatermark1(Watermark mark) throws Exception {
    watermarks.advance(0, mark.getTimestamp());
    super.processWatermark1(mark);
  }

  @Override
  public void processWatermark2(Watermark mark) throws Exception {
    watermarks.advance(1, mark.getTimestamp());
    super.processWatermark2(mark);
  }

  @Override
  public void processWatermark(Watermark mark) throws Exception {
    super.processWatermark(mark);
    ((Sweepable) userFunction).sweep(mark.getTimestamp(), this);
  }
}
