//! Pieces shared by the xDS stream targets: the reader of their input format, a pool of
//! resource names, snapshots built from fuzzer-chosen content, protobuf field encoding in
//! unusual forms, and byte mutations.
//!
//! An input is read front to back in a plain layout (fixed-width numbers, a length byte before
//! each list and string), so that seeds are easy to write and a short input reads as zeros.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use voltha_xds::xds::cache::{Cache, GroupResources, Snapshot};
use voltha_xds::xds::resources::ResourceType;
use voltha_xds::xds::status::ClientStatus;
use voltha_xds::xds::stream::StreamEvent;

/// The most requests (or other steps) one input drives: enough for subscribe, ACK, change,
/// NACK, resubscribe; few enough that an input stays fast.
pub const MAX_STEPS: usize = 48;

/// A type URL none of the four served types has.
pub const UNKNOWN_TYPE_URL: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

/// Whether to say what each step did (`FUZZ_TRACE=1`, to see which path a seed takes).
pub fn trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

/// Reads an input front to back; past its end every number reads as 0 and every list as
/// empty.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (b, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        b
    }

    /// A length byte, then that many bytes.
    pub fn blob(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.bytes(n)
    }

    /// A length (two bytes, little-endian), then that many bytes.
    pub fn long_blob(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }

    /// A blob as text (invalid UTF-8 replaced).
    pub fn string(&mut self) -> String {
        String::from_utf8_lossy(self.blob()).into_owned()
    }

    /// A count byte (taken modulo `most + 1`), then that many items.
    pub fn list<T>(&mut self, most: usize, mut item: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = usize::from(self.u8()) % (most + 1);
        (0..n).map(|_| item(self)).collect()
    }

    /// A list of items.
    pub fn items(&mut self) -> Vec<Item> {
        self.list(32, |r| Item {
            edge: r.u8() & 1 == 1,
            ty: r.u8(),
            name: r.u8(),
            body: r.u8(),
        })
    }

    /// A list of mutations.
    pub fn mutations(&mut self) -> Vec<Mutation> {
        self.list(4, |r| {
            let kind = r.u8();
            let at = r.u16();
            match kind % 4 {
                0 => Mutation::Flip { at, xor: r.u8() },
                1 => Mutation::Cut(at),
                2 => Mutation::Insert {
                    at,
                    bytes: r.blob().to_vec(),
                },
                _ => Mutation::Remove { at, len: r.u8() },
            }
        })
    }

    /// A list of swaps.
    pub fn swaps(&mut self) -> Vec<(u8, u8)> {
        self.list(8, |r| (r.u8(), r.u8()))
    }

    /// An unknown field.
    pub fn unknown(&mut self) -> Unknown {
        Unknown {
            tag: self.u16(),
            wire_type: self.u8(),
            value: u64::from(self.u32()),
            bytes: self.blob().to_vec(),
        }
    }
}

/// The names every input can use, chosen around the widths the SotW ACK check compares at once
/// (1..=3, 4..=8, 9..=16, 17..=32, longer) and around the one-byte length form (127, 128).
pub fn base_names() -> Vec<String> {
    let mut names: Vec<String> = ["a", "b", "c", "ab", "abcd", "vcore-0", "vcore-1", "voltha-rw-core-0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for n in [17usize, 32, 33, 127, 128, 200] {
        names.push(format!("c{}", "x".repeat(n - 1)));
    }
    names
}

/// The base names followed by the input's own (each cut to 300 bytes at a character).
pub fn name_pool(extra: &[String]) -> Vec<String> {
    let mut pool = base_names();
    for e in extra.iter().take(8) {
        let mut end = e.len().min(300);
        while !e.is_char_boundary(end) {
            end -= 1;
        }
        pool.push(e[..end].to_string());
    }
    pool
}

pub fn pick<'a>(pool: &'a [String], i: u8) -> &'a str {
    &pool[usize::from(i) % pool.len()]
}

/// One resource of a snapshot: group (default or `edge`), type, name from the pool, content.
#[derive(Debug, Clone)]
pub struct Item {
    pub edge: bool,
    pub ty: u8,
    pub name: u8,
    pub body: u8,
}

pub fn resource_type(i: u8) -> ResourceType {
    ResourceType::ALL[usize::from(i) % 4]
}

/// Publishes `items` (the last of a group, type and name wins) as the cache's next snapshot.
pub fn publish(cache: &Cache, items: &[Item], pool: &[String]) -> Option<Arc<Snapshot>> {
    let mut by_group: BTreeMap<&str, BTreeMap<(ResourceType, &str), u8>> = BTreeMap::new();
    by_group.insert("default", BTreeMap::new());
    for it in items.iter().take(64) {
        let group = if it.edge { "edge" } else { "default" };
        let ty = resource_type(it.ty);
        by_group
            .entry(group)
            .or_default()
            .insert((ty, pick(pool, it.name)), it.body);
    }
    let mut groups = BTreeMap::new();
    for (g, content) in by_group {
        // Each resource's content is told apart by one number, its `body`.
        let mut input = GroupResources::default();
        for ((ty, name), body) in content {
            let name = name.to_string();
            match ty {
                ResourceType::Cluster => input.clusters.push(Cluster {
                    name,
                    connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                        seconds: i64::from(body),
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ResourceType::Endpoint => input.endpoints.push(ClusterLoadAssignment {
                    cluster_name: name,
                    endpoints: vec![LocalityLbEndpoints {
                        priority: u32::from(body),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ResourceType::Listener => input.listeners.push(Listener {
                    name,
                    stat_prefix: body.to_string(),
                    ..Default::default()
                }),
                ResourceType::Route => input.routes.push(RouteConfiguration {
                    name,
                    internal_only_headers: vec![body.to_string()],
                    ..Default::default()
                }),
            }
        }
        groups.insert(g.to_string(), input);
    }
    match cache.publish(&groups, "default", std::time::Instant::now()) {
        Ok(snap) => snap,
        Err(e) => panic!("a snapshot of distinct names is refused: {e}"),
    }
}

/// A stream's status record, as the server keeps it.
pub fn status() -> ClientStatus {
    ClientStatus::new(1, "fuzz", "ads")
}

/// Folds a stream's events into its status record, as the server does after each turn.
pub fn fold(st: &mut ClientStatus, events: &[StreamEvent]) {
    for e in events {
        st.apply(e, std::time::SystemTime::now());
    }
}

/// An event with its clock readings zeroed, to compare two streams' events.
pub fn timeless(e: StreamEvent) -> StreamEvent {
    match e {
        StreamEvent::Acked { ty, version, .. } => StreamEvent::Acked {
            ty,
            version,
            after: std::time::Duration::ZERO,
        },
        other => other,
    }
}

/// What two streams' status records must agree on (everything but clock readings).
pub fn status_view(st: &ClientStatus) -> String {
    let mut out = format!("node {:?}/{:?} group {:?}\n", st.node_id, st.node_cluster, st.group);
    for (ty, t) in &st.types {
        let names: Vec<&str> = t.name_set.iter().map(|n| &**n).collect();
        out.push_str(&format!(
            "{ty}: sub {} wild {} n {} {:?} sent {:?}/{:?} acked {:?} nack {:?} r{} a{} n{}\n",
            t.subscribed,
            t.wildcard,
            t.names,
            names,
            t.last_sent_version,
            t.last_sent_nonce,
            t.last_acked_version,
            t.last_nack.as_ref().map(|n| (&n.version, &n.nonce, &n.error)),
            t.responses,
            t.acks,
            t.nacks
        ));
    }
    out
}

/// A protobuf key.
pub fn key(tag: u32, wire_type: u8) -> Vec<u8> {
    varint(u64::from(tag) << 3 | u64::from(wire_type), 0)
}

/// A varint, padded with `pad` extra continuation bytes (a non-minimal form that decoders
/// accept).
pub fn varint(mut v: u64, pad: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            if pad == 0 {
                out.push(b);
            } else {
                out.push(b | 0x80);
                for _ in 1..pad {
                    out.push(0x80);
                }
                out.push(0);
            }
            return out;
        }
        out.push(b | 0x80);
    }
}

/// A length-delimited field, its length padded by `pad` bytes.
pub fn len_field(tag: u32, payload: &[u8], pad: usize) -> Vec<u8> {
    let mut out = key(tag, 2);
    out.extend(varint(payload.len() as u64, pad));
    out.extend_from_slice(payload);
    out
}

/// A field the message does not define (decoders skip it), of each wire type.
#[derive(Debug, Clone)]
pub struct Unknown {
    pub tag: u16,
    pub wire_type: u8,
    pub value: u64,
    pub bytes: Vec<u8>,
}

impl Unknown {
    /// Its bytes, with a field number from `first_free` up.
    pub fn encode(&self, first_free: u32) -> Vec<u8> {
        let tag = first_free + u32::from(self.tag % 1000);
        match self.wire_type % 4 {
            0 => {
                let mut out = key(tag, 0);
                out.extend(varint(self.value, 0));
                out
            }
            1 => {
                let mut out = key(tag, 1);
                out.extend(self.value.to_le_bytes());
                out
            }
            2 => len_field(tag, &self.bytes, 0),
            _ => {
                let mut out = key(tag, 5);
                out.extend((self.value as u32).to_le_bytes());
                out
            }
        }
    }
}

/// A change to the encoded bytes.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip { at: u16, xor: u8 },
    Cut(u16),
    Insert { at: u16, bytes: Vec<u8> },
    Remove { at: u16, len: u8 },
}

pub fn mutate(raw: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations.iter().take(4) {
        let at = |i: u16| usize::from(i) % (raw.len() + 1);
        match m {
            Mutation::Flip { at: i, xor } => {
                if !raw.is_empty() {
                    let i = usize::from(*i) % raw.len();
                    raw[i] ^= xor;
                }
            }
            Mutation::Cut(i) => {
                let i = at(*i);
                raw.truncate(i);
            }
            Mutation::Insert { at: i, bytes } => {
                let i = at(*i);
                raw.splice(i..i, bytes.iter().take(16).copied());
            }
            Mutation::Remove { at: i, len } => {
                let i = at(*i);
                let end = (i + usize::from(*len)).min(raw.len());
                raw.drain(i..end);
            }
        }
    }
}

/// Applies `swaps` (indices taken modulo the length) to `segments`.
pub fn permute<T>(segments: &mut [T], swaps: &[(u8, u8)]) {
    if segments.is_empty() {
        return;
    }
    for (i, j) in swaps.iter().take(8) {
        let n = segments.len();
        segments.swap(usize::from(*i) % n, usize::from(*j) % n);
    }
}
