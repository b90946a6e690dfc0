//! Prometheus metrics (served at the admin `/metrics`). Every name and help text is listed in
//! `docs/configuration.md` under "Metrics". The process metrics (`process_*`, no prefix) are
//! in [`process`].

mod process;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use std::sync::Arc;

use xds_engine::resources::ResourceType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceKindLabel {
    pub(crate) source: String,
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceLabel {
    pub(crate) source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupTypeLabel {
    pub(crate) group: String,
    pub(crate) r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildInfoLabel {
    version: &'static str,
    revision: &'static str,
}

/// Reads the live heap size. Given by the binary, which owns the global allocator; a library
/// user (the tests) has none, and `voltha_xds_heap_bytes` is then not registered.
pub type HeapProbe = fn() -> usize;

pub struct Metrics {
    /// The xDS engine's metrics, registered in this registry.
    pub(crate) xds: Arc<xds_engine::metrics::Metrics>,
    heap_bytes: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// What `heap_bytes` reports, read at each render.
    heap_probe: Option<HeapProbe>,
    registry: Registry,
    /// `process_*`: the standard names, without the `voltha_xds_` prefix.
    process: Registry,
    snapshots: Counter,
    snapshot_rejections: Family<ReasonLabel, Counter>,
    snapshot_build_seconds: Histogram,
    source_errors: Family<SourceKindLabel, Counter>,
    source_updates: Family<SourceLabel, Counter>,
    debounce_coalesced: Counter,
    debounce_leading: Counter,
    snapshot_resources: Family<GroupTypeLabel, Gauge<i64, std::sync::atomic::AtomicI64>>,
    snapshot_bytes: Family<GroupTypeLabel, Gauge<i64, std::sync::atomic::AtomicI64>>,
    source_last_success: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    config_reloads: Family<ResultLabel, Counter>,
    config_last_reload_ok: Gauge<i64, std::sync::atomic::AtomicI64>,
    grpc_hosts_dropped: Family<GroupLabel, Gauge<i64, std::sync::atomic::AtomicI64>>,
    /// A digest of the hosts last reported left out of gRPC assignments (logged on change).
    grpc_hosts_dropped_digest: AtomicU64,
    /// The label sets of the per-source and per-group series set so far, so that the series of
    /// a source or group that is gone can be removed (see [`Metrics::forget_source`]).
    known: parking_lot::Mutex<Known>,
}

#[derive(Default)]
struct Known {
    /// Per source, the error kinds counted.
    error_kinds: std::collections::BTreeMap<String, std::collections::BTreeSet<&'static str>>,
    /// The groups of the last published snapshot.
    groups: std::collections::BTreeSet<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics of a process without a heap probe.
    pub(crate) fn new() -> Self {
        Self::with_heap_probe(None)
    }

    /// The metrics, `voltha_xds_heap_bytes` reporting `heap_probe()` when there is one.
    pub(crate) fn with_heap_probe(heap_probe: Option<HeapProbe>) -> Self {
        let mut registry = Registry::with_prefix("voltha_xds");
        let m = Metrics {
            heap_bytes: Gauge::default(),
            heap_probe,
            snapshots: Counter::default(),
            snapshot_rejections: Family::default(),
            snapshot_build_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            source_errors: Family::default(),
            source_updates: Family::default(),
            debounce_coalesced: Counter::default(),
            debounce_leading: Counter::default(),
            snapshot_resources: Family::default(),
            snapshot_bytes: Family::default(),
            source_last_success: Family::default(),
            config_reloads: Family::default(),
            config_last_reload_ok: Gauge::default(),
            grpc_hosts_dropped: Family::default(),
            grpc_hosts_dropped_digest: AtomicU64::new(0),
            known: parking_lot::Mutex::default(),
            registry: Registry::default(),
            process: Registry::default(),
            xds: Arc::new(xds_engine::metrics::Metrics::new()),
        };
        m.xds.register_streams(&mut registry);
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
            "debounce_leading_edge",
            "Input changes built at once, after a quiet spell (the debounce's leading edge)",
            m.debounce_leading.clone(),
        );
        m.xds.register_push_latency(&mut registry);
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
        m.xds.register_listener(&mut registry);
        if m.heap_probe.is_some() {
            registry.register(
                "heap_bytes",
                "Heap bytes allocated and not yet freed (live data, not what the allocator keeps from the system)",
                m.heap_bytes.clone(),
            );
        }
        m.xds.register_tls_logs_csds(&mut registry);
        let build_info = Family::<BuildInfoLabel, Gauge>::default();
        build_info
            .get_or_create(&BuildInfoLabel {
                version: crate::build_info::VERSION,
                revision: crate::build_info::REVISION,
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the labels say which version and source revision is running",
            build_info,
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by result (ok, invalid, refused)",
            m.config_reloads.clone(),
        );
        for result in ["ok", "invalid", "refused"] {
            let _ = m.config_reloads.get_or_create(&ResultLabel { result });
        }
        m.config_last_reload_ok.set(1);
        registry.register(
            "grpc_hosts_dropped",
            "Source hosts left out of a proxyless gRPC group's load assignments (DNS names), by group",
            m.grpc_hosts_dropped.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 when the last configuration reload was applied (or none was tried), 0 when it was invalid or refused",
            m.config_last_reload_ok.clone(),
        );
        let mut process = Registry::default();
        process.register_collector(Box::new(process::ProcessCollector));
        Metrics { registry, process, ..m }
    }

    pub(crate) fn snapshot_published(&self, build: Duration) {
        self.snapshots.inc();
        self.snapshot_build_seconds.observe(build.as_secs_f64());
    }

    pub(crate) fn snapshot_rejected(&self, reason: &'static str) {
        self.snapshot_rejections.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub(crate) fn source_error(&self, source: &str, kind: &'static str) {
        let mut known = self.known.lock();
        if !known.error_kinds.get(source).is_some_and(|k| k.contains(kind)) {
            known.error_kinds.entry(source.to_string()).or_default().insert(kind);
        }
        drop(known);
        self.source_errors
            .get_or_create(&SourceKindLabel {
                source: source.to_string(),
                kind,
            })
            .inc();
    }

    pub(crate) fn source_update(&self, source: &str) {
        self.source_updates
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .inc();
    }

    /// The published snapshot's size, per group and type.
    pub(crate) fn snapshot_size(&self, group: &str, ty: ResourceType, resources: usize, bytes: usize) {
        let l = GroupTypeLabel {
            group: group.to_string(),
            r#type: ty.short(),
        };
        self.snapshot_resources.get_or_create(&l).set(resources as i64);
        self.snapshot_bytes.get_or_create(&l).set(bytes as i64);
    }

    pub(crate) fn source_success(&self, source: &str, at: std::time::SystemTime) {
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

    /// Removes every series of a source that a reload stopped (`source_errors`,
    /// `source_updates`, `source_last_success_timestamp_seconds`), so none stays behind.
    pub(crate) fn forget_source(&self, source: &str) {
        let kinds = self.known.lock().error_kinds.remove(source).unwrap_or_default();
        for kind in kinds {
            self.source_errors.remove(&SourceKindLabel {
                source: source.to_string(),
                kind,
            });
        }
        let l = SourceLabel {
            source: source.to_string(),
        };
        self.source_updates.remove(&l);
        self.source_last_success.remove(&l);
    }

    /// After a snapshot is published: removes the size series of the groups it no longer has
    /// (`snapshot_resources`, `snapshot_bytes`).
    pub(crate) fn snapshot_groups<'a>(&self, groups: impl IntoIterator<Item = &'a String>) {
        let now: std::collections::BTreeSet<String> = groups.into_iter().cloned().collect();
        let gone: Vec<String> = {
            let mut known = self.known.lock();
            let gone = known.groups.difference(&now).cloned().collect();
            known.groups = now;
            gone
        };
        for group in gone {
            for ty in ResourceType::ALL {
                let l = GroupTypeLabel {
                    group: group.clone(),
                    r#type: ty.short(),
                };
                self.snapshot_resources.remove(&l);
                self.snapshot_bytes.remove(&l);
            }
        }
    }

    pub(crate) fn coalesced(&self, n: u64) {
        self.debounce_coalesced.inc_by(n);
    }

    /// One debounce round: built at once (`leading`), and how many changes it merged.
    pub(crate) fn debounced(&self, leading: bool, merged: u64) {
        if leading {
            self.debounce_leading.inc();
        }
        self.coalesced(merged);
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        if let Some(probe) = self.heap_probe {
            self.heap_bytes.set(probe() as i64);
        }
        let mut s = String::new();
        let encoded = encode_registry(&mut s, &self.registry)
            .and_then(|_| encode_registry(&mut s, &self.process))
            .and_then(|_| encode_eof(&mut s));
        if encoded.is_err() {
            s.clear();
        }
        s
    }

    /// A source's error count of one kind (for the tests).
    pub fn source_error_count(&self, source: &str, kind: &'static str) -> u64 {
        self.source_errors
            .get_or_create(&SourceKindLabel {
                source: source.to_string(),
                kind,
            })
            .get()
    }

    /// A configuration reload's result: `ok`, `invalid` or `refused`.
    pub(crate) fn config_reload(&self, result: &'static str) {
        self.config_reloads.get_or_create(&ResultLabel { result }).inc();
        self.config_last_reload_ok.set(i64::from(result == "ok"));
    }

    pub fn config_reload_count(&self, result: &'static str) -> u64 {
        self.config_reloads.get_or_create(&ResultLabel { result }).get()
    }

    /// The number of hosts left out of gRPC group `group`'s assignments in the current snapshot.
    pub(crate) fn grpc_hosts_dropped(&self, group: &str, n: usize) {
        self.grpc_hosts_dropped
            .get_or_create(&GroupLabel {
                group: group.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records `digest` of the hosts now left out of gRPC assignments; whether it differs from
    /// the last one (the reconciler logs the list only then, not on every snapshot).
    pub(crate) fn grpc_hosts_dropped_changed(&self, digest: u64) -> bool {
        self.grpc_hosts_dropped_digest
            .swap(digest, std::sync::atomic::Ordering::Relaxed)
            != digest
    }
}
