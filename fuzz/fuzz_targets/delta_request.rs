//! Delta request decoding, against prost as the oracle, and the Delta stream driven by it.
//!
//! Two Delta streams in the same state are driven in lock step through one script (snapshots,
//! requests): stream A decodes each request as the server does (`DeltaStream::decode`), stream
//! B gets prost's plain decode. Checked after every step:
//! - both decodes give the same result (the same request, or both an error);
//! - both streams answer alike: the same result, events, responses and status;
//! - every response is well formed: each resource decodes as a `Resource` of the response's
//!   type, is subscribed (by name or wildcard), and is not also removed; a removed name is
//!   not in the snapshot the stream serves; the subscription never exceeds the name limit.

#![no_main]

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, Resource as PbResource};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use voltha_xds::xds::cache::{Cache, Snapshot};
use voltha_xds::xds::names::NameSets;
use voltha_xds::xds::resources::{version_string, ResourceType};
use voltha_xds::xds::status::ClientStatus;
use voltha_xds::xds::stream::{DeltaStream, Limits, Scope};
use voltha_xds::xds::wire::DeltaDiscoveryResponse;

#[path = "common.rs"]
mod common;
use common::*;

#[derive(Debug)]
struct Script {
    scope: u8,
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

#[derive(Debug, Clone, Copy)]
enum Nonce {
    Empty,
    Last,
    Previous,
    Other(u8),
}

/// A version in `initial_resource_versions`: one this server issued for the resource now, or
/// any string.
#[derive(Debug, Clone, Copy)]
enum Held {
    Current,
    Other(u8),
}

#[derive(Debug)]
struct Req {
    ty: u8,
    subscribe: Vec<u8>,
    unsubscribe: Vec<u8>,
    star_subscribe: bool,
    star_unsubscribe: bool,
    initial: Vec<(u8, Held)>,
    nonce: Nonce,
    node: u8,
    nack: Option<String>,
    unknown: Option<Unknown>,
    swaps: Vec<(u8, u8)>,
    mutations: Vec<Mutation>,
}

/// Reads a script: as the SotW target's (scope, max_names, extra names, content, then steps of
/// a kind byte and its fields), with a Delta request laid out as [`read_req`] says.
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

/// Layout: type, flags (1 subscribe `*`, 2 unsubscribe `*`, 4 NACK, 8 unknown field), nonce
/// (0 none, 1 the last sent, 2 the one before, else that number), node, subscribe and
/// unsubscribe (lists of pool indices), initial versions (a list of a pool index and a version:
/// 0 the current one, else that number), then the NACK text and the unknown field if flagged,
/// swaps, mutations.
fn read_req(r: &mut Reader) -> Req {
    let ty = r.u8();
    let flags = r.u8();
    let nonce = match r.u8() {
        0 => Nonce::Empty,
        1 => Nonce::Last,
        2 => Nonce::Previous,
        n => Nonce::Other(n),
    };
    let node = r.u8();
    let subscribe = r.list(24, Reader::u8);
    let unsubscribe = r.list(24, Reader::u8);
    let initial = r.list(16, |r| {
        let name = r.u8();
        let held = match r.u8() {
            0 => Held::Current,
            n => Held::Other(n),
        };
        (name, held)
    });
    let nack = (flags & 4 != 0).then(|| r.string());
    let unknown = (flags & 8 != 0).then(|| r.unknown());
    Req {
        ty,
        subscribe,
        unsubscribe,
        star_subscribe: flags & 1 != 0,
        star_unsubscribe: flags & 2 != 0,
        initial,
        nonce,
        node,
        nack,
        unknown,
        swaps: r.swaps(),
        mutations: r.mutations(),
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

struct Pair {
    a: DeltaStream,
    b: DeltaStream,
    sa: ClientStatus,
    sb: ClientStatus,
    limits: Limits,
    snapshot: Option<Arc<Snapshot>>,
    /// Nonces sent, per type.
    nonces: [Vec<String>; 4],
}

impl Pair {
    fn encode(&self, r: &Req, pool: &[String], scope: Scope) -> Vec<u8> {
        let (ty, url) = type_url(r.ty);
        let ty = ty.or(match scope {
            Scope::Single(t) => Some(t),
            Scope::Ads => None,
        });
        let one = |m: DeltaDiscoveryRequest| m.encode_to_vec();
        let mut segments = Vec::new();
        let cluster = match r.node % 4 {
            1 => Some("default"),
            2 => Some("edge"),
            3 => Some("nowhere"),
            _ => None,
        };
        segments.push(one(DeltaDiscoveryRequest {
            node: cluster.map(|c| Node {
                id: "envoy-0".into(),
                cluster: c.into(),
                ..Default::default()
            }),
            ..Default::default()
        }));
        segments.push(one(DeltaDiscoveryRequest {
            type_url: url,
            ..Default::default()
        }));
        let names = |list: &[u8], star: bool| -> Vec<String> {
            let mut v: Vec<String> = list.iter().take(24).map(|&i| pick(pool, i).to_string()).collect();
            if star {
                v.push("*".into());
            }
            v
        };
        for n in names(&r.subscribe, r.star_subscribe) {
            segments.push(len_field(3, n.as_bytes(), 0));
        }
        for n in names(&r.unsubscribe, r.star_unsubscribe) {
            segments.push(len_field(4, n.as_bytes(), 0));
        }
        let current = |name: &str| -> String {
            let snap = self.snapshot.as_ref();
            let found = ty.and_then(|t| {
                snap?
                    .groups
                    .values()
                    .find_map(|g| g.get(t).resources.get(name).map(|r| version_string(r.version)))
            });
            found.unwrap_or_default()
        };
        let initial: HashMap<String, String> = r
            .initial
            .iter()
            .take(16)
            .map(|(i, held)| {
                let name = pick(pool, *i).to_string();
                let v = match held {
                    Held::Current => current(&name),
                    Held::Other(n) => format!("{n:x}"),
                };
                (name, v)
            })
            .collect();
        let list = ty.map(|t| &self.nonces[t as usize][..]).unwrap_or(&[]);
        let nonce = match r.nonce {
            Nonce::Empty => String::new(),
            Nonce::Last => list.last().cloned().unwrap_or_default(),
            Nonce::Previous => list.len().checked_sub(2).map(|k| list[k].clone()).unwrap_or_default(),
            Nonce::Other(n) => n.to_string(),
        };
        segments.push(one(DeltaDiscoveryRequest {
            initial_resource_versions: initial,
            response_nonce: nonce,
            error_detail: r.nack.as_ref().map(|m| RpcStatus {
                code: 3,
                message: m.chars().take(64).collect(),
                details: vec![],
            }),
            ..Default::default()
        }));
        if let Some(u) = &r.unknown {
            segments.push(u.encode(9));
        }
        permute(&mut segments, &r.swaps);
        let mut raw = segments.concat();
        mutate(&mut raw, &r.mutations);
        raw
    }

    fn request(&mut self, raw: &[u8]) -> bool {
        let full = DeltaDiscoveryRequest::decode(raw);
        let got = self.a.decode(raw);
        let (got, full) = match (got, full) {
            (Ok(g), Ok(f)) => (g, f),
            (Err(_), Err(_)) => return true,
            (g, f) => panic!("the decodes disagree: ours {g:?}, prost's {f:?}"),
        };
        assert_eq!(got, full, "our decode is prost's");
        let now = std::time::Instant::now();
        let ra = self.a.on_request(got, now);
        let rb = self.b.on_request(full, now);
        assert_eq!(ra, rb, "the two streams answer the request alike");
        if ra.is_err() {
            // The server ends the stream here: it is not polled again.
            return false;
        }
        self.compare();
        true
    }

    fn on_snapshot(&mut self, snap: Option<Arc<Snapshot>>) {
        self.snapshot = snap.clone();
        self.a.on_snapshot(snap.clone());
        self.b.on_snapshot(snap);
        self.compare();
    }

    fn compare(&mut self) {
        let now = std::time::Instant::now();
        let pa = self.a.poll(now);
        let pb = self.b.poll(now);
        assert_eq!(pa, pb, "responses");
        let ea: Vec<_> = self.a.take_events().into_iter().map(timeless).collect();
        let eb: Vec<_> = self.b.take_events().into_iter().map(timeless).collect();
        assert_eq!(ea, eb, "events");
        fold(&mut self.sa, &ea);
        fold(&mut self.sb, &eb);
        for r in &pa {
            self.check_response(r);
        }
        let st = &self.sa;
        assert_eq!(status_view(st), status_view(&self.sb), "status");
        for t in st.types.values() {
            assert!(t.names <= self.limits.max_names, "{} names held", t.names);
            assert_eq!(t.names, t.name_set.len());
        }
    }

    fn check_response(&mut self, r: &DeltaDiscoveryResponse) {
        let Some(ty) = ResourceType::from_type_url(&r.type_url) else {
            assert!(
                r.resources.is_empty() && r.removed_resources.is_empty(),
                "an unknown type's answer is empty"
            );
            return;
        };
        self.nonces[ty as usize].push(r.nonce.clone());
        let st = &self.sa;
        let t = st
            .types
            .get(ty.short())
            .expect("a response for a type never subscribed");
        let removed: BTreeSet<&str> = r.removed_resources.iter().map(String::as_str).collect();
        assert_eq!(removed.len(), r.removed_resources.len(), "a name removed twice");
        let mut seen = BTreeSet::new();
        for b in &r.resources {
            let res = PbResource::decode(b.clone()).expect("a sent resource decodes");
            let any = res.resource.as_ref().expect("a sent resource has a body");
            assert_eq!(any.type_url, ty.type_url());
            assert!(
                t.wildcard || t.name_set.contains(res.name.as_str()),
                "{:?} sent but not subscribed",
                res.name
            );
            assert!(!removed.contains(res.name.as_str()), "{:?} sent and removed", res.name);
            assert!(seen.insert(res.name.clone()), "{:?} sent twice", res.name);
        }
        let group = st
            .group
            .as_ref()
            .and_then(|g| self.snapshot.as_ref()?.groups.get(g.as_str()).cloned());
        if let Some(g) = group {
            for n in &removed {
                assert!(!g.get(ty).resources.contains_key(*n), "{n:?} removed but it exists");
            }
        }
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
        a: DeltaStream::new(scope, limits, names.clone()),
        b: DeltaStream::new(scope, limits, names),
        sa: status(),
        sb: status(),
        limits,
        snapshot: None,
        nonces: Default::default(),
    };
    p.on_snapshot(cache.current());
    for step in s.steps.iter().take(MAX_STEPS) {
        let go_on = match step {
            Step::Request(r) => {
                let raw = p.encode(r, &pool, scope);
                p.request(&raw)
            }
            Step::Raw(raw) => p.request(raw),
            Step::Publish(items) => {
                if let Some(snap) = publish(&cache, items, &pool) {
                    p.on_snapshot(Some(snap));
                }
                true
            }
        };
        if !go_on {
            break;
        }
    }
});
