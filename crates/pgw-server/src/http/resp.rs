//! Response builders with the reference's headers and bodies (Go `net/http` conventions).

use axum::body::Body;
use axum::response::Response;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// `text/plain; charset=utf-8`.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// A response with `status` and `body` and no headers.
pub fn with_body(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r
}

/// An empty response (no Content-Type), as Go's `w.WriteHeader(code)`.
pub fn empty(status: StatusCode) -> Response {
    with_body(status, Body::empty())
}

/// Sets a header; values that are not valid header text are dropped (never panics).
pub fn set(r: &mut Response, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// Go's `http.Error`: `text/plain; charset=utf-8`, `X-Content-Type-Options: nosniff`,
/// body `msg` + `\n`.
pub fn error(status: StatusCode, msg: &str) -> Response {
    let mut r = with_body(status, format!("{msg}\n"));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// A plain-text body without a trailing newline (Go `io.WriteString` with a sniffed
/// `text/plain; charset=utf-8`).
pub fn plain(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = with_body(status, body);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    r
}

/// `404 page not found`.
pub fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "404 page not found")
}

/// 405 with `Allow`.
pub fn method_not_allowed(allow: &str) -> Response {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    set(&mut r, header::ALLOW, allow);
    r
}

/// httprouter's automatic `OPTIONS`: 200, empty, `Allow`.
pub fn options(allow: &str) -> Response {
    let mut r = empty(StatusCode::OK);
    set(&mut r, header::ALLOW, allow);
    r
}

/// Go's `http.Redirect` to an already escaped `location`: for `GET` (and `HEAD`) a short
/// HTML body and `text/html; charset=utf-8`.
pub fn redirect(status: StatusCode, location: &str, method: &Method) -> Response {
    let mut r = if method == Method::GET || method == Method::HEAD {
        let body = format!(
            "<a href=\"{}\">{}</a>.\n\n",
            crate::ui::escape(location),
            status.canonical_reason().unwrap_or_default()
        );
        let mut r = with_body(status, body);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r
    } else {
        empty(status)
    };
    set(&mut r, header::LOCATION, location);
    r
}
