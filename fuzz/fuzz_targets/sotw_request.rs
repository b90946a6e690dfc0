//! SotW request decoding, against prost as the oracle.
//!
//! Two SotW streams in the same state are driven in lock step through one script (snapshots,
//! requests). Stream A decodes each request as the server does (`SotwStream::decode`: the ACK
//! check that skips a repeat of the held names, in one pass or field by field); stream B gets
//! prost's plain decode. Checked after every step:
//! - both decodes agree on whether the bytes decode;
//! - where A's decode leaves names out, the names prost reads are exactly the set A holds for
//!   the request's type (each once, in any order), and every other field is prost's; where it
//!   does not, its request is prost's, field for field;
//! - both streams then answer alike: the same result, events, responses and status.
//!
//! Requests are built from the script as Envoy encodes them (fields in number order) or in
//! unusual but valid forms (fields reordered, names split around other fields, padded lengths,
//! unknown fields, a second type URL), then optionally damaged byte-wise; raw bytes are fed too.

#![no_main]

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, ResourceLocator};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use voltha_xds::xds::cache::Cache;
use voltha_xds::xds::names::NameSets;
use voltha_xds::xds::resources::ResourceType;
use voltha_xds::xds::status::ClientStatus;
use voltha_xds::xds::stream::{Limits, Scope, SotwStream};

#[path = "common.rs"]
mod common;
use common::*;

#[derive(Debug)]
struct Script {
    /// 0: ADS; 1..=4: the per-type service of CDS, EDS, LDS, RDS.
    scope: u8,
    /// 0: the default limit; else the most names per type.
    max_names: u8,
    extra_names: Vec<String>,
    content: Vec<Item>,
    steps: Vec<Step>,
}

#[derive(Debug)]
enum Step {
    Request(Req),
    Raw(Vec<u8>),
    Publish(Vec<Item>),
}

/// A version or nonce: none, the last response's for the type, the one before it (stale), or
/// any string.
#[derive(Debug, Clone, Copy)]
enum Pick {
    Empty,
    Last,
    Previous,
    Other(u8),
}

#[derive(Debug)]
struct Req {
    /// 0..=3: a served type; 4: a type not served; 5: no type URL.
    ty: u8,
    names: Vec<u8>,
    star: bool,
    version: Pick,
    nonce: Pick,
    /// 0: no node; 1: the default group's; 2: the `edge` group's; 3: a cluster no group has.
    node: u8,
    nack: Option<String>,
    locator: bool,
    /// Bit k: the k-th name's length in a padded (two-byte) form.
    padded: u16,
    unknown: Option<Unknown>,
    second_type: Option<u8>,
    swaps: Vec<(u8, u8)>,
    mutations: Vec<Mutation>,
}

/// Reads a script. Layout: scope, max_names, the extra names (a list of strings), the
/// content (a list of items), then steps to the end: a kind byte, and for a request the
/// fields of [`Req`] in order (see [`read_req`]), for raw bytes a two-byte length and the bytes,
/// for a publish a list of items.
fn read_script(data: &[u8]) -> Script {
    let mut r = Reader(data);
    let scope = r.u8();
    let max_names = r.u8();
    let extra_names = r.list(8, Reader::string);
    let content = r.items();
    let mut steps = Vec::new();
    while !r.is_empty() && steps.len() < MAX_STEPS {
        steps.push(match r.u8() % 3 {
            0 => Step::Request(read_req(&mut r)),
            1 => Step::Raw(r.long_blob().to_vec()),
            _ => Step::Publish(r.items()),
        });
    }
    Script {
        scope,
        max_names,
        extra_names,
        content,
        steps,
    }
}

fn read_pick(r: &mut Reader) -> Pick {
    match r.u8() {
        0 => Pick::Empty,
        1 => Pick::Last,
        2 => Pick::Previous,
        n => Pick::Other(n),
    }
}

/// Layout: type, flags (1 star, 2 locator, 4 NACK, 8 unknown field, 16 second type URL),
/// version, nonce, node, names (a list of pool indices), padded (two bytes), then the NACK
/// text, the unknown field and the second type if flagged, swaps, mutations.
fn read_req(r: &mut Reader) -> Req {
    let ty = r.u8();
    let flags = r.u8();
    let version = read_pick(r);
    let nonce = read_pick(r);
    let node = r.u8();
    let names = r.list(40, Reader::u8);
    let padded = r.u16();
    let nack = (flags & 4 != 0).then(|| r.string());
    let unknown = (flags & 8 != 0).then(|| r.unknown());
    let second_type = (flags & 16 != 0).then(|| r.u8());
    Req {
        ty,
        names,
        star: flags & 1 != 0,
        version,
        nonce,
        node,
        nack,
        locator: flags & 2 != 0,
        padded,
        unknown,
        second_type,
        swaps: r.swaps(),
        mutations: r.mutations(),
    }
}

/// Versions and nonces of the responses sent, per type (the same on both streams).
#[derive(Default)]
struct Sent {
    by_type: [Vec<(String, String)>; 4],
}

impl Sent {
    fn pick(&self, ty: Option<ResourceType>, p: Pick, version: bool) -> String {
        let list = ty.map(|t| &self.by_type[t as usize][..]).unwrap_or(&[]);
        let of = |i: usize| {
            list.len()
                .checked_sub(i)
                .and_then(|k| list.get(k))
                .map(|(v, n)| if version { v.clone() } else { n.clone() })
                .unwrap_or_default()
        };
        match p {
            Pick::Empty => String::new(),
            Pick::Last => of(1),
            Pick::Previous => of(2),
            Pick::Other(n) => format!("{n}"),
        }
    }
}

fn type_url(ty: u8) -> (Option<ResourceType>, String) {
    match ty % 6 {
        t @ 0..=3 => {
            let ty = ResourceType::ALL[usize::from(t)];
            (Some(ty), ty.type_url().to_string())
        }
        4 => (None, UNKNOWN_TYPE_URL.to_string()),
        _ => (None, String::new()),
    }
}

/// The request's bytes: each field encoded on its own, names one field each, in the script's
/// order (field-number order, as Envoy writes it, unless swapped), then damaged.
fn encode(r: &Req, pool: &[String], sent: &Sent, scope: Scope) -> Vec<u8> {
    let (ty, url) = type_url(r.ty);
    let ty_for_picks = ty.or(match scope {
        Scope::Single(t) => Some(t),
        Scope::Ads => None,
    });
    let one = |m: DiscoveryRequest| m.encode_to_vec();
    let mut segments: Vec<Vec<u8>> = Vec::new();
    segments.push(one(DiscoveryRequest {
        version_info: sent.pick(ty_for_picks, r.version, true),
        ..Default::default()
    }));
    let cluster = match r.node % 4 {
        1 => Some("default"),
        2 => Some("edge"),
        3 => Some("nowhere"),
        _ => None,
    };
    segments.push(one(DiscoveryRequest {
        node: cluster.map(|c| Node {
            id: "envoy-0".into(),
            cluster: c.into(),
            ..Default::default()
        }),
        ..Default::default()
    }));
    if r.star {
        segments.push(len_field(3, b"*", 0));
    }
    for (k, &i) in r.names.iter().take(40).enumerate() {
        let pad = usize::from(k < 16 && r.padded & (1 << k) != 0);
        segments.push(len_field(3, pick(pool, i).as_bytes(), pad));
    }
    segments.push(one(DiscoveryRequest {
        type_url: url,
        ..Default::default()
    }));
    segments.push(one(DiscoveryRequest {
        response_nonce: sent.pick(ty_for_picks, r.nonce, false),
        ..Default::default()
    }));
    segments.push(one(DiscoveryRequest {
        error_detail: r.nack.as_ref().map(|m| RpcStatus {
            code: 3,
            message: m.chars().take(64).collect(),
            details: vec![],
        }),
        resource_locators: if r.locator {
            vec![ResourceLocator {
                name: pick(pool, 0).to_string(),
                ..Default::default()
            }]
        } else {
            vec![]
        },
        ..Default::default()
    }));
    if let Some(u) = &r.unknown {
        segments.push(u.encode(8));
    }
    if let Some(t) = r.second_type {
        segments.push(one(DiscoveryRequest {
            type_url: type_url(t).1,
            ..Default::default()
        }));
    }
    permute(&mut segments, &r.swaps);
    let mut raw = segments.concat();
    mutate(&mut raw, &r.mutations);
    raw
}

struct Pair {
    a: SotwStream,
    b: SotwStream,
    sa: ClientStatus,
    sb: ClientStatus,
    scope: Scope,
    sent: Sent,
}

impl Pair {
    /// Feeds `raw` to both streams; `false` when the stream would end here.
    fn request(&mut self, raw: &[u8]) -> bool {
        let full = DiscoveryRequest::decode(raw);
        let got = self.a.decode(raw);
        let (got, full) = match (got, full) {
            (Ok(g), Ok(f)) => (g, f),
            (Err(e), Err(_)) => {
                if trace() {
                    eprintln!("undecodable ({e})");
                }
                return true; // the stream ends; its state is unchanged
            }
            (g, f) => panic!("the decodes disagree: ours {g:?}, prost's {f:?}"),
        };
        if got.resource_names != full.resource_names {
            assert!(
                got.resource_names.is_empty(),
                "names partly left out: {:?} of {:?}",
                got.resource_names,
                full.resource_names
            );
            // Taken as a repeat: the request's type is one held, with exactly these names.
            let ty = match self.scope {
                Scope::Ads => ResourceType::from_type_url(&full.type_url),
                Scope::Single(t) if full.type_url.is_empty() || full.type_url == t.type_url() => Some(t),
                Scope::Single(_) => None,
            };
            let ty = ty.unwrap_or_else(|| panic!("a repeat of type {:?}", full.type_url));
            let held: Vec<String> = {
                let t = self
                    .sa
                    .types
                    .get(ty.short())
                    .expect("a repeat of a type never subscribed");
                t.name_set.iter().map(|n| n.to_string()).collect()
            };
            let mut names = full.resource_names.clone();
            names.sort();
            assert_eq!(names, held, "taken as a repeat of the held names");
            let rest = DiscoveryRequest {
                resource_names: Vec::new(),
                ..full.clone()
            };
            assert_eq!(*got, rest, "every other field as prost reads it");
            if trace() {
                eprintln!("{} names taken as the held set of {}", names.len(), ty.short());
            }
        } else {
            assert_eq!(*got, full);
            if trace() {
                eprintln!(
                    "decoded in full: {} names of {:?}",
                    full.resource_names.len(),
                    full.type_url
                );
            }
        }
        let now = std::time::Instant::now();
        let ra = self.a.on_request(got, now);
        let rb = self.b.on_request(full, now);
        assert_eq!(ra, rb, "the two streams answer the request alike");
        if trace() {
            eprintln!("  -> {ra:?}");
        }
        if ra.is_err() {
            // The server ends the stream here: it is not polled again.
            return false;
        }
        self.compare();
        true
    }

    fn snapshot(&mut self, snap: Option<Arc<voltha_xds::xds::cache::Snapshot>>) {
        self.a.on_snapshot(snap.clone());
        self.b.on_snapshot(snap);
        self.compare();
    }

    /// Polls both and compares everything observable.
    fn compare(&mut self) {
        let now = std::time::Instant::now();
        let pa = self.a.poll(now);
        let pb = self.b.poll(now);
        assert_eq!(pa, pb, "responses");
        for r in &pa {
            if trace() {
                eprintln!(
                    "  sent {} v{} nonce {} ({} resources)",
                    r.type_url,
                    r.version_info,
                    r.nonce,
                    r.resources.len()
                );
            }
            if let Some(ty) = ResourceType::from_type_url(&r.type_url) {
                self.sent.by_type[ty as usize].push((r.version_info.clone(), r.nonce.clone()));
            }
        }
        let ea: Vec<_> = self.a.take_events().into_iter().map(timeless).collect();
        let eb: Vec<_> = self.b.take_events().into_iter().map(timeless).collect();
        assert_eq!(ea, eb, "events");
        fold(&mut self.sa, &ea);
        fold(&mut self.sb, &eb);
        assert_eq!(status_view(&self.sa), status_view(&self.sb), "status");
    }
}

fuzz_target!(|data: &[u8]| {
    let s = read_script(data);
    let pool = name_pool(&s.extra_names);
    let scope = match s.scope % 5 {
        0 => Scope::Ads,
        n => Scope::Single(ResourceType::ALL[usize::from(n - 1)]),
    };
    let limits = Limits {
        max_names: match s.max_names {
            0 => Limits::default().max_names,
            n => 1 + usize::from(n % 16),
        },
    };
    let cache = Cache::new();
    publish(&cache, &s.content, &pool);
    let names = Arc::new(NameSets::default());
    let mut p = Pair {
        a: SotwStream::new(scope, limits, names.clone()),
        b: SotwStream::new(scope, limits, names),
        sa: status(),
        sb: status(),
        scope,
        sent: Sent::default(),
    };
    p.snapshot(cache.current());
    for step in s.steps.iter().take(MAX_STEPS) {
        let go_on = match step {
            Step::Request(r) => {
                let raw = encode(r, &pool, &p.sent, scope);
                p.request(&raw)
            }
            Step::Raw(raw) => p.request(raw),
            Step::Publish(items) => {
                if let Some(snap) = publish(&cache, items, &pool) {
                    p.snapshot(Some(snap));
                }
                true
            }
        };
        if !go_on {
            break;
        }
    }
});
