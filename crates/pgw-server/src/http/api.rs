//! `/api/v1` (spec §9): `GET status`, `GET metrics`, `OPTIONS *` and the admin wipe.
//!
//! Mounted at `<prefix>/api/v1/` outside the request decoder, as upstream. Every response
//! under it except those on the wipe path carries the CORS and `Cache-Control` headers.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::response::Response;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};
use serde::Serialize;

use super::router::{Outcome, Part, Table, lit};
use super::{App, Instrument, offload, push, redirect, resp, table_response};

/// The routes of the API table (paths relative to `<prefix>/api/v1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ApiRoute {
    Options,
    Status,
    Metrics,
    Cluster,
    Wipe,
}

/// The API table; the wipe route only with `--web.enable-admin-api`.
pub(super) fn table(admin: bool) -> Table<ApiRoute> {
    let mut t = Table::default();
    t.add(&[Method::OPTIONS], vec![Part::CatchAll], ApiRoute::Options);
    t.add(&[Method::GET], vec![lit("/status")], ApiRoute::Status);
    t.add(&[Method::GET], vec![lit("/metrics")], ApiRoute::Metrics);
    t.add(&[Method::GET], vec![lit("/cluster")], ApiRoute::Cluster);
    if admin {
        t.add(&[Method::PUT], vec![lit("/admin/wipe")], ApiRoute::Wipe);
    }
    t
}

const CORS: [(HeaderName, &str); 5] = [
    (
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        "Accept, Authorization, Content-Type, Origin",
    ),
    (
        header::ACCESS_CONTROL_ALLOW_METHODS,
        "GET, POST, DELETE, OPTIONS",
    ),
    (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
    (header::ACCESS_CONTROL_EXPOSE_HEADERS, "Date"),
    (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
];

fn with_cors(mut r: Response) -> Response {
    for (name, value) in CORS {
        r.headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    r
}

/// Handles `path` (decoded, cleaned, starting with `<prefix>/api/v1/`); `base` is the
/// length of `<prefix>/api/v1`.
pub(super) async fn handle(
    app: &Arc<App>,
    parts: &Parts,
    _body: axum::body::Body,
    path: &[u8],
    base: usize,
) -> (Response, Option<Instrument>) {
    let sub = &path[base..];
    let is_wipe = sub == b"/admin/wipe";
    match app.api.route(&parts.method, sub) {
        Outcome::Match(ApiRoute::Wipe, _) => (push::wipe(app).await, Instrument::handler("wipe")),
        Outcome::Match(ApiRoute::Options, _) => (
            with_cors(resp::empty(StatusCode::OK)),
            Instrument::handler("api/v1/options"),
        ),
        Outcome::Match(ApiRoute::Status, _) => {
            (with_cors(status(app)), Instrument::handler("api/v1/status"))
        }
        Outcome::Match(ApiRoute::Metrics, _) => (
            with_cors(metrics(app, parts.uri.query()).await),
            Instrument::handler("api/v1/metrics"),
        ),
        Outcome::Match(ApiRoute::Cluster, _) => (
            with_cors(cluster(app)),
            Instrument::handler("api/v1/cluster"),
        ),
        Outcome::Redirect(code, to) => {
            // Upstream redirects to the path with `<prefix>/api/v1` stripped (a bug of
            // StripPrefix + httprouter); pgw keeps the full path.
            let mut full = path[..base].to_vec();
            full.extend_from_slice(&to);
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            let r = redirect(parts, status, &full);
            (if is_wipe { r } else { with_cors(r) }, None)
        }
        other => {
            let r = table_response(parts, other);
            (if is_wipe { r } else { with_cors(r) }, None)
        }
    }
}

fn json(body: Vec<u8>) -> Response {
    let mut r = resp::with_body(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[derive(Serialize)]
struct Envelope<T> {
    status: &'static str,
    data: T,
}

#[derive(Serialize)]
struct StatusData<'a> {
    build_information: BTreeMap<&'static str, &'a str>,
    flags: &'a BTreeMap<String, String>,
    start_time: String,
}

/// `GET /api/v1/status`: build information, every flag, start time (RFC 3339, UTC).
fn status(app: &App) -> Response {
    let b = app.metrics.build();
    let build_information = BTreeMap::from([
        ("branch", b.branch.as_str()),
        ("buildDate", b.build_date.as_str()),
        ("buildUser", b.build_user.as_str()),
        ("goVersion", b.rust_version.as_str()),
        ("revision", b.revision.as_str()),
        ("version", b.version.as_str()),
    ]);
    let env = Envelope {
        status: "success",
        data: StatusData {
            build_information,
            flags: &app.settings.flags,
            start_time: crate::timefmt::rfc3339_nano(app.start_time_ns),
        },
    };
    match serde_json::to_string(&env) {
        Ok(s) => json(go_json_escape(&s).into_bytes()),
        Err(e) => resp::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Go's `json.Marshal` escapes `<`, `>`, `&`, U+2028 and U+2029; in JSON text those can only
/// occur inside strings, so a textual replacement is exact.
fn go_json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Serialize)]
struct ClusterData {
    id: u64,
    role: String,
    term: u64,
    leader: Option<u64>,
    commit_index: u64,
    applied_index: u64,
    last_log_index: u64,
    snapshot_index: u64,
    members: Vec<ClusterMember>,
}

#[derive(Serialize)]
struct ClusterMember {
    id: u64,
    raft_address: String,
    http_address: String,
    voter: bool,
    /// Entries behind the leader's last log index; present only when this node leads.
    #[serde(skip_serializing_if = "Option::is_none")]
    lag: Option<u64>,
}

/// `GET /api/v1/cluster`: this node's Raft view (pgw's own endpoint, no upstream
/// counterpart).
fn cluster(app: &App) -> Response {
    let st = app.node.status();
    let members = app
        .node
        .members()
        .into_iter()
        .map(|m| ClusterMember {
            id: m.id,
            raft_address: m.raft_addr,
            http_address: m.http_addr,
            voter: m.voter,
            lag: m.lag,
        })
        .collect();
    let env = Envelope {
        status: "success",
        data: ClusterData {
            id: st.id,
            role: st.role,
            term: st.term,
            leader: st.leader,
            commit_index: st.commit_index,
            applied_index: st.applied_index,
            last_log_index: st.last_log_index,
            snapshot_index: st.snapshot_index,
            members,
        },
    };
    match serde_json::to_vec(&env) {
        Ok(b) => json(b),
        Err(e) => resp::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The `consistency` query parameter of `/api/v1/metrics`.
fn consistency(query: Option<&str>) -> Result<bool, String> {
    for pair in query.unwrap_or_default().split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "consistency" {
            return match v {
                "linearizable" => Ok(true),
                "" | "local" => Ok(false),
                other => Err(format!(
                    "unknown consistency {other:?}: use \"local\" (the default) or \"linearizable\""
                )),
            };
        }
    }
    Ok(false)
}

/// `GET /api/v1/metrics`: every group with its families, from the local store; with
/// `?consistency=linearizable` only after a read-index barrier (every write acknowledged
/// before the request is visible, on a follower too).
async fn metrics(app: &Arc<App>, query: Option<&str>) -> Response {
    match consistency(query) {
        Err(msg) => return resp::error(StatusCode::BAD_REQUEST, &msg),
        Ok(true) => {
            if let Err(e) = app.node.linearizable_barrier().await {
                let mut r = resp::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
        }
        Ok(false) => {}
    }
    let node = app.node.clone();
    let big = node.read(|s| s.series_count()) > 20_000;
    let body = offload(big, move || {
        node.read(|s| {
            let mut out = Vec::new();
            pgw_core::render::api_metrics_json(s, &mut out);
            out
        })
    })
    .await;
    match body {
        Some(b) => json(b),
        None => resp::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error while rendering",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_table() {
        let t = table(false);
        assert_eq!(
            t.route(&Method::POST, b"/status"),
            Outcome::MethodNotAllowed("GET, OPTIONS".into())
        );
        assert_eq!(t.route(&Method::PUT, b"/admin/wipe"), Outcome::NotFound);
        let t = table(true);
        assert_eq!(
            t.route(&Method::GET, b"/admin/wipe"),
            Outcome::MethodNotAllowed("OPTIONS, PUT".into())
        );
        assert_eq!(
            t.route(&Method::OPTIONS, b"/anything/at/all"),
            Outcome::Match(ApiRoute::Options, vec![b"/anything/at/all".to_vec()])
        );
        assert_eq!(
            t.route(&Method::GET, b"/status/"),
            Outcome::Redirect(301, b"/status".to_vec())
        );
    }

    #[test]
    fn json_escaping() {
        assert_eq!(
            go_json_escape(r#"{"a":"<&>"}"#),
            r#"{"a":"\u003c\u0026\u003e"}"#
        );
    }
}
