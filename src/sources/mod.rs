//! Inputs. Each source owns its state and publishes its latest full state on a
//! `tokio::sync::watch` channel: a reader never lags behind and never misses the newest state.
//!
//! Rules every source follows: bad input is logged, counted (`voltha_xds_source_errors`) and
//! ignored, and the last good state keeps being served; `data` stays `None` until the source
//! has delivered once (readiness waits for that).

pub mod assignment;
pub mod file;

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SourceConfig};
use crate::metrics::Metrics;
use crate::model::SourceData;

/// A source's latest state.
#[derive(Debug, Clone, Default)]
pub struct SourceState {
    /// The last good data; `None` until the first delivery.
    pub data: Option<Arc<SourceData>>,
    pub health: Health,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// `starting`, `ok` or `error`.
    pub state: &'static str,
    #[serde(serialize_with = "ser_opt_time")]
    pub last_success: Option<SystemTime>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "ser_opt_time")]
    pub last_error_at: Option<SystemTime>,
}

fn ser_opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// A running source, as the reconciler and the admin API see it.
#[derive(Clone)]
pub struct SourceHandle {
    pub name: String,
    pub rx: watch::Receiver<SourceState>,
}

/// The writing side a source task uses.
pub struct Publisher {
    name: String,
    tx: watch::Sender<SourceState>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    pub fn new(name: &str, metrics: Arc<Metrics>) -> (Publisher, SourceHandle) {
        let (tx, rx) = watch::channel(SourceState {
            data: None,
            health: Health {
                state: "starting",
                ..Default::default()
            },
        });
        (
            Publisher {
                name: name.to_string(),
                tx,
                metrics,
            },
            SourceHandle {
                name: name.to_string(),
                rx,
            },
        )
    }

    /// Delivers a good state. Receivers are woken only when the data changed.
    pub fn deliver(&self, data: SourceData) {
        self.metrics.source_update(&self.name);
        self.tx.send_if_modified(|st| {
            let changed = st.data.as_deref() != Some(&data);
            if changed {
                st.data = Some(Arc::new(data));
            }
            let first_ok = st.health.state != "ok";
            st.health.state = "ok";
            st.health.last_success = Some(SystemTime::now());
            changed || first_ok
        });
    }

    /// Records a failure; the last good data stays.
    pub fn fail(&self, kind: &'static str, message: String) {
        tracing::warn!(source = %self.name, kind, error = %message, "source error; keeping the last good state");
        self.metrics.source_error(&self.name, kind);
        self.tx.send_modify(|st| {
            st.health.state = "error";
            st.health.last_error = Some(message);
            st.health.last_error_at = Some(SystemTime::now());
        });
    }
}

/// Starts every configured source; each stops when `shutdown` is cancelled.
pub fn spawn_all(config: &Config, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Vec<SourceHandle> {
    config
        .sources
        .iter()
        .map(|s| match s {
            SourceConfig::File {
                name,
                path,
                format,
                poll_interval,
            } => {
                let (p, h) = Publisher::new(name, metrics.clone());
                tokio::spawn(file::run(p, path.clone(), *format, poll_interval.0, shutdown.clone()));
                h
            }
        })
        .collect()
}

/// Reads every source once, now (for `render`): the model the server would start from.
pub fn read_once(config: &Config) -> Result<crate::model::Model, String> {
    let mut m = crate::model::Model::default();
    for s in &config.sources {
        match s {
            SourceConfig::File { name, path, format, .. } => {
                let data = match std::fs::read(path) {
                    Ok(b) => match format {
                        crate::config::FileFormat::VolthaAssignment => assignment::parse_assignment(&b),
                        crate::config::FileFormat::Endpoints => assignment::parse_endpoint_sets(&b),
                    }
                    .map_err(|e| format!("source {name:?}: {}: {e}", path.display()))?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => SourceData::default(),
                    Err(e) => return Err(format!("source {name:?}: cannot read {}: {e}", path.display())),
                };
                m.sources.insert(name.clone(), Arc::new(data));
            }
        }
    }
    Ok(m)
}
