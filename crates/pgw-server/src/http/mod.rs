//! The Pushgateway HTTP API: one dispatcher that reproduces the reference's request path
//! handling (spec §2) in the order Go applies it:
//!
//! 1. percent-decode the path into bytes (`%2F` becomes a separator; a bad escape is 400);
//! 2. `ServeMux`: `<prefix>/api/v1` → 301 `<prefix>/api/v1/`; a path that cleaning changes
//!    (`//`, `/./`, `/../`) → 301 to the cleaned path, for every method;
//! 3. `<prefix>/api/v1/…` goes to the API table ([`api`]), without request decoding;
//! 4. everything else: the request decoder (a `Content-Encoding: gzip` header with a body
//!    that does not start like gzip is 400), then the main table ([`router`]): handlers,
//!    trailing-slash and case redirects, automatic `OPTIONS`, 405 with `Allow`, 404.
//!
//! Handlers are instrumented as upstream (`pushgateway_http_requests_total` with the
//! upstream handler names; push duration and size); scrapes, redirects, 404/405 and the
//! automatic `OPTIONS` are not counted.

mod api;
mod batch;
mod body;
pub(crate) mod path;
mod push;
mod resp;
pub(crate) mod router;
mod scrape;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::Response;
use http::request::Parts;
use http::{Method, StatusCode};
use pgw_raft::Node;
use tokio::sync::watch;

use crate::config::Settings;
use crate::metrics::{Observation, SelfMetrics};
use body::BufferedBody;
use router::{Outcome, Part, Table, lit};

/// Everything a request handler needs.
pub(crate) struct App {
    pub(crate) settings: Settings,
    pub(crate) node: Arc<Node>,
    pub(crate) metrics: SelfMetrics,
    /// Process start, ns since the Unix epoch (`/api/v1/status` `start_time`).
    pub(crate) start_time_ns: i128,
    /// Set to `true` by `/-/quit` to start a graceful shutdown.
    pub(crate) quit: watch::Sender<bool>,
    /// The wall clock push times are stamped from ([`crate::Clock`]).
    pub(crate) clock: Arc<dyn crate::Clock>,
    /// Group commit of writes ([`batch`]).
    pub(crate) writes: batch::Batcher,
    /// The reloadable parts and the outcome of the last reload (SIGHUP).
    pub(crate) reloads: Arc<crate::reload::Reloads>,
    /// Set once a shutdown began: `/-/ready` answers 503 while the node drains.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// The web config file in force (TLS is applied per connection in [`crate::edge`];
    /// authentication, scopes and headers here).
    pub(crate) web: crate::web::WebConfigHandle,
    /// The HTTP edge's counters.
    pub(crate) edge: Arc<crate::edge::EdgeStats>,
    main: Table<MainRoute>,
    api: Table<api::ApiRoute>,
    /// `<prefix>/api/v1`.
    api_base: Vec<u8>,
}

/// The routes of the main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MainRoute {
    Healthy,
    Ready,
    Telemetry,
    SelfMetrics,
    /// Push paths; the bool says `@base64` job.
    Push(bool),
    Static,
    Status,
    Quit,
    /// `GET /-/quit`, registered without the route prefix (upstream quirk Q7, kept).
    QuitGet,
}

impl App {
    // Every part is owned elsewhere and handed in once; grouping them would only move the list.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        settings: Settings,
        node: Arc<Node>,
        metrics: SelfMetrics,
        quit: watch::Sender<bool>,
        clock: Arc<dyn crate::Clock>,
        reloads: Arc<crate::reload::Reloads>,
        web: crate::web::WebConfigHandle,
        edge: Arc<crate::edge::EdgeStats>,
    ) -> Self {
        let p = settings.route_prefix.clone();
        let mut main = Table::default();
        let get = [Method::GET];
        main.add(
            &get,
            vec![lit(&format!("{p}/-/healthy"))],
            MainRoute::Healthy,
        );
        main.add(&get, vec![lit(&format!("{p}/-/ready"))], MainRoute::Ready);
        main.add(
            &get,
            vec![lit(&settings.telemetry_path)],
            MainRoute::Telemetry,
        );
        if let Some(sm) = &settings.self_metrics_path {
            main.add(&get, vec![lit(sm)], MainRoute::SelfMetrics);
        }
        let push = [Method::PUT, Method::POST, Method::DELETE];
        for (suffix, b64) in [("", false), ("@base64", true)] {
            let base = format!("{p}/metrics/job{suffix}/");
            main.add(&push, vec![lit(&base), Part::Param], MainRoute::Push(b64));
            main.add(
                &push,
                vec![lit(&base), Part::Param, Part::CatchAll],
                MainRoute::Push(b64),
            );
        }
        // httprouter: `/metrics/job/` sits on a `/` node with a wildcard child and is
        // redirected to `/metrics/job` (which is 404); `/metrics/job@base64/` is not.
        main.add_tsr_quirk(&push, format!("{p}/metrics/job/").into_bytes());
        main.add(
            &get,
            vec![lit(&format!("{p}/static")), Part::CatchAll],
            MainRoute::Static,
        );
        main.add(&get, vec![lit(&format!("{p}/status"))], MainRoute::Status);
        main.add(&get, vec![lit(&format!("{p}/"))], MainRoute::Status);
        main.add(
            &[Method::PUT, Method::POST],
            vec![lit(&format!("{p}/-/quit"))],
            MainRoute::Quit,
        );
        main.add(&get, vec![lit("/-/quit")], MainRoute::QuitGet);

        let api = api::table(settings.enable_admin_api);
        let max_pending = settings.edge.max_pending_writes;
        App {
            api_base: format!("{p}/api/v1").into_bytes(),
            settings,
            writes: batch::Batcher::new(node.clone(), max_pending),
            web,
            edge,
            node,
            metrics,
            start_time_ns: crate::timefmt::unix_nanos(clock.now()),
            quit,
            clock,
            reloads,
            draining: std::sync::atomic::AtomicBool::new(false),
            main,
            api,
        }
    }
}

/// What the instrumentation needs to know about a handled request.
struct Instrument {
    handler: &'static str,
    /// For pushes: the number of body bytes received.
    push_body: Option<usize>,
}

impl Instrument {
    fn handler(handler: &'static str) -> Option<Self> {
        Some(Instrument {
            handler,
            push_body: None,
        })
    }
}

/// The axum fallback handler: every request comes through here.
pub(crate) async fn dispatch(State(app): State<Arc<App>>, req: Request) -> Response {
    let start = Instant::now();
    let body_deadline = tokio::time::Instant::now() + app.settings.edge.read_body_timeout;
    let (parts, body) = req.into_parts();
    let web = app.web.current();
    let mut body = Some(body);
    let mut resp = match app.web.authenticate(&web, &parts.headers).await {
        Ok(principal) => {
            let access = Access {
                web: &web,
                principal,
            };
            let req_body = body.take().unwrap_or_default();
            let (resp, instrument) = handle(&app, &parts, req_body, &access, body_deadline).await;
            if let Some(i) = instrument {
                let push = i
                    .push_body
                    .map(|n| (start.elapsed(), approximate_request_size(&parts, n)));
                app.metrics.observe(Observation {
                    handler: i.handler,
                    method: parts.method.as_str().to_ascii_lowercase(),
                    code: resp.status().as_u16(),
                    push,
                });
            }
            resp
        }
        Err(crate::web::Denied::Unauthorized) => {
            app.edge.unauthorized.fetch_add(1, Relaxed);
            let mut r = resp::error(StatusCode::UNAUTHORIZED, "Unauthorized");
            resp::set(&mut r, http::header::WWW_AUTHENTICATE, "Basic");
            body::drain(body.take().unwrap_or_default(), body_deadline).await;
            r
        }
    };
    if resp.status() == StatusCode::REQUEST_TIMEOUT {
        app.edge.body_timeouts.fetch_add(1, Relaxed);
    }
    // `http_server_config.headers`, on every response (as upstream, 401s included).
    for (k, v) in &web.headers {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}

/// Who is asking, and the configuration their scope is checked against.
struct Access<'a> {
    web: &'a crate::web::WebConfig,
    principal: crate::web::Principal,
}

impl Access<'_> {
    /// A 403 response when the principal's scope does not allow `method` (with
    /// `push_job` for pushes and deletes of a group).
    fn check(&self, app: &App, method: &Method, push_job: Option<&str>) -> Option<Response> {
        crate::web::authorize(self.web, &self.principal, method, push_job)
            .err()
            .map(|msg| forbidden(app, &msg))
    }
}

fn forbidden(app: &App, msg: &str) -> Response {
    app.edge.forbidden.fetch_add(1, Relaxed);
    tracing::info!(
        reason = msg,
        "request refused by the web config's pgw_authorization"
    );
    resp::error(StatusCode::FORBIDDEN, msg)
}

/// client_golang's `computeApproximateRequestSize`: URL, method, protocol, header names and
/// values, host, plus the body bytes received (upstream adds `Content-Length` instead, which
/// is -1, i.e. nothing, for chunked bodies).
fn approximate_request_size(parts: &Parts, body: usize) -> f64 {
    let mut s = parts.uri.to_string().len() + parts.method.as_str().len() + 8;
    for (name, value) in &parts.headers {
        if name == http::header::HOST {
            continue;
        }
        s += name.as_str().len() + value.len();
    }
    s += parts.headers.get(http::header::HOST).map_or(0, |h| h.len());
    (s + body) as f64
}

async fn handle(
    app: &Arc<App>,
    parts: &Parts,
    body: axum::body::Body,
    access: &Access<'_>,
    body_deadline: tokio::time::Instant,
) -> (Response, Option<Instrument>) {
    let raw = parts.uri.path();
    if raw == "*" {
        // Go's server answers `OPTIONS *` itself and refuses other methods with it.
        let status = if parts.method == Method::OPTIONS {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        return (resp::empty(status), None);
    }
    let Some(decoded) = path::percent_decode(raw.as_bytes()) else {
        return (
            resp::plain(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: invalid URL escape",
            ),
            None,
        );
    };
    let cleaned = path::clean(&decoded, true);
    if cleaned == app.api_base {
        let mut to = cleaned;
        to.push(b'/');
        return (redirect(parts, StatusCode::MOVED_PERMANENTLY, &to), None);
    }
    if cleaned != decoded {
        return (
            redirect(parts, StatusCode::MOVED_PERMANENTLY, &cleaned),
            None,
        );
    }
    let path = cleaned;
    if path.len() > app.api_base.len()
        && path.starts_with(&app.api_base)
        && path[app.api_base.len()] == b'/'
    {
        if let Some(r) = access.check(app, &parts.method, None) {
            body::drain(body, body_deadline).await;
            return (r, None);
        }
        return api::handle(app, parts, body, &path, app.api_base.len()).await;
    }

    let max = app.settings.max_body_bytes;
    let mut body = BufferedBody::new(body, body_deadline);
    if content_encoding(parts).is_some_and(|ce| ce.eq_ignore_ascii_case("gzip")) {
        let prefix = match body.prefix(10, max).await {
            Ok(p) => p,
            Err(e) => return (push::read_error(e, max), None),
        };
        if let Some(msg) = body::gzip_header_error(prefix) {
            return (resp::error(StatusCode::BAD_REQUEST, msg), None);
        }
    }

    let (route, caps) = match app.main.route(&parts.method, &path) {
        Outcome::Match(route, caps) => (route, caps),
        other => {
            body.discard().await;
            return (table_response(parts, other), None);
        }
    };
    // Scopes: a push or delete of a group is checked against its job name (a key that
    // does not parse is refused by the handler with 400 and changes nothing); everything
    // else by method.
    let push_job = match (route, &caps[..]) {
        (MainRoute::Push(b64), [job, rest @ ..]) => {
            let labels = rest.first().map_or(&[][..], Vec::as_slice);
            pgw_core::key::parse(job, b64, labels)
                .ok()
                .map(|k| k.job().to_string())
        }
        _ => None,
    };
    if let Some(r) = access.check(app, &parts.method, push_job.as_deref()) {
        body.discard().await;
        return (r, None);
    }
    match route {
        MainRoute::Push(b64) => {
            let mut caps = caps.into_iter();
            let job = caps.next().unwrap_or_default();
            let labels = caps.next().unwrap_or_default();
            if parts.method == Method::DELETE {
                let r = push::delete(app, &job, b64, &labels).await;
                (r, Instrument::handler("delete"))
            } else {
                let (r, received) = push::push(app, parts, body, &job, b64, &labels).await;
                let i = Instrument {
                    handler: "push",
                    push_body: Some(received),
                };
                (r, Some(i))
            }
        }
        MainRoute::Healthy => (healthy(app), Instrument::handler("healthy")),
        MainRoute::Ready => (ready(app, parts), Instrument::handler("ready")),
        MainRoute::Telemetry => (scrape::telemetry(app, parts).await, None),
        MainRoute::SelfMetrics => (scrape::self_metrics(app, parts).await, None),
        MainRoute::Static => (
            crate::ui::static_asset(&caps),
            Instrument::handler("static"),
        ),
        MainRoute::Status => (
            crate::ui::page(app, parts.uri.query()).await,
            Instrument::handler("status"),
        ),
        MainRoute::Quit => (quit(app), None),
        MainRoute::QuitGet => (
            resp::plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "Only POST or PUT requests allowed.",
            ),
            None,
        ),
    }
}

/// How many committed entries a node may still have to apply and count as caught up.
pub const READY_MAX_LAG: u64 = 100;

/// `/-/healthy`: 200 `OK` (as upstream) while the node can make progress; 500 once Raft or
/// its storage stopped for good (the process is then shutting down to exit non-zero, so that
/// its supervisor restarts it).
fn healthy(app: &App) -> Response {
    match app.node.health().fatal() {
        None => resp::plain(StatusCode::OK, "OK"),
        Some(why) => resp::plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "unhealthy: Raft stopped for good ({why}); the node is exiting so that its \
                 supervisor restarts it\n"
            ),
        ),
    }
}

/// `/-/ready`: 200 `OK` (as upstream) when this node can serve a write now: it knows a Raft
/// leader, a leader has heard from a quorum recently (within the quorum timeout, about two
/// election timeouts), and it has applied the leader's commit index (within [`READY_MAX_LAG`]
/// entries), so a load balancer keeps lagging, leaderless and cut-off nodes out. Otherwise 503
/// with each check listed (`[+]leader ok`, `[-]quorum failed: ...`); `?verbose` lists them on
/// success too.
fn ready(app: &App, parts: &Parts) -> Response {
    let st = app.node.status();
    let health = app.node.health();
    let quorum = health.quorum();
    let leader_ok = st.has_leader && health.fatal().is_none();
    let lag = st.commit_index.saturating_sub(st.applied_index);
    let caught_up = lag <= READY_MAX_LAG;
    let draining = app.draining.load(std::sync::atomic::Ordering::Relaxed);
    let mut body = String::new();
    if draining {
        body.push_str(
            "[-]shutdown failed: the node is shutting down (draining: still serving, but take \
             it out of rotation)\n",
        );
    }
    if leader_ok {
        body.push_str(&format!("[+]leader ok (node {})\n", st.leader.unwrap_or(0)));
    } else {
        body.push_str(
            "[-]leader failed: no Raft leader known (election under way or no quorum reachable)\n",
        );
    }
    let quorum_ok = !matches!(quorum, pgw_raft::Quorum::Lost(_));
    match quorum {
        pgw_raft::Quorum::NotLeader => {}
        pgw_raft::Quorum::Contact(age) => body.push_str(&format!(
            "[+]quorum ok (last quorum contact {}ms ago)\n",
            age.as_millis()
        )),
        pgw_raft::Quorum::Lost(age) => body.push_str(&format!(
            "[-]quorum failed: last quorum contact {:.1}s ago (more than {:.1}s): this leader \
             cannot commit writes\n",
            age.as_secs_f64(),
            health.quorum_timeout().as_secs_f64()
        )),
    }
    if caught_up {
        body.push_str(&format!(
            "[+]caught-up ok (applied {}, committed {})\n",
            st.applied_index, st.commit_index
        ));
    } else {
        body.push_str(&format!(
            "[-]caught-up failed: applied {} of {} committed entries ({lag} behind)\n",
            st.applied_index, st.commit_index
        ));
    }
    let verbose = parts.uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "verbose" || p.starts_with("verbose="))
    });
    if leader_ok && quorum_ok && caught_up && !draining {
        if verbose {
            body.push_str("OK");
            return resp::plain(StatusCode::OK, body);
        }
        return resp::plain(StatusCode::OK, "OK");
    }
    body.push_str("not ready");
    let mut r = resp::plain(StatusCode::SERVICE_UNAVAILABLE, body);
    r.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    r
}

fn quit(app: &App) -> Response {
    if !app.settings.enable_lifecycle {
        return resp::plain(StatusCode::FORBIDDEN, "Lifecycle API is not enabled.");
    }
    tracing::warn!("received termination request via web service, exiting gracefully...");
    // The response is in flight, so the graceful shutdown lets it complete.
    app.quit.send_replace(true);
    resp::plain(StatusCode::OK, "Requesting termination... Goodbye!")
}

/// `404 page not found` (for other modules).
pub(crate) fn not_found() -> Response {
    resp::not_found()
}

/// A 500 with `msg` (for other modules).
pub(crate) fn internal_error(msg: &str) -> Response {
    resp::error(StatusCode::INTERNAL_SERVER_ERROR, msg)
}

/// The `Content-Encoding` header, if present and text.
fn content_encoding(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
}

/// A redirect to decoded path `to`, escaped as Go does, keeping the query string.
fn redirect(parts: &Parts, status: StatusCode, to: &[u8]) -> Response {
    let mut location = path::escape(to);
    if let Some(q) = parts.uri.query() {
        location.push('?');
        location.push_str(q);
    }
    resp::redirect(status, &location, &parts.method)
}

/// The response for a table outcome other than a match.
fn table_response<K>(parts: &Parts, outcome: Outcome<K>) -> Response {
    match outcome {
        Outcome::Match(..) | Outcome::NotFound => resp::not_found(),
        Outcome::Redirect(code, to) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            redirect(parts, status, &to)
        }
        Outcome::Options(allow) => resp::options(&allow),
        Outcome::MethodNotAllowed(allow) => resp::method_not_allowed(&allow),
    }
}

/// Runs CPU-heavy work (parsing or rendering large bodies) on the blocking pool when `big`,
/// inline otherwise. `None` if the work panicked (the request fails, the server goes on).
pub(crate) async fn offload<T: Send + 'static>(
    big: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if big {
        tokio::task::spawn_blocking(f).await.ok()
    } else {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
    }
}
