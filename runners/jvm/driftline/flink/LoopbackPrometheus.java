/*
 * driftline: Flink's Prometheus reporter, its HTTP endpoint bound to 127.0.0.1.
 *
 * Flink's own PrometheusReporter (flink-metrics-prometheus, shipped in the pip package's
 * plugins/) binds its HTTP server to every interface (new InetSocketAddress(port)), and our
 * standalone cluster listens on loopback only (README, "Security: threat model"). This
 * reporter registers the same collectors (AbstractPrometheusReporter: names, labels and
 * filters unchanged) and serves them from 127.0.0.1 on the first free port of the configured
 * range ("port", e.g. 9250-9260: each JobManager and TaskManager takes one). A scraper on
 * another machine needs a proxy or a tunnel: that is the point.
 */
package driftline.flink;

import io.prometheus.client.CollectorRegistry;
import io.prometheus.client.exporter.HTTPServer;
import java.io.IOException;
import java.lang.reflect.Field;
import java.net.InetSocketAddress;
import java.util.Iterator;
import org.apache.flink.metrics.MetricConfig;
import org.apache.flink.metrics.prometheus.AbstractPrometheusReporter;
import org.apache.flink.util.NetUtils;

public final class LoopbackPrometheus extends AbstractPrometheusReporter {
  private final String ports;
  private HTTPServer server;
  private int port = -1;

  public LoopbackPrometheus(String ports) {
    this.ports = ports;
  }

  @Override
  public void open(MetricConfig config) {
    super.open(config);
    CollectorRegistry registry = registry();
    Iterator<Integer> candidates = NetUtils.getPortRangeFromString(ports);
    while (server == null && candidates.hasNext()) {
      int p = candidates.next();
      try {
        server = new HTTPServer(new InetSocketAddress("127.0.0.1", p), registry);
        port = p;
        log.info("Started the loopback Prometheus endpoint on 127.0.0.1:{}.", p);
      } catch (IOException taken) {
        log.debug("Port {} is taken, trying the next one.", p);
      }
    }
    if (server == null) {
      throw new RuntimeException("No free port in " + ports + " for the Prometheus endpoint on 127.0.0.1");
    }
  }

  /** The port it serves on (-1 before open). */
  public int port() {
    return port;
  }

  /** The collectors' registry of the base class (package-private there). */
  private CollectorRegistry registry() {
    try {
      Field f = AbstractPrometheusReporter.class.getDeclaredField("registry");
      f.setAccessible(true);
      return (CollectorRegistry) f.get(this);
    } catch (ReflectiveOperationException e) {
      throw new IllegalStateException("flink-metrics-prometheus changed: no registry field", e);
    }
  }

  @Override
  public void close() {
    if (server != null) {
      server.stop();
    }
    super.close();
  }
}
