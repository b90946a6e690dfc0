//! The admin HTTP API: health, readiness, metrics and debug views, on two listeners. It reads
//! handles (cache, stream table, metrics, source states); it never drives anything.
//!
//! The admin listener (`server.admin_listen`, [`public_router`]) serves what probes and
//! scrapers need, and a deployment may expose it:
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 once every source has delivered once and a snapshot exists, else 503;
//!   the body says each source's state.
//! - `GET /metrics`: Prometheus text.
//!
//! Anything else there is 404. The debug listener (`server.admin_debug_listen`, loopback by
//! default, [`debug_router`]) serves those three and what shows every resource and every
//! client:
//! - `GET /debug/snapshot[?group=NAME]`: versions and resources (Envoy JSON) per group.
//! - `GET /debug/clients`: each connected stream (node, group, per type the last sent and last
//!   ACKed version, the last NACK and its error), and the recent NACKs.
//! - `GET /debug/status`: what `voltha-xds status` and the status page show ([`view`]): each
//!   Envoy (streams merged per node) with its state per type against its group's snapshot, the
//!   snapshot per group, recent pushes and NACKs, source health.
//! - `GET /`: the status page, one static HTML file whose script reads `/debug/status`.
//!
//! The status document also says which endpoints each cluster has and where they came from
//! ([`endpoints`]), and how push latency and time to ACK went over the last hour ([`latency`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::reload::Live;
use crate::xds::cache::Cache;
use crate::xds::resources::ResourceType;
use crate::xds::status::{ClientStatus, ClientTable, PushLog};

pub mod endpoints;
pub mod latency;
pub mod table;
pub mod view;

/// The status page (plain HTML and script, no build step).
const STATUS_PAGE: &str = include_str!("admin/status.html");

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) cache: Cache,
    pub(crate) clients: Arc<ClientTable>,
    pub(crate) metrics: Arc<Metrics>,
    /// The running configuration's sources and the reload status.
    pub(crate) live: Live,
}

/// The router's state: the handles, and the push log it keeps.
#[derive(Clone)]
struct Shared {
    s: AdminState,
    pushes: Arc<PushLog>,
    latency: Arc<latency::LatencyLog>,
}

/// What the admin listener answers for any path but its three.
const NOT_HERE: &str = "not found: this admin listener serves /healthz, /readyz and /metrics; \
/debug/* and the status page are served on server.admin_debug_listen \
(--admin-debug-listen, 127.0.0.1:18081 by default)\n";

fn probe_routes<S: Clone + Send + Sync + 'static>(state: AdminState) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The admin listener's routes: `/healthz`, `/readyz`, `/metrics`; 404 for anything else.
pub(crate) fn public_router(state: AdminState) -> Router {
    probe_routes(state).fallback(|| async { (StatusCode::NOT_FOUND, NOT_HERE) })
}

/// The debug listener's routes: those of [`public_router`], `/debug/*` and the status page.
/// Starts the task that keeps the push log (it follows the cache and ends with it), so call it
/// within a Tokio runtime.
pub(crate) fn debug_router(state: AdminState) -> Router {
    let pushes = Arc::new(PushLog::default());
    tokio::spawn(pushes.clone().follow(state.cache.subscribe()));
    let latency = Arc::new(latency::LatencyLog::default());
    tokio::spawn(latency::LatencyLog::follow(
        Arc::downgrade(&latency),
        state.metrics.clone(),
    ));
    let debug = Router::new()
        .route("/debug/snapshot", get(snapshot))
        .route("/debug/clients", get(clients))
        .with_state(state.clone());
    Router::new()
        .route("/", get(page))
        .route("/debug/status", get(status))
        .with_state(Shared {
            s: state.clone(),
            pushes,
            latency,
        })
        .merge(debug)
        .merge(probe_routes(state))
}

impl AdminState {
    pub(crate) fn ready(&self) -> bool {
        self.cache.current().is_some() && self.live.sources().iter().all(|s| s.rx.borrow().data.is_some())
    }
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let sources: BTreeMap<String, Value> = s
        .live
        .sources()
        .iter()
        .map(|h| {
            let st = h.rx.borrow();
            let mut v = serde_json::to_value(&st.health).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("delivered".into(), Value::Bool(st.data.is_some()));
            }
            (h.name.clone(), v)
        })
        .collect();
    let ready = s.ready();
    let body = json!({
        "ready": ready,
        "snapshot": s.cache.current().map(|c| c.generation),
        "sources": sources,
        "config": s.live.status(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SnapshotQuery {
    group: Option<String>,
}

async fn snapshot(State(s): State<AdminState>, Query(q): Query<SnapshotQuery>) -> Response {
    let Some(snap) = s.cache.current() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "no snapshot yet"})),
        )
            .into_response();
    };
    let mut groups = serde_json::Map::new();
    for (name, g) in &snap.groups {
        if q.group.as_ref().is_some_and(|want| want != name) {
            continue;
        }
        let mut types = serde_json::Map::new();
        for ty in ResourceType::ALL {
            let ts = g.get(ty);
            let resources: Vec<Value> = ts
                .resources
                .values()
                .map(|r| {
                    crate::envoy_json::to_json(ty.type_url(), &r.body)
                        .unwrap_or_else(|e| json!({"name": &*r.name, "error": e}))
                })
                .collect();
            types.insert(
                ty.short().into(),
                json!({ "version": ts.version, "resources": resources }),
            );
        }
        groups.insert(name.clone(), json!({ "version": g.version(), "types": types }));
    }
    if let Some(want) = &q.group {
        if groups.is_empty() {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": format!("no group {want:?}")})),
            )
                .into_response();
        }
    }
    Json(json!({
        "generation": snap.generation,
        "default_group": snap.default_group,
        "groups": groups,
    }))
    .into_response()
}

async fn clients(State(s): State<AdminState>) -> Response {
    let clients = s.clients.snapshot();
    let clients: Vec<&ClientStatus> = clients.iter().map(|c| &**c).collect();
    Json(json!({
        "clients": clients,
        "recent_nacks": s.clients.recent_nacks(),
    }))
    .into_response()
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

/// The document behind `GET /debug/status`.
pub(crate) fn status_view(s: &AdminState, pushes: &PushLog, latency: &latency::LatencyLog) -> view::StatusView {
    let snap = s.cache.current();
    let streams = s.clients.snapshot();
    let source_data: Vec<(String, Arc<crate::model::SourceData>)> = s
        .live
        .sources()
        .iter()
        .filter_map(|h| h.rx.borrow().data.clone().map(|d| (h.name.clone(), d)))
        .collect();
    view::StatusView {
        generated_at: view::secs(std::time::SystemTime::now()),
        ready: s.ready(),
        generation: snap.as_ref().map(|s| s.generation),
        default_group: snap.as_ref().map(|s| s.default_group.clone()),
        groups: view::groups(snap.as_deref()),
        nodes: view::nodes(&streams, snap.as_deref()),
        pushes: view::pushes(&pushes.recent()),
        nacks: view::nacks(&s.clients.recent_nacks()),
        config: Some(s.live.status()),
        sources: s
            .live
            .sources()
            .iter()
            .map(|h| {
                let st = h.rx.borrow();
                view::SourceView {
                    name: h.name.clone(),
                    state: st.health.state.to_string(),
                    delivered: st.data.is_some(),
                    carried_over: st.health.carried_over,
                    last_success: st.health.last_success.map(view::secs),
                    last_error: st.health.last_error.clone(),
                    last_error_at: st.health.last_error_at.map(view::secs),
                }
            })
            .collect(),
        endpoints: endpoints::cluster_endpoints(snap.as_deref(), &source_data),
        latency: latency.points(&s.metrics),
    }
}

async fn status(State(sh): State<Shared>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(status_view(&sh.s, &sh.pushes, &sh.latency)),
    )
        .into_response()
}
