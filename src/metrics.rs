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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildInfoLabel {
    version: &'static str,
    revision: &'static str,
}

/// Reads the live heap size; set by the binary, which owns the global allocator.
static HEAP_PROBE: std::sync::OnceLock<fn() -> usize> = std::sync::OnceLock::new();

/// Makes `voltha_xds_heap_bytes` report `probe()`; the first call wins.
pub fn set_heap_probe(probe: fn() -> usize) {
    let _ = HEAP_PROBE.set(probe);
}

pub struct Metrics {
    /// The xDS engine's metrics, registered in this registry.
    pub xds: Arc<xds_engine::metrics::Metrics>,
    heap_bytes: Gauge<i64, std::sync::atomic::AtomicI64>,
    registry: Registry,
    /// `process_*`: the standard names, without the `voltha_xds_` prefix.
    process: Registry,
    snapshots: Counter,
    snapshot_rejections: Family<ReasonLabel, Counter>,
    snapshot_build_seconds: Histogram,
    source_errors: Family<SourceKindLabel, Counter>,
    source_updates: Family<SourceLabel, Counter>,
    debounce_coalesced: Counter,
    snapshot_resources: Family<GroupTypeLabel, Gauge<i64, std::sync::atomic::AtomicI64>>,
    snapshot_bytes: Family<GroupTypeLabel, Gauge<i64, std::sync::atomic::AtomicI64>>,
    source_last_success: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    config_reloads: Family<ResultLabel, Counter>,
    config_last_reload_ok: Gauge<i64, std::sync::atomic::AtomicI64>,
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
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("voltha_xds");
        let m = Metrics {
            heap_bytes: Gauge::default(),
            snapshots: Counter::default(),
            snapshot_rejections: Family::default(),
            snapshot_build_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            source_errors: Family::default(),
            source_updates: Family::default(),
            debounce_coalesced: Counter::default(),
            snapshot_resources: Family::default(),
            snapshot_bytes: Family::default(),
            source_last_success: Family::default(),
            config_reloads: Family::default(),
            config_last_reload_ok: Gauge::default(),
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
        if HEAP_PROBE.get().is_some() {
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
            "config_last_reload_successful",
            "1 when the last configuration reload was applied (or none was tried), 0 when it was invalid or refused",
            m.config_last_reload_ok.clone(),
        );
        let mut process = Registry::default();
        process.register_collector(Box::new(process::ProcessCollector));
        Metrics { registry, process, ..m }
    }

    pub fn snapshot_published(&self, build: Duration) {
        self.snapshots.inc();
        self.snapshot_build_seconds.observe(build.as_secs_f64());
    }

    pub fn snapshot_rejected(&self, reason: &'static str) {
        self.snapshot_rejections.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn source_error(&self, source: &str, kind: &'static str) {
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

    pub fn source_update(&self, source: &str) {
        self.source_updates
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .inc();
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

    pub fn coalesced(&self, n: u64) {
        self.debounce_coalesced.inc_by(n);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(probe) = HEAP_PROBE.get() {
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

    /// Counter value for tests and the admin page.
    pub fn source_error_count(&self, source: &str, kind: &'static str) -> u64 {
        self.source_errors
            .get_or_create(&SourceKindLabel {
                source: source.to_string(),
                kind,
            })
            .get()
    }

    /// A configuration reload's result: `ok`, `invalid` or `refused`.
    pub fn config_reload(&self, result: &'static str) {
        self.config_reloads.get_or_create(&ResultLabel { result }).inc();
        self.config_last_reload_ok.set(i64::from(result == "ok"));
    }

    pub fn config_reload_count(&self, result: &'static str) -> u64 {
        self.config_reloads.get_or_create(&ResultLabel { result }).get()
    }

    pub fn rejection_count(&self, reason: &'static str) -> u64 {
        self.snapshot_rejections.get_or_create(&ReasonLabel { reason }).get()
    }
}
