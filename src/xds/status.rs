//! What the admin API shows about connected streams: one [`ClientStatus`] per stream, kept in
//! a [`ClientTable`] while the stream lives, plus a short log of recent NACKs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;
use parking_lot::Mutex;
use serde::Serialize;

use super::resources::ResourceType;

/// How many NACKs the table remembers across all streams.
const RECENT_NACKS: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Nack {
    pub node_id: String,
    pub node_cluster: String,
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// The version that was rejected.
    pub version: String,
    pub nonce: String,
    pub error: String,
    #[serde(serialize_with = "ser_time")]
    pub at: SystemTime,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    pub subscribed: bool,
    pub wildcard: bool,
    pub names: usize,
    pub last_sent_version: Option<String>,
    pub last_sent_nonce: Option<String>,
    #[serde(serialize_with = "ser_opt_time")]
    pub last_sent_at: Option<SystemTime>,
    pub last_acked_version: Option<String>,
    #[serde(serialize_with = "ser_opt_time")]
    pub last_ack_at: Option<SystemTime>,
    pub last_nack: Option<Nack>,
    pub responses: u64,
    pub acks: u64,
    pub nacks: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientStatus {
    pub stream_id: u64,
    pub api: &'static str,
    pub service: &'static str,
    pub node_id: String,
    pub node_cluster: String,
    pub group: Option<String>,
    #[serde(serialize_with = "ser_time")]
    pub connected_at: SystemTime,
    pub types: std::collections::BTreeMap<&'static str, TypeStatus>,
}

impl ClientStatus {
    pub fn new(stream_id: u64, api: &'static str, service: &'static str) -> Self {
        ClientStatus {
            stream_id,
            api,
            service,
            node_id: String::new(),
            node_cluster: String::new(),
            group: None,
            connected_at: SystemTime::now(),
            types: Default::default(),
        }
    }

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

pub struct Registration {
    table: Arc<ClientTable>,
    pub id: u64,
    pub status: Arc<Mutex<ClientStatus>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.streams.remove(&self.id);
    }
}

impl ClientTable {
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

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// A copy of every stream's status, ordered by stream id.
    pub fn snapshot(&self) -> Vec<ClientStatus> {
        let mut v: Vec<ClientStatus> = self.streams.iter().map(|e| e.value().lock().clone()).collect();
        v.sort_by_key(|c| c.stream_id);
        v
    }

    pub fn record_nack(&self, nack: Nack) {
        let mut q = self.nacks.lock();
        if q.len() == RECENT_NACKS {
            q.pop_front();
        }
        q.push_back(nack);
    }

    pub fn recent_nacks(&self) -> Vec<Nack> {
        self.nacks.lock().iter().cloned().collect()
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
