//! Per-stream protocol logic, as plain state machines with no I/O.
//!
//! The server feeds a stream's machine three kinds of input: a request arrived, the snapshot
//! changed, and asks it for the responses it wants to send now (`poll`). Everything the xDS
//! protocol says about nonces, versions, ACK/NACK, subscriptions and ordering lives here, so
//! each corner case is an ordinary unit test (see `tests.rs`).
//!
//! A machine is the only owner of its stream's state. It is given the time (`now`) and returns
//! values: the responses to send, and what happened ([`StreamEvent`]s: node known, subscribed,
//! sent, ACKed, NACKed, …). The server applies the events (metrics, logs, the stream's status
//! record for the status page and CSDS); nothing is shared with the machine but the snapshot
//! and the server's [`NameSets`].
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
pub(crate) mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;

pub use delta::DeltaStream;
pub use sotw::{SotwRequest, SotwStream};

use super::cache::{GroupSnapshot, Snapshot};
use super::names::{NameSet, NameSets};
use super::resources::ResourceType;

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

/// What happened on a stream: the server counts and logs these, and folds them into the
/// stream's status record (see `ClientStatus::apply`).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The first request named the client.
    Node {
        /// Its `node.id`.
        id: String,
        /// Its `node.cluster`.
        cluster: String,
        /// Its `node.user_agent_name`, cut to 128 bytes.
        user_agent_name: String,
    },
    /// The stream is served from this node group (now, or from now on).
    Group {
        /// The group's name.
        name: String,
    },
    /// A request set or changed the subscription of a type.
    Subscribed {
        /// Its type.
        ty: ResourceType,
        /// Whether it is a wildcard (every resource).
        wildcard: bool,
        /// The names subscribed to (not counting a wildcard), shared.
        names: NameSet,
    },
    /// A response was sent.
    Sent {
        /// Its type.
        ty: ResourceType,
        /// Its version.
        version: String,
        /// Its nonce.
        nonce: String,
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
        after: Duration,
    },
    /// A response was rejected.
    Nacked {
        /// Its type.
        ty: ResourceType,
        /// The version rejected.
        version: String,
        /// The nonce of the rejected response.
        nonce: String,
        /// The client's error message, length-capped ([`MAX_ERROR_TEXT`]).
        error: String,
    },
    /// A reconnecting client's first request said it holds `version`, the current one: it
    /// holds it as if ACKed (nothing is sent).
    Held {
        /// Its type.
        ty: ResourceType,
        /// The version held.
        version: String,
    },
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
    /// `node.id`, `node.cluster` and `node.user_agent_name` of the first request.
    node: Option<(String, String, String)>,
    snapshot: Option<Arc<Snapshot>>,
    group: Option<Arc<GroupSnapshot>>,
    nonce: u64,
    /// The server's shared name sets.
    name_sets: Arc<NameSets>,
    /// What happened since the server last took the events.
    events: Vec<StreamEvent>,
}

impl Core {
    fn new(scope: Scope, limits: Limits, name_sets: Arc<NameSets>) -> Self {
        Core {
            scope,
            limits,
            node: None,
            snapshot: None,
            group: None,
            nonce: 0,
            name_sets,
            events: Vec::new(),
        }
    }

    /// Takes `node` from the first request; later requests may omit it.
    fn accept_node(&mut self, node: Option<&Node>) -> Result<(), StreamError> {
        if self.node.is_some() {
            return Ok(());
        }
        let node = node.ok_or(StreamError::MissingNode)?;
        let agent = cut(&node.user_agent_name, MAX_USER_AGENT_BYTES).to_string();
        self.node = Some((node.id.clone(), node.cluster.clone(), agent.clone()));
        self.events.push(StreamEvent::Node {
            id: node.id.clone(),
            cluster: node.cluster.clone(),
            user_agent_name: agent,
        });
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
        let (Some(snap), Some((_, cluster, agent))) = (&self.snapshot, &self.node) else {
            return;
        };
        let group = snap.group_for_client(cluster, agent).cloned();
        if let Some(g) = &group {
            if self.group.as_ref().is_none_or(|old| old.name != g.name) {
                self.events.push(StreamEvent::Group { name: g.name.clone() });
            }
        }
        self.group = group;
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    fn record_sent(&mut self, ty: ResourceType, version: &str, nonce: &str, resources: usize, removed: usize) {
        self.events.push(StreamEvent::Sent {
            ty,
            version: version.to_string(),
            nonce: nonce.to_string(),
            resources,
            removed,
        });
    }

    /// Records the client's answer to `pending`, at `now`: an ACK, or a NACK when `error` is set.
    fn record_answer(&mut self, ty: ResourceType, pending: Pending, error: Option<String>, now: Instant) {
        self.events.push(match error {
            None => StreamEvent::Acked {
                ty,
                version: pending.version,
                after: now.saturating_duration_since(pending.sent_at),
            },
            Some(error) => StreamEvent::Nacked {
                ty,
                version: pending.version,
                nonce: pending.nonce,
                error,
            },
        });
    }

    /// Reports the subscription of `ty` after a request, if it differs from `before` (what it
    /// was before the request, `None` for a type's first request).
    fn record_subscription(
        &mut self,
        ty: ResourceType,
        before: Option<(bool, NameSet)>,
        wildcard: bool,
        names: &NameSet,
    ) {
        if before.is_some_and(|(w, n)| w == wildcard && Arc::ptr_eq(&n, names)) {
            return;
        }
        self.events.push(StreamEvent::Subscribed {
            ty,
            wildcard,
            names: names.clone(),
        });
    }

    /// A reconnecting client's first request said it holds `version`, the current one.
    fn record_held(&mut self, ty: ResourceType, version: &str) {
        self.events.push(StreamEvent::Held {
            ty,
            version: version.to_string(),
        });
    }
}

/// The longest NACK error text kept (per stream and type, and in the recent-NACK log); longer
/// texts are cut at a character boundary and marked.
pub(crate) const MAX_ERROR_TEXT: usize = 4096;

/// The longest `node.user_agent_name` kept; it only decides whether the client is a gRPC
/// library, and is shown beside the node.
const MAX_USER_AGENT_BYTES: usize = 128;

/// `s`, cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

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
