//! Delta (incremental) streams.
//!
//! - The server tracks, per type, the subscription (wildcard and/or names) and the version of
//!   every resource the client holds (`known`, stored as "this snapshot, except these names"),
//!   seeded from `initial_resource_versions` on the first request so a reconnecting client is
//!   not sent what it already has. Only entries the first request subscribes to are kept (all
//!   of them under a wildcard subscription, where the client may hold any resource of the type
//!   and those gone are sent as removed); a map larger than `max_names` ends the stream.
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

use super::{error_text, Core, Limits, Pending, Scope, StreamError, StreamEvent, TypeCheck};
use crate::cache::{Snapshot, TypeSnapshot};
use crate::names::{NameSet, NameSets, Names};
use crate::resources::{parse_version, Resource, ResourceType, TypeMap};
use crate::wire::DeltaDiscoveryResponse;

/// Whether a Delta subscription of one type takes every resource of the type. Its names are
/// kept either way: leaving the wildcard (`*` unsubscribed) keeps them.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
enum Subscription {
    /// The names subscribed to (and only those).
    #[default]
    Names,
    /// Every resource of the type (plus the names, which count again once it is left).
    Wildcard,
}

impl Subscription {
    fn is_wildcard(self) -> bool {
        self == Subscription::Wildcard
    }
}

#[derive(Default)]
struct TypeState {
    subscription: Subscription,
    names: NameSet,
    /// What the client holds.
    known: Known,
    /// The snapshot of this type last compared against `known`.
    seen: Option<Arc<TypeSnapshot>>,
    /// The subscription changed since the last comparison.
    dirty: bool,
    /// The first request for this type is not answered yet.
    force: bool,
    pending: Option<Pending>,
}

/// The state machine of one Delta stream: what the client has and wants, per type.
pub struct DeltaStream {
    core: Core,
    types: TypeMap<Option<TypeState>>,
    unknown: Vec<DeltaDiscoveryResponse>,
}

impl DeltaStream {
    /// Decodes a request. A Delta request carries only what changed, so there is nothing held
    /// to compare with: the plain decode.
    pub fn decode(&mut self, raw: &[u8]) -> Result<DeltaDiscoveryRequest, prost::DecodeError> {
        <DeltaDiscoveryRequest as prost::Message>::decode(raw)
    }

    /// A stream of `scope`, sharing its subscriptions' names through `name_sets`.
    pub fn new(scope: Scope, limits: Limits, name_sets: Arc<NameSets>) -> Self {
        DeltaStream {
            core: Core::new(scope, limits, name_sets),
            types: TypeMap::default(),
            unknown: Vec::new(),
        }
    }

    /// A new snapshot (or none yet): queues what the client must now receive.
    pub fn on_snapshot(&mut self, snapshot: Option<Arc<Snapshot>>) {
        self.core.set_snapshot(snapshot);
    }

    /// The events since the last call.
    pub fn take_events(&mut self) -> Vec<StreamEvent> {
        std::mem::take(&mut self.core.events)
    }

    /// A request from the client, arrived at `now`; an error ends the stream.
    pub fn on_request(&mut self, req: DeltaDiscoveryRequest, now: Instant) -> Result<(), StreamError> {
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
        if self.types[ty].is_none() {
            // Over the limit: the stream ends, and nothing of the map is stored.
            self.core
                .check_initial_versions(ty, req.initial_resource_versions.len())?;
        }
        let slot = &mut self.types[ty];
        let before = slot
            .as_ref()
            .map(|st| (st.subscription.is_wildcard(), st.names.clone()));
        let st = match slot {
            Some(st) => st,
            None => {
                // Legacy wildcard: a first CDS/LDS request that names nothing.
                let legacy = ty.is_wildcard_type() && req.resource_names_subscribe.is_empty();
                let mut st = TypeState {
                    force: true,
                    dirty: true,
                    subscription: match legacy {
                        true => Subscription::Wildcard,
                        false => Subscription::Names,
                    },
                    ..Default::default()
                };
                // What the client says it holds matters only for what it subscribes to: under
                // a wildcard, anything of the type; otherwise the names it subscribes to now.
                // Other entries would be kept for the stream's life and never looked at.
                let wildcard = legacy || req.resource_names_subscribe.iter().any(|n| n == "*");
                let subscribed: std::collections::HashSet<&str> = match wildcard {
                    true => Default::default(),
                    false => req.resource_names_subscribe.iter().map(String::as_str).collect(),
                };
                for (name, version) in &req.initial_resource_versions {
                    if wildcard || subscribed.contains(name.as_str()) {
                        st.known.insert(intern(name), parse_version(version));
                    }
                }
                slot.insert(st)
            }
        };
        if !req.response_nonce.is_empty() {
            match st.pending.take_if(|p| p.nonce == req.response_nonce) {
                Some(p) => self.core.record_answer(ty, p, error_text(&req.error_detail), now),
                None => self.core.events.push(StreamEvent::Stale { ty }),
            }
        }
        let changes_names = req
            .resource_names_subscribe
            .iter()
            .chain(&req.resource_names_unsubscribe)
            .any(|n| n != "*");
        // The set may be shared with other streams: edit a copy, then share the result.
        let mut names = match changes_names {
            true => {
                Arc::try_unwrap(std::mem::take(&mut st.names)).map_or_else(|shared| (**shared).clone(), Names::into_set)
            }
            false => BTreeSet::new(),
        };
        for n in &req.resource_names_subscribe {
            if n == "*" {
                st.subscription = Subscription::Wildcard;
            } else {
                names.insert(intern(n));
            }
            st.dirty = true;
        }
        for n in &req.resource_names_unsubscribe {
            if n == "*" {
                st.subscription = Subscription::Names;
                let held = if changes_names { &names } else { st.names.as_ref() };
                st.known.retain(|k| held.contains(k));
            } else {
                names.remove(n.as_str());
                if !st.subscription.is_wildcard() {
                    st.known.remove(n.as_str());
                }
            }
            st.dirty = true;
        }
        if changes_names {
            // Over the limit: the stream ends, and the oversized set is never stored.
            self.core.check_names(ty, names.len())?;
            st.names = self.core.name_sets.share(names);
        }
        let (wildcard, names) = (st.subscription.is_wildcard(), st.names.clone());
        self.core.record_subscription(ty, before, wildcard, &names);
        Ok(())
    }

    /// How many resources the stream records the client as holding, for `ty`.
    #[cfg(test)]
    pub(super) fn held_count(&self, ty: ResourceType) -> usize {
        self.types[ty].as_ref().map_or(0, |st| st.known.held().len())
    }

    /// The responses to send at `now`, in push order.
    pub fn poll(&mut self, now: Instant) -> Vec<DeltaDiscoveryResponse> {
        let mut out = std::mem::take(&mut self.unknown);
        let Some(group) = self.core.group.clone() else {
            return out;
        };
        // Over ADS a type does not run ahead of an earlier one (CDS, EDS, LDS, RDS) that holds
        // newer content back until its ACK: routes must not name clusters Envoy lacks.
        let mut held_back = false;
        for ty in ResourceType::ALL {
            let Some(st) = self.types[ty].as_mut() else {
                continue;
            };
            let ts = group.get(ty);
            if held_back {
                continue;
            }
            if st.pending.is_some() {
                held_back = self.core.scope == Scope::Ads && st.seen.as_ref().is_some_and(|s| s.version != ts.version);
                continue;
            }
            let unchanged = st.seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, ts));
            if unchanged && !st.dirty && !st.force {
                continue;
            }
            let (resources, removed) = diff(ty, st, ts);
            st.known.rebase(ts);
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
                sent_at: now,
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
        all.extend(st.known.held());
        if st.subscription.is_wildcard() {
            all.extend(ts.resources.keys().cloned());
        }
        all.into_iter().collect()
    };
    for name in candidates {
        let subscribed = st.subscription.is_wildcard() || st.names.contains(&name);
        if !subscribed {
            continue;
        }
        let res: Option<Bytes> = match ts.resources.get(&name) {
            Some(r) => {
                if st.known.get(&name) != Some(Some(r.version)) {
                    st.known.insert(name.clone(), Some(r.version));
                    Some(r.delta.clone())
                } else {
                    None
                }
            }
            None if st.names.contains(&name) && !ty.is_wildcard_type() => {
                // A named EDS/RDS resource that does not exist: an empty placeholder.
                Resource::placeholder(ty, &name).and_then(|p| {
                    if st.known.get(&name) != Some(Some(p.version)) {
                        st.known.insert(name.clone(), Some(p.version));
                        Some(p.delta)
                    } else {
                        None
                    }
                })
            }
            None => {
                if st.known.remove(&name) {
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

/// A version as a delta client holds it: `None` is a version this server did not issue.
type Held = Option<u64>;

/// What a delta client holds, per resource name.
///
/// Stored as a snapshot of the type that the client holds whole (shared with the cache) plus
/// the names where the client differs from it (`None`: not held). A client in sync with the
/// current snapshot costs no per-resource memory, and each push updates the exceptions from
/// the snapshot's own change list.
#[derive(Default)]
struct Known {
    base: Option<Arc<TypeSnapshot>>,
    except: BTreeMap<Arc<str>, Option<Held>>,
}

fn version_in(ts: Option<&Arc<TypeSnapshot>>, name: &str) -> Option<Held> {
    ts.and_then(|b| b.resources.get(name)).map(|r| Some(r.version))
}

impl Known {
    /// The version the client holds, `None` if it holds nothing of that name.
    fn get(&self, name: &str) -> Option<Held> {
        match self.except.get(name) {
            Some(e) => *e,
            None => version_in(self.base.as_ref(), name),
        }
    }

    fn set(&mut self, name: Arc<str>, v: Option<Held>) {
        if version_in(self.base.as_ref(), &name) == v {
            self.except.remove(&name);
        } else {
            self.except.insert(name, v);
        }
    }

    fn insert(&mut self, name: Arc<str>, v: Held) {
        self.set(name, Some(v));
    }

    /// Forgets a name; returns whether the client held it.
    fn remove(&mut self, name: &str) -> bool {
        if self.get(name).is_none() {
            return false;
        }
        let key = match self.base.as_ref().and_then(|b| b.resources.get_key_value(name)) {
            Some((k, _)) => k.clone(),
            None => Arc::from(name),
        };
        self.set(key, None);
        true
    }

    /// Every name the client holds.
    fn held(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self
            .except
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        if let Some(b) = &self.base {
            out.extend(b.resources.keys().filter(|k| !self.except.contains_key(*k)).cloned());
        }
        out
    }

    fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        for name in self.held() {
            if !keep(&name) {
                self.remove(&name);
            }
        }
    }

    /// Re-expresses what the client holds against `ts` when that takes fewer exceptions.
    /// When `ts` was built on the current base, only the names that changed between them, and
    /// the current exceptions, can differ: no walk over every resource.
    fn rebase(&mut self, ts: &Arc<TypeSnapshot>) {
        if self.base.as_ref().is_some_and(|b| Arc::ptr_eq(b, ts)) {
            return;
        }
        let next_from_base = match (&self.base, &ts.delta_from) {
            (Some(b), Some(d)) if d.previous_version == b.version => Some(d),
            _ => None,
        };
        let candidates: Vec<Arc<str>> = match next_from_base {
            Some(d) => {
                let mut c: Vec<Arc<str>> = self.except.keys().cloned().collect();
                c.extend(d.changed.iter().chain(&d.removed).cloned());
                c
            }
            None => {
                let mut c = self.held();
                c.extend(ts.resources.keys().cloned());
                c
            }
        };
        let mut except = BTreeMap::new();
        for name in candidates {
            let holds = self.get(&name);
            if holds != version_in(Some(ts), &name) {
                except.insert(name, holds);
            }
        }
        // Following the snapshot's history keeps the next rebase cheap; otherwise the new base
        // must not cost more exceptions than the current form (a client holding a few names
        // of many keeps a plain list).
        if next_from_base.is_some() || except.len() <= self.except.len() {
            self.base = Some(ts.clone());
            self.except = except;
        }
    }
}

#[cfg(test)]
mod known_tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cache::{Cache, EncodedGroup};

    /// Publishes one EDS snapshot per content map; returns the type snapshots in order.
    fn history(versions: &[BTreeMap<String, u8>]) -> Vec<Arc<TypeSnapshot>> {
        let cache = Cache::new();
        versions
            .iter()
            .map(|v| {
                let mut input = EncodedGroup::default();
                for (name, b) in v {
                    input[ResourceType::Endpoint].push(Resource::new(ResourceType::Endpoint, name, vec![*b]));
                }
                let mut groups = BTreeMap::new();
                groups.insert("g".to_string(), input);
                let _ = cache.publish_encoded(groups, "g", std::time::Instant::now());
                cache.current().expect("snapshot").groups["g"]
                    .get(ResourceType::Endpoint)
                    .clone()
            })
            .collect()
    }

    /// A small deterministic generator (no external crates).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn a_client_in_sync_costs_no_exceptions_across_changes() {
        let mut v: BTreeMap<String, u8> = (0..50).map(|i| (format!("c{i:02}"), 0)).collect();
        let mut versions = vec![v.clone()];
        v.insert("c07".into(), 1);
        versions.push(v.clone());
        v.remove("c08");
        versions.push(v.clone());
        let h = history(&versions);
        let mut k = Known::default();
        for r in h[0].resources.values() {
            k.insert(r.name.clone(), Some(r.version));
        }
        assert_eq!(k.except.len(), 50);
        k.rebase(&h[0]);
        assert!(k.except.is_empty(), "in sync: the snapshot alone says it");
        // The client is sent what changed, then the base follows the snapshot's history.
        let c07 = &h[1].resources["c07"];
        k.insert(c07.name.clone(), Some(c07.version));
        k.rebase(&h[1]);
        assert!(k.except.is_empty());
        assert!(k.remove("c08"));
        k.rebase(&h[2]);
        assert!(k.except.is_empty());
        assert_eq!(k.get("c07"), Some(Some(c07.version)));
        assert_eq!(k.get("c08"), None);
        assert_eq!(k.held().len(), 49);
    }

    #[test]
    fn a_client_holding_a_few_of_many_keeps_a_plain_list() {
        let v: BTreeMap<String, u8> = (0..100).map(|i| (format!("c{i:03}"), 0)).collect();
        let h = history(&[v]);
        let mut k = Known::default();
        let r = &h[0].resources["c005"];
        k.insert(r.name.clone(), Some(r.version));
        k.rebase(&h[0]);
        assert!(k.base.is_none());
        assert_eq!(k.held(), vec![r.name.clone()]);
    }

    /// Random operations and snapshot histories against a plain map: the compact form always
    /// answers the same.
    #[test]
    fn the_compact_form_matches_a_plain_map() {
        let mut rng = Lcg(7);
        for round in 0..30 {
            let mut content: BTreeMap<String, u8> = BTreeMap::new();
            let mut versions = Vec::new();
            for _ in 0..8 {
                for _ in 0..rng.next(6) + 1 {
                    let name = format!("r{}", rng.next(12));
                    if rng.next(4) == 0 {
                        content.remove(&name);
                    } else {
                        content.insert(name, rng.next(3) as u8);
                    }
                }
                versions.push(content.clone());
            }
            let h = history(&versions);
            let mut k = Known::default();
            let mut model: BTreeMap<String, Held> = BTreeMap::new();
            for ts in &h {
                for _ in 0..rng.next(8) {
                    let name = format!("r{}", rng.next(12));
                    match rng.next(4) {
                        0 => {
                            assert_eq!(k.remove(&name), model.remove(&name).is_some(), "round {round}");
                        }
                        1 => {
                            k.insert(Arc::from(name.as_str()), None);
                            model.insert(name, None);
                        }
                        _ => {
                            let v = ts
                                .resources
                                .get(name.as_str())
                                .map(|r| r.version)
                                .unwrap_or(rng.next(1000));
                            k.insert(Arc::from(name.as_str()), Some(v));
                            model.insert(name, Some(v));
                        }
                    }
                }
                if rng.next(3) > 0 {
                    k.rebase(ts);
                }
                for i in 0..12 {
                    let n = format!("r{i}");
                    assert_eq!(k.get(&n), model.get(&n).copied(), "round {round}, name {n}");
                }
                let mut held: Vec<String> = k.held().iter().map(|s| s.to_string()).collect();
                held.sort();
                assert_eq!(held, model.keys().cloned().collect::<Vec<_>>(), "round {round}");
            }
        }
    }
}
