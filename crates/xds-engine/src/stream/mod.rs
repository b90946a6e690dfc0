//! Per-stream protocol logic, as plain state machines with no I/O.
//!
//! The server feeds a stream's machine three kinds of input: a request arrived, the snapshot
//! changed, and asks it for the responses it wants to send now (`poll`). Everything the xDS
//! protocol says about nonces, versions, ACK/NACK, subscriptions and ordering lives here, so
//! each corner case is an ordinary unit test (see `tests.rs`).
//!
//! Rules common to both variants:
//! - `node` must be on the first request of a stream; later copies are ignored. The node's
//!   `cluster` picks the node group (or the default group).
//! - Nonces are per type. At most one response per type is unacknowledged at a time: a newer
//!   snapshot waits for the ACK or NACK of the previous response and then goes out as one
//!   response (natural coalescing, bounded memory per stream).
//! - A NACKed version is never sent again to that stream; the next response for that type
//!   goes out when the content changes (or the subscription does).
//! - Within one poll, responses go out in the order CDS, EDS, LDS, RDS.

mod delta;
mod sotw;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use parking_lot::Mutex;

pub use delta::DeltaStream;
pub use sotw::SotwStream;

use super::cache::{GroupSnapshot, Snapshot};
use super::resources::ResourceType;
use super::status::{ClientStatus, Nack};

/// Which service a stream came in on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Aggregated (ADS): every type on one stream.
    Ads,
    /// A per-type service (CDS, EDS, LDS or RDS).
    Single(ResourceType),
}

impl Scope {
    /// `ads`, or the short type name.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Ads => "ads",
            Scope::Single(t) => t.short(),
        }
    }
}

/// Per-stream limits.
#[derive(Copy, Clone, Debug)]
pub struct Limits {
    /// The most resource names one stream may subscribe to, per type.
    pub max_names: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_names: 100_000 }
    }
}

/// A request the stream cannot go on from: the stream ends with this error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StreamError {
    #[error("the first request on a stream must carry `node`")]
    /// The first request had no node.
    MissingNode,
    #[error("the request has no type_url (ADS needs one on every request)")]
    /// A request had no type URL.
    MissingTypeUrl,
    #[error("this service serves {expected}, not {got}")]
    /// A per-type service was asked for another type.
    WrongType {
        /// The type the service serves.
        expected: &'static str,
        /// The type URL asked for.
        got: String,
    },
    #[error("{ty} subscription of {count} names exceeds the limit of {limit}")]
    /// A subscription named more resources than [`Limits::max_names`].
    TooManyNames {
        /// The short type name.
        ty: &'static str,
        /// Names asked for.
        count: usize,
        /// The limit.
        limit: usize,
    },
    #[error("{ty} initial_resource_versions of {count} entries exceeds the limit of {limit}")]
    /// A Delta request's `initial_resource_versions` exceeded [`Limits::max_names`].
    TooManyInitialVersions {
        /// The short type name.
        ty: &'static str,
        /// Entries sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
}

/// What happened on a stream, for metrics and logs (the server drains these after each input).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A response was sent.
    Sent {
        /// Its type.
        ty: ResourceType,
        /// Its version.
        version: String,
        /// Resources in it.
        resources: usize,
        /// Names removed by it (Delta).
        removed: usize,
    },
    /// A response was acknowledged.
    Acked {
        /// Its type.
        ty: ResourceType,
        /// Its version.
        version: String,
        /// The time from sending to the ACK.
        after: std::time::Duration,
    },
    /// A response was rejected.
    Nacked(Box<Nack>),
    /// A request whose nonce is not the latest one sent for its type (ignored).
    Stale {
        /// Its type.
        ty: ResourceType,
    },
    /// A request for a type this server does not serve (answered with an empty response once).
    UnknownType {
        /// The type URL asked for.
        type_url: String,
    },
}

/// A response sent and not yet acknowledged.
#[derive(Debug, Clone)]
struct Pending {
    nonce: String,
    version: String,
    sent_at: Instant,
}

/// The resolution of a request's type URL.
enum TypeCheck {
    Known(ResourceType),
    Unknown(String),
}

/// State common to SotW and Delta streams.
struct Core {
    scope: Scope,
    limits: Limits,
    node: Option<(String, String)>,
    snapshot: Option<Arc<Snapshot>>,
    group: Option<Arc<GroupSnapshot>>,
    nonce: u64,
    status: Arc<Mutex<ClientStatus>>,
    events: Vec<StreamEvent>,
}

impl Core {
    fn new(scope: Scope, limits: Limits, status: Arc<Mutex<ClientStatus>>) -> Self {
        Core {
            scope,
            limits,
            node: None,
            snapshot: None,
            group: None,
            nonce: 0,
            status,
            events: Vec::new(),
        }
    }

    /// Takes `node` from the first request; later requests may omit it.
    fn accept_node(&mut self, node: Option<&Node>) -> Result<(), StreamError> {
        if self.node.is_some() {
            return Ok(());
        }
        let node = node.ok_or(StreamError::MissingNode)?;
        self.node = Some((node.id.clone(), node.cluster.clone()));
        {
            let mut st = self.status.lock();
            st.node_id = node.id.clone();
            st.node_cluster = node.cluster.clone();
        }
        self.regroup();
        Ok(())
    }

    fn check_type(&self, type_url: &str) -> Result<TypeCheck, StreamError> {
        match self.scope {
            Scope::Ads => {
                if type_url.is_empty() {
                    return Err(StreamError::MissingTypeUrl);
                }
                Ok(match ResourceType::from_type_url(type_url) {
                    Some(t) => TypeCheck::Known(t),
                    None => TypeCheck::Unknown(type_url.to_string()),
                })
            }
            Scope::Single(t) => {
                if type_url.is_empty() || type_url == t.type_url() {
                    Ok(TypeCheck::Known(t))
                } else {
                    Err(StreamError::WrongType {
                        expected: t.type_url(),
                        got: type_url.to_string(),
                    })
                }
            }
        }
    }

    fn check_names(&self, ty: ResourceType, count: usize) -> Result<(), StreamError> {
        if count > self.limits.max_names {
            return Err(StreamError::TooManyNames {
                ty: ty.short(),
                count,
                limit: self.limits.max_names,
            });
        }
        Ok(())
    }

    /// A Delta stream's first request for a type may list at most `max_names` resources the
    /// client holds.
    fn check_initial_versions(&self, ty: ResourceType, count: usize) -> Result<(), StreamError> {
        if count > self.limits.max_names {
            return Err(StreamError::TooManyInitialVersions {
                ty: ty.short(),
                count,
                limit: self.limits.max_names,
            });
        }
        Ok(())
    }

    fn set_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>) {
        self.snapshot = snapshot;
        self.regroup();
    }

    fn regroup(&mut self) {
        let (Some(snap), Some((_, cluster))) = (&self.snapshot, &self.node) else {
            return;
        };
        let group = snap.group_for(cluster).cloned();
        if let Some(g) = &group {
            let mut st = self.status.lock();
            if st.group.as_deref() != Some(g.name.as_str()) {
                st.group = Some(g.name.clone());
            }
        }
        self.group = group;
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    fn record_sent(&mut self, ty: ResourceType, version: &str, nonce: &str, resources: usize, removed: usize) {
        {
            let mut st = self.status.lock();
            let t = st.ty(ty);
            t.last_sent_version = Some(version.to_string());
            t.last_sent_nonce = Some(nonce.to_string());
            t.last_sent_at = Some(SystemTime::now());
            t.responses += 1;
        }
        self.events.push(StreamEvent::Sent {
            ty,
            version: version.to_string(),
            resources,
            removed,
        });
    }

    /// Records the client's answer to `pending`: an ACK, or a NACK when `error` is set.
    fn record_answer(&mut self, ty: ResourceType, pending: &Pending, error: Option<String>) {
        let mut st = self.status.lock();
        let node_id = st.node_id.clone();
        let node_cluster = st.node_cluster.clone();
        let t = st.ty(ty);
        match error {
            None => {
                t.last_acked_version = Some(pending.version.clone());
                t.last_ack_at = Some(SystemTime::now());
                t.acks += 1;
                drop(st);
                self.events.push(StreamEvent::Acked {
                    ty,
                    version: pending.version.clone(),
                    after: pending.sent_at.elapsed(),
                });
            }
            Some(error) => {
                let nack = Nack {
                    node_id,
                    node_cluster,
                    ty: ty.short(),
                    version: pending.version.clone(),
                    nonce: pending.nonce.clone(),
                    error,
                    at: SystemTime::now(),
                };
                t.last_nack = Some(nack.clone());
                t.nacks += 1;
                drop(st);
                self.events.push(StreamEvent::Nacked(Box::new(nack)));
            }
        }
    }

    fn record_subscription(&self, ty: ResourceType, wildcard: bool, names: &NameSet) {
        let mut st = self.status.lock();
        let t = st.ty(ty);
        t.subscribed = true;
        t.wildcard = wildcard;
        t.names = names.len();
        if !Arc::ptr_eq(&t.name_set, names) {
            t.name_set = names.clone();
        }
    }

    /// A reconnecting client's first request said it holds `version`, the current one: for the
    /// status views it holds it as if ACKed (nothing is sent).
    fn record_held(&self, ty: ResourceType, version: &str) {
        let mut st = self.status.lock();
        let t = st.ty(ty);
        t.last_acked_version = Some(version.to_string());
        t.last_ack_at = Some(SystemTime::now());
    }
}

/// The longest NACK error text kept (per stream and type, and in the recent-NACK log); longer
/// texts are cut at a character boundary and marked.
pub(crate) const MAX_ERROR_TEXT: usize = 4096;

fn error_text(detail: &Option<envoy_types::pb::google::rpc::Status>) -> Option<String> {
    detail.as_ref().map(|s| {
        if s.message.is_empty() {
            format!("(code {}, no message)", s.code)
        } else if s.message.len() > MAX_ERROR_TEXT {
            let mut end = MAX_ERROR_TEXT;
            while !s.message.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}… ({} bytes in all)", &s.message[..end], s.message.len())
        } else {
            s.message.clone()
        }
    })
}

/// A subscription's names. Streams that subscribe to the same names (every Envoy of a fleet
/// asks for the same EDS clusters) share one set.
pub type NameSet = Arc<Names>;

/// The names of a subscription, in order, and (made on first use, for the SotW ACK check)
/// laid end to end in one buffer: comparing an ACK's names with them reads one small block of
/// memory instead of following a pointer per name. Reads as the set it holds.
#[derive(Default)]
pub struct Names {
    set: std::collections::BTreeSet<Arc<str>>,
    flat: std::sync::OnceLock<Option<FlatNames>>,
}

/// The names of a set end to end, in the set's order.
pub struct FlatNames {
    bytes: Box<[u8]>,
    /// Where each name ends in `bytes`.
    ends: Box<[u32]>,
}

impl FlatNames {
    /// The `i`-th name's bytes.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = match i {
            0 => 0,
            _ => *self.ends.get(i - 1)? as usize,
        };
        self.bytes.get(start..end)
    }
}

impl Names {
    /// Names from a set.
    pub fn new(set: std::collections::BTreeSet<Arc<str>>) -> Names {
        Names {
            set,
            flat: std::sync::OnceLock::new(),
        }
    }

    /// The set of names.
    pub fn into_set(self) -> std::collections::BTreeSet<Arc<str>> {
        self.set
    }

    /// The names end to end (`None` past 4 GiB of names, which no request can carry).
    pub fn flat(&self) -> Option<&FlatNames> {
        self.flat
            .get_or_init(|| {
                let mut bytes = Vec::new();
                let mut ends = Vec::with_capacity(self.set.len());
                for n in &self.set {
                    bytes.extend_from_slice(n.as_bytes());
                    ends.push(u32::try_from(bytes.len()).ok()?);
                }
                Some(FlatNames {
                    bytes: bytes.into_boxed_slice(),
                    ends: ends.into_boxed_slice(),
                })
            })
            .as_ref()
    }
}

impl std::ops::Deref for Names {
    type Target = std::collections::BTreeSet<Arc<str>>;
    fn deref(&self) -> &Self::Target {
        &self.set
    }
}

impl PartialEq for Names {
    fn eq(&self, other: &Names) -> bool {
        self.set == other.set
    }
}

impl PartialEq<std::collections::BTreeSet<Arc<str>>> for Names {
    fn eq(&self, other: &std::collections::BTreeSet<Arc<str>>) -> bool {
        self.set == *other
    }
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.set.fmt(f)
    }
}

/// The shared name sets, by a hash of their content. Entries are weak: a set lives as long as
/// some stream holds it.
static NAME_SETS: std::sync::LazyLock<Mutex<NameSets>> = std::sync::LazyLock::new(Default::default);

#[derive(Default)]
struct NameSets {
    by_hash: std::collections::HashMap<u64, Vec<std::sync::Weak<Names>>>,
    inserts: usize,
}

/// The shared copy of `set` (the one another stream already holds, or `set` itself).
pub fn share_names(set: std::collections::BTreeSet<Arc<str>>) -> NameSet {
    use std::hash::{Hash, Hasher};
    if set.is_empty() {
        return Arc::new(Names::new(set));
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for n in &set {
        n.hash(&mut h);
    }
    let key = h.finish();
    let mut sets = NAME_SETS.lock();
    let bucket = sets.by_hash.entry(key).or_default();
    bucket.retain(|w| w.strong_count() > 0);
    if let Some(shared) = bucket.iter().filter_map(|w| w.upgrade()).find(|s| **s == set) {
        return shared;
    }
    let shared = Arc::new(Names::new(set));
    bucket.push(Arc::downgrade(&shared));
    sets.inserts += 1;
    if sets.inserts.is_multiple_of(1024) {
        sets.by_hash.retain(|_, b| {
            b.retain(|w| w.strong_count() > 0);
            !b.is_empty()
        });
    }
    shared
}

/// A minimal protobuf wire reader: the top-level fields of a message, without decoding them.
pub(crate) mod wire {
    /// One field: its number, its bytes as they stand in the message (key included), and its
    /// payload (for length-delimited fields, the bytes after the length).
    pub struct Field<'a> {
        pub tag: u32,
        /// 0 varint, 1 fixed 64-bit, 2 length-delimited ([`LEN`]), 5 fixed 32-bit.
        pub wire_type: u8,
        pub whole: &'a [u8],
        pub payload: &'a [u8],
    }

    /// The wire type of strings, bytes and messages.
    pub const LEN: u8 = 2;

    /// The fields of `msg` in order; `None` (and the end) at the first malformed field. (The
    /// server reads one field at a time with [`field_at`]; the tests read whole messages.)
    #[cfg(test)]
    pub fn fields(msg: &[u8]) -> impl Iterator<Item = Option<Field<'_>>> {
        let mut rest = msg;
        let mut failed = false;
        std::iter::from_fn(move || {
            if rest.is_empty() || failed {
                return None;
            }
            let field = next(rest);
            match field {
                Some((f, after)) => {
                    rest = after;
                    Some(Some(f))
                }
                None => {
                    failed = true;
                    Some(None)
                }
            }
        })
    }

    /// The field at the start of `buf`; `None` if it is malformed (or `buf` is empty).
    pub fn field_at(buf: &[u8]) -> Option<Field<'_>> {
        next(buf).map(|(f, _)| f)
    }

    fn next(buf: &[u8]) -> Option<(Field<'_>, &[u8])> {
        let (key, mut at) = varint(buf)?;
        // As prost: a key over 32 bits, or field number 0, is malformed.
        let key = u32::try_from(key).ok()?;
        let tag = Some(key >> 3).filter(|t| *t > 0)?;
        let wire_type = (key & 7) as u8;
        let payload = match wire_type {
            0 => {
                let (_, n) = varint(&buf[at..])?;
                let p = &buf[at..at + n];
                at += n;
                p
            }
            1 | 5 => {
                let n = if wire_type == 1 { 8 } else { 4 };
                let p = buf.get(at..at.checked_add(n)?)?;
                at += n;
                p
            }
            2 => {
                let (len, n) = varint(&buf[at..])?;
                let start = at + n;
                let end = start.checked_add(usize::try_from(len).ok()?)?;
                let p = buf.get(start..end)?;
                at = end;
                p
            }
            _ => return None,
        };
        Some((
            Field {
                tag,
                wire_type,
                whole: &buf[..at],
                payload,
            },
            &buf[at..],
        ))
    }

    /// A base-128 varint: its value and how many bytes it took. As prost: at most 10 bytes, and
    /// a 10th byte over 1 (bits past 64) is malformed.
    fn varint(buf: &[u8]) -> Option<(u64, usize)> {
        let mut v: u64 = 0;
        for (i, b) in buf.iter().take(10).enumerate() {
            if i == 9 && *b > 1 {
                return None;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some((v, i + 1));
            }
        }
        None
    }
}
