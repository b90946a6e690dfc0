//! State of the World streams.
//!
//! - CDS and LDS are wildcard types: a first request with no names (or with `*`) subscribes to
//!   everything, and every response carries the full set.
//! - EDS and RDS are named: a response carries only the subscribed resources that changed,
//!   plus those newly subscribed (a name dropped and asked for again is sent again). A
//!   subscribed name the snapshot does not hold is answered with an empty placeholder.
//! - A request whose nonce is not the last one sent for its type is stale and ignored; a SotW
//!   request repeats the whole subscription, so the next ACK carries whatever it wanted.
//! - A first request carrying `version_info` equal to the current version (a reconnecting Envoy)
//!   gets no response: it already has that content.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::Message;

use super::{error_text, wire, Core, Limits, Pending, Scope, StreamError, StreamEvent, TypeCheck};
use crate::cache::{Snapshot, TypeSnapshot};
use crate::names::{NameSet, NameSets, Names};
use crate::resources::{Resource, ResourceType, TypeMap};
use crate::wire::DiscoveryResponse;

/// `DiscoveryRequest` field numbers (envoy/service/discovery/v3/discovery.proto).
const DISCOVERY_REQUEST_RESOURCE_NAMES: u32 = 3;
const DISCOVERY_REQUEST_TYPE_URL: u32 = 4;
/// The key of a `resource_names` field: field 3, length-delimited, in its one-byte form.
const NAMES_KEY: u8 = (3 << 3) | 2;

/// What a SotW subscription of one type covers.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
enum Subscription {
    /// The names listed (and only those).
    #[default]
    Names,
    /// Every resource of the type: the client listed `*`.
    Wildcard,
    /// Every resource of the type: the first request of a wildcard type (CDS, LDS) listed no
    /// name, and an empty list keeps meaning "everything" for the stream's life.
    LegacyWildcard,
    /// The names listed, on a stream that began with [`Subscription::LegacyWildcard`]: an empty
    /// list goes back to "everything".
    LegacyNames,
}

impl Subscription {
    /// The subscription of a type's first request.
    fn first(ty: ResourceType, star: bool, no_names: bool) -> Self {
        match (ty.is_wildcard_type() && no_names, star) {
            (true, _) => Subscription::LegacyWildcard,
            (false, true) => Subscription::Wildcard,
            (false, false) => Subscription::Names,
        }
    }

    /// The subscription after a later request.
    fn next(self, star: bool, no_names: bool) -> Self {
        let legacy = matches!(self, Subscription::LegacyWildcard | Subscription::LegacyNames);
        match (legacy, star || (legacy && no_names)) {
            (true, true) => Subscription::LegacyWildcard,
            (true, false) => Subscription::LegacyNames,
            (false, true) => Subscription::Wildcard,
            (false, false) => Subscription::Names,
        }
    }

    /// Every resource of the type.
    fn is_wildcard(self) -> bool {
        matches!(self, Subscription::Wildcard | Subscription::LegacyWildcard)
    }
}

#[derive(Default)]
struct TypeState {
    subscription: Subscription,
    names: NameSet,
    /// The order in which the client last listed `names`, when it was not sorted: its `k`-th
    /// name is the held set's `order[k]`-th. Every name is compared before a request is taken
    /// for a repeat; only its being a permutation (it was made as one) is relied on.
    order: Option<Box<[u16]>>,
    /// Names subscribed since the last response; sent even if unchanged.
    added: Vec<Arc<str>>,
    /// The snapshot of this type the client holds (last sent, or claimed on reconnect).
    sent: Option<Arc<TypeSnapshot>>,
    /// The version the first request said the client holds.
    claimed: Option<String>,
    /// The client needs a response even if nothing changed.
    force: bool,
    pending: Option<Pending>,
    /// The nonce of the last response sent for this type: a request naming another is stale.
    last_nonce: Option<String>,
}

/// The state machine of one State of the World stream: what the client has and wants, per type.
pub struct SotwStream {
    core: Core,
    types: TypeMap<Option<TypeState>>,
    /// Answers to requests for types this server does not serve.
    unknown: Vec<DiscoveryResponse>,
}

/// A SotW request as [`SotwStream::decode`] read it: the message (it reads as one), and
/// whether its names repeat, name for name, the subscription the stream holds for its type (then
/// they were compared in place, not decoded, and the message holds none).
#[derive(Debug, Clone, PartialEq)]
pub struct SotwRequest {
    request: DiscoveryRequest,
    repeats: Option<ResourceType>,
}

impl From<DiscoveryRequest> for SotwRequest {
    /// A request decoded in full (its names are its own).
    fn from(request: DiscoveryRequest) -> Self {
        SotwRequest { request, repeats: None }
    }
}

impl std::ops::Deref for SotwRequest {
    type Target = DiscoveryRequest;
    fn deref(&self) -> &DiscoveryRequest {
        &self.request
    }
}

impl SotwStream {
    /// A stream of `scope`, sharing its subscriptions' names through `name_sets`.
    pub fn new(scope: Scope, limits: Limits, name_sets: Arc<NameSets>) -> Self {
        SotwStream {
            core: Core::new(scope, limits, name_sets),
            types: TypeMap::default(),
            unknown: Vec::new(),
        }
    }

    /// Decodes a request. An Envoy re-sends its whole subscription with every ACK (for EDS, every
    /// cluster name, on every push, in its own order, which is not sorted); a request whose
    /// names are exactly those this stream holds for its type, in any order, is decoded without
    /// them, and says so ([`SotwRequest`]): `on_request` then keeps the held set. Any other
    /// request, or bytes that do not parse, take the full decode, which reports what is
    /// malformed. (The client's order of the names is kept, to compare the next one faster.)
    pub fn decode(&mut self, raw: &[u8]) -> Result<SotwRequest, prost::DecodeError> {
        if let Some((ty, names)) = self.repeats_held_names(raw) {
            // The request without its names: the bytes before and after them.
            let request = DiscoveryRequest::decode(bytes::Buf::chain(&raw[..names.start], &raw[names.end..]))?;
            return Ok(SotwRequest {
                request,
                repeats: Some(ty),
            });
        }
        DiscoveryRequest::decode(raw).map(SotwRequest::from)
    }

    /// The request's type and where its `resource_names` fields lie, when those names
    /// are the held set's (each once, in any order). The names are compared as slices of the
    /// request, with no allocation on the usual path and one list of slices on the other.
    ///
    /// An Envoy sends its names in the same order in every request of a stream, so the order
    /// that matched last time is kept (each name's place in the held set,
    /// [`TypeState::order`]) and tried first, in one pass over the request
    /// ([`SotwStream::repeats_in_kept_order`]): each name compared in turn with the held name
    /// at its kept place (a sorted list, with none kept, in the held order). Anything else (a
    /// new order, a mismatch, a name field in an unusual form) is read field by field, its names
    /// collected and sorted once ([`same_set_in_any_order`]), and the new order kept if they
    /// match.
    fn repeats_held_names(&mut self, raw: &[u8]) -> Option<(ResourceType, std::ops::Range<usize>)> {
        if let Some(found) = self.repeats_in_kept_order(raw) {
            return Some(found);
        }
        // No held set has more names than this: a longer list is not a repeat.
        let most = self.types.values().flatten().map(|st| st.names.len()).max()?;
        let mut type_url: &[u8] = b"";
        let (mut names_start, mut names_end) = (None, 0);
        // Room for every name at once; a name takes at least two bytes, so a small request
        // (another type's ACK) gets a small list.
        let mut names: Vec<&[u8]> = Vec::with_capacity(most.min(raw.len() / 2));
        let mut at = 0;
        while at < raw.len() {
            // The names are one run of fields (as every encoder writes a repeated field). Most
            // are short: key 0x1a (field 3, length-delimited) and a one-byte length, read here
            // without the general field reader; anything else goes through it.
            if names_start.is_none_or(|_| names_end == at) {
                while let [NAMES_KEY, len, tail @ ..] = &raw[at..] {
                    let len = usize::from(*len);
                    if len >= 0x80 || tail.len() < len {
                        break;
                    }
                    if names.len() == most {
                        return None;
                    }
                    names_start.get_or_insert(at);
                    names.push(&tail[..len]);
                    at += 2 + len;
                    names_end = at;
                }
                if at == raw.len() {
                    break;
                }
            }
            let f = wire::field_at(&raw[at..])?;
            if f.tag == DISCOVERY_REQUEST_RESOURCE_NAMES || f.tag == DISCOVERY_REQUEST_TYPE_URL {
                if f.wire_type != wire::LEN {
                    return None;
                }
                if f.tag == DISCOVERY_REQUEST_TYPE_URL {
                    type_url = f.payload;
                } else {
                    if (names_start.is_some() && names_end != at) || names.len() == most {
                        return None;
                    }
                    names_start.get_or_insert(at);
                    names_end = at + f.whole.len();
                    names.push(f.payload);
                }
            }
            at += f.whole.len();
        }
        let names_start = names_start?;
        let ty = match self.core.check_type(std::str::from_utf8(type_url).ok()?).ok()? {
            TypeCheck::Known(t) => t,
            TypeCheck::Unknown(_) => return None,
        };
        let st = self.types[ty].as_mut()?;
        if names.len() != st.names.len() {
            return None;
        }
        if !same_set_in_any_order(&st.names, &names, &mut st.order) {
            return None;
        }
        Some((ty, names_start..names_end))
    }

    /// The usual ACK, in one pass: the fields before the names, then the names compared in turn
    /// with a held set in its kept order (or in its own order, when none is kept), then the
    /// fields after them, which must hold no other name and give that set's type. `None` leaves
    /// the request to the general path.
    pub(super) fn repeats_in_kept_order(&self, raw: &[u8]) -> Option<(ResourceType, std::ops::Range<usize>)> {
        let mut at = 0;
        while raw.get(at) != Some(&NAMES_KEY) {
            let f = wire::field_at(raw.get(at..)?)?;
            if f.tag == DISCOVERY_REQUEST_RESOURCE_NAMES || f.tag == DISCOVERY_REQUEST_TYPE_URL {
                return None;
            }
            at += f.whole.len();
        }
        let start = at;
        ResourceType::ALL.into_iter().find_map(|ty| {
            let st = self.types[ty].as_ref()?;
            if st.names.is_empty() {
                return None;
            }
            let end = start + kept_order_run(&st.names, &raw[start..], st.order.as_deref())?;
            (self.type_after_names(&raw[end..])? == ty).then_some((ty, start..end))
        })
    }

    /// The type named by `rest`, the fields after a run of names, if they hold no other name.
    fn type_after_names(&self, mut rest: &[u8]) -> Option<ResourceType> {
        let mut type_url = None;
        while !rest.is_empty() {
            let f = wire::field_at(rest)?;
            if f.tag == DISCOVERY_REQUEST_RESOURCE_NAMES {
                return None;
            }
            if f.tag == DISCOVERY_REQUEST_TYPE_URL {
                if f.wire_type != wire::LEN {
                    return None;
                }
                type_url = Some(f.payload);
            }
            rest = &rest[f.whole.len()..];
        }
        match self.core.check_type(std::str::from_utf8(type_url?).ok()?).ok()? {
            TypeCheck::Known(t) => Some(t),
            TypeCheck::Unknown(_) => None,
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
    pub fn on_request(&mut self, req: impl Into<SotwRequest>, now: Instant) -> Result<(), StreamError> {
        let SotwRequest { request: req, repeats } = req.into();
        self.core.accept_node(req.node.as_ref())?;
        let ty = match self.core.check_type(&req.type_url)? {
            TypeCheck::Known(t) => t,
            TypeCheck::Unknown(url) => {
                // Answer the first request once; its ACK (which carries our nonce) is not
                // answered again, so there is no loop.
                if req.response_nonce.is_empty() {
                    let nonce = self.core.next_nonce();
                    self.unknown.push(DiscoveryResponse {
                        type_url: url.clone(),
                        nonce,
                        ..Default::default()
                    });
                }
                self.core.events.push(StreamEvent::UnknownType { type_url: url });
                return Ok(());
            }
        };
        let before = self.types[ty]
            .as_ref()
            .map(|st| (st.subscription.is_wildcard(), st.names.clone()));
        let held = before.as_ref().map(|(_, names)| names.clone());
        // The names as decoded, or (`decode` found them equal to the held set) that set.
        let repeated = match (repeats == Some(ty), &held) {
            (true, Some(h)) => Some(h.clone()),
            _ => None,
        };
        let count = repeated.as_ref().map_or(req.resource_names.len(), |h| h.len());
        self.core.check_names(ty, count)?;
        let no_names = count == 0;
        let current = self.core.group.as_ref().map(|g| g.get(ty).clone());
        let intern = |n: &str| match &current {
            Some(ts) => ts.intern(n),
            None => Arc::from(n),
        };
        let star = req.resource_names.iter().any(|n| n == "*");
        let names: NameSet = match (repeated, held) {
            (Some(h), _) => h,
            (None, held) => {
                let built: BTreeSet<Arc<str>> = req
                    .resource_names
                    .iter()
                    .filter(|n| n.as_str() != "*")
                    .map(|n| intern(n))
                    .collect();
                match held {
                    Some(h) if *h == built => h,
                    _ => self.core.name_sets.share(built),
                }
            }
        };

        let slot = &mut self.types[ty];
        match slot {
            None => {
                let mut st = TypeState {
                    subscription: Subscription::first(ty, star, no_names),
                    names,
                    ..Default::default()
                };
                if req.version_info.is_empty() {
                    st.force = true;
                } else {
                    st.claimed = Some(req.version_info.clone());
                }
                *slot = Some(st);
            }
            Some(st) => {
                if req.response_nonce.is_empty() {
                    // The client starts this type over: answer it afresh.
                    st.force = true;
                } else if st.last_nonce.as_deref() != Some(req.response_nonce.as_str()) {
                    self.core.events.push(StreamEvent::Stale { ty });
                    return Ok(());
                }
                // An answer to the response in flight is an ACK or a NACK; a later request with
                // the same nonce only changes the subscription.
                if let Some(p) = st.pending.take_if(|p| p.nonce == req.response_nonce) {
                    self.core.record_answer(ty, p, error_text(&req.error_detail), now);
                }
                let next = st.subscription.next(star, no_names);
                if next.is_wildcard() && !st.subscription.is_wildcard() {
                    st.force = true;
                }
                st.subscription = next;
                if !Arc::ptr_eq(&names, &st.names) {
                    st.added.extend(names.difference(&st.names).cloned());
                    if ty.is_wildcard_type() {
                        st.force = true;
                    }
                    st.names = names;
                    st.order = None;
                }
            }
        }
        if let Some(st) = &self.types[ty] {
            self.core
                .record_subscription(ty, before, st.subscription.is_wildcard(), &st.names);
        }
        Ok(())
    }

    /// The responses to send at `now`, in push order.
    pub fn poll(&mut self, now: Instant) -> Vec<DiscoveryResponse> {
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
                held_back = self.core.scope == Scope::Ads && st.sent.as_ref().is_some_and(|s| s.version != ts.version);
                continue;
            }
            if st.sent.is_none() && !st.force {
                if st.claimed.as_deref() == Some(ts.version.as_str()) {
                    st.sent = Some(ts.clone());
                    st.claimed = None;
                    self.core.record_held(ty, &ts.version);
                    continue;
                }
                st.force = true;
            }
            let resources = select(ty, st, ts);
            let Some(resources) = resources else {
                st.sent = Some(ts.clone());
                continue;
            };
            let nonce = self.core.next_nonce();
            let count = resources.len();
            st.pending = Some(Pending {
                nonce: nonce.clone(),
                version: ts.version.clone(),
                sent_at: now,
            });
            st.last_nonce = Some(nonce.clone());
            st.sent = Some(ts.clone());
            st.force = false;
            st.claimed = None;
            // Not `clear()`: a first subscription's list would keep its capacity for good.
            st.added = Vec::new();
            self.core.record_sent(ty, &ts.version, &nonce, count, 0);
            out.push(DiscoveryResponse {
                version_info: ts.version.clone(),
                resources,
                type_url: ty.type_url().to_string(),
                nonce,
                ..Default::default()
            });
        }
        out
    }
}

/// Byte equality, inlined for the short names a subscription holds (a call to `memcmp` per name
/// costs more than comparing a few words): up to 32 bytes, one load from each end.
#[inline]
pub(super) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    /// The first and the last `W` bytes of each (for `W <= len <= 2 * W`, every byte).
    #[inline]
    fn ends<const W: usize>(a: &[u8], b: &[u8]) -> bool {
        a.first_chunk::<W>() == b.first_chunk::<W>() && a.last_chunk::<W>() == b.last_chunk::<W>()
    }
    if a.len() != b.len() {
        return false;
    }
    match a.len() {
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=8 => ends::<4>(a, b),
        9..=16 => ends::<8>(a, b),
        17..=32 => ends::<16>(a, b),
        _ => a == b,
    }
}

/// How many bytes at the start of `bytes` are a run of name fields that lists `held`'s names
/// in the kept order: the run's `k`-th name is `held`'s `order[k]`-th (`held`'s own, sorted,
/// order when none is kept), each field with key 0x1a and a one-byte length. `None` at the
/// first field that differs. The order is a permutation of `0..n` (it was made as one, and the
/// identity is one), so n equal names at n distinct places means no duplicate and none missing.
fn kept_order_run(held: &Names, bytes: &[u8], order: Option<&[u16]>) -> Option<usize> {
    if order.is_some_and(|o| o.len() != held.len()) {
        return None;
    }
    let flat = held.flat()?;
    let mut rest = bytes;
    for k in 0..held.len() {
        let j = match order {
            Some(o) => usize::from(*o.get(k)?),
            None => k,
        };
        let [NAMES_KEY, len, tail @ ..] = rest else {
            return None;
        };
        if *len >= 0x80 {
            return None;
        }
        let len = usize::from(*len);
        let (Some(name), Some(want)) = (tail.get(..len), flat.get(j)) else {
            return None;
        };
        if !same_bytes(name, want) {
            return None;
        }
        rest = &tail[len..];
    }
    Some(bytes.len() - rest.len())
}

/// Whether `names` (slices of a request, as many as `held` has) are the names of `held`, each
/// once, in any order. `order` is the client's order from the last match: tried first (one
/// comparison per name, the request's names in turn against the held names laid end to end),
/// replaced when another order matches, cleared when a sorted list does.
pub(super) fn same_set_in_any_order(held: &Names, names: &[&[u8]], order: &mut Option<Box<[u16]>>) -> bool {
    if names.len() != held.len() {
        return false;
    }
    // The request's `k`-th name is `held`'s `order[k]`-th. (A set that cannot be laid out, past
    // 4 GiB of names, matches nothing here: such a request takes the full decode.)
    let in_order = |order: &[u16]| {
        order.len() == names.len()
            && held.flat().is_some_and(|flat| {
                names
                    .iter()
                    .zip(order)
                    .all(|(n, &j)| flat.get(usize::from(j)).is_some_and(|h| same_bytes(n, h)))
            })
    };
    // The kept order first. It is a permutation of 0..n (it comes from one), so n equal names
    // at n distinct places means no duplicate and none missing.
    if order.as_deref().is_some_and(in_order) {
        return true;
    }
    if names.windows(2).all(|w| w[0] < w[1]) {
        // Byte order is `str` order, the held set's.
        let same = names.iter().zip(held.iter()).all(|(n, h)| same_bytes(n, h.as_bytes()));
        if same {
            *order = None;
        }
        return same;
    }
    let Ok(last) = u16::try_from(names.len().saturating_sub(1)) else {
        // Too many names for 16-bit places: sort the slices themselves, keep nothing.
        let mut sorted = names.to_vec();
        sorted.sort_unstable();
        return sorted.iter().zip(held.iter()).all(|(n, h)| same_bytes(n, h.as_bytes()));
    };
    // The request's positions sorted by name: the `j`-th is where the `j`-th smallest name
    // stands, so it goes to place `j` in the held order. (A duplicate, once sorted, sits
    // beside its twin and fails the comparison with the held set, which has none.)
    let mut by_name: Vec<u16> = (0..=last).collect();
    by_name.sort_unstable_by_key(|&k| names[usize::from(k)]);
    let mut kept = vec![0u16; by_name.len()];
    for (j, &k) in (0..=last).zip(&by_name) {
        kept[usize::from(k)] = j;
    }
    if !in_order(&kept) {
        return false;
    }
    *order = Some(kept.into_boxed_slice());
    true
}

/// The resources of a response for this type now, or `None` when no response is due.
fn select(ty: ResourceType, st: &TypeState, ts: &Arc<TypeSnapshot>) -> Option<Vec<Bytes>> {
    let changed_since_sent = match &st.sent {
        Some(s) => !Arc::ptr_eq(s, ts) && s.version != ts.version,
        None => true,
    };
    if ty.is_wildcard_type() {
        if !(st.force || changed_since_sent) {
            return None;
        }
        let out = if st.subscription.is_wildcard() {
            ts.resources.values().map(|r| r.any.clone()).collect()
        } else {
            st.names
                .iter()
                .filter_map(|n| ts.resources.get(n))
                .map(|r| r.any.clone())
                .collect()
        };
        return Some(out);
    }
    let any_of = |name: &Arc<str>| -> Bytes {
        match ts.resources.get(name) {
            Some(r) => r.any.clone(),
            None => placeholder(ty, name),
        }
    };
    if st.force {
        return Some(st.names.iter().map(any_of).collect());
    }
    let mut names: BTreeSet<&Arc<str>> = st.added.iter().filter(|n| st.names.contains(*n)).collect();
    if changed_since_sent {
        match (&st.sent, &ts.delta_from) {
            (Some(sent), Some(d)) if d.previous_version == sent.version => {
                for n in d.changed.iter().chain(&d.removed) {
                    if let Some(n) = st.names.get(n) {
                        names.insert(n);
                    }
                }
            }
            (sent, _) => {
                for n in st.names.iter() {
                    let old = sent.as_ref().and_then(|s| s.resources.get(n));
                    let new = ts.resources.get(n);
                    let same = match (old, new) {
                        (Some(a), Some(b)) => a.version == b.version,
                        (None, None) => sent.is_some(),
                        _ => false,
                    };
                    if !same {
                        names.insert(n);
                    }
                }
            }
        }
    }
    if names.is_empty() {
        return None;
    }
    Some(names.into_iter().map(any_of).collect())
}

fn placeholder(ty: ResourceType, name: &str) -> Bytes {
    Resource::placeholder(ty, name).map(|r| r.any).unwrap_or_default()
}
