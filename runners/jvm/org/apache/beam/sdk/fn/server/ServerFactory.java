/*
 * driftline: a drop-in replacement for the ServerFactory inside flink-python's jar.
 *
 * Why: Flink runs each Python operator's Beam Fn API services (control, data, state,
 * logging, provisioning) on gRPC servers made here. The stock class computes a loopback
 * address but builds the server with NettyServerBuilder.forPort(port), which listens on
 * every interface: a local driftline run had 8 such listeners reachable from the network.
 * This version binds the server to the address it computed (127.0.0.1) and hands the
 * Python worker the literal address, so the worker never resolves "localhost" to ::1.
 *
 * Binary-compatible with the class it shadows (same name, public methods and nested
 * types); it is compiled against the installed flink-python jar by runners/jvm.py and put
 * ahead of that jar on the JVM's class path. Flink only calls createDefault(); the epoll
 * variants are not used by Flink and refuse rather than bind somewhere unexpected.
 */
package org.apache.beam.sdk.fn.server;

import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;
import org.apache.beam.model.pipeline.v1.Endpoints;
import org.apache.beam.sdk.fn.channel.SocketAddressFactory;
import org.apache.beam.vendor.grpc.v1p60p1.io.grpc.BindableService;
import org.apache.beam.vendor.grpc.v1p60p1.io.grpc.Server;
import org.apache.beam.vendor.grpc.v1p60p1.io.grpc.ServerInterceptors;
import org.apache.beam.vendor.grpc.v1p60p1.io.grpc.netty.NettyServerBuilder;

public abstract class ServerFactory {
  /** Clients ping at most this often; gRPC's default (5 min) would reject Beam's pings. */
  private static final int KEEP_ALIVE_TIME_SEC = 19;

  public static ServerFactory createDefault() {
    return new InetSocketAddressServerFactory(UrlFactory.createDefault(), () -> 0);
  }

  public static ServerFactory createWithUrlFactory(UrlFactory urlFactory) {
    return new InetSocketAddressServerFactory(urlFactory, () -> 0);
  }

  public static ServerFactory createWithPortSupplier(Supplier<Integer> portSupplier) {
    return new InetSocketAddressServerFactory(UrlFactory.createDefault(), portSupplier);
  }

  public static ServerFactory createWithUrlFactoryAndPortSupplier(
      UrlFactory urlFactory, Supplier<Integer> portSupplier) {
    return new InetSocketAddressServerFactory(urlFactory, portSupplier);
  }

  public static ServerFactory createEpollSocket() {
    throw new UnsupportedOperationException("driftline's ServerFactory binds loopback TCP only");
  }

  public static ServerFactory createEpollDomainSocket() {
    throw new UnsupportedOperationException("driftline's ServerFactory binds loopback TCP only");
  }

  /** Starts a server for the services on a free loopback port and writes its URL into the builder. */
  public abstract Server allocateAddressAndCreate(
      List<BindableService> services, Endpoints.ApiServiceDescriptor.Builder builder)
      throws IOException;

  /** Starts a server for the services at the descriptor's address. */
  public abstract Server create(
      List<BindableService> services, Endpoints.ApiServiceDescriptor descriptor)
      throws IOException;

  /** Turns a host and port into the URL a client is given. */
  public interface UrlFactory {
    String createUrl(String host, int port);

    static UrlFactory createDefault() {
      return (host, port) -> host + ":" + port;
    }
  }

  /** TCP servers bound to one address: the loopback address unless a descriptor names another. */
  public static class InetSocketAddressServerFactory extends ServerFactory {
    private final UrlFactory urlFactory;
    private final Supplier<Integer> portSupplier;

    private InetSocketAddressServerFactory(UrlFactory urlFactory, Supplier<Integer> portSupplier) {
      this.urlFactory = urlFactory;
      this.portSupplier = portSupplier;
    }

    @Override
    public Server allocateAddressAndCreate(
        List<BindableService> services, Endpoints.ApiServiceDescriptor.Builder builder)
        throws IOException {
      InetAddress loopback = InetAddress.getLoopbackAddress();
      Server server = createServer(services, new InetSocketAddress(loopback, portSupplier.get()));
      builder.setUrl(urlFactory.createUrl(loopback.getHostAddress(), server.getPort()));
      return server;
    }

    @Override
    public Server create(List<BindableService> services, Endpoints.ApiServiceDescriptor descriptor)
        throws IOException {
      SocketAddress address = SocketAddressFactory.createFrom(descriptor.getUrl());
      if (!(address instanceof InetSocketAddress)) {
        throw new IllegalArgumentException(
            "ServerFactory needs a host:port address, got " + descriptor.getUrl());
      }
      return createServer(services, (InetSocketAddress) address);
    }

    private static Server createServer(List<BindableService> services, InetSocketAddress address)
        throws IOException {
      NettyServerBuilder builder =
          NettyServerBuilder.forAddress(address)
              .maxInboundMessageSize(Integer.MAX_VALUE)
              .permitKeepAliveTime(KEEP_ALIVE_TIME_SEC, TimeUnit.SECONDS);
      for (BindableService service : services) {
        builder.addService(
            ServerInterceptors.intercept(service, GrpcContextHeaderAccessorProvider.interceptor()));
      }
      return builder.build().start();
    }
  }
}
