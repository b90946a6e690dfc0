//! Delta (incremental) streams.
//!
//! - The server tracks, per type, the subscription (wildcard and/or names) and the version of
//!   every resource the client holds (`known`), seeded from `initial_resource_versions` on the
//!   first request so a reconnecting client is not sent what it already has.
//! - A response carries the subscribed resources whose version differs from what the client
//!   holds and, in `removed_resources`, those it holds that no longer exist.
//! - Subscribe and unsubscribe are applied from every request, whatever its nonce (they are
//!   deltas: ignoring one would lose it); the nonce only says which response is ACKed or NACKed.
//! - A NACKed resource version is recorded as held, so it is not sent again until it changes.
//! - The first request for a type is always answered, even with nothing in it, so Envoy's
//!   initialization does not wait for a timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use parking_lot::Mutex;

use super::{error_text, Core, Limits, Pending, Scope, StreamError, StreamEvent, TypeCheck};
use crate::xds::cache::{Snapshot, TypeSnapshot};
use crate::xds::resources::{parse_version, Resource, ResourceType};
use crate::xds::status::ClientStatus;
use crate::xds::wire::DeltaDiscoveryResponse;

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<Arc<str>>,
    /// What the client holds: name → version (`None`: a version this server did not issue).
    known: BTreeMap<Arc<str>, Option<u64>>,
    /// The snapshot of this type last compared against `known`.
    seen: Option<Arc<TypeSnapshot>>,
    /// The subscription changed since the last comparison.
    dirty: bool,
    /// The first request for this type is not answered yet.
    force: bool,
    pending: Option<Pending>,
}

pub struct DeltaStream {
    core: Core,
    types: [Option<TypeState>; 4],
    unknown: Vec<DeltaDiscoveryResponse>,
}

impl DeltaStream {
    pub fn new(scope: Scope, limits: Limits, status: Arc<Mutex<ClientStatus>>) -> Self {
        DeltaStream {
            core: Core::new(scope, limits, status),
            types: Default::default(),
            unknown: Vec::new(),
        }
    }

    pub fn on_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>) {
        self.core.set_snapshot(snapshot);
    }

    pub fn take_events(&mut self) -> Vec<StreamEvent> {
        std::mem::take(&mut self.core.events)
    }

    pub fn on_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), StreamError> {
        self.core.accept_node(req.node.as_ref())?;
        let ty = match self.core.check_type(&req.type_url)? {
            TypeCheck::Known(t) => t,
            TypeCheck::Unknown(url) => {
                if req.response_nonce.is_empty() {
                    let nonce = self.core.next_nonce();
                    self.unknown.push(DeltaDiscoveryResponse {
                        type_url: url.clone(),
                        nonce,
                        ..Default::default()
                    });
                }
                self.core.events.push(StreamEvent::UnknownType { type_url: url });
                return Ok(());
            }
        };
        let current = self.core.group.as_ref().map(|g| g.get(ty).clone());
        let intern = |n: &str| match &current {
            Some(ts) => ts.intern(n),
            None => Arc::from(n),
        };
        let slot = &mut self.types[ty.index()];
        let st = match slot {
            Some(st) => st,
            None => {
                let mut st = TypeState {
                    force: true,
                    dirty: true,
                    // Legacy wildcard: a first CDS/LDS request that names nothing.
                    wildcard: ty.is_wildcard_type() && req.resource_names_subscribe.is_empty(),
                    ..Default::default()
                };
                for (name, version) in &req.initial_resource_versions {
                    st.known.insert(intern(name), parse_version(version));
                }
                slot.insert(st)
            }
        };
        if !req.response_nonce.is_empty() {
            match st.pending.take_if(|p| p.nonce == req.response_nonce) {
                Some(p) => self.core.record_answer(ty, &p, error_text(&req.error_detail)),
                None => self.core.events.push(StreamEvent::Stale { ty }),
            }
        }
        for n in &req.resource_names_subscribe {
            if n == "*" {
                st.wildcard = true;
            } else {
                st.names.insert(intern(n));
            }
            st.dirty = true;
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                st.wildcard = false;
                let names = &st.names;
                st.known.retain(|k, _| names.contains(k));
            } else {
                st.names.remove(n.as_str());
                if !st.wildcard {
                    st.known.remove(n.as_str());
                }
            }
            st.dirty = true;
        }
        let (wildcard, count) = (st.wildcard, st.names.len());
        self.core.check_names(ty, count)?;
        self.core.record_subscription(ty, wildcard, count);
        Ok(())
    }

    /// The responses to send now, in push order.
    pub fn poll(&mut self) -> Vec<DeltaDiscoveryResponse> {
        let mut out = std::mem::take(&mut self.unknown);
        let Some(group) = self.core.group.clone() else {
            return out;
        };
        for ty in ResourceType::ALL {
            let Some(st) = self.types[ty.index()].as_mut() else {
                continue;
            };
            if st.pending.is_some() {
                continue;
            }
            let ts = group.get(ty);
            let unchanged = st.seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, ts));
            if unchanged && !st.dirty && !st.force {
                continue;
            }
            let (resources, removed) = diff(ty, st, ts);
            st.seen = Some(ts.clone());
            st.dirty = false;
            if resources.is_empty() && removed.is_empty() && !st.force {
                continue;
            }
            st.force = false;
            let nonce = self.core.next_nonce();
            st.pending = Some(Pending {
                nonce: nonce.clone(),
                version: ts.version.clone(),
                sent_at: Instant::now(),
            });
            self.core
                .record_sent(ty, &ts.version, &nonce, resources.len(), removed.len());
            out.push(DeltaDiscoveryResponse {
                system_version_info: ts.version.clone(),
                resources,
                type_url: ty.type_url().to_string(),
                nonce,
                removed_resources: removed,
                ..Default::default()
            });
        }
        out
    }
}

/// Compares what the client holds with `ts` and updates `known` to what the response will
/// give it. Returns the encoded resources to send and the names to remove.
fn diff(ty: ResourceType, st: &mut TypeState, ts: &Arc<TypeSnapshot>) -> (Vec<Bytes>, Vec<String>) {
    let mut send = Vec::new();
    let mut removed = Vec::new();
    let incremental = !st.dirty
        && !st.force
        && matches!((&st.seen, &ts.delta_from), (Some(s), Some(d)) if d.previous_version == s.version);
    let candidates: Vec<Arc<str>> = if incremental {
        // Only what changed between the version we last compared against and this one.
        let d = ts.delta_from.as_ref().map(|d| (&d.changed, &d.removed));
        match d {
            Some((changed, gone)) => changed.iter().chain(gone).cloned().collect(),
            None => Vec::new(),
        }
    } else {
        let mut all: BTreeSet<Arc<str>> = st.names.iter().cloned().collect();
        all.extend(st.known.keys().cloned());
        if st.wildcard {
            all.extend(ts.resources.keys().cloned());
        }
        all.into_iter().collect()
    };
    for name in candidates {
        let subscribed = st.wildcard || st.names.contains(&name);
        if !subscribed {
            continue;
        }
        let res: Option<Bytes> = match ts.resources.get(&name) {
            Some(r) => {
                if st.known.get(&name) != Some(&Some(r.version)) {
                    st.known.insert(name.clone(), Some(r.version));
                    Some(r.delta.clone())
                } else {
                    None
                }
            }
            None if st.names.contains(&name) && !ty.is_wildcard_type() => {
                // A named EDS/RDS resource that does not exist: an empty placeholder.
                Resource::placeholder(ty, &name).and_then(|p| {
                    if st.known.get(&name) != Some(&Some(p.version)) {
                        st.known.insert(name.clone(), Some(p.version));
                        Some(p.delta)
                    } else {
                        None
                    }
                })
            }
            None => {
                if st.known.remove(&name).is_some() {
                    removed.push(name.to_string());
                }
                None
            }
        };
        if let Some(b) = res {
            send.push(b);
        }
    }
    (send, removed)
}
