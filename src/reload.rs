//! Configuration reload without a restart. The [`Reloader`] owns the running configuration, one
//! task per source and the reconciler task, and is the only one that starts or stops them.
//!
//! A reload (SIGHUP, a change of the `--config` file's content, see [`trigger`]) reads and
//! validates the whole new configuration as `serve` does at start, then:
//! - an invalid one (parse or validation errors, a source whose settings cannot be resolved, or
//!   a snapshot that cannot be built from the current inputs) is **invalid**;
//! - one that changes a setting bound at start (`server.*` but `shutdown_grace` and
//!   `config_reload_interval`, see [`diff::refusals`]) is **refused**, naming each key;
//! - either way the running configuration stays, every error is logged at warn and kept for
//!   `/readyz` and the status page, and `voltha_xds_config_reloads_total{result}` counts it;
//! - a good one is **ok** and applied: sources whose settings are unchanged keep running with
//!   their state, changed ones are restarted, new ones started, removed ones stopped; the
//!   reconciler restarts on the new configuration and publishes into the same cache, whose
//!   versions are content hashes per type, so only the types whose resources changed get a new
//!   version. No xDS stream or connection is touched.
//!
//! A **restarted** source (its settings changed) starts from the last good data of the one it
//! replaces, marked `carried_over` in `/readyz` and on the status page until it delivers: the
//! reconciler keeps building from every source (the others' changes are pushed at once) and
//! readiness stays up. Its first delivery replaces the carried data; until then its errors
//! (an unreachable server, a missing key) keep the carried data as the last good state, as any
//! source's errors keep its own.
//!
//! An **added** source has no data to start from and follows the start-up rule: the server is
//! not ready, and the reconciler builds nothing new, until it delivers (a snapshot built without
//! it would lack the endpoints of every cluster that names it, see
//! `TranslateError::MissingSource`); the last snapshot keeps being served meanwhile. A reload
//! that removes it again, or its first delivery, ends the wait.

pub(crate) mod diff;
pub mod trigger;

use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, SourceConfig};
use crate::metrics::Metrics;
use crate::sources::SourceHandle;
use crate::xds::cache::Cache;
use diff::SourceChange;

/// The most errors of one reload that are kept and logged; the rest are counted.
pub(crate) const MAX_ERRORS: usize = 64;
/// The longest error message kept and logged, in characters.
pub(crate) const MAX_ERROR_CHARS: usize = 1024;

/// What started a reload (the `trigger` of the log lines and the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The `--config` file's content changed.
    FileChange,
    /// A direct call ([`Reloader::reload_file`], [`Reloader::apply`]).
    Request,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::FileChange => "file_change",
            Trigger::Request => "request",
        }
    }
}

/// How a reload went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; what changed (sources restarted, added, stopped, kept).
    Applied(Vec<String>),
    /// Not valid: every error. The running configuration stays.
    Invalid(Vec<String>),
    /// Valid, but changes settings bound at start: one message per key. The running
    /// configuration stays.
    Refused(Vec<String>),
}

impl Outcome {
    /// `ok`, `invalid` or `refused` (the metric's `result` label).
    pub fn result(&self) -> &'static str {
        match self {
            Outcome::Applied(_) => "ok",
            Outcome::Invalid(_) => "invalid",
            Outcome::Refused(_) => "refused",
        }
    }
}

/// The configuration's state for `/readyz` and the status page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The `--config` file; `None` for the embedded default.
    pub path: Option<String>,
    /// When the running configuration was applied (at start or by the last good reload), in
    /// seconds since the Unix epoch.
    pub applied_at: f64,
    /// Reloads so far, by result.
    pub reloads_ok: u64,
    pub reloads_invalid: u64,
    pub reloads_refused: u64,
    /// The last reload tried, if any.
    pub last_reload: Option<ReloadAttempt>,
}

/// One reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadAttempt {
    pub at: f64,
    /// `sighup`, `file_change` or `request`.
    pub trigger: String,
    /// `ok`, `invalid` or `refused`.
    pub result: String,
    /// Every error (invalid) or refused key (refused), at most [`MAX_ERRORS`].
    #[serde(default)]
    pub errors: Vec<String>,
    /// What an applied reload changed.
    #[serde(default)]
    pub changes: Vec<String>,
}

/// What the admin API reads: the running configuration and sources, and the reload status.
/// Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct Live {
    inner: Arc<LiveInner>,
}

struct LiveInner {
    config: watch::Sender<Arc<Config>>,
    sources: RwLock<Arc<[SourceHandle]>>,
    status: Mutex<ConfigStatus>,
}

impl Live {
    fn new(config: Arc<Config>) -> Live {
        let (config, _) = watch::channel(config);
        Live {
            inner: Arc::new(LiveInner {
                config,
                sources: RwLock::new(Arc::from(Vec::new())),
                status: Mutex::new(ConfigStatus {
                    applied_at: secs(SystemTime::now()),
                    ..ConfigStatus::default()
                }),
            }),
        }
    }

    /// The running sources, in the configuration's order.
    pub fn sources(&self) -> Arc<[SourceHandle]> {
        self.inner.sources.read().clone()
    }

    /// The running configuration.
    pub fn config(&self) -> Arc<Config> {
        self.inner.config.borrow().clone()
    }

    /// Told of every configuration applied.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.inner.config.subscribe()
    }

    /// The reload status.
    pub fn status(&self) -> ConfigStatus {
        self.inner.status.lock().clone()
    }

    fn set(&self, config: Arc<Config>, sources: Arc<[SourceHandle]>) {
        *self.inner.sources.write() = sources;
        self.inner.config.send_replace(config);
    }
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A running source and what stops it.
struct RunningSource {
    config: SourceConfig,
    handle: SourceHandle,
    stop: CancellationToken,
}

/// What the reloader starts and stops.
struct Owned {
    sources: Vec<RunningSource>,
    reconciler: Option<(CancellationToken, JoinHandle<()>)>,
    /// The `--config` content last read for a reload, to tell a real change from a touch.
    last_read: Option<Vec<u8>>,
}

/// Owns the running configuration's tasks and replaces them on reload (see the module docs).
pub struct Reloader {
    live: Live,
    metrics: Arc<Metrics>,
    cache: Cache,
    shutdown: CancellationToken,
    /// One reload at a time.
    owned: tokio::sync::Mutex<Owned>,
}

impl Reloader {
    /// Starts the sources and the reconciler of `config`; each stops with `shutdown`.
    pub(crate) fn start(config: Arc<Config>, metrics: Arc<Metrics>, cache: Cache, shutdown: CancellationToken) -> Self {
        let live = Live::new(config.clone());
        let sources: Vec<RunningSource> = config
            .sources
            .iter()
            .map(|s| spawn_source(s, &metrics, &shutdown, None))
            .collect();
        let handles: Arc<[SourceHandle]> = sources.iter().map(|s| s.handle.clone()).collect();
        live.set(config.clone(), handles.clone());
        let reconciler = spawn_reconciler(config, &handles, &cache, &metrics, &shutdown);
        Reloader {
            live,
            metrics,
            cache,
            shutdown,
            owned: tokio::sync::Mutex::new(Owned {
                sources,
                reconciler: Some(reconciler),
                last_read: None,
            }),
        }
    }

    /// What the admin API reads.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Records the `--config` file this configuration came from (for the status), and the
    /// content it was parsed from, against which the file's checks compare: a change made
    /// after that content was read is then reloaded.
    pub(crate) async fn set_path(&self, path: &Path, applied: Vec<u8>) {
        self.live.inner.status.lock().path = Some(path.display().to_string());
        self.owned.lock().await.last_read = Some(applied);
    }

    /// Waits for the reconciler to end (after `shutdown`).
    pub(crate) async fn stopped(&self) {
        let task = self.owned.lock().await.reconciler.take();
        if let Some((stop, task)) = task {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Reads `path` and applies it as [`Reloader::apply`] does.
    pub async fn reload_file(&self, path: &Path, trigger: Trigger) -> Outcome {
        let p = path.to_path_buf();
        // The content recorded is the one parsed when it parses (the file may change between
        // two reads); else the file's content, so that the same bad content is not tried again.
        let read = tokio::task::spawn_blocking(move || match Config::load_text(&p) {
            Ok((config, text)) => (Some(text.into_bytes()), Ok(config)),
            Err(e) => (trigger::read_bounded(&p), Err(errors_of(e))),
        })
        .await;
        let (content, loaded) = match read {
            Ok(r) => r,
            Err(e) => (None, Err(vec![format!("the reload's reading task failed: {e}")])),
        };
        self.owned.lock().await.last_read = content;
        self.apply(loaded, trigger).await
    }

    /// Reloads `path` when its content (`None`: it cannot be read) differs from the last
    /// content read for a reload; `None` when it does not.
    pub(crate) async fn reload_if_changed(&self, path: &Path) -> Option<Outcome> {
        let p = path.to_path_buf();
        let content = tokio::task::spawn_blocking(move || trigger::read_bounded(&p))
            .await
            .ok()?;
        if content == self.owned.lock().await.last_read {
            return None;
        }
        Some(self.reload_file(path, Trigger::FileChange).await)
    }

    /// Applies a new configuration, or keeps the running one and says why (module docs).
    pub async fn apply(&self, new: Result<Config, Vec<String>>, trigger: Trigger) -> Outcome {
        let mut owned = self.owned.lock().await;
        let running = self.live.config();
        let outcome = match new {
            Err(errors) => Outcome::Invalid(errors),
            Ok(new) => {
                let refused = diff::refusals(&running, &new);
                if !refused.is_empty() {
                    Outcome::Refused(refused)
                } else {
                    let (plan, removed) = diff::source_plan(&running.sources, &new.sources);
                    let mut errors: Vec<String> = new
                        .sources
                        .iter()
                        .zip(&plan)
                        .filter(|(_, c)| **c != SourceChange::Keep)
                        .filter_map(|(s, _)| diff::check_source(s).err())
                        .collect();
                    if errors.is_empty() {
                        errors.extend(trial_build(&new, &owned.sources, &plan));
                    }
                    if errors.is_empty() {
                        Outcome::Applied(self.switch(&mut owned, new, &plan, removed).await)
                    } else {
                        Outcome::Invalid(errors)
                    }
                }
            }
        };
        drop(owned);
        let outcome = capped(outcome);
        self.record(&outcome, trigger);
        outcome
    }

    /// Replaces the running configuration's tasks with `new`'s (see [`diff::source_plan`]).
    async fn switch(&self, owned: &mut Owned, new: Config, plan: &[SourceChange], removed: Vec<String>) -> Vec<String> {
        let new = Arc::new(new);
        let mut old = std::mem::take(&mut owned.sources);
        let mut changes = Vec::new();
        let mut next = Vec::with_capacity(new.sources.len());
        for (s, change) in new.sources.iter().zip(plan) {
            let name = s.name();
            match change {
                SourceChange::Keep => {
                    if let Some(i) = old.iter().position(|r| r.config.name() == name) {
                        next.push(old.swap_remove(i));
                    }
                }
                SourceChange::Restart | SourceChange::Add => {
                    // A restarted source starts from the last good data of the one it replaces.
                    let carried = old
                        .iter()
                        .find(|r| r.config.name() == name)
                        .and_then(|r| r.handle.rx.borrow().data.clone());
                    next.push(spawn_source(s, &self.metrics, &self.shutdown, carried));
                    let what = if *change == SourceChange::Add {
                        "added"
                    } else {
                        "restarted"
                    };
                    changes.push(format!("source {name:?} {what}"));
                }
            }
        }
        changes.extend(removed.iter().map(|n| format!("source {n:?} stopped")));
        // The old reconciler ends (its last build, if one is under way, finishes first) before
        // the new one starts, so the two never publish at once.
        if let Some((stop, task)) = owned.reconciler.take() {
            stop.cancel();
            let _ = task.await;
        }
        let handles: Arc<[SourceHandle]> = next.iter().map(|s| s.handle.clone()).collect();
        self.live.set(new.clone(), handles.clone());
        owned.reconciler = Some(spawn_reconciler(
            new,
            &handles,
            &self.cache,
            &self.metrics,
            &self.shutdown,
        ));
        // What is left of the old tasks: restarted and removed sources.
        for r in old {
            r.stop.cancel();
        }
        for name in &removed {
            self.metrics.forget_source(name);
        }
        owned.sources = next;
        let kept = plan.iter().filter(|c| **c == SourceChange::Keep).count();
        changes.push(format!("{kept} sources kept running"));
        changes
    }

    /// Logs, counts and keeps the outcome.
    fn record(&self, outcome: &Outcome, trigger: Trigger) {
        let result = outcome.result();
        self.metrics.config_reload(result);
        let now = secs(SystemTime::now());
        let trig = trigger.as_str();
        let (errors, changes) = match outcome {
            Outcome::Applied(changes) => {
                tracing::info!(trigger = trig, changes = ?changes, "configuration reloaded");
                (Vec::new(), changes.clone())
            }
            Outcome::Invalid(errors) | Outcome::Refused(errors) => {
                for e in errors {
                    tracing::warn!(trigger = trig, result, error = ?e, "configuration reload {result}");
                }
                tracing::warn!(
                    trigger = trig,
                    result,
                    errors = errors.len(),
                    "configuration reload {result}; the running configuration is kept"
                );
                (errors.clone(), Vec::new())
            }
        };
        let mut st = self.live.inner.status.lock();
        match outcome {
            Outcome::Applied(_) => {
                st.reloads_ok += 1;
                st.applied_at = now;
            }
            Outcome::Invalid(_) => st.reloads_invalid += 1,
            Outcome::Refused(_) => st.reloads_refused += 1,
        }
        st.last_reload = Some(ReloadAttempt {
            at: now,
            trigger: trig.to_string(),
            result: result.to_string(),
            errors,
            changes,
        });
    }
}

/// A `Config::load` error as a list.
fn errors_of(e: ConfigError) -> Vec<String> {
    match e {
        ConfigError::Invalid(list) => list,
        other => vec![other.to_string()],
    }
}

/// The outcome with at most [`MAX_ERRORS`] messages of at most [`MAX_ERROR_CHARS`] each.
fn capped(outcome: Outcome) -> Outcome {
    let cap = |list: Vec<String>| -> Vec<String> {
        let total = list.len();
        let mut out: Vec<String> = list.into_iter().take(MAX_ERRORS).map(cut).collect();
        if total > MAX_ERRORS {
            out.push(format!("… and {} more", total - MAX_ERRORS));
        }
        out
    };
    match outcome {
        Outcome::Invalid(e) => Outcome::Invalid(cap(e)),
        Outcome::Refused(e) => Outcome::Refused(cap(e)),
        applied => applied,
    }
}

fn cut(message: String) -> String {
    match message.char_indices().nth(MAX_ERROR_CHARS) {
        None => message,
        Some((at, _)) => format!("{}… ({} bytes in all)", &message[..at], message.len()),
    }
}

/// Starts one source with a token of its own (a child of `shutdown`), its state starting from
/// `carried` (the last good data of the source it replaces, if any).
fn spawn_source(
    s: &SourceConfig,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
    carried: Option<Arc<crate::model::SourceData>>,
) -> RunningSource {
    let stop = shutdown.child_token();
    RunningSource {
        config: s.clone(),
        handle: crate::sources::spawn_one(s, metrics.clone(), stop.clone(), carried),
        stop,
    }
}

fn spawn_reconciler(
    config: Arc<Config>,
    sources: &[SourceHandle],
    cache: &Cache,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> (CancellationToken, JoinHandle<()>) {
    let stop = shutdown.child_token();
    let task = tokio::spawn(crate::reconcile::run(
        config,
        sources.to_vec(),
        cache.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    (stop, task)
}

/// When every source of `new` keeps running and has delivered: builds `new`'s snapshot from
/// the current inputs into a scratch cache, so a configuration that cannot be built is invalid
/// rather than applied. With a source restarted or added, the inputs are not yet those the new
/// configuration will build from (a restarted source carries the old one's data until it
/// delivers); the reconciler then refuses a failing build as at start (the last snapshot
/// stays).
fn trial_build(new: &Config, running: &[RunningSource], plan: &[SourceChange]) -> Option<String> {
    if plan.iter().any(|c| *c != SourceChange::Keep) {
        return None;
    }
    let handles: Vec<SourceHandle> = new
        .sources
        .iter()
        .filter_map(|s| running.iter().find(|r| r.config.name() == s.name()))
        .map(|r| r.handle.clone())
        .collect();
    let model = crate::reconcile::model_of(&handles)?;
    crate::reconcile::build_snapshot(new, &model, &Cache::new(), Instant::now())
        .err()
        .map(|e| format!("the new configuration cannot be built from the current inputs: {e}"))
}

#[cfg(test)]
mod tests;
