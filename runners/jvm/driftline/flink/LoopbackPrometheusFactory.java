/*
 * driftline: the factory of LoopbackPrometheus (metrics.reporter.<name>.factory.class), found
 * by Flink through META-INF/services. It names the reporter class only inside
 * createMetricReporter, so listing it is harmless where the Prometheus classes are absent.
 */
package driftline.flink;

import java.util.Properties;
import org.apache.flink.metrics.reporter.MetricReporter;
import org.apache.flink.metrics.reporter.MetricReporterFactory;

public final class LoopbackPrometheusFactory implements MetricReporterFactory {
  /** The port range option, as Flink's own Prometheus reporter names it. */
  public static final String PORT = "port";

  @Override
  public MetricReporter createMetricReporter(Properties properties) {
    return new LoopbackPrometheus(properties.getProperty(PORT, "9249"));
  }
}
