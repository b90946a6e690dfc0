//! Inputs. Each source owns its state and publishes its latest full state on a
//! `tokio::sync::watch` channel: a reader never lags behind and never misses the newest state.
//!
//! Rules every source follows: bad input is logged, counted (`voltha_xds_source_errors`) and
//! ignored, and the last good state keeps being served; `data` stays `None` until the source
//! has delivered a first good state (readiness, and the first snapshot, wait for that).
//!
//! What a value means ([`KeyState`], shared by the file, Consul and etcd sources): only a
//! well-formed value ([`assignment`]) is delivered, `{}` included. An empty, malformed or
//! oversized value is an error, never "no cores"; a key or file that does not exist is "not
//! ready" before the first good value and keeps the last good state after it.

pub mod assignment;
pub(crate) mod consul;
pub(crate) mod etcd;
pub(crate) mod file;
pub(crate) mod kubernetes;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
    pub(crate) data: Option<Arc<SourceData>>,
    pub(crate) health: Health,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Health {
    /// `starting`, `ok` or `error`.
    pub(crate) state: &'static str,
    #[serde(serialize_with = "xds_engine::status::ser_opt_time")]
    pub(crate) last_success: Option<SystemTime>,
    pub(crate) last_error: Option<String>,
    #[serde(serialize_with = "xds_engine::status::ser_opt_time")]
    pub(crate) last_error_at: Option<SystemTime>,
    /// The data is the last good data of the source this one replaced on a reload (its settings
    /// changed); it has not delivered itself yet. Cleared by its first delivery.
    pub(crate) carried_over: bool,
}

/// A running source, as the reconciler and the admin API see it.
#[derive(Clone)]
pub struct SourceHandle {
    pub name: String,
    pub rx: watch::Receiver<SourceState>,
}

/// The writing side a source task uses.
pub(crate) struct Publisher {
    name: String,
    tx: watch::Sender<SourceState>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    #[cfg(test)]
    pub(crate) fn new(name: &str, metrics: Arc<Metrics>) -> (Publisher, SourceHandle) {
        Publisher::starting_from(name, metrics, None)
    }

    /// A publisher whose state starts from `carried`: the last good data of the source it
    /// replaces on a reload (marked [`Health::carried_over`] until its own first delivery), so
    /// the reconciler and readiness go on while it starts. `None`: starts empty, as at start-up.
    pub(crate) fn starting_from(
        name: &str,
        metrics: Arc<Metrics>,
        carried: Option<Arc<SourceData>>,
    ) -> (Publisher, SourceHandle) {
        let carried_over = carried.is_some();
        let (tx, rx) = watch::channel(SourceState {
            data: carried,
            health: Health {
                state: "starting",
                carried_over,
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
    pub(crate) fn deliver(&self, data: SourceData) {
        self.metrics.source_update(&self.name);
        let now = SystemTime::now();
        self.metrics.source_success(&self.name, now);
        self.tx.send_if_modified(|st| {
            let changed = st.data.as_deref() != Some(&data);
            if changed {
                st.data = Some(Arc::new(data));
            }
            let first_ok = st.health.state != "ok" || st.health.carried_over;
            st.health.state = "ok";
            st.health.carried_over = false;
            st.health.last_success = Some(now);
            changed || first_ok
        });
    }

    /// Reports the source healthy again with its data unchanged (after a transient failure).
    pub(crate) fn healthy(&self) {
        let now = SystemTime::now();
        self.metrics.source_success(&self.name, now);
        self.tx.send_if_modified(|st| {
            st.health.last_success = Some(now);
            let was_failing = st.health.state != "ok" && st.data.is_some() && !st.health.carried_over;
            if was_failing {
                st.health.state = "ok";
            }
            was_failing
        });
    }

    /// Counts an event worth a metric that is not a failure (the source recovers by itself).
    pub(crate) fn count_error(&self, kind: &'static str) {
        self.metrics.source_error(&self.name, kind);
    }

    /// Records a failure; the last good data stays. The message (which may quote parts of a
    /// source's value) is cut to [`MAX_ERROR_CHARS`] characters, and logged quoted and escaped.
    pub(crate) fn fail(&self, kind: &'static str, message: String) {
        let message = cut(message, MAX_ERROR_CHARS);
        tracing::warn!(source = %self.name, kind, error = ?message, "source error; keeping the last good state");
        self.metrics.source_error(&self.name, kind);
        self.tx.send_modify(|st| {
            st.health.state = "error";
            st.health.last_error = Some(message);
            st.health.last_error_at = Some(SystemTime::now());
        });
    }
}

/// The longest source error message kept and logged, in characters.
pub(crate) const MAX_ERROR_CHARS: usize = 1024;

/// `message` cut to `max` characters, with what was left out said.
fn cut(message: String, max: usize) -> String {
    match message.char_indices().nth(max) {
        None => message,
        Some((at, _)) => format!("{}… ({} bytes in all)", &message[..at], message.len()),
    }
}

/// Starts one source (the reload supervisor starts one at a time, each with its own token);
/// its state starts from `carried` (see [`Publisher::starting_from`]).
pub(crate) fn spawn_one(
    s: &SourceConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    carried: Option<Arc<SourceData>>,
) -> SourceHandle {
    let new = |name: &str| Publisher::starting_from(name, metrics.clone(), carried.clone());
    match s {
        SourceConfig::File {
            name,
            path,
            format,
            poll_interval,
            max_value_bytes,
            watch,
        } => {
            let (p, h) = new(name);
            let w = file::Watcher::new(path.clone(), *format, *max_value_bytes);
            tokio::spawn(file::run(p, w, poll_interval.0, *watch, shutdown.clone()));
            h
        }
        SourceConfig::Consul(c) => {
            let (p, h) = new(&c.name);
            match consul::Settings::resolve(c) {
                Ok(settings) => {
                    let backoff = Backoff::new(c.backoff.initial.0, c.backoff.max.0);
                    tokio::spawn(consul::run(p, settings, backoff, shutdown.clone()));
                }
                Err(e) => p.fail("config", e),
            }
            h
        }
        SourceConfig::Etcd(c) => {
            let (p, h) = new(&c.name);
            match etcd::Settings::resolve(c) {
                Ok(settings) => {
                    let backoff = Backoff::new(c.backoff.initial.0, c.backoff.max.0);
                    tokio::spawn(etcd::run(p, settings, backoff, shutdown.clone()));
                }
                // Never delivers: not ready, and the reason is on /readyz and in the log.
                Err(e) => p.fail("config", e),
            }
            h
        }
        SourceConfig::Kubernetes(k) => {
            let (p, h) = new(&k.name);
            let backoff = Backoff::new(k.backoff.initial.0, k.backoff.max.0);
            tokio::spawn(kubernetes::run(
                p,
                kubernetes::Settings::resolve(k),
                backoff,
                shutdown.clone(),
            ));
            h
        }
    }
}

/// The rules for a source that follows one value (a KV key, a file): what its value means.
#[derive(Debug)]
pub(crate) struct KeyState {
    /// The key has had a good value.
    had_value: bool,
    /// The last value applied was good.
    pub(crate) value_ok: bool,
    /// A larger value is an error (`too_large`).
    max_value_bytes: usize,
}

impl Default for KeyState {
    fn default() -> Self {
        KeyState::new(crate::config::default_max_value_bytes())
    }
}

impl KeyState {
    pub(crate) fn new(max_value_bytes: usize) -> Self {
        KeyState {
            had_value: false,
            value_ok: false,
            max_value_bytes,
        }
    }

    /// What an error does to the served state, for messages.
    fn consequence(&self) -> &'static str {
        if self.had_value {
            "keeping the last good state"
        } else {
            "not ready until a good value arrives"
        }
    }

    /// Applies the value (`None`: the key or file does not exist). `what` names it in
    /// messages, e.g. `etcd key "a/b"`.
    ///
    /// Only a well-formed value is delivered (`{}` is "no cores"). An empty, malformed or
    /// oversized value is an error, and so is a missing key: before the first good value the
    /// source stays not ready (kind `absent`); after it, the last good state is kept (kind
    /// `deleted`: an empty endpoint set would black-hole all traffic).
    pub(crate) fn apply(&mut self, p: &Publisher, format: crate::config::FileFormat, what: &str, value: Option<&[u8]>) {
        self.value_ok = match value {
            Some(bytes) => {
                let parsed = assignment::check_size(bytes.len() as u64, self.max_value_bytes)
                    .and_then(|()| assignment::parse(format, bytes));
                match parsed {
                    Ok(data) => {
                        self.had_value = true;
                        p.deliver(data);
                        true
                    }
                    Err(e) => {
                        p.fail(e.kind(), format!("{what}: {e}; {}", self.consequence()));
                        false
                    }
                }
            }
            None if self.had_value => {
                p.fail("deleted", format!("{what} was deleted; keeping the last good state"));
                false
            }
            None => {
                p.fail(
                    "absent",
                    format!("{what} does not exist; not ready until it holds a value"),
                );
                false
            }
        };
    }

    /// A value that was not read because it is larger than `max_value_bytes`; `why` says how
    /// that is known.
    pub(crate) fn too_large(&mut self, p: &Publisher, what: &str, why: String) {
        p.fail("too_large", format!("{what}: {why}; {}", self.consequence()));
        self.value_ok = false;
    }

    pub(crate) fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }
}

/// Waits between retries: exponential from `initial` to `max`, each wait drawn uniformly from
/// its upper half (jitter, so a fleet of servers does not retry in step).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Backoff {
            initial,
            max,
            next: initial,
            seed,
        }
    }

    /// The wait before the next retry; doubles the one after it, up to `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // xorshift64: enough randomness for jitter, no dependency.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let ceiling = self.next;
        self.next = std::cmp::min(self.next.saturating_mul(2), self.max);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_nanos() as u64;
        half + Duration::from_nanos(if spread == 0 { 0 } else { self.seed % (spread + 1) })
    }

    /// After a success: the next failure waits `initial` again.
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Reads every source once, now (for `render`): the model the server would start from.
pub async fn read_once(config: &Config) -> Result<crate::model::Model, String> {
    let mut m = crate::model::Model::default();
    for s in &config.sources {
        match s {
            SourceConfig::File {
                name,
                path,
                format,
                max_value_bytes,
                ..
            } => {
                let data =
                    file::read_once(path, *format, *max_value_bytes).map_err(|e| format!("source {name:?}: {e}"))?;
                m.sources.insert(name.clone(), Arc::new(data));
            }
            SourceConfig::Consul(c) => {
                let at = |e: String| format!("source {:?}: {e}", c.name);
                let settings = consul::Settings::resolve(c).map_err(at)?;
                let data = consul::read_once(&settings).await.map_err(at)?;
                m.sources.insert(c.name.clone(), Arc::new(data));
            }
            SourceConfig::Etcd(c) => {
                let at = |e: String| format!("source {:?}: {e}", c.name);
                let settings = etcd::Settings::resolve(c).map_err(at)?;
                let data = etcd::read_once(&settings).await.map_err(at)?;
                m.sources.insert(c.name.clone(), Arc::new(data));
            }
            SourceConfig::Kubernetes(k) => {
                let at = |e: String| format!("source {:?}: {e}", k.name);
                let settings = kubernetes::Settings::resolve(k);
                let data = kubernetes::read_once(&settings).await.map_err(at)?;
                m.sources.insert(k.name.clone(), Arc::new(data));
            }
        }
    }
    Ok(m)
}

#[cfg(test)]
mod key_state_tests {
    use super::*;
    use crate::config::FileFormat;
    use crate::model::DEFAULT_SET;

    const TWO: &[u8] = br#"{"0001": {"id": "a", "host": "10.0.0.1"}, "0002": {"id": "b", "host": "10.0.0.2"}}"#;
    const BAD: [(&[u8], &str); 6] = [
        (b"", "empty"),
        (b"   ", "empty"),
        (b"{not json", "malformed_json"),
        (b"null", "wrong_shape"),
        (b"{", "malformed_json"),
        (br#"{"0001": 5}"#, "wrong_shape"),
    ];

    fn setup() -> (Publisher, SourceHandle, Arc<Metrics>) {
        let m = Arc::new(Metrics::new());
        let (p, h) = Publisher::new("k", m.clone());
        (p, h, m)
    }

    fn hosts(h: &SourceHandle) -> Option<usize> {
        h.rx.borrow().data.as_ref().map(|d| d.set(DEFAULT_SET).len())
    }

    fn apply(k: &mut KeyState, p: &Publisher, v: Option<&[u8]>) {
        k.apply(p, FileFormat::VolthaAssignment, "key \"k\"", v);
    }

    #[test]
    fn carried_data_is_served_until_the_first_delivery_replaces_it() {
        let m = Arc::new(Metrics::new());
        let old = assignment::parse(FileFormat::VolthaAssignment, TWO).expect("parses");
        let (p, mut h) = Publisher::starting_from("k", m, Some(Arc::new(old.clone())));
        assert_eq!(hosts(&h), Some(2));
        assert!(h.rx.borrow().health.carried_over);
        // Neither a failure nor a "healthy" without a delivery ends the carry-over.
        p.fail("absent", "missing".into());
        p.healthy();
        let st = h.rx.borrow_and_update().clone();
        assert_eq!(
            (st.health.state, st.health.carried_over, hosts(&h)),
            ("error", true, Some(2))
        );
        // The first delivery, even of equal data, is the source's own, and wakes the reader.
        p.deliver(old);
        assert!(h.rx.has_changed().unwrap_or(false));
        let st = h.rx.borrow_and_update().clone();
        assert_eq!((st.health.state, st.health.carried_over), ("ok", false));
        let mut k = KeyState::default();
        apply(&mut k, &p, Some(br#"{"0001": {"id": "a", "host": "10.0.0.7"}}"#));
        assert_eq!(hosts(&h), Some(1));
    }

    #[test]
    fn a_source_error_message_is_cut_where_it_is_kept() {
        let (p, h, _) = setup();
        let long = format!("key \"k\": {}", "é".repeat(100_000));
        p.fail("wrong_shape", long.clone());
        let kept = h.rx.borrow().health.last_error.clone().expect("an error kept");
        assert_eq!(
            kept.chars().count(),
            MAX_ERROR_CHARS + format!("… ({} bytes in all)", long.len()).chars().count()
        );
        assert!(kept.ends_with(&format!("({} bytes in all)", long.len())), "{kept}");
        p.fail("wrong_shape", "short".into());
        assert_eq!(h.rx.borrow().health.last_error.as_deref(), Some("short"));
    }

    #[test]
    fn an_absent_key_or_a_bad_value_at_start_is_not_ready_not_empty() {
        let (p, h, m) = setup();
        let mut k = KeyState::default();
        apply(&mut k, &p, None);
        assert_eq!((hosts(&h), h.rx.borrow().health.state), (None, "error"));
        assert_eq!(m.source_error_count("k", "absent"), 1);
        for (v, kind) in BAD {
            let before = m.source_error_count("k", kind);
            apply(&mut k, &p, Some(v));
            assert_eq!(hosts(&h), None, "{:?}", String::from_utf8_lossy(v));
            assert!(!k.value_ok);
            assert_eq!(m.source_error_count("k", kind), before + 1);
            let e = h.rx.borrow().health.last_error.clone().unwrap_or_default();
            assert!(e.ends_with("not ready until a good value arrives"), "{e}");
        }
        apply(&mut k, &p, Some(TWO));
        assert_eq!((hosts(&h), h.rx.borrow().health.state), (Some(2), "ok"));
    }

    #[test]
    fn after_a_good_value_bad_values_and_deletion_keep_it() {
        let (p, h, m) = setup();
        let mut k = KeyState::default();
        apply(&mut k, &p, Some(TWO));
        for (v, kind) in BAD {
            let before = m.source_error_count("k", kind);
            apply(&mut k, &p, Some(v));
            assert_eq!(hosts(&h), Some(2), "{:?}", String::from_utf8_lossy(v));
            assert_eq!(h.rx.borrow().health.state, "error");
            assert_eq!(m.source_error_count("k", kind), before + 1);
        }
        apply(&mut k, &p, None);
        assert_eq!((hosts(&h), m.source_error_count("k", "deleted")), (Some(2), 1));
        // Only a well-formed empty value empties it.
        apply(&mut k, &p, Some(br#"{"0001": null}"#));
        assert_eq!((hosts(&h), h.rx.borrow().health.state), (Some(0), "ok"));
        apply(&mut k, &p, Some(TWO));
        apply(&mut k, &p, Some(b"{}"));
        assert_eq!(hosts(&h), Some(0));
    }

    #[test]
    fn values_over_the_limit_are_too_large_and_keep_the_last_good_state() {
        let (p, h, m) = setup();
        let mut k = KeyState::new(TWO.len());
        apply(&mut k, &p, Some(TWO));
        let mut big = TWO.to_vec();
        big.push(b' ');
        apply(&mut k, &p, Some(&big));
        assert_eq!((hosts(&h), m.source_error_count("k", "too_large")), (Some(2), 1));
        k.too_large(&p, "key \"k\"", "the answer is over 1 MiB".into());
        assert_eq!((hosts(&h), m.source_error_count("k", "too_large")), (Some(2), 2));
        assert!(!k.value_ok);
        let e = h.rx.borrow().health.last_error.clone().unwrap_or_default();
        assert_eq!(e, "key \"k\": the answer is over 1 MiB; keeping the last good state");
        assert_eq!(KeyState::default().max_value_bytes(), 4 << 20);
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        let ceilings = [100u64, 200, 400, 800, 1000, 1000];
        for (w, c) in waits.iter().zip(ceilings) {
            assert!(
                *w >= Duration::from_millis(c / 2) && *w <= Duration::from_millis(c),
                "{w:?} for ceiling {c}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
