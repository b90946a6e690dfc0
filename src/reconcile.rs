//! The reconciler: one task that waits for any source to change, debounces (a change after a
//! quiet spell is built at once; changes that follow within the quiet period are coalesced,
//! bounded by a maximum delay: [`Debounce`]), merges the sources into a [`Model`], translates,
//! checks and publishes a new snapshot when the content changed. A translation that fails is
//! logged and counted, and the last good snapshot keeps being served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::select_all;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::Model;
use crate::sources::SourceHandle;
use crate::translate::{translate, TranslateError};
use crate::xds::cache::{Cache, CacheError, Snapshot};

/// Builds the model from every source; `None` while some source has not delivered yet.
pub(crate) fn model_of(sources: &[SourceHandle]) -> Option<Model> {
    let mut m = Model::default();
    for s in sources {
        let data = s.rx.borrow().data.clone()?;
        m.sources.insert(s.name.clone(), data);
    }
    Some(m)
}

/// Why no snapshot was built: the translation failed, or the engine's cache refused it.
#[derive(Debug)]
pub enum BuildError {
    /// The translation failed (see [`TranslateError::reason`]).
    Translate(TranslateError),
    /// The cache refused the resources.
    Cache(CacheError),
}

impl BuildError {
    /// The `reason` label of `voltha_xds_snapshot_rejections_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            BuildError::Translate(e) => e.reason(),
            BuildError::Cache(_) => "cache",
        }
    }
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Translate(e) => e.fmt(f),
            BuildError::Cache(e) => e.fmt(f),
        }
    }
}

/// The one way a snapshot is built, for `serve` (the reconciler) and `render`: translates the
/// model and hands every group's resources to the engine's cache, which encodes and publishes
/// them. `Ok(None)` when the content did not change.
pub fn build_snapshot(
    config: &Config,
    model: &Model,
    cache: &Cache,
    observed_at: Instant,
) -> Result<Option<Arc<Snapshot>>, BuildError> {
    let groups = translate(model, config).map_err(BuildError::Translate)?;
    cache
        .publish(&groups, &config.default_group, observed_at)
        .map_err(BuildError::Cache)
}

/// Translates and publishes once. Returns whether a new snapshot was published.
pub(crate) fn rebuild(config: &Config, model: &Model, cache: &Cache, metrics: &Metrics, observed_at: Instant) -> bool {
    let started = Instant::now();
    match build_snapshot(config, model, cache, observed_at) {
        Ok(Some(s)) => {
            metrics.snapshot_published(started.elapsed());
            for g in s.groups.values() {
                for t in &g.types {
                    let bytes = t.resources.values().map(|r| r.any.len()).sum();
                    metrics.snapshot_size(&g.name, t.ty, t.resources.len(), bytes);
                }
            }
            metrics.snapshot_groups(s.groups.keys());
            let versions: Vec<String> = s
                .groups
                .values()
                .map(|g| format!("{}={}", g.name, g.version()))
                .collect();
            info!(generation = s.generation, groups = %versions.join(" "), build_ms = started.elapsed().as_millis() as u64, "snapshot published");
            report_grpc_dropped_hosts(config, model, metrics, s.groups.keys().map(String::as_str));
            true
        }
        Ok(None) => false,
        Err(e) => {
            metrics.snapshot_rejected(e.reason());
            error!(error = %e, "snapshot refused; the last good snapshot keeps being served");
            false
        }
    }
}

/// The longest source host quoted in a log line, and the most hosts listed in one.
const LOG_HOST_CHARS: usize = 64;
const LOG_HOSTS: usize = 8;

/// Counts (`voltha_xds_grpc_hosts_dropped`, per twin group) the source hosts left out of the
/// proxyless gRPC groups' load assignments because they are DNS names, and logs them when that
/// set changes (once per change, not per snapshot). Called once per published snapshot.
fn report_grpc_dropped_hosts<'a>(
    config: &Config,
    model: &Model,
    metrics: &Metrics,
    groups: impl Iterator<Item = &'a str>,
) {
    use std::hash::{Hash, Hasher};
    let dropped = crate::translate::grpc::dropped_hosts(config, model);
    for g in groups.filter(|g| g.ends_with(crate::xds::cache::PROXYLESS_GROUP_SUFFIX)) {
        metrics.grpc_hosts_dropped(g, dropped.iter().filter(|d| d.group == g).count());
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dropped.hash(&mut h);
    if !metrics.grpc_hosts_dropped_changed(h.finish()) || dropped.is_empty() {
        return;
    }
    let listed: Vec<String> = dropped
        .iter()
        .take(LOG_HOSTS)
        .map(|d| {
            let host: String = d.host.chars().take(LOG_HOST_CHARS).collect();
            format!("{:?} {:?}: {:?}", d.group, d.cluster, host)
        })
        .collect();
    tracing::warn!(
        hosts = dropped.len(),
        first = %listed.join(", "),
        "source hosts that are not IP addresses are left out of the proxyless gRPC clients' load assignments (Envoys resolve them)"
    );
}

/// Waits until any receiver reports a change; `false` when all senders are gone.
async fn any_changed(rxs: &mut [watch::Receiver<crate::sources::SourceState>]) -> bool {
    if rxs.is_empty() {
        return std::future::pending().await;
    }
    let futs: Vec<_> = rxs.iter_mut().map(|r| Box::pin(r.changed())).collect();
    let (res, _, _) = select_all(futs).await;
    res.is_ok()
}

/// Runs until `shutdown`: debounce, rebuild, publish.
pub(crate) async fn run(
    config: Arc<Config>,
    sources: Vec<SourceHandle>,
    cache: Cache,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let quiet = config.debounce.quiet.0;
    let max_delay = config.debounce.max_delay.0;
    let mut rxs: Vec<_> = sources.iter().map(|s| s.rx.clone()).collect();
    if rxs.is_empty() {
        // A configuration without live inputs: one snapshot, served until shutdown.
        rebuild(&config, &Model::default(), &cache, &metrics, Instant::now());
        shutdown.cancelled().await;
        return;
    }
    for r in &mut rxs {
        r.mark_changed();
    }
    let mut debounce = Debounce::new(quiet, max_delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ok = any_changed(&mut rxs) => if !ok { return },
        }
        let first = Instant::now();
        let settled = debounce.wait(&mut rxs, &shutdown).await;
        metrics.debounced(settled.leading, settled.merged);
        if shutdown.is_cancelled() {
            return;
        }
        for r in &mut rxs {
            r.borrow_and_update();
        }
        if let Some(model) = model_of(&sources) {
            rebuild(&config, &model, &cache, &metrics, first);
        }
    }
}

/// How a build was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settled {
    /// At once: the change came after a quiet spell (the leading edge).
    pub leading: bool,
    /// Further changes merged into the build.
    pub merged: u64,
}

/// The debounce between a change and its build. A change that comes `quiet` or more after
/// the last change seen is built at once (the leading edge). A change within `quiet` of the
/// last one is part of a burst: the build waits until the inputs have been quiet for `quiet`,
/// or `max_delay` after that change, whichever comes first ([`debounce_from`]).
pub(crate) struct Debounce {
    quiet: Duration,
    max_delay: Duration,
    last_change: Option<tokio::time::Instant>,
}

impl Debounce {
    pub fn new(quiet: Duration, max_delay: Duration) -> Debounce {
        Debounce {
            quiet,
            max_delay,
            last_change: None,
        }
    }

    /// Called when a change has just been seen; returns when its build may start.
    pub async fn wait(
        &mut self,
        rxs: &mut [watch::Receiver<crate::sources::SourceState>],
        shutdown: &CancellationToken,
    ) -> Settled {
        let now = tokio::time::Instant::now();
        let quiet_spell = self
            .last_change
            .is_none_or(|t| now.saturating_duration_since(t) >= self.quiet);
        if quiet_spell {
            self.last_change = Some(now);
            return Settled {
                leading: true,
                merged: 0,
            };
        }
        let (merged, last) = debounce_from(rxs, self.quiet, self.max_delay, shutdown).await;
        self.last_change = Some(last);
        Settled { leading: false, merged }
    }
}

/// After a first change: waits until no change for `quiet`, or `max_delay` after the first.
/// Returns how many further changes were merged, and when the last change it saw came (the
/// first one: at the call).
async fn debounce_from(
    rxs: &mut [watch::Receiver<crate::sources::SourceState>],
    quiet: Duration,
    max_delay: Duration,
    shutdown: &CancellationToken,
) -> (u64, tokio::time::Instant) {
    let mut last = tokio::time::Instant::now();
    let deadline = last + max_delay;
    let mut merged = 0;
    loop {
        for r in rxs.iter_mut() {
            r.borrow_and_update();
        }
        let until = std::cmp::min(last + quiet, deadline);
        tokio::select! {
            _ = shutdown.cancelled() => return (merged, last),
            _ = tokio::time::sleep_until(until) => return (merged, last),
            ok = any_changed(rxs) => {
                if !ok { return (merged, last); }
                merged += 1;
                last = tokio::time::Instant::now();
                if last >= deadline { return (merged, last); }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::SourceState;

    const QUIET: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(1);

    /// How many further changes [`debounce_from`] merged.
    async fn debounce(
        rxs: &mut [watch::Receiver<SourceState>],
        quiet: Duration,
        max_delay: Duration,
        shutdown: &CancellationToken,
    ) -> u64 {
        debounce_from(rxs, quiet, max_delay, shutdown).await.0
    }

    fn bump(tx: &watch::Sender<SourceState>) {
        tx.send_modify(|_| {});
    }

    #[test]
    fn defaults_are_50ms_quiet_and_1s_max_delay() {
        let d = crate::config::DebounceConfig::default();
        assert_eq!((d.quiet.0, d.max_delay.0), (QUIET, MAX));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_coalesced_into_one_build_after_the_quiet_period() {
        let (tx, rx) = watch::channel(SourceState::default());
        let mut rxs = vec![rx];
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        let burst = tokio::spawn(async move {
            // Four more changes, 20 ms apart: each inside the quiet period of the one before.
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                bump(&tx);
            }
            tx
        });
        let merged = debounce(&mut rxs, QUIET, MAX, &shutdown).await;
        assert_eq!(merged, 4, "four changes merged into the first one's build");
        // The build happens one quiet period after the last change (at 80 ms).
        assert_eq!(start.elapsed(), Duration::from_millis(80) + QUIET);
        drop(burst.await);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_that_never_stop_are_built_at_the_maximum_delay() {
        let (tx, rx) = watch::channel(SourceState::default());
        let mut rxs = vec![rx];
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        let stop = CancellationToken::new();
        let stop2 = stop.clone();
        let flood = tokio::spawn(async move {
            // A change every 10 ms, for ever: the quiet period never comes.
            while !stop2.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(10)).await;
                bump(&tx);
            }
        });
        let merged = debounce(&mut rxs, QUIET, MAX, &shutdown).await;
        assert_eq!(start.elapsed(), MAX, "built at max_delay, not later");
        assert!((95..=100).contains(&merged), "{merged} changes merged in 1 s");
        stop.cancel();
        let _ = flood.await;
    }

    #[test]
    fn a_configuration_without_debounce_gets_the_defaults() {
        let c = Config::from_yaml(
            "default_group: g\nclusters: [{ name: c, endpoints: { static: [\"10.0.0.1:80\"] } }]\ngroups: [{ name: g, clusters: [c] }]\n",
        )
        .expect("valid");
        assert_eq!((c.debounce.quiet.0, c.debounce.max_delay.0), (QUIET, MAX));
    }

    #[tokio::test(start_paused = true)]
    async fn changes_from_different_sources_are_coalesced_together() {
        let (tx_a, rx_a) = watch::channel(SourceState::default());
        let (tx_b, rx_b) = watch::channel(SourceState::default());
        let mut rxs = vec![rx_a, rx_b];
        let start = tokio::time::Instant::now();
        let burst = tokio::spawn(async move {
            // a, b, a, b, 30 ms apart: one burst across both sources.
            for i in 0..4 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                bump(if i % 2 == 0 { &tx_a } else { &tx_b });
            }
            (tx_a, tx_b)
        });
        let merged = debounce(&mut rxs, QUIET, MAX, &CancellationToken::new()).await;
        assert_eq!(merged, 4);
        assert_eq!(start.elapsed(), Duration::from_millis(120) + QUIET);
        drop(burst.await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_after_the_quiet_period_is_left_for_the_next_build() {
        let (tx, rx) = watch::channel(SourceState::default());
        let mut rxs = vec![rx];
        let late = tokio::spawn(async move {
            tokio::time::sleep(QUIET + Duration::from_millis(10)).await;
            bump(&tx);
            tx
        });
        let merged = debounce(&mut rxs, QUIET, MAX, &CancellationToken::new()).await;
        assert_eq!(merged, 0, "built before the late change");
        let tx = late.await.expect("task");
        assert!(
            rxs[0].has_changed().expect("sender alive"),
            "the late change is still pending"
        );
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait_at_once() {
        let (_tx, rx) = watch::channel(SourceState::default());
        let mut rxs = vec![rx];
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let start = tokio::time::Instant::now();
        debounce(&mut rxs, QUIET, MAX, &shutdown).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_is_built_after_exactly_the_quiet_period() {
        let (_tx, rx) = watch::channel(SourceState::default());
        let mut rxs = vec![rx];
        let start = tokio::time::Instant::now();
        let merged = debounce(&mut rxs, QUIET, MAX, &CancellationToken::new()).await;
        assert_eq!((merged, start.elapsed()), (0, QUIET));
    }

    /// Bumps `tx` at each offset (from now) and returns it at the end.
    fn bumps_at(
        tx: watch::Sender<SourceState>,
        at_ms: &'static [u64],
    ) -> tokio::task::JoinHandle<watch::Sender<SourceState>> {
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for ms in at_ms {
                tokio::time::sleep_until(start + Duration::from_millis(*ms)).await;
                bump(&tx);
            }
            tx
        })
    }

    /// Waits for the next change, as the reconciler's loop does, then for the debounce.
    async fn next_build(d: &mut Debounce, rxs: &mut [watch::Receiver<SourceState>]) -> Settled {
        assert!(any_changed(rxs).await, "sender alive");
        d.wait(rxs, &CancellationToken::new()).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_after_a_quiet_spell_is_built_at_once() {
        let (tx, rx) = watch::channel(SourceState::default());
        let mut rxs = vec![rx];
        let mut d = Debounce::new(QUIET, MAX);
        let start = tokio::time::Instant::now();
        // The first change ever, then one long after it.
        let t = bumps_at(tx, &[0, 500]);
        let s = next_build(&mut d, &mut rxs).await;
        assert_eq!(
            (s, start.elapsed()),
            (
                Settled {
                    leading: true,
                    merged: 0
                },
                Duration::ZERO
            )
        );
        let s = next_build(&mut d, &mut rxs).await;
        assert_eq!(
            (s, start.elapsed()),
            (
                Settled {
                    leading: true,
                    merged: 0
                },
                Duration::from_millis(500)
            ),
            "built when it came, not a quiet period later"
        );
        drop(t.await);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_within_the_window_of_a_leading_build_are_coalesced() {
        let (tx, rx) = watch::channel(SourceState::default());
        let mut rxs = vec![rx];
        let mut d = Debounce::new(QUIET, MAX);
        let start = tokio::time::Instant::now();
        // A lone change, then a burst of four 20 ms apart that starts 20 ms after it.
        let t = bumps_at(tx, &[0, 20, 40, 60, 80]);
        assert!(next_build(&mut d, &mut rxs).await.leading);
        let s = next_build(&mut d, &mut rxs).await;
        assert_eq!(
            s,
            Settled {
                leading: false,
                merged: 3
            },
            "the burst's first change waits; its other three are merged"
        );
        assert_eq!(start.elapsed(), Duration::from_millis(80) + QUIET);
        drop(t.await);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_is_measured_from_the_last_change_not_the_last_build() {
        let (tx, rx) = watch::channel(SourceState::default());
        let mut rxs = vec![rx];
        let mut d = Debounce::new(QUIET, MAX);
        let start = tokio::time::Instant::now();
        // 0: leading. 30: within the window, built at 80 (quiet). 90: 60 ms after the last
        // change, so after a quiet spell though only 10 ms after the last build: at once.
        let t = bumps_at(tx, &[0, 30, 90]);
        assert!(next_build(&mut d, &mut rxs).await.leading);
        let s = next_build(&mut d, &mut rxs).await;
        assert_eq!((s.leading, start.elapsed()), (false, Duration::from_millis(30) + QUIET));
        let s = next_build(&mut d, &mut rxs).await;
        assert_eq!((s.leading, start.elapsed()), (true, Duration::from_millis(90)));
        drop(t.await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_after_a_leading_build_is_built_every_max_delay() {
        let (tx, rx) = watch::channel(SourceState::default());
        let mut rxs = vec![rx];
        let mut d = Debounce::new(QUIET, MAX);
        let start = tokio::time::Instant::now();
        let stop = CancellationToken::new();
        let stop2 = stop.clone();
        let flood = tokio::spawn(async move {
            // A change every 10 ms, for ever: the quiet period never comes.
            bump(&tx);
            while !stop2.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(10)).await;
                bump(&tx);
            }
        });
        assert!(next_build(&mut d, &mut rxs).await.leading);
        for n in 1..=3u32 {
            let s = next_build(&mut d, &mut rxs).await;
            assert!(!s.leading, "a storm never has a quiet spell");
            // Each round starts at its first change (at most 10 ms after the last round) and
            // is built max_delay later.
            let at = start.elapsed();
            assert!(
                MAX * n <= at && at <= (MAX + Duration::from_millis(10)) * n,
                "round {n} built at {at:?}: max_delay bounds it"
            );
            assert!((95..=100).contains(&s.merged), "{} merged", s.merged);
        }
        stop.cancel();
        let _ = flood.await;
    }
}
