//! CSDS responses written straight to the wire, from the stream table and the current snapshot.
//!
//! A `ClientStatusResponse` is written as protobuf by hand: each `ClientConfig` and each
//! `GenericXdsConfig` is a length-prefixed field whose small fields are copied into shared
//! blocks of 16 KiB, and whose `xds_config` is the snapshot's own encoded `Any` (the same
//! reference-counted bytes every xDS stream sends), never copied or re-encoded. Lengths are
//! computed before anything is written, so a response over the size limit is refused before it
//! costs any memory. Fields are written in an order of their own (protobuf readers accept any
//! order): the per-type constant fields of an entry are encoded once per Envoy and type.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use envoy_types::pb::envoy::service::status::v3::ConfigStatus;
use envoy_types::pb::google::protobuf::Timestamp;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

use super::filter::NodeFilter;
use crate::cache::{Snapshot, TypeSnapshot};
use crate::resources::ResourceType;
use crate::status::{ClientStatus, SyncState, TypeStatus};

/// Small fields are written into blocks of this size, shared by the pieces cut from them.
const BLOCK: usize = 16 * 1024;
/// Pieces at most this large are copied into a DATA chunk when sent; larger ones go out as
/// they are.
const INLINE_MAX: usize = 1024;
/// Small pieces are gathered into DATA chunks of about this size.
const CHUNK: usize = 16 * 1024;

// Field numbers (envoy/service/status/v3/csds.proto, envoy/config/core/v3/base.proto).
const RESPONSE_CONFIG: u32 = 1;
const CONFIG_NODE: u32 = 1;
const CONFIG_GENERIC: u32 = 3;
const NODE_ID: u32 = 1;
const NODE_CLUSTER: u32 = 2;
const GENERIC_TYPE_URL: u32 = 1;
const GENERIC_NAME: u32 = 2;
const GENERIC_VERSION: u32 = 3;
const GENERIC_XDS_CONFIG: u32 = 4;
const GENERIC_LAST_UPDATED: u32 = 5;
const GENERIC_CONFIG_STATUS: u32 = 6;
const GENERIC_CLIENT_STATUS: u32 = 7;
const GENERIC_ERROR_STATE: u32 = 8;

/// One Envoy: its streams' statuses merged per type (newest stream wins).
pub struct MergedNode<'a> {
    /// The client's `node.id`.
    pub node_id: &'a str,
    /// The client's `node.cluster`.
    pub node_cluster: &'a str,
    /// The node group it is served from, once known.
    pub group: Option<&'a str>,
    /// Its open streams.
    pub streams: Vec<&'a ClientStatus>,
    /// Its status per type, merged over its streams.
    pub types: BTreeMap<ResourceType, &'a TypeStatus>,
}

/// Groups the streams (the client table's records, or plain statuses) by node (id and
/// cluster), ordered by node id. Streams that have not sent a request yet (no node known) are
/// left out.
pub fn merge_nodes<S: Borrow<ClientStatus>>(streams: &[S]) -> Vec<MergedNode<'_>> {
    let mut by_node: BTreeMap<(&str, &str), MergedNode<'_>> = BTreeMap::new();
    let mut ordered: Vec<&ClientStatus> = streams
        .iter()
        .map(Borrow::borrow)
        .filter(|s: &&ClientStatus| !s.node_id.is_empty() || !s.types.is_empty())
        .collect();
    ordered.sort_by_key(|s| s.stream_id);
    for s in ordered {
        let n = by_node
            .entry((s.node_id.as_str(), s.node_cluster.as_str()))
            .or_insert_with(|| MergedNode {
                node_id: &s.node_id,
                node_cluster: &s.node_cluster,
                group: None,
                streams: Vec::new(),
                types: BTreeMap::new(),
            });
        n.streams.push(s);
        if s.group.is_some() {
            n.group = s.group.as_deref();
        }
        for ty in ResourceType::ALL {
            if let Some(t) = s.types.get(ty.short()) {
                // Streams come in id order: a later stream replaces an earlier one's view.
                n.types.insert(ty, t);
            }
        }
    }
    by_node.into_values().collect()
}

/// A response refused by the size limit: how many Envoys it covered.
#[derive(Debug)]
pub(crate) struct TooLarge {
    pub nodes: usize,
}

/// An encoded response: the gRPC message (with its 5-byte prefix) as pieces, some cut from
/// blocks of small fields, the others the snapshot's shared resources.
pub(crate) struct Encoded {
    pieces: Vec<Bytes>,
    /// The message's length, without the prefix.
    len: usize,
}

impl Encoded {
    /// The protobuf message's length (the gRPC prefix not counted).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn into_chunks(self) -> Chunks {
        Chunks {
            pieces: self.pieces.into_iter(),
        }
    }

    #[cfg(test)]
    pub(crate) fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }
}

/// Encodes the status of every Envoy `filter` selects; `TooLarge` once the message would pass
/// `limit` bytes.
pub(crate) fn encode<S: Borrow<ClientStatus>>(
    streams: &[S],
    snapshot: Option<&Snapshot>,
    filter: &NodeFilter,
    contents: bool,
    limit: usize,
) -> Result<Encoded, TooLarge> {
    let nodes: Vec<MergedNode<'_>> = merge_nodes(streams)
        .into_iter()
        .filter(|n| filter.matches(n.node_id))
        .collect();
    let mut w = Writer {
        // The gRPC prefix goes first, once the length is known.
        pieces: vec![Bytes::new()],
        block: BytesMut::new(),
    };
    let mut len = 0usize;
    for n in &nodes {
        let group = snapshot.and_then(|s| match n.group {
            Some(g) => s.groups.get(g),
            None => s.group_for(n.node_cluster),
        });
        let types: Vec<TypeEntries<'_>> = n
            .types
            .iter()
            .map(|(ty, ts)| TypeEntries::new(*ty, ts, group.map(|g| &**g.get(*ty)), contents))
            .collect();
        let node_msg = str_len(NODE_ID, n.node_id) + str_len(NODE_CLUSTER, n.node_cluster);
        let mut config = field_len(CONFIG_NODE, node_msg);
        for t in &types {
            for name in t.names() {
                config += field_len(CONFIG_GENERIC, t.entry_len(name));
            }
        }
        len += field_len(RESPONSE_CONFIG, config);
        if len > limit {
            return Err(TooLarge { nodes: nodes.len() });
        }
        let head = field_len(RESPONSE_CONFIG, config) - config + field_len(CONFIG_NODE, node_msg);
        let buf = w.room(head);
        put_len_prefix(buf, RESPONSE_CONFIG, config);
        put_len_prefix(buf, CONFIG_NODE, node_msg);
        put_str(buf, NODE_ID, n.node_id);
        put_str(buf, NODE_CLUSTER, n.node_cluster);
        for t in &types {
            for name in t.names() {
                t.write_entry(&mut w, name);
            }
        }
    }
    w.flush();
    let mut prefix = Vec::with_capacity(5);
    prefix.push(0); // not compressed
                    // `limit` is at most u32::MAX (checked with the configuration).
    prefix.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    w.pieces[0] = Bytes::from(prefix);
    Ok(Encoded { pieces: w.pieces, len })
}

/// Where the response is written: pieces in order, small fields in a shared block.
struct Writer {
    pieces: Vec<Bytes>,
    block: BytesMut,
}

impl Writer {
    /// The block, with room for `n` more bytes.
    fn room(&mut self, n: usize) -> &mut BytesMut {
        if self.block.capacity() - self.block.len() < n {
            self.flush();
            self.block = BytesMut::with_capacity(n.max(BLOCK));
        }
        &mut self.block
    }

    /// Cuts what the block holds into a piece (sharing the block's memory).
    fn flush(&mut self) {
        if !self.block.is_empty() {
            self.pieces.push(self.block.split().freeze());
        }
    }

    /// A shared piece (a resource as the snapshot holds it), after what is written so far.
    fn shared(&mut self, b: &Bytes) {
        self.flush();
        self.pieces.push(b.clone());
    }
}

/// One Envoy's resources of one type: the fields every entry of the type has in common,
/// encoded once.
struct TypeEntries<'a> {
    ts: &'a TypeStatus,
    current: Option<&'a TypeSnapshot>,
    contents: bool,
    /// `type_url`, `version_info`, `last_updated`, `config_status`, `client_status` and
    /// `error_state` of an entry the snapshot holds (or of every entry without a snapshot).
    found: Vec<u8>,
    /// The same for a name the snapshot does not hold.
    missing: Vec<u8>,
}

impl<'a> TypeEntries<'a> {
    fn new(ty: ResourceType, ts: &'a TypeStatus, current: Option<&'a TypeSnapshot>, contents: bool) -> Self {
        let state = ts.sync_state(current.map(|c| c.version.as_str()));
        let config_status = match state {
            SyncState::Nacked => ConfigStatus::Error,
            SyncState::Synced => ConfigStatus::Synced,
            SyncState::Stale if ts.in_flight() => ConfigStatus::Stale,
            SyncState::Stale | SyncState::NotSent => ConfigStatus::NotSent,
        };
        let client_status = match state {
            SyncState::Nacked => ClientResourceStatus::Nacked,
            SyncState::Synced => ClientResourceStatus::Acked,
            SyncState::Stale if ts.in_flight() => ClientResourceStatus::Requested,
            SyncState::Stale => ClientResourceStatus::Acked,
            SyncState::NotSent => ClientResourceStatus::Requested,
        };
        let missing_status = match state {
            SyncState::Nacked => ClientResourceStatus::Nacked,
            _ => ClientResourceStatus::DoesNotExist,
        };
        let error_state = match (&ts.last_nack, state) {
            (Some(n), SyncState::Nacked) => Some(UpdateFailureState {
                last_update_attempt: Some(timestamp(n.at)),
                details: n.error.clone(),
                version_info: n.version.clone(),
                ..Default::default()
            }),
            _ => None,
        };
        let last_updated = ts.last_ack_at.map(timestamp);
        let version = ts.last_acked_version.as_deref().unwrap_or_default();
        let common = |client: ClientResourceStatus| {
            let mut v = Vec::new();
            put_str(&mut v, GENERIC_TYPE_URL, ty.type_url());
            put_str(&mut v, GENERIC_VERSION, version);
            if let Some(t) = &last_updated {
                prost::encoding::message::encode(GENERIC_LAST_UPDATED, t, &mut v);
            }
            if config_status as i32 != 0 {
                prost::encoding::int32::encode(GENERIC_CONFIG_STATUS, &(config_status as i32), &mut v);
            }
            if client as i32 != 0 {
                prost::encoding::int32::encode(GENERIC_CLIENT_STATUS, &(client as i32), &mut v);
            }
            if let Some(e) = &error_state {
                prost::encoding::message::encode(GENERIC_ERROR_STATE, e, &mut v);
            }
            v
        };
        TypeEntries {
            ts,
            current,
            contents,
            found: common(client_status),
            missing: common(missing_status),
        }
    }

    /// The names reported, in order: the subscribed ones, and every resource of the snapshot
    /// for a wildcard subscription.
    fn names(&self) -> impl Iterator<Item = &'a str> + 'a {
        let subscribed = self.ts.name_set.iter().map(|n| &**n);
        let all = self
            .current
            .filter(|_| self.ts.wildcard)
            .into_iter()
            .flat_map(|c| c.resources.keys().map(|k| &**k));
        union(subscribed, all)
    }

    /// The common fields and the contents of one name's entry.
    fn parts(&self, name: &str) -> (&[u8], Option<&'a Bytes>) {
        match self.current {
            Some(c) => match c.resources.get(name) {
                Some(r) => (&self.found, Some(&r.any).filter(|_| self.contents)),
                None => (&self.missing, None),
            },
            None => (&self.found, None),
        }
    }

    fn entry_len(&self, name: &str) -> usize {
        let (common, any) = self.parts(name);
        common.len() + str_len(GENERIC_NAME, name) + any.map_or(0, |a| field_len(GENERIC_XDS_CONFIG, a.len()))
    }

    fn write_entry(&self, w: &mut Writer, name: &str) {
        let (common, any) = self.parts(name);
        let len = self.entry_len(name);
        let small = field_len(CONFIG_GENERIC, len) - any.map_or(0, Bytes::len);
        let buf = w.room(small);
        put_len_prefix(buf, CONFIG_GENERIC, len);
        buf.put_slice(common);
        put_str(buf, GENERIC_NAME, name);
        if let Some(any) = any {
            put_len_prefix(buf, GENERIC_XDS_CONFIG, any.len());
            w.shared(any);
        }
    }
}

/// The sorted union of two sorted sequences.
fn union<'a>(
    a: impl Iterator<Item = &'a str> + 'a,
    b: impl Iterator<Item = &'a str> + 'a,
) -> impl Iterator<Item = &'a str> + 'a {
    let mut a = a.peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) => match x.cmp(y) {
            Ordering::Less => a.next(),
            Ordering::Greater => b.next(),
            Ordering::Equal => {
                b.next();
                a.next()
            }
        },
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

/// The encoded length of a length-delimited field holding `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A string field's encoded length (an empty string is left out, as proto3 does).
fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        field_len(tag, s.len())
    }
}

fn put_len_prefix(buf: &mut impl BufMut, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_str(buf: &mut impl BufMut, tag: u32, s: &str) {
    if !s.is_empty() {
        put_len_prefix(buf, tag, s.len());
        buf.put_slice(s.as_bytes());
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// An encoded response on its way out, as HTTP/2 DATA chunks: small pieces gathered into
/// chunks of about 16 KiB (copied only when HTTP/2 asks for the next chunk), large ones sent as
/// they are.
pub(crate) struct Chunks {
    pieces: std::vec::IntoIter<Bytes>,
}

impl Chunks {
    pub(crate) fn next_chunk(&mut self) -> Option<Bytes> {
        let first = self.pieces.next()?;
        if first.len() > INLINE_MAX {
            return Some(first);
        }
        let mut want = first.len();
        let mut more = 0;
        for p in self.pieces.as_slice() {
            if p.len() > INLINE_MAX || want + p.len() > CHUNK {
                break;
            }
            want += p.len();
            more += 1;
        }
        if more == 0 {
            return Some(first);
        }
        let mut buf = BytesMut::with_capacity(want);
        buf.put_slice(&first);
        for p in self.pieces.by_ref().take(more) {
            buf.put_slice(&p);
        }
        Some(buf.freeze())
    }
}
