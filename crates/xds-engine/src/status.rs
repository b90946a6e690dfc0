//! What the admin API shows about connected streams: one [`ClientStatus`] per stream, kept in
//! a [`ClientTable`] while the stream lives, plus a short log of recent NACKs.
//!
//! A stream's task is the only writer of its status: once per turn that has events it folds
//! them into the record ([`ClientStatus::apply`], through [`Registration::update`]). The table
//! holds each record as an immutable `Arc<ClientStatus>` behind a lock of its own; readers (the
//! status page, CSDS) take the `Arc` ([`ClientTable::snapshot`]), so a record taken never
//! changes under them. The stream changes the record in place when no reader holds it and
//! copies it only when one does (`Arc::make_mut`): a turn costs no copy at rest (each copy
//! was a dozen allocations, and there are two turns per stream per change). The lock is held
//! for the fold alone, or for taking the `Arc`; nothing else of a stream is locked while it
//! runs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use super::cache::Snapshot;
use super::names::NameSet;
use super::resources::ResourceType;
use super::stream::StreamEvent;

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
    #[serde(rename = "type", serialize_with = "ser_type")]
    /// The type (shown by its short name: `cds`, `eds`, `lds`, `rds`).
    pub ty: ResourceType,
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
    pub(crate) fn ty(&mut self, ty: ResourceType) -> &mut TypeStatus {
        self.types.entry(ty.short()).or_default()
    }

    /// Folds what the stream's state machine reported, at `at`, into the status. Returns
    /// whether anything shown changed (a repeated subscription changes nothing).
    pub fn apply(&mut self, event: &StreamEvent, at: SystemTime) -> bool {
        match event {
            StreamEvent::Node {
                id,
                cluster,
                user_agent_name,
            } => {
                self.node_id.clone_from(id);
                self.node_cluster.clone_from(cluster);
                self.user_agent_name.clone_from(user_agent_name);
            }
            StreamEvent::Group { name } => self.group = Some(name.clone()),
            StreamEvent::Subscribed { ty, wildcard, names } => {
                let t = self.ty(*ty);
                if t.subscribed && t.wildcard == *wildcard && Arc::ptr_eq(&t.name_set, names) {
                    return false;
                }
                t.subscribed = true;
                t.wildcard = *wildcard;
                t.names = names.len();
                t.name_set = names.clone();
            }
            StreamEvent::Sent { ty, version, nonce, .. } => {
                let t = self.ty(*ty);
                t.last_sent_version = Some(version.clone());
                t.last_sent_nonce = Some(nonce.clone());
                t.last_sent_at = Some(at);
                t.responses += 1;
            }
            StreamEvent::Acked { ty, version, .. } => {
                let t = self.ty(*ty);
                t.last_acked_version = Some(version.clone());
                t.last_ack_at = Some(at);
                t.acks += 1;
            }
            StreamEvent::Nacked {
                ty,
                version,
                nonce,
                error,
            } => {
                let nack = Nack {
                    node_id: self.node_id.clone(),
                    node_cluster: self.node_cluster.clone(),
                    ty: *ty,
                    version: version.clone(),
                    nonce: nonce.clone(),
                    error: error.clone(),
                    at,
                };
                let t = self.ty(*ty);
                t.last_nack = Some(nack);
                t.nacks += 1;
            }
            StreamEvent::Held { ty, version } => {
                let t = self.ty(*ty);
                t.last_acked_version = Some(version.clone());
                t.last_ack_at = Some(at);
            }
            StreamEvent::Stale { .. } | StreamEvent::UnknownType { .. } => return false,
        }
        true
    }
}

fn ser_type<S: serde::Serializer>(t: &ResourceType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t.short())
}

/// Writes a time as seconds since the Unix epoch (a float; 0 before 1970), the shape every
/// time in the status records has. For `#[serde(serialize_with = "...")]`.
pub fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    s.serialize_f64(secs)
}

/// [`ser_time`] for an optional time: `null` when there is none.
pub fn ser_opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
}

/// Every live stream's status record, as its last turn left it. A stream registers on start;
/// its [`Registration`] removes it when dropped, whatever way the stream ends.
#[derive(Default)]
pub struct ClientTable {
    next_id: AtomicU64,
    streams: DashMap<u64, Record>,
    nacks: Mutex<VecDeque<Nack>>,
}

/// A stream's record, shared by the stream and the table: readers clone the inner `Arc`.
type Record = Arc<Mutex<Arc<ClientStatus>>>;

/// A stream's place in the table and its record; dropping it removes the stream.
pub struct Registration {
    table: Arc<ClientTable>,
    record: Record,
    /// The stream's id.
    pub id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.streams.remove(&self.id);
    }
}

impl Registration {
    /// Changes the stream's record (a turn's events) under its lock: in place, or in a copy if
    /// a reader holds the record as it was. A reader takes it before the change or after, never
    /// halfway. `f` must not touch the table (the lock is not re-entrant).
    pub fn update<R>(&self, f: impl FnOnce(&mut ClientStatus) -> R) -> R {
        f(Arc::make_mut(&mut self.record.lock()))
    }

    /// Reads the stream's record under its lock. `f` must not touch the table.
    pub fn read<R>(&self, f: impl FnOnce(&ClientStatus) -> R) -> R {
        f(&self.record.lock())
    }
}

impl ClientTable {
    /// Registers a new stream; returns its place, through which the stream changes its record.
    pub fn register(self: &Arc<Self>, api: &'static str, service: &'static str) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let record = Arc::new(Mutex::new(Arc::new(ClientStatus::new(id, api, service))));
        self.streams.insert(id, record.clone());
        Registration {
            table: self.clone(),
            record,
            id,
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

    /// Every stream's record, ordered by stream id: as the stream's last turn left it (never in
    /// the middle of one), and unchanged while it is held (the stream's next change copies it).
    pub fn snapshot(&self) -> Vec<Arc<ClientStatus>> {
        // The records first, then each one's lock: no stream's lock is taken under the map's.
        let records: Vec<Record> = self.streams.iter().map(|e| e.value().clone()).collect();
        let mut v: Vec<Arc<ClientStatus>> = records.iter().map(|r| r.lock().clone()).collect();
        v.sort_by_key(|c| c.stream_id);
        v
    }

    /// Keeps `nack` among the recent NACKs (bounded).
    pub(crate) fn record_nack(&self, nack: Nack) {
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
    fn events_fold_into_the_record_and_a_repeated_subscription_changes_nothing() {
        use crate::names::NameSets;
        const EDS: ResourceType = ResourceType::Endpoint;
        let mut st = ClientStatus::new(1, "sotw", "ads");
        let at = SystemTime::now();
        let node = StreamEvent::Node {
            id: "envoy-1".into(),
            cluster: "g".into(),
            user_agent_name: "envoy".into(),
        };
        assert!(st.apply(&node, at));
        let names = NameSets::default().share(["a", "b"].into_iter().map(Arc::from).collect());
        let sub = StreamEvent::Subscribed {
            ty: EDS,
            wildcard: false,
            names: names.clone(),
        };
        assert!(st.apply(&sub, at));
        assert!(!st.apply(&sub, at), "the same subscription again changes nothing");
        let sent = StreamEvent::Sent {
            ty: EDS,
            version: "v1".into(),
            nonce: "1".into(),
            resources: 2,
            removed: 0,
        };
        assert!(st.apply(&sent, at));
        assert_eq!(st.types["eds"].sync_state(Some("v1")), SyncState::Stale, "in flight");
        let nack = StreamEvent::Nacked {
            ty: EDS,
            version: "v1".into(),
            nonce: "1".into(),
            error: "bad".into(),
        };
        assert!(st.apply(&nack, at));
        assert!(!st.apply(&StreamEvent::Stale { ty: EDS }, at));
        let t = &st.types["eds"];
        assert_eq!((t.responses, t.acks, t.nacks, t.names), (1, 0, 1, 2));
        assert!(Arc::ptr_eq(&t.name_set, &names), "the stream's set, shared");
        let n = t.last_nack.as_ref().expect("nack recorded");
        assert_eq!(
            (n.node_id.as_str(), n.node_cluster.as_str(), n.ty, n.error.as_str()),
            ("envoy-1", "g", EDS, "bad")
        );
        assert_eq!(t.sync_state(Some("v1")), SyncState::Nacked);
        let json = serde_json::to_value(n).expect("json");
        assert_eq!(json["type"], "eds", "shown by its short name");
    }

    #[test]
    fn readers_see_the_streams_last_turn_and_a_record_taken_does_not_change_under_them() {
        let t = Arc::new(ClientTable::default());
        let reg = t.register("sotw", "ads");
        assert_eq!(t.snapshot()[0].node_id, "", "a new stream's record");
        reg.update(|st| st.node_id = "envoy-1".into());
        let seen = t.snapshot();
        assert_eq!(seen[0].node_id, "envoy-1", "readers see the turn");
        assert!(
            Arc::ptr_eq(&seen[0], &t.snapshot()[0]),
            "readers share the record, not copies"
        );
        reg.update(|st| st.node_id = "envoy-2".into());
        assert_eq!(seen[0].node_id, "envoy-1", "a record taken is immutable");
        let now = t.snapshot();
        assert_eq!(now[0].node_id, "envoy-2");
        // With no reader holding it, a turn changes the record where it is: no copy.
        let at = Arc::as_ptr(&now[0]) as usize;
        drop((seen, now));
        reg.update(|st| st.node_id = "envoy-3".into());
        let after = t.snapshot();
        assert_eq!(after[0].node_id, "envoy-3");
        assert_eq!(Arc::as_ptr(&after[0]) as usize, at, "changed in place");
        assert_eq!(reg.read(|st| st.node_id.clone()), "envoy-3");
        drop(reg);
        assert!(t.is_empty());
    }

    #[test]
    fn recent_nacks_are_bounded() {
        let t = ClientTable::default();
        for i in 0..(RECENT_NACKS + 5) {
            t.record_nack(Nack {
                node_id: format!("n{i}"),
                node_cluster: String::new(),
                ty: ResourceType::Cluster,
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
