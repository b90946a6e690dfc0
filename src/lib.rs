//! voltha-xds: an Envoy xDS control plane for VOLTHA.
//!
//! Module map (who may import whom, see `docs/architecture.md` in the design notes):
//! - [`model`]: the protocol-free model and the data-flow picture; imports nothing of ours.
//! - [`config`]: typed, validated configuration; a leaf.
//! - [`sources`]: inputs (file, Consul, etcd, Kubernetes pods); use `model` and `config`.
//! - [`translate`]: the pure function model + config → Envoy resources.
//! - [`xds`]: the `xds-engine` crate (`crates/xds-engine`), re-exported: snapshot cache,
//!   per-stream protocol state machines, gRPC services, CSDS, the listener; serves opaque typed
//!   resources and cannot import anything of this crate (it is another package).
//! - [`admin`]: the admin HTTP API (probes and metrics; debug views on a loopback listener
//!   of their own); reads handles only.
//! - [`reconcile`]: debounce, translate, publish.
//! - [`reload`]: owns the running configuration's source and reconciler tasks; replaces them
//!   when `--config` changes (SIGHUP or the file's content).
//! - This file wires them together ([`start`]); `main.rs` parses the command line.

pub mod admin;
pub mod bootstrap;
pub mod build_info;
pub mod config;
pub(crate) mod envoy_json;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_api;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod reconcile;
pub mod reload;
pub mod render;
pub mod sources;
pub mod translate;
/// The xDS engine (the `xds-engine` crate), under the name the rest of this crate uses.
pub use xds_engine as xds;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use xds_engine::cache::Cache;
use xds_engine::server::XdsServer;
use xds_engine::status::ClientTable;
use xds_engine::stream::Limits;

/// A running server.
pub struct Running {
    pub xds_addr: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin_addr: SocketAddr,
    /// Those, `/debug/*` and the status page.
    pub admin_debug_addr: SocketAddr,
    pub cache: Cache,
    pub clients: Arc<ClientTable>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// The running configuration, its sources and reconciler; reloads.
    pub reload: Arc<reload::Reloader>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, ends every stream and waits (at most `deadline`) for the tasks to end.
    pub async fn stop(self, deadline: Duration) {
        self.shutdown.cancel();
        let all = futures::future::join_all(self.tasks);
        let reload = self.reload.clone();
        let _ = tokio::time::timeout(deadline, async move { tokio::join!(all, reload.stopped()) }).await;
    }
}

/// Binds the three ports (xDS, admin, admin debug) and starts sources, reconciler, xDS and
/// admin servers.
pub async fn start(
    config: Config,
    xds_listen: SocketAddr,
    admin_listen: SocketAddr,
    admin_debug_listen: SocketAddr,
) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    start_with(config, xds_listen, admin_listen, admin_debug_listen, metrics).await
}

/// [`start`], counting into `metrics` (made by the caller, e.g. with the binary's heap probe).
pub async fn start_with(
    config: Config,
    xds_listen: SocketAddr,
    admin_listen: SocketAddr,
    admin_debug_listen: SocketAddr,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Running> {
    if config::same_port(admin_listen, admin_debug_listen) {
        anyhow::bail!(
            "the admin debug listener ({admin_debug_listen}) must not share the admin listener's \
             address ({admin_listen}): /debug and the status page are served only on their own \
             listener; give server.admin_debug_listen (--admin-debug-listen) another port"
        );
    }
    let config = Arc::new(config);
    let shutdown = CancellationToken::new();
    let cache = Cache::new();
    let clients = Arc::new(ClientTable::default());

    let tls = match &config.server.tls {
        Some(t) => Some(xds_engine::listen::Tls::load(&config::xds_tls(t)).map_err(|e| anyhow::anyhow!(e))?),
        None => None,
    };
    let xds_listener = TcpListener::bind(xds_listen)
        .await
        .with_context(|| format!("cannot listen for xDS on {xds_listen}"))?;
    let admin_listener = TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("cannot listen for admin on {admin_listen}"))?;
    let debug_listener = TcpListener::bind(admin_debug_listen)
        .await
        .with_context(|| format!("cannot listen for the admin debug API on {admin_debug_listen}"))?;
    let xds_addr = xds_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let admin_debug_addr = debug_listener.local_addr()?;
    if !admin_debug_addr.ip().is_loopback() {
        tracing::warn!(
            %admin_debug_addr,
            "the admin debug API (every resource, every client, the status page) listens beyond \
             loopback: anything that reaches this address can read it"
        );
    }

    let reload = Arc::new(reload::Reloader::start(
        config.clone(),
        metrics.clone(),
        cache.clone(),
        shutdown.clone(),
    ));
    let mut tasks = Vec::new();

    let server = XdsServer::new(cache.clone())
        .with_clients(clients.clone())
        .with_metrics(metrics.xds.clone())
        .with_limits(Limits {
            max_names: config.server.max_names_per_type,
        })
        .with_shutdown(shutdown.clone())
        .with_max_streams(config.server.max_streams)
        .with_max_request_bytes(config.server.max_request_bytes)
        .with_csds(config::csds_limits(&config.server.csds))
        .with_control_plane(Some(envoy_types::pb::envoy::config::core::v3::ControlPlane {
            identifier: build_info::identifier(),
        }));
    let s = &config.server;
    let keepalive = (!s.keepalive_interval.0.is_zero()).then_some(s.keepalive_interval.0);
    let builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(s.keepalive_timeout.0))
        .max_concurrent_streams(Some(s.max_streams_per_connection))
        // Sized for ADS (docs/benchmarks.md, "Memory per connected Envoy"): a client's requests
        // are small and read as they come: 256 KiB of window per stream (hyper's is 1 MiB), so
        // that an ACK seldom costs a WINDOW_UPDATE; the connection window, hyper's 1 MiB, bounds
        // what one connection can make the server buffer; no adaptive window.
        .initial_stream_window_size(Some(xds_engine::listen::STREAM_WINDOW))
        .initial_connection_window_size(Some(xds_engine::listen::CONNECTION_WINDOW))
        .http2_adaptive_window(Some(false));
    let router = server.into_router(builder);
    if let Some(tls) = &tls {
        tasks.push(tokio::spawn(tls.clone().watch(metrics.xds.clone(), shutdown.clone())));
    }
    let (incoming, acceptor) = xds_engine::listen::accept(
        xds_listener,
        tls,
        s.max_connections,
        metrics.xds.clone(),
        shutdown.clone(),
    );
    tasks.push(acceptor);
    let incoming = ReceiverStream::new(incoming);
    let sd = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, sd.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "xDS server failed");
        }
    }));

    let state = admin::AdminState {
        cache: cache.clone(),
        clients: clients.clone(),
        metrics: metrics.clone(),
        live: reload.live().clone(),
    };
    for (listener, router, what) in [
        (admin_listener, admin::public_router(state.clone()), "admin"),
        (debug_listener, admin::debug_router(state), "admin debug"),
    ] {
        let sd = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(sd.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "{what} server failed");
            }
        }));
    }

    tracing::info!(
        version = build_info::VERSION,
        revision = build_info::REVISION,
        %xds_addr,
        %admin_addr,
        %admin_debug_addr,
        groups = config.groups.len(),
        "voltha-xds serving"
    );
    Ok(Running {
        xds_addr,
        admin_addr,
        admin_debug_addr,
        cache,
        clients,
        metrics,
        shutdown,
        reload,
        tasks,
    })
}

/// Runs until SIGINT or SIGTERM, then shuts down gracefully: stops accepting, ends every
/// stream after the responses already queued, and waits at most `server.shutdown_grace`.
/// Reloads `config_file` (the file `config` was read from, and the bytes that were parsed;
/// `None` for the embedded default) on SIGHUP and when its content differs from those bytes
/// ([`reload`]).
///
/// The SIGHUP handler is installed first, before the listeners and sources start: a SIGHUP
/// from then on is kept and reloads once the server runs. One that arrives earlier (while the
/// process starts: arguments, the allocator's re-execution, reading the configuration) gets
/// the default action and ends the process.
pub async fn serve(
    config: Config,
    config_file: Option<(std::path::PathBuf, Vec<u8>)>,
    xds_listen: SocketAddr,
    admin_listen: SocketAddr,
    admin_debug_listen: SocketAddr,
    heap_probe: Option<metrics::HeapProbe>,
) -> anyhow::Result<()> {
    let hangup = reload::trigger::Hangup::install();
    let metrics = Arc::new(Metrics::with_heap_probe(heap_probe));
    let mut running = start_with(config, xds_listen, admin_listen, admin_debug_listen, metrics).await?;
    let triggers = reload::trigger::spawn(running.reload.clone(), config_file, hangup, running.shutdown.clone()).await;
    running.tasks.extend(triggers);
    wait_for_signal().await;
    let grace = running.reload.live().config().server.shutdown_grace.0;
    tracing::info!(
        streams = running.clients.len(),
        grace_ms = grace.as_millis() as u64,
        "shutting down"
    );
    running.stop(grace).await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
