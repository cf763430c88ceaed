//! Writes: PUT/POST pushes, DELETE of a group, and the admin wipe (spec §3, §4, §5).
//!
//! The receiving node does what needs no store: the URL grammar, reading the body within
//! `--push.max-body-bytes`, Content-Encoding decoding and parsing, and stamping the receive
//! time. Everything that depends on the store (the consistency check) happens in the
//! replicated `apply`, whose outcome comes back through [`pgw_raft::Node::write`] once the
//! command is committed on a quorum and applied here.

use std::sync::Arc;

use axum::response::Response;
use http::StatusCode;
use http::header::{self, HeaderName};
use http::request::Parts;
use pgw_core::body::BodyError;
use pgw_core::command::Push;
use pgw_core::policy::{Policy, Reason};
use pgw_core::{Command, CommandResponse, GroupingKey};
use pgw_raft::WriteError;

use super::body::{BufferedBody, ReadError};
use super::{App, offload, resp};

/// Bodies larger than this are decoded and parsed on the blocking pool.
const OFFLOAD_BYTES: usize = 256 * 1024;

/// 413 or 400 for a body that could not be read.
pub(super) fn read_error(e: ReadError, max: usize) -> Response {
    match e {
        ReadError::TooLarge => too_large(max),
        ReadError::Io(msg) => resp::error(StatusCode::BAD_REQUEST, &msg),
        ReadError::Stalled => {
            tracing::info!(
                "request body did not arrive in time (--web.read-body-timeout); answered 408"
            );
            let mut r = resp::error(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time (--web.read-body-timeout)",
            );
            resp::set(&mut r, header::CONNECTION, "close");
            r
        }
    }
}

fn too_large(max: usize) -> Response {
    Refusal::too_large(max).response()
}

/// A request refused before it became a command: status and `http.Error` message, and the
/// admission rule it broke, if any.
struct Refusal {
    status: StatusCode,
    msg: String,
    reason: Option<Reason>,
}

impl Refusal {
    fn bad_request(msg: impl ToString) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            msg: msg.to_string(),
            reason: None,
        }
    }

    fn too_large(max: usize) -> Self {
        Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            msg: BodyError::TooLarge { limit: max }.to_string(),
            reason: None,
        }
    }

    fn response(self) -> Response {
        resp::error(self.status, &self.msg)
    }
}

impl From<pgw_core::policy::Refusal> for Refusal {
    fn from(r: pgw_core::policy::Refusal) -> Self {
        Refusal {
            status: status_of(r.reason),
            msg: r.message,
            reason: Some(r.reason),
        }
    }
}

/// The HTTP status of a request refused for `reason`.
fn status_of(reason: Reason) -> StatusCode {
    StatusCode::from_u16(reason.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
}

/// Answers a refusal by an admission rule: logs it, counts a limit in
/// `pgw_push_rejected_total`, and maps it to its 4xx.
fn refused(app: &App, r: Refusal) -> Response {
    if let Some(reason) = r.reason {
        tracing::warn!(reason = reason.as_str(), err = %r.msg, "push refused");
        if reason.is_limit() {
            app.metrics.count_rejected(reason);
        }
    }
    r.response()
}

fn parse_key(job: &[u8], b64: bool, labels: &[u8]) -> Result<GroupingKey, Refusal> {
    pgw_core::key::parse(job, b64, labels).map_err(|e| {
        tracing::debug!(err = %e, "failed to parse URL");
        Refusal::bad_request(e)
    })
}

fn header_str(parts: &Parts, name: HeaderName) -> Option<&str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Receive time in ns since the Unix epoch, from the app's wall clock.
fn now_ns(clock: &dyn crate::Clock) -> i64 {
    i64::try_from(crate::timefmt::unix_nanos(clock.now())).unwrap_or(i64::MAX)
}

/// PUT (`replace`) or POST to a push path. Returns the response and the number of body
/// bytes received (for the push size metric).
pub(super) async fn push(
    app: &Arc<App>,
    parts: &Parts,
    body: BufferedBody,
    job: &[u8],
    b64: bool,
    labels: &[u8],
) -> (Response, usize) {
    let key = match parse_key(job, b64, labels) {
        Ok(k) => k,
        Err(r) => {
            body.discard().await;
            return (r.response(), 0);
        }
    };
    let max = app.settings.max_body_bytes;
    // Refuse an announced oversized body before reading any of it.
    let announced = header_str(parts, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return (too_large(max), 0);
    }
    let raw = match body.read_all(max).await {
        Ok(b) => b,
        Err(e) => return (read_error(e, max), 0),
    };
    let received = raw.len();
    let encoding = header_str(parts, header::CONTENT_ENCODING).map(str::to_string);
    let content_type = header_str(parts, header::CONTENT_TYPE).map(str::to_string);
    let replace = parts.method == http::Method::PUT;
    let check = app.settings.check_consistency;
    let clock = app.clock.clone();
    let policy = app.settings.policy();
    let parsed = offload(raw.len() > OFFLOAD_BYTES, move || {
        build_command(
            &*clock,
            key,
            replace,
            encoding.as_deref(),
            content_type.as_deref(),
            &raw,
            &policy,
        )
    })
    .await;
    let cmd = match parsed {
        Some(Ok(cmd)) => cmd,
        Some(Err(r)) => return (refused(app, r), received),
        None => {
            return (
                resp::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error parsing the push",
                ),
                received,
            );
        }
    };
    let ok = if check {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (write(app, cmd, ok, &parts.method).await, received)
}

/// Decodes and parses a push body into its command, admitted by
/// [`pgw_core::policy::check_push`] (the optional limits, the payload bound; the same rules
/// the leader applies to a forwarded push), or the 4xx response.
fn build_command(
    clock: &dyn crate::Clock,
    key: GroupingKey,
    replace: bool,
    encoding: Option<&str>,
    content_type: Option<&str>,
    raw: &[u8],
    policy: &Policy,
) -> Result<Command, Refusal> {
    let max = policy.max_body_bytes;
    let check = policy.check_consistency;
    let decoded = match pgw_core::body::decode(encoding, raw, max) {
        Ok(d) => d,
        Err(BodyError::TooLarge { .. }) => return Err(Refusal::too_large(max)),
        Err(e) => return Err(Refusal::bad_request(e)),
    };
    let families = if pgw_core::body::is_delimited_protobuf(content_type) {
        pgw_core::delimited::decode(&decoded).map_err(Refusal::bad_request)?
    } else {
        match pgw_core::text::parse(&decoded) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(err = %e, "failed to parse text");
                return Err(Refusal::bad_request(e));
            }
        }
    };
    let push = Push::new(key, replace, now_ns(clock), check, &families);
    pgw_core::policy::check_push(&push, &families, policy)?;
    Ok(Command::push(push, policy.limits.max_groups))
}

/// DELETE of one group: 202 once committed.
pub(super) async fn delete(app: &Arc<App>, job: &[u8], b64: bool, labels: &[u8]) -> Response {
    let key = match parse_key(job, b64, labels) {
        Ok(k) => k,
        Err(r) => return r.response(),
    };
    write(
        app,
        Command::Delete { key },
        StatusCode::ACCEPTED,
        &http::Method::DELETE,
    )
    .await
}

/// Admin wipe: 202 once committed.
pub(super) async fn wipe(app: &Arc<App>) -> Response {
    tracing::debug!("start wiping metric store");
    write(app, Command::Wipe, StatusCode::ACCEPTED, &http::Method::PUT).await
}

/// Replicates `cmd` and maps the outcome: `ok` when applied, 400 when rejected, 403/413 when
/// refused by an admission rule (a limit; or, relayed from the leader, a rule its flags
/// set), 503 (with `Retry-After`) without a leader, when the write was not confirmed within
/// `--cluster.write-timeout` (it may still be applied; the message says so) or while
/// shutting down, 500 on a fatal error.
async fn write(app: &App, cmd: Command, ok: StatusCode, method: &http::Method) -> Response {
    let Some(_slot) = app.writes.admit() else {
        app.edge
            .throttled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(%method, "write refused: --push.max-pending-writes writes are waiting for the Raft log");
        let mut r = resp::error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many writes are waiting for the Raft log on this node (--push.max-pending-writes); retry later",
        );
        resp::set(&mut r, header::RETRY_AFTER, "1");
        return r;
    };
    match app.writes.write(cmd).await {
        Ok(CommandResponse::Applied) => resp::empty(ok),
        // A limit that depends on the store (`--push.max-groups`), decided in apply.
        Ok(CommandResponse::Refused { reason, message }) => {
            let refusal = match Reason::from_label(&reason) {
                Some(reason) => Refusal {
                    status: status_of(reason),
                    msg: message,
                    reason: Some(reason),
                },
                None => Refusal::bad_request(message),
            };
            refused(app, refusal)
        }
        // The leader refused a forwarded write by its admission rules: nothing changed.
        Err(WriteError::Refused(r)) => refused(app, r.into()),
        // With the consistency check disabled upstream answers 202 before the write is
        // processed, so a push it then refuses (samples with timestamps) still gets 202 and
        // only its failure time is recorded. pgw answers after apply but keeps that contract.
        Ok(CommandResponse::Rejected(msg)) if ok == StatusCode::ACCEPTED => {
            tracing::warn!(%method, err = %msg, "unchecked push recorded as failed");
            resp::empty(ok)
        }
        Ok(CommandResponse::Rejected(msg)) => {
            tracing::warn!(%method, err = %msg, "pushed metrics are invalid or inconsistent with existing metrics");
            resp::error(StatusCode::BAD_REQUEST, &msg)
        }
        Err(
            e @ (WriteError::Unavailable(_)
            | WriteError::NotConfirmed(_)
            | WriteError::NoQuorum(_)
            | WriteError::ShuttingDown),
        ) => {
            tracing::warn!(err = %e, "write not accepted");
            let mut r = resp::error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            resp::set(&mut r, header::RETRY_AFTER, "1");
            r
        }
        Err(e @ WriteError::Fatal(_)) => {
            tracing::error!(err = %e, "write failed");
            resp::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
        Ok(CommandResponse::Batch(_)) => {
            tracing::error!("a single write was answered with a batch response");
            resp::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: unexpected batch response",
            )
        }
    }
}
