//! The gRPC transport stack, built in one place, outermost first.

use tonic::transport::Server;

use crate::config::Config;

/// Most calls handled at once on one connection; more wait in HTTP/2 instead of piling up.
const CALLS_PER_CONNECTION: usize = 1024;

/// A server builder with modeld's transport settings.
pub fn grpc_server(config: &Config) -> Server {
    Server::builder()
        // Trace: one span per call, at debug so the hot path pays nothing at the default level.
        .trace_fn(|req| tracing::debug_span!("grpc", path = %req.uri().path()))
        // Timeout: a call may not outlive this; a client's shorter grpc-timeout wins.
        .timeout(config.request_timeout)
        // Concurrency: bound per connection; model runs are bounded again by the runner.
        .concurrency_limit_per_connection(CALLS_PER_CONNECTION)
        // Liveness of idle connections through load balancers.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // Flow control: let bulk streams grow their window instead of stalling on 64 KiB.
        .http2_adaptive_window(Some(true))
}
