/*
 * driftline: the watermark each input of an operator has reached, kept in operator state so a
 * restored job judges lateness as the uninterrupted one would. Why: Flink does not checkpoint
 * watermarks. After a restore every operator's watermark starts again from the beginning of
 * time and only catches up as the sources read on, so a row more out of order than the
 * watermark delay that comes soon after a restore would be taken as on time: the job's output
 * would depend on where it was restored. Union list state: after a rescale every subtask takes,
 * per input, the lowest watermark the old subtasks had (an input that had ended, at the end of
 * time, is not carried).
 */
package driftline.flink;

import java.util.Arrays;
import java.util.Collections;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.runtime.state.StateInitializationContext;

public final class KeptWatermarks {
  private final long[] marks;
  private ListState<long[]> state;

  /** Call from the operator's initializeState (before open). */
  KeptWatermarks(int inputs, StateInitializationContext ctx) throws Exception {
    marks = new long[inputs];
    Arrays.fill(marks, Long.MIN_VALUE);
    state = ctx.getOperatorStateStore().getUnionListState(new ListStateDescriptor<>(
        "driftline_input_watermarks", PrimitiveArrayTypeInfo.LONG_PRIMITIVE_ARRAY_TYPE_INFO));
    if (!ctx.isRestored()) {
      return;
    }
    long[] low = new long[inputs];
    Arrays.fill(low, Long.MAX_VALUE);
    for (long[] m : state.get()) {
      for (int i = 0; i < inputs && i < m.length; i++) {
        low[i] = Math.min(low[i], m[i]);
      }
    }
    for (int i = 0; i < inputs; i++) {
      marks[i] = low[i] == Long.MAX_VALUE ? Long.MIN_VALUE : low[i];
    }
  }

  /** The newest watermark of input ``input`` (0-based), at least the one restored. */
  public long get(int input) {
    return marks[input];
  }

  void advance(int input, long watermark) {
    marks[input] = Math.max(marks[input], watermark);
  }

  /** Call from the operator's snapshotState. */
  void snapshot() throws Exception {
    state.update(Collections.singletonList(marks.clone()));
  }
}
