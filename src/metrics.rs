//! Prometheus metrics (served at the admin `/metrics`). Every name and help text is listed in
//! `docs/configuration.md` under "Metrics".

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::xds::resources::ResourceType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeApiLabel {
    pub r#type: &'static str,
    pub api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiServiceLabel {
    pub api: &'static str,
    pub service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceKindLabel {
    pub source: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupTypeLabel {
    pub group: String,
    pub r#type: &'static str,
}

/// Reads the live heap size; set by the binary, which owns the global allocator.
static HEAP_PROBE: std::sync::OnceLock<fn() -> usize> = std::sync::OnceLock::new();

/// Makes `voltha_xds_heap_bytes` report `probe()`; the first call wins.
pub fn set_heap_probe(probe: fn() -> usize) {
    let _ = HEAP_PROBE.set(probe);
}

pub struct Metrics {
    heap_bytes: Gauge<i64, std::sync::atomic::AtomicI64>,
    registry: Registry,
    streams: Family<ApiServiceLabel, Gauge<i64, std::sync::atomic::AtomicI64>>,
    responses: Family<TypeApiLabel, Counter<u64, AtomicU64>>,
    acks: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
    stale: Family<TypeLabel, Counter>,
    time_to_ack: Family<TypeLabel, Histogram>,
    unknown_types: Counter,
    bad_requests: Counter,
    snapshots: Counter,
    snapshot_rejections: Family<ReasonLabel, Counter>,
    snapshot_build_seconds: Histogram,
    source_errors: Family<SourceKindLabel, Counter>,
    source_updates: Family<SourceLabel, Counter>,
    debounce_coalesced: Counter,
    push_latency: Family<TypeLabel, Histogram>,
    snapshot_resources: Family<GroupTypeLabel, Gauge<i64, std::sync::atomic::AtomicI64>>,
    snapshot_bytes: Family<GroupTypeLabel, Gauge<i64, std::sync::atomic::AtomicI64>>,
    source_last_success: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    connections_refused: Family<ReasonLabel, Counter>,
    streams_refused: Counter,
    tls_reloads: Family<ResultLabel, Counter>,
    logs_suppressed: Family<ReasonLabel, Counter>,
    csds_requests: Family<ResultLabel, Counter>,
    csds_rate_limited: Counter,
    csds_in_flight: Gauge<i64, std::sync::atomic::AtomicI64>,
}

/// Decrements the stream gauge when the stream ends.
pub struct StreamGauge(Gauge<i64, std::sync::atomic::AtomicI64>);

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("voltha_xds");
        let m = Metrics {
            heap_bytes: Gauge::default(),
            streams: Family::default(),
            responses: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            stale: Family::default(),
            time_to_ack: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
            unknown_types: Counter::default(),
            bad_requests: Counter::default(),
            snapshots: Counter::default(),
            snapshot_rejections: Family::default(),
            snapshot_build_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            source_errors: Family::default(),
            source_updates: Family::default(),
            debounce_coalesced: Counter::default(),
            push_latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
            snapshot_resources: Family::default(),
            snapshot_bytes: Family::default(),
            source_last_success: Family::default(),
            connections_refused: Family::default(),
            streams_refused: Counter::default(),
            tls_reloads: Family::default(),
            logs_suppressed: Family::default(),
            csds_requests: Family::default(),
            csds_rate_limited: Counter::default(),
            csds_in_flight: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "streams",
            "Connected xDS streams, by API (sotw, delta) and service (ads, or the type of a per-type service)",
            m.streams.clone(),
        );
        registry.register("responses", "xDS responses sent, by type and API", m.responses.clone());
        registry.register("acks", "Responses Envoy accepted, by type", m.acks.clone());
        registry.register("nacks", "Responses Envoy rejected (NACK), by type", m.nacks.clone());
        registry.register(
            "stale_requests",
            "Requests ignored because their nonce was not the latest, by type",
            m.stale.clone(),
        );
        registry.register(
            "time_to_ack_seconds",
            "Time from sending a response to its ACK, by type",
            m.time_to_ack.clone(),
        );
        registry.register(
            "unknown_type_requests",
            "Requests for a type URL this server does not serve",
            m.unknown_types.clone(),
        );
        registry.register(
            "bad_requests",
            "Streams ended because of a malformed request",
            m.bad_requests.clone(),
        );
        registry.register(
            "snapshots_published",
            "Snapshots published (content changed)",
            m.snapshots.clone(),
        );
        registry.register(
            "snapshot_rejections",
            "Snapshots refused before publication, by reason",
            m.snapshot_rejections.clone(),
        );
        registry.register(
            "snapshot_build_seconds",
            "Time to translate, check and encode a snapshot",
            m.snapshot_build_seconds.clone(),
        );
        registry.register(
            "source_errors",
            "Errors reading an input, by source and kind",
            m.source_errors.clone(),
        );
        registry.register(
            "source_updates",
            "Valid input states delivered, by source",
            m.source_updates.clone(),
        );
        registry.register(
            "debounce_coalesced",
            "Input changes merged into a later snapshot by the debounce",
            m.debounce_coalesced.clone(),
        );
        registry.register(
            "push_latency_seconds",
            "From the input change that led to a snapshot being observed to the first response of it sent on a stream, by type",
            m.push_latency.clone(),
        );
        registry.register(
            "snapshot_resources",
            "Resources in the current snapshot, by node group and type",
            m.snapshot_resources.clone(),
        );
        registry.register(
            "snapshot_bytes",
            "Encoded size of the current snapshot's resources, by node group and type",
            m.snapshot_bytes.clone(),
        );
        registry.register(
            "source_last_success_timestamp_seconds",
            "Unix time of each source's last successful read",
            m.source_last_success.clone(),
        );
        registry.register(
            "connections_refused",
            "xDS connections closed before serving, by reason (max_connections, tls_handshake, tls_handshake_timeout)",
            m.connections_refused.clone(),
        );
        registry.register(
            "streams_refused",
            "xDS streams refused with RESOURCE_EXHAUSTED because server.max_streams were open",
            m.streams_refused.clone(),
        );
        if HEAP_PROBE.get().is_some() {
            registry.register(
                "heap_bytes",
                "Heap bytes allocated and not yet freed (live data, not what the allocator keeps from the system)",
                m.heap_bytes.clone(),
            );
        }
        registry.register(
            "tls_reloads",
            "Reloads of the xDS TLS files after a change, by result (ok, error)",
            m.tls_reloads.clone(),
        );
        registry.register(
            "stream_logs_suppressed",
            "Client-caused log lines not written because their stream had already logged its share of that reason (unknown_type, nack); the events are counted in their own metrics",
            m.logs_suppressed.clone(),
        );
        registry.register(
            "csds_requests",
            "CSDS requests, by result (ok, invalid, busy, too_large, max_streams)",
            m.csds_requests.clone(),
        );
        registry.register(
            "csds_rate_limited",
            "StreamClientStatus requests held back by server.csds.stream_requests_per_second",
            m.csds_rate_limited.clone(),
        );
        registry.register(
            "csds_responses_in_flight",
            "CSDS responses being built or sent (at most server.csds.max_concurrent_requests)",
            m.csds_in_flight.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn stream_opened(&self, api: &'static str, service: &'static str) -> StreamGauge {
        let g = self.streams.get_or_create(&ApiServiceLabel { api, service }).clone();
        g.inc();
        StreamGauge(g)
    }

    pub fn response_sent(&self, ty: ResourceType, api: &'static str) {
        self.responses
            .get_or_create(&TypeApiLabel {
                r#type: ty.short(),
                api,
            })
            .inc();
    }

    pub fn acked(&self, ty: ResourceType, after: Duration) {
        let l = TypeLabel { r#type: ty.short() };
        self.acks.get_or_create(&l).inc();
        self.time_to_ack.get_or_create(&l).observe(after.as_secs_f64());
    }

    pub fn nacked(&self, ty: ResourceType) {
        self.nacks.get_or_create(&TypeLabel { r#type: ty.short() }).inc();
    }

    pub fn stale_request(&self, ty: ResourceType) {
        self.stale.get_or_create(&TypeLabel { r#type: ty.short() }).inc();
    }

    pub fn unknown_type(&self) {
        self.unknown_types.inc();
    }

    pub fn bad_request(&self) {
        self.bad_requests.inc();
    }

    pub fn snapshot_published(&self, build: Duration) {
        self.snapshots.inc();
        self.snapshot_build_seconds.observe(build.as_secs_f64());
    }

    pub fn snapshot_rejected(&self, reason: &'static str) {
        self.snapshot_rejections.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn source_error(&self, source: &str, kind: &'static str) {
        self.source_errors
            .get_or_create(&SourceKindLabel {
                source: source.to_string(),
                kind,
            })
            .inc();
    }

    pub fn source_update(&self, source: &str) {
        self.source_updates
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .inc();
    }

    /// The first response of a snapshot sent on a stream, `since` the input change was observed.
    pub fn pushed(&self, ty: ResourceType, since: Duration) {
        self.push_latency
            .get_or_create(&TypeLabel { r#type: ty.short() })
            .observe(since.as_secs_f64());
    }

    /// The published snapshot's size, per group and type.
    pub fn snapshot_size(&self, group: &str, ty: ResourceType, resources: usize, bytes: usize) {
        let l = GroupTypeLabel {
            group: group.to_string(),
            r#type: ty.short(),
        };
        self.snapshot_resources.get_or_create(&l).set(resources as i64);
        self.snapshot_bytes.get_or_create(&l).set(bytes as i64);
    }

    pub fn source_success(&self, source: &str, at: std::time::SystemTime) {
        let secs = at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.source_last_success
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .set(secs);
    }

    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn stream_refused(&self) {
        self.streams_refused.inc();
    }

    pub fn tls_reload(&self, ok: bool) {
        self.tls_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    pub fn log_suppressed(&self, reason: &'static str) {
        self.logs_suppressed.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// One CSDS request's outcome: `ok`, `invalid`, `busy`, `too_large` or `max_streams`.
    pub fn csds_request(&self, result: &'static str) {
        self.csds_requests.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn csds_rate_limited(&self) {
        self.csds_rate_limited.inc();
    }

    /// A CSDS response started; the gauge goes down when the guard is dropped.
    pub fn csds_response_started(&self) -> StreamGauge {
        self.csds_in_flight.inc();
        StreamGauge(self.csds_in_flight.clone())
    }

    pub fn coalesced(&self, n: u64) {
        self.debounce_coalesced.inc_by(n);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(probe) = HEAP_PROBE.get() {
            self.heap_bytes.set(probe() as i64);
        }
        let mut s = String::new();
        if encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }

    /// Counter value for tests and the admin page.
    pub fn source_error_count(&self, source: &str, kind: &'static str) -> u64 {
        self.source_errors
            .get_or_create(&SourceKindLabel {
                source: source.to_string(),
                kind,
            })
            .get()
    }

    pub fn rejection_count(&self, reason: &'static str) -> u64 {
        self.snapshot_rejections.get_or_create(&ReasonLabel { reason }).get()
    }
}
