//! The reconciler: one task that waits for any source to change, debounces (a quiet period and
//! a maximum delay), merges the sources into a [`Model`], translates, checks and publishes a new
//! snapshot when the content changed. A translation that fails is logged and counted, and the
//! last good snapshot keeps being served.

use std::collections::BTreeMap;
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
pub fn model_of(sources: &[SourceHandle]) -> Option<Model> {
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
    let inputs: BTreeMap<_, _> = groups.iter().map(|(k, v)| (k.clone(), v.encode())).collect();
    cache
        .publish(inputs, &config.default_group, observed_at)
        .map_err(BuildError::Cache)
}

/// Translates and publishes once. Returns whether a new snapshot was published.
pub fn rebuild(config: &Config, model: &Model, cache: &Cache, metrics: &Metrics, observed_at: Instant) -> bool {
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
pub async fn run(
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
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ok = any_changed(&mut rxs) => if !ok { return },
        }
        let first = Instant::now();
        let coalesced = debounce(&mut rxs, quiet, max_delay, &shutdown).await;
        metrics.coalesced(coalesced);
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

/// After a first change: waits until no change for `quiet`, or `max_delay` after the first.
/// Returns how many further changes were merged.
pub async fn debounce(
    rxs: &mut [watch::Receiver<crate::sources::SourceState>],
    quiet: Duration,
    max_delay: Duration,
    shutdown: &CancellationToken,
) -> u64 {
    let deadline = tokio::time::Instant::now() + max_delay;
    let mut merged = 0;
    loop {
        for r in rxs.iter_mut() {
            r.borrow_and_update();
        }
        let until = std::cmp::min(tokio::time::Instant::now() + quiet, deadline);
        tokio::select! {
            _ = shutdown.cancelled() => return merged,
            _ = tokio::time::sleep_until(until) => return merged,
            ok = any_changed(rxs) => {
                if !ok { return merged; }
                merged += 1;
                if tokio::time::Instant::now() >= deadline { return merged; }
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
}
