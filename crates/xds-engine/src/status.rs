//! What the admin API shows about connected streams: one [`ClientStatus`] per stream, kept in
//! a [`ClientTable`] while the stream lives, plus a short log of recent NACKs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use super::cache::Snapshot;
use super::resources::ResourceType;
use super::stream::NameSet;

/// How many NACKs the table remembers across all streams.
const RECENT_NACKS: usize = 100;
/// How many snapshot publications the push log remembers.
pub const RECENT_PUSHES: usize = 50;

#[derive(Debug, Clone, PartialEq, Serialize)]
/// A response a client rejected.
pub struct Nack {
    /// The client's `node.id`.
    pub node_id: String,
    /// The client's `node.cluster`.
    pub node_cluster: String,
    #[serde(rename = "type")]
    /// The short type name (`cds`, `eds`, `lds`, `rds`).
    pub ty: &'static str,
    /// The version that was rejected.
    pub version: String,
    /// The nonce of the rejected response.
    pub nonce: String,
    /// The client's error message (escaped and length-capped when logged).
    pub error: String,
    #[serde(serialize_with = "ser_time")]
    /// When the NACK arrived.
    pub at: SystemTime,
}

#[derive(Debug, Clone, Default, Serialize)]
/// One stream's state for one type.
pub struct TypeStatus {
    /// The client asked for this type.
    pub subscribed: bool,
    /// The subscription is a wildcard (every resource).
    pub wildcard: bool,
    /// Resource names subscribed to (not counting a wildcard).
    pub names: usize,
    /// The subscribed names themselves: the stream's own set, shared (not a copy), read by CSDS.
    #[serde(skip)]
    pub name_set: NameSet,
    /// The version last sent.
    pub last_sent_version: Option<String>,
    /// The nonce last sent.
    pub last_sent_nonce: Option<String>,
    #[serde(serialize_with = "ser_opt_time")]
    /// When a response was last sent.
    pub last_sent_at: Option<SystemTime>,
    /// The version last acknowledged.
    pub last_acked_version: Option<String>,
    #[serde(serialize_with = "ser_opt_time")]
    /// When the last ACK arrived.
    pub last_ack_at: Option<SystemTime>,
    /// The last NACK, if any.
    pub last_nack: Option<Nack>,
    /// Responses sent.
    pub responses: u64,
    /// ACKs received.
    pub acks: u64,
    /// NACKs received.
    pub nacks: u64,
}

#[derive(Debug, Clone, Serialize)]
/// One stream's status, as the status page and CSDS show it.
pub struct ClientStatus {
    /// The stream's id in the client table.
    pub stream_id: u64,
    /// `sotw` or `delta`.
    pub api: &'static str,
    /// `ads`, or the type of a per-type service.
    pub service: &'static str,
    /// The client's `node.id` (empty until the first request).
    pub node_id: String,
    /// The client's `node.cluster`.
    pub node_cluster: String,
    /// The client's `node.user_agent_name` (`envoy`, `gRPC Go`, …), cut to 128 bytes.
    pub user_agent_name: String,
    /// The node group it is served from, once known.
    pub group: Option<String>,
    #[serde(serialize_with = "ser_time")]
    /// When the stream opened.
    pub connected_at: SystemTime,
    /// Its state per type, by short type name.
    pub types: std::collections::BTreeMap<&'static str, TypeStatus>,
}

/// How one stream (or node) stands with one resource type, as `voltha-xds status` and the status
/// page show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum SyncState {
    /// The client ACKed the version the snapshot holds for its group now.
    #[serde(rename = "SYNCED")]
    Synced,
    /// A response is in flight (sent, not yet answered), or the client ACKed an older version
    /// and the newer one has not been sent yet.
    #[serde(rename = "STALE")]
    Stale,
    /// The client rejected the last response sent for this type.
    #[serde(rename = "NACKED")]
    Nacked,
    /// Nothing has been sent for this type (not subscribed, or no snapshot yet).
    #[serde(rename = "NOT SENT")]
    NotSent,
}

impl SyncState {
    /// The state's name, as the status page shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "SYNCED",
            SyncState::Stale => "STALE",
            SyncState::Nacked => "NACKED",
            SyncState::NotSent => "NOT SENT",
        }
    }
}

impl std::fmt::Display for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TypeStatus {
    /// Whether the client rejected the last response sent for this type.
    pub fn last_nacked(&self) -> bool {
        matches!((&self.last_nack, &self.last_sent_nonce), (Some(n), Some(s)) if &n.nonce == s)
    }

    /// Whether a response is sent and not yet ACKed or NACKed (a stream has at most one per type).
    pub fn in_flight(&self) -> bool {
        self.responses > self.acks + self.nacks
    }

    /// The state against `current`, the version the snapshot holds now for this client's group.
    pub fn sync_state(&self, current: Option<&str>) -> SyncState {
        if self.last_nacked() {
            return SyncState::Nacked;
        }
        if self.in_flight() {
            return SyncState::Stale;
        }
        match &self.last_acked_version {
            None if self.responses == 0 => SyncState::NotSent,
            None => SyncState::Stale,
            Some(a) if Some(a.as_str()) == current => SyncState::Synced,
            Some(_) => SyncState::Stale,
        }
    }
}

impl ClientStatus {
    /// The status of a stream that just opened.
    pub fn new(stream_id: u64, api: &'static str, service: &'static str) -> Self {
        ClientStatus {
            stream_id,
            api,
            service,
            node_id: String::new(),
            node_cluster: String::new(),
            user_agent_name: String::new(),
            group: None,
            connected_at: SystemTime::now(),
            types: Default::default(),
        }
    }

    /// The state of type `ty`.
    pub fn ty(&mut self, ty: ResourceType) -> &mut TypeStatus {
        self.types.entry(ty.short()).or_default()
    }
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    s.serialize_f64(secs)
}

fn ser_opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
}

/// Every live stream's status. A stream registers on start; its [`Registration`] removes it when
/// dropped, whatever way the stream ends.
#[derive(Default)]
pub struct ClientTable {
    next_id: AtomicU64,
    streams: DashMap<u64, Arc<Mutex<ClientStatus>>>,
    nacks: Mutex<VecDeque<Nack>>,
}

/// A stream's place in the table; dropping it removes the stream.
pub struct Registration {
    table: Arc<ClientTable>,
    /// The stream's id.
    pub id: u64,
    /// The stream's status.
    pub status: Arc<Mutex<ClientStatus>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.streams.remove(&self.id);
    }
}

impl ClientTable {
    /// Registers a new stream.
    pub fn register(self: &Arc<Self>, api: &'static str, service: &'static str) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let status = Arc::new(Mutex::new(ClientStatus::new(id, api, service)));
        self.streams.insert(id, status.clone());
        Registration {
            table: self.clone(),
            id,
            status,
        }
    }

    /// Open streams.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// No stream is open.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The group a stream of node `node_id` in `node_cluster` is served from, if any (for logs).
    pub fn group_of(&self, node_id: &str, node_cluster: &str) -> Option<String> {
        self.streams.iter().find_map(|e| {
            let st = e.value().lock();
            (st.node_id == node_id && st.node_cluster == node_cluster)
                .then(|| st.group.clone())
                .flatten()
        })
    }

    /// A copy of every stream's status, ordered by stream id.
    pub fn snapshot(&self) -> Vec<ClientStatus> {
        let mut v: Vec<ClientStatus> = self.streams.iter().map(|e| e.value().lock().clone()).collect();
        v.sort_by_key(|c| c.stream_id);
        v
    }

    /// Keeps `nack` among the recent NACKs (bounded).
    pub fn record_nack(&self, nack: Nack) {
        let mut q = self.nacks.lock();
        if q.len() == RECENT_NACKS {
            q.pop_front();
        }
        q.push_back(nack);
    }

    /// The recent NACKs, oldest first.
    pub fn recent_nacks(&self) -> Vec<Nack> {
        self.nacks.lock().iter().cloned().collect()
    }
}

/// One snapshot publication for one node group, as the push log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Push {
    /// When the push log saw the publication.
    #[serde(serialize_with = "ser_time")]
    pub at: SystemTime,
    /// The cache's publication counter.
    pub generation: u64,
    /// The node group.
    pub group: String,
    /// The types whose version changed (every type for a new group, none for a removed one).
    pub changed: Vec<&'static str>,
    /// The group is gone from the snapshot.
    pub removed: bool,
    /// The group's version of each type after the publication (empty for a removed group).
    pub versions: BTreeMap<&'static str, String>,
    /// The group's resource count of each type after the publication.
    pub resources: BTreeMap<&'static str, usize>,
}

/// A short log of snapshot publications, by group. It follows the cache's `watch` channel, so
/// publications that follow each other faster than the log task runs are seen as one (the
/// generation then jumps by more than one).
#[derive(Default)]
pub struct PushLog {
    entries: Mutex<VecDeque<Push>>,
}

impl PushLog {
    /// Records what changed from `prev` to `next`, one entry per group that changed.
    pub fn record(&self, prev: Option<&Snapshot>, next: &Snapshot, at: SystemTime) {
        let mut out = Vec::new();
        for (name, g) in &next.groups {
            let old = prev.and_then(|p| p.groups.get(name));
            if old.is_some_and(|o| Arc::ptr_eq(o, g)) {
                continue;
            }
            let changed: Vec<&'static str> = ResourceType::ALL
                .into_iter()
                .filter(|t| old.is_none_or(|o| o.get(*t).version != g.get(*t).version))
                .map(|t| t.short())
                .collect();
            if changed.is_empty() && old.is_some() {
                continue;
            }
            out.push(Push {
                at,
                generation: next.generation,
                group: name.clone(),
                changed,
                removed: false,
                versions: ResourceType::ALL
                    .into_iter()
                    .map(|t| (t.short(), g.get(t).version.clone()))
                    .collect(),
                resources: ResourceType::ALL
                    .into_iter()
                    .map(|t| (t.short(), g.get(t).resources.len()))
                    .collect(),
            });
        }
        for name in prev.iter().flat_map(|p| p.groups.keys()) {
            if !next.groups.contains_key(name) {
                out.push(Push {
                    at,
                    generation: next.generation,
                    group: name.clone(),
                    changed: Vec::new(),
                    removed: true,
                    versions: BTreeMap::new(),
                    resources: BTreeMap::new(),
                });
            }
        }
        let mut q = self.entries.lock();
        for p in out {
            if q.len() == RECENT_PUSHES {
                q.pop_front();
            }
            q.push_back(p);
        }
    }

    /// The remembered publications, oldest first.
    pub fn recent(&self) -> Vec<Push> {
        self.entries.lock().iter().cloned().collect()
    }

    /// Records every snapshot seen on `rx` until its sender is gone.
    pub async fn follow(self: Arc<Self>, mut rx: watch::Receiver<Option<Arc<Snapshot>>>) {
        let mut prev: Option<Arc<Snapshot>> = None;
        loop {
            let cur = rx.borrow_and_update().clone();
            if let Some(next) = &cur {
                if !prev.as_ref().is_some_and(|p| Arc::ptr_eq(p, next)) {
                    self.record(prev.as_deref(), next, SystemTime::now());
                }
                prev = cur;
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_is_removed_when_dropped() {
        let t = Arc::new(ClientTable::default());
        let a = t.register("sotw", "ads");
        let b = t.register("delta", "ads");
        assert_eq!(t.len(), 2);
        assert_ne!(a.id, b.id);
        drop(a);
        assert_eq!(t.snapshot().iter().map(|c| c.stream_id).collect::<Vec<_>>(), vec![b.id]);
        drop(b);
        assert!(t.is_empty());
    }

    #[test]
    fn recent_nacks_are_bounded() {
        let t = ClientTable::default();
        for i in 0..(RECENT_NACKS + 5) {
            t.record_nack(Nack {
                node_id: format!("n{i}"),
                node_cluster: String::new(),
                ty: "cds",
                version: String::new(),
                nonce: String::new(),
                error: String::new(),
                at: SystemTime::now(),
            });
        }
        let n = t.recent_nacks();
        assert_eq!(n.len(), RECENT_NACKS);
        assert_eq!(n[0].node_id, "n5");
    }
}
