//! The Kubernetes pod source: arouterd's job (voltha.md §3), as a watch instead of a 10-second
//! poll. One `kube_runtime::watcher` per namespace, with the configured label selector applied
//! by the API server; every pod event updates the published state at once.
//!
//! What a pod contributes (pure functions below, unit-tested on plain `Pod` objects):
//! - it is considered only if its name matches `name_regex` (when set);
//! - it is an **endpoint** when ready ([`is_ready`]), not being deleted, and it has an IP and
//!   the port ([`pod_port`]);
//! - with `group_by`, it belongs to the set named by that label's value, ready or not, so a group
//!   whose pods restart keeps its (empty) cluster; the default set `""` holds every endpoint.
//!
//! Resets: each watcher starts with `Init`, `InitApply`…, `InitDone` (the initial list, a
//! relist after `410 Gone`, or a restart after an error). The pods of a relist are buffered and
//! replace the namespace's pods only at `InitDone`, so nothing is lost or flaps in between. A
//! watch error (API server unreachable, refused, …) is reported (`Publisher::fail`: log, metric,
//! `/readyz`), the last good state stays served, and the namespace's watcher is restarted after
//! the source's [`Backoff`] (the one every source uses, from its `backoff` settings; back to
//! `initial` once a list completes), which ends in a full relist. kube-runtime's watcher runs
//! without a backoff of its own (an error ends it and this module decides when to start
//! again), and the client's own retry of `429`/`503`/`504` is off. A `410 Gone` is routine:
//! the watcher relists at once; it is counted (kind `gone`) and logged at info level, and the
//! source's health stays `ok`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::watcher::{self, Event};
use regex::Regex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Backoff, Publisher};
use crate::config::{KubernetesSource, Parsed, PodPort, Readiness};
use crate::model::{Backend, SourceData, DEFAULT_SET};

/// A source's configuration, resolved (regex compiled, client chosen).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) namespaces: Vec<String>,
    pub(crate) label_selector: Option<String>,
    pub(crate) name_regex: Option<Regex>,
    pub(crate) readiness: Readiness,
    pub(crate) port: PodPort,
    pub(crate) group_by: Option<String>,
    pub(crate) client: ClientFrom,
}

/// Where the Kubernetes client's configuration comes from.
#[derive(Debug, Clone)]
pub(crate) enum ClientFrom {
    /// `KUBECONFIG` or `~/.kube/config` if there is one, else the in-cluster service account
    /// (`kube::Config::infer`).
    Infer,
    /// A URL, no credentials (`kubectl proxy`, tests).
    ApiServer(axum::http::Uri),
    Kubeconfig(PathBuf),
}

impl Settings {
    pub(crate) fn resolve(k: &KubernetesSource) -> Settings {
        // Both parsed when the configuration was read (validation refused it otherwise).
        let name_regex = k.name_regex.as_ref().and_then(Parsed::value).cloned();
        let client = match (k.api_server.as_ref().and_then(Parsed::value), &k.kubeconfig) {
            (Some(u), _) => ClientFrom::ApiServer(u.clone()),
            (None, Some(p)) => ClientFrom::Kubeconfig(p.clone()),
            (None, None) => ClientFrom::Infer,
        };
        Settings {
            namespaces: k.namespaces.clone(),
            label_selector: k.label_selector.clone(),
            name_regex,
            readiness: k.readiness,
            port: k.port.clone(),
            group_by: k.group_by.clone(),
            client,
        }
    }

    /// Builds a client. Every failure is a message for the log and `/readyz`.
    ///
    /// kube's own retry of `429`, `503` and `504` answers (up to 15 tries, waits growing to
    /// minutes) is turned off: a refused request is this source's error at once (counted,
    /// logged, on `/readyz`), retried with the source's backoff.
    pub(crate) async fn client(&self) -> Result<kube::Client, String> {
        let mut config = match &self.client {
            ClientFrom::Infer => kube::Config::infer()
                .await
                .map_err(|e| format!("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster): {e}"))?,
            ClientFrom::ApiServer(uri) => kube::Config::new(uri.clone()),
            ClientFrom::Kubeconfig(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
            }
        };
        config.default_retry = false;
        kube::Client::try_from(config).map_err(|e| format!("cannot build a Kubernetes client: {e}"))
    }

    fn watcher_config(&self) -> watcher::Config {
        let c = watcher::Config::default();
        match &self.label_selector {
            Some(s) => c.labels(s),
            None => c,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pure logic: pod → entry, readiness, grouping.

/// Whether a pod is ready under `rule`.
/// - `AllConditions` (arouterd): phase `Running` and every condition's status `True` (a pod
///   without conditions passes, as in arouterd).
/// - `ReadyCondition`: the `Ready` condition's status is `True`.
pub(crate) fn is_ready(pod: &Pod, rule: Readiness) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    match rule {
        Readiness::AllConditions => {
            status.phase.as_deref() == Some("Running") && conditions.iter().all(|c| c.status == "True")
        }
        Readiness::ReadyCondition => conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"),
    }
}

/// The endpoint port: the configured number, or the first TCP container port with that name.
pub(crate) fn pod_port(pod: &Pod, port: &PodPort) -> Option<u16> {
    match port {
        PodPort::Number(n) => Some(*n),
        PodPort::Name(name) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.as_deref().unwrap_or_default())
            .find(|p| p.name.as_deref() == Some(name) && p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .and_then(|p| u16::try_from(p.container_port).ok())
            .filter(|p| *p > 0),
    }
}

/// The pod's IP, if it has a valid one.
pub(crate) fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// What one selected pod contributes to the source's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodEntry {
    /// The set the pod belongs to (the `group_by` label's value), if grouped.
    pub(crate) group: Option<String>,
    /// The pod's endpoint, when it is one.
    pub(crate) backend: Option<Backend>,
}

/// A pod's entry; `None` when the pod is not selected (no name, or the name regex fails).
/// The second value explains why a ready pod is not an endpoint (no IP, no such port), for
/// the log.
pub(crate) fn entry(pod: &Pod, s: &Settings) -> (Option<PodEntry>, Option<String>) {
    let Some(name) = pod.metadata.name.as_deref() else {
        return (None, None);
    };
    if let Some(re) = &s.name_regex {
        if !re.is_match(name) {
            return (None, None);
        }
    }
    let group = s.group_by.as_ref().and_then(|label| {
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(label))
            .filter(|v| !v.is_empty())
            .cloned()
    });
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let mut why = None;
    let backend = if is_ready(pod, s.readiness) && !terminating {
        match (pod_ip(pod), pod_port(pod, &s.port)) {
            (Some(ip), Some(port)) => Some(Backend {
                host: ip.to_string(),
                port: Some(port),
                id: Some(name.to_string()),
            }),
            (None, _) => {
                why = Some(format!("pod {name} is ready but has no valid pod IP"));
                None
            }
            (_, None) => {
                why = Some(format!("pod {name} is ready but has no container port {:?}", s.port));
                None
            }
        }
    } else {
        None
    };
    (Some(PodEntry { group, backend }), why)
}

/// The source's state from every selected pod: the default set `""` with every endpoint, and
/// one set per group (possibly empty). Sets are sorted and free of duplicate addresses.
pub(crate) fn build<'a>(entries: impl IntoIterator<Item = &'a PodEntry>) -> SourceData {
    let mut sets: BTreeMap<String, Vec<Backend>> = BTreeMap::from([(DEFAULT_SET.to_string(), Vec::new())]);
    for e in entries {
        if let Some(g) = &e.group {
            let set = sets.entry(g.clone()).or_default();
            set.extend(e.backend.clone());
        }
        if let Some(b) = &e.backend {
            sets.entry(DEFAULT_SET.to_string()).or_default().push(b.clone());
        }
    }
    for set in sets.values_mut() {
        set.sort();
        set.dedup_by(|a, b| a.host == b.host && a.port == b.port);
    }
    SourceData { sets }
}

// ---------------------------------------------------------------------------------------------
// The state machine over watcher events (pure, unit-tested).

/// One namespace watcher's news, its pods already reduced to entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Msg {
    /// A (re)list starts: buffer what follows.
    Init,
    InitApply(String, Option<PodEntry>),
    /// The (re)list is complete: it replaces the namespace's pods.
    InitDone,
    Apply(String, Option<PodEntry>),
    Delete(String),
    /// The watch failed: a partial relist is dropped; the last complete state stays.
    Error,
}

#[derive(Debug, Default)]
struct Namespace {
    pods: BTreeMap<String, PodEntry>,
    relist: Option<BTreeMap<String, PodEntry>>,
    synced: bool,
}

/// The pods of every namespace, and whether each has completed a list.
#[derive(Debug)]
pub(crate) struct Tracker {
    namespaces: Vec<Namespace>,
}

impl Tracker {
    pub(crate) fn new(namespaces: usize) -> Tracker {
        Tracker {
            namespaces: (0..namespaces).map(|_| Namespace::default()).collect(),
        }
    }

    /// Applies one message; returns the full state when it may be published (every namespace
    /// has completed a list, and the message could have changed something).
    pub(crate) fn on(&mut self, ns: usize, msg: Msg) -> Option<SourceData> {
        let n = self.namespaces.get_mut(ns)?;
        match msg {
            Msg::Init => {
                n.relist = Some(BTreeMap::new());
                return None;
            }
            Msg::InitApply(name, entry) => {
                // Outside a relist (never seen from kube-runtime) it is a plain apply.
                match (&mut n.relist, entry) {
                    (Some(buf), Some(e)) => {
                        buf.insert(name, e);
                        return None;
                    }
                    (Some(_), None) => return None,
                    (None, Some(e)) => {
                        n.pods.insert(name, e);
                    }
                    (None, None) => {
                        n.pods.remove(&name);
                    }
                }
            }
            Msg::InitDone => {
                n.pods = n.relist.take().unwrap_or_default();
                n.synced = true;
            }
            Msg::Apply(name, Some(e)) => {
                n.pods.insert(name, e);
            }
            Msg::Apply(name, None) | Msg::Delete(name) => {
                n.pods.remove(&name);
            }
            Msg::Error => {
                n.relist = None;
                return None;
            }
        }
        self.state()
    }

    /// The full state, once every namespace has completed a list.
    pub(crate) fn state(&self) -> Option<SourceData> {
        if !self.namespaces.iter().all(|n| n.synced) {
            return None;
        }
        Some(build(self.namespaces.iter().flat_map(|n| n.pods.values())))
    }
}

// ---------------------------------------------------------------------------------------------
// The running source.

/// A metrics `kind` and a message for a watcher error.
fn error_kind(e: &watcher::Error) -> &'static str {
    match e {
        watcher::Error::InitialListFailed(_) => "list",
        watcher::Error::WatchStartFailed(_) | watcher::Error::WatchFailed(_) | watcher::Error::WatchError(_) => "watch",
        watcher::Error::NoResourceVersion => "wrong_shape",
    }
}

/// A watch answered or ended with HTTP 410 (rather than an `ERROR` event with code 410).
fn http_gone(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) | watcher::Error::WatchFailed(kube::Error::Api(s))
            if s.code == 410
    )
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// What a namespace watcher reports to the source's loop.
enum Note {
    Msg(Msg),
    /// A `410 Gone`: routine, counted (kind `gone`) but not a failure; a relist follows.
    Gone,
    Failure {
        kind: &'static str,
        message: String,
    },
}

type Report = (usize, Note);

/// Watches one namespace until `shutdown`: forwards events as entries; after an error, waits
/// `backoff` and starts a fresh watcher (a full relist).
async fn watch_namespace(
    ns_index: usize,
    api: Api<Pod>,
    settings: Arc<Settings>,
    mut backoff: Backoff,
    tx: mpsc::Sender<Report>,
    shutdown: CancellationToken,
) {
    let ns = settings.namespaces.get(ns_index).cloned().unwrap_or_default();
    let mut last_gone: Option<Instant> = None;
    loop {
        let stream = watcher::watcher(api.clone(), settings.watcher_config());
        futures::pin_mut!(stream);
        // `None`: restart at once (a relist after an HTTP 410); else a failure, then a backoff.
        let failure = loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = stream.next() => next,
            };
            let msg = match next {
                None => break Some(("watch", format!("namespace {ns}: the watch stream ended"))),
                Some(Ok(Event::Init)) => {
                    debug!(namespace = %ns, "listing pods");
                    Msg::Init
                }
                Some(Ok(Event::InitApply(pod))) => Msg::InitApply(pod_name(&pod), logged_entry(&pod, &settings)),
                Some(Ok(Event::InitDone)) => {
                    backoff.reset();
                    Msg::InitDone
                }
                Some(Ok(Event::Apply(pod))) => Msg::Apply(pod_name(&pod), logged_entry(&pod, &settings)),
                Some(Ok(Event::Delete(pod))) => Msg::Delete(pod_name(&pod)),
                Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                    // The resource version expired: the watcher relists by itself (Init…InitDone).
                    info!(namespace = %ns, "pod watch expired (410 Gone); relisting");
                    if tx.send((ns_index, Note::Gone)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Err(e)) if http_gone(&e) => {
                    // The same, answered as an HTTP 410: kube-runtime would retry the watch from
                    // the expired version, so start a fresh watcher (a relist) now.
                    info!(namespace = %ns, "pod watch refused (HTTP 410 Gone); relisting");
                    if tx.send((ns_index, Note::Gone)).await.is_err() {
                        return;
                    }
                    break None;
                }
                Some(Err(e)) => break Some((error_kind(&e), format!("namespace {ns}: {e}"))),
            };
            if tx.send((ns_index, Note::Msg(msg))).await.is_err() {
                return;
            }
        };
        let Some((kind, message)) = failure else {
            // A relist at once, unless the previous HTTP 410 was moments ago (a server that
            // refuses every watch must not make us list in a tight loop).
            if last_gone.is_some_and(|t: Instant| t.elapsed() < Duration::from_secs(1)) {
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            last_gone = Some(Instant::now());
            continue;
        };
        if tx.send((ns_index, Note::Failure { kind, message })).await.is_err() {
            return;
        }
        let delay = backoff.next_delay();
        debug!(namespace = %ns, ?delay, "restarting the pod watch after a backoff");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn logged_entry(pod: &Pod, s: &Settings) -> Option<PodEntry> {
    let (e, why) = entry(pod, s);
    if let Some(why) = why {
        warn!("{why}");
    }
    e
}

/// Runs the source until `shutdown`. `backoff` paces the retries: of the client's
/// configuration, and (a copy each) of every namespace's watch.
pub(crate) async fn run(p: Publisher, settings: Settings, backoff: Backoff, shutdown: CancellationToken) {
    let settings = Arc::new(settings);
    let mut client_backoff = backoff.clone();
    let client = loop {
        match settings.client().await {
            Ok(c) => break c,
            Err(e) => {
                p.fail("client", e);
                let delay = client_backoff.next_delay();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    let (tx, mut rx) = mpsc::channel::<Report>(1024);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ns) in settings.namespaces.iter().enumerate() {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        tasks.spawn(watch_namespace(
            i,
            api,
            settings.clone(),
            backoff.clone(),
            tx.clone(),
            shutdown.clone(),
        ));
    }
    drop(tx);
    let mut tracker = Tracker::new(settings.namespaces.len());
    let mut last: Option<SourceData> = None;
    let mut failing = false;
    loop {
        let report = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = rx.recv() => r,
        };
        let Some((ns, report)) = report else { break };
        let data = match report {
            Note::Msg(msg) => tracker.on(ns, msg),
            Note::Gone => {
                p.count_error("gone");
                None
            }
            Note::Failure { kind, message } => {
                tracker.on(ns, Msg::Error);
                failing = true;
                p.fail(kind, message);
                None
            }
        };
        if let Some(data) = data {
            if failing || last.as_ref() != Some(&data) {
                info!(
                    endpoints = data.set(DEFAULT_SET).len(),
                    groups = data.sets.len().saturating_sub(1),
                    "pods changed"
                );
                failing = false;
                last = Some(data.clone());
                p.deliver(data);
            }
        }
    }
    tasks.abort_all();
}

/// Lists the pods once (for `render`).
pub(crate) async fn read_once(settings: &Settings) -> Result<SourceData, String> {
    let client = settings.client().await?;
    let mut entries = Vec::new();
    for ns in &settings.namespaces {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let mut lp = ListParams::default();
        if let Some(s) = &settings.label_selector {
            lp = lp.labels(s);
        }
        let list = api
            .list(&lp)
            .await
            .map_err(|e| format!("cannot list pods in namespace {ns}: {e}"))?;
        entries.extend(list.items.iter().filter_map(|p| entry(p, settings).0));
    }
    Ok(build(&entries))
}

#[cfg(test)]
mod tests;
