//! The engine's Prometheus metrics: streams, responses, ACKs and NACKs, refused connections and
//! streams, TLS reloads, suppressed logs and CSDS. The embedding program registers them in its
//! own registry ([`Metrics::register`]) under the prefix it chooses; names and labels are fixed
//! here.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::resources::ResourceType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeApiLabel {
    r#type: &'static str,
    api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiServiceLabel {
    api: &'static str,
    service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The engine's metrics. Clones of the families are registered, so one `Metrics` can be
/// registered and updated from every task at once.
pub struct Metrics {
    streams: Family<ApiServiceLabel, Gauge<i64, AtomicI64>>,
    responses: Family<TypeApiLabel, Counter<u64, AtomicU64>>,
    acks: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
    stale: Family<TypeLabel, Counter>,
    time_to_ack: Family<TypeLabel, Histogram>,
    unknown_types: Counter,
    bad_requests: Counter,
    push_latency: Family<TypeLabel, Histogram>,
    connections_refused: Family<ReasonLabel, Counter>,
    streams_refused: Counter,
    tls_reloads: Family<ResultLabel, Counter>,
    logs_suppressed: Family<ReasonLabel, Counter>,
    csds_requests: Family<ResultLabel, Counter>,
    csds_rate_limited: Counter,
    csds_in_flight: Gauge<i64, AtomicI64>,
}

/// Decrements a gauge (open streams, CSDS responses in flight) when dropped.
pub(crate) struct StreamGauge(Gauge<i64, AtomicI64>);

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
    /// Metrics at zero, registered nowhere yet.
    pub fn new() -> Self {
        Metrics {
            streams: Family::default(),
            responses: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            stale: Family::default(),
            time_to_ack: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
            unknown_types: Counter::default(),
            bad_requests: Counter::default(),
            push_latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
            connections_refused: Family::default(),
            streams_refused: Counter::default(),
            tls_reloads: Family::default(),
            logs_suppressed: Family::default(),
            csds_requests: Family::default(),
            csds_rate_limited: Counter::default(),
            csds_in_flight: Gauge::default(),
        }
    }

    /// Registers the stream metrics (`streams`, `responses`, `acks`, `nacks`,
    /// `stale_requests`, `time_to_ack_seconds`, `unknown_type_requests`, `bad_requests`).
    pub fn register_streams(&self, registry: &mut Registry) {
        registry.register(
            "streams",
            "Connected xDS streams, by API (sotw, delta) and service (ads, or the type of a per-type service)",
            self.streams.clone(),
        );
        registry.register(
            "responses",
            "xDS responses sent, by type and API",
            self.responses.clone(),
        );
        registry.register("acks", "Responses Envoy accepted, by type", self.acks.clone());
        registry.register("nacks", "Responses Envoy rejected (NACK), by type", self.nacks.clone());
        registry.register(
            "stale_requests",
            "Requests ignored because their nonce was not the latest, by type",
            self.stale.clone(),
        );
        registry.register(
            "time_to_ack_seconds",
            "Time from sending a response to its ACK, by type",
            self.time_to_ack.clone(),
        );
        registry.register(
            "unknown_type_requests",
            "Requests for a type URL this server does not serve",
            self.unknown_types.clone(),
        );
        registry.register(
            "bad_requests",
            "Streams ended because of a malformed request",
            self.bad_requests.clone(),
        );
    }

    /// Registers `push_latency_seconds`.
    pub fn register_push_latency(&self, registry: &mut Registry) {
        registry.register(
            "push_latency_seconds",
            "From the input change that led to a snapshot being observed to the first response of it sent on a stream, by type",
            self.push_latency.clone(),
        );
    }

    /// Registers the listener metrics (`connections_refused`, `streams_refused`).
    pub fn register_listener(&self, registry: &mut Registry) {
        registry.register(
            "connections_refused",
            "xDS connections closed before serving, by reason (max_connections, tls_handshake, tls_handshake_timeout)",
            self.connections_refused.clone(),
        );
        registry.register(
            "streams_refused",
            "xDS streams refused with RESOURCE_EXHAUSTED because server.max_streams were open",
            self.streams_refused.clone(),
        );
    }

    /// Registers the TLS, log and CSDS metrics (`tls_reloads`, `stream_logs_suppressed`,
    /// `csds_requests`, `csds_rate_limited`, `csds_responses_in_flight`).
    pub fn register_tls_logs_csds(&self, registry: &mut Registry) {
        registry.register(
            "tls_reloads",
            "Reloads of the xDS TLS files after a change, by result (ok, error)",
            self.tls_reloads.clone(),
        );
        registry.register(
            "stream_logs_suppressed",
            "Client-caused log lines not written because their stream had already logged its share of that reason (unknown_type, nack); the events are counted in their own metrics",
            self.logs_suppressed.clone(),
        );
        registry.register(
            "csds_requests",
            "CSDS requests, by result (ok, invalid, busy, too_large, max_streams)",
            self.csds_requests.clone(),
        );
        registry.register(
            "csds_rate_limited",
            "StreamClientStatus requests held back by server.csds.stream_requests_per_second",
            self.csds_rate_limited.clone(),
        );
        registry.register(
            "csds_responses_in_flight",
            "CSDS responses being built or sent (at most server.csds.max_concurrent_requests)",
            self.csds_in_flight.clone(),
        );
    }

    /// Registers every engine metric.
    pub fn register(&self, registry: &mut Registry) {
        self.register_streams(registry);
        self.register_push_latency(registry);
        self.register_listener(registry);
        self.register_tls_logs_csds(registry);
    }

    pub(crate) fn stream_opened(&self, api: &'static str, service: &'static str) -> StreamGauge {
        let g = self.streams.get_or_create(&ApiServiceLabel { api, service }).clone();
        g.inc();
        StreamGauge(g)
    }

    pub(crate) fn response_sent(&self, ty: ResourceType, api: &'static str) {
        self.responses
            .get_or_create(&TypeApiLabel {
                r#type: ty.short(),
                api,
            })
            .inc();
    }

    pub(crate) fn acked(&self, ty: ResourceType, after: Duration) {
        let l = TypeLabel { r#type: ty.short() };
        self.acks.get_or_create(&l).inc();
        self.time_to_ack.get_or_create(&l).observe(after.as_secs_f64());
    }

    pub(crate) fn nacked(&self, ty: ResourceType) {
        self.nacks.get_or_create(&TypeLabel { r#type: ty.short() }).inc();
    }

    pub(crate) fn stale_request(&self, ty: ResourceType) {
        self.stale.get_or_create(&TypeLabel { r#type: ty.short() }).inc();
    }

    pub(crate) fn unknown_type(&self) {
        self.unknown_types.inc();
    }

    pub(crate) fn bad_request(&self) {
        self.bad_requests.inc();
    }

    /// The first response of a snapshot sent on a stream, `since` the input change was observed.
    pub(crate) fn pushed(&self, ty: ResourceType, since: Duration) {
        self.push_latency
            .get_or_create(&TypeLabel { r#type: ty.short() })
            .observe(since.as_secs_f64());
    }

    pub(crate) fn connection_refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub(crate) fn stream_refused(&self) {
        self.streams_refused.inc();
    }

    pub(crate) fn tls_reload(&self, ok: bool) {
        self.tls_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    pub(crate) fn log_suppressed(&self, reason: &'static str) {
        self.logs_suppressed.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// One CSDS request's outcome: `ok`, `invalid`, `busy`, `too_large` or `max_streams`.
    pub(crate) fn csds_request(&self, result: &'static str) {
        self.csds_requests.get_or_create(&ResultLabel { result }).inc();
    }

    pub(crate) fn csds_rate_limited(&self) {
        self.csds_rate_limited.inc();
    }

    /// A CSDS response started; the gauge goes down when the guard is dropped.
    pub(crate) fn csds_response_started(&self) -> StreamGauge {
        self.csds_in_flight.inc();
        StreamGauge(self.csds_in_flight.clone())
    }

    /// The Prometheus text of these metrics alone, under `prefix` (for tests and tools).
    pub fn render(&self, prefix: &str) -> String {
        let mut registry = Registry::with_prefix(prefix);
        self.register(&mut registry);
        let mut s = String::new();
        if prometheus_client::encoding::text::encode(&mut s, &registry).is_err() {
            s.clear();
        }
        s
    }
}
