//! `GET <telemetry path>` (spec §8) and the self-metrics path.
//!
//! Served from the locally applied store, never blocking on Raft, so scrapes keep working
//! in a partition. Format negotiation follows `expfmt.Negotiate` without OpenMetrics: the
//! delimited protobuf format when `Accept` asks for
//! `application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited`
//! before any acceptable text type, text 0.0.4 otherwise (the protobuf `text` and
//! `compact-text` encodings upstream also offers are answered with text 0.0.4). The body is
//! gzipped when `Accept-Encoding` lists `gzip`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::response::Response;
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http::StatusCode;
use http::header::{self, HeaderValue};
use http::request::Parts;
use pgw_core::GroupStore;
use pgw_core::pb::MetricFamily;

use super::{App, offload, resp};

/// Content-Type of text format 0.0.4.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content-Type of the delimited protobuf format.
pub const PROTO_FORMAT: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Stores with more series than this are rendered on the blocking pool.
const OFFLOAD_SERIES: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Text,
    Protobuf,
}

/// Every node-local family: the upstream self-metrics plus the Raft and cluster ones,
/// sorted by name.
fn self_families(app: &App) -> Vec<MetricFamily> {
    let mut fams = app.metrics.families();
    fams.extend(crate::metrics::cluster_families(&app.node));
    fams.extend(crate::metrics::reload_families(&app.reloads));
    fams.extend(crate::metrics::edge_families(
        &app.edge,
        app.web.last_reload_ok(),
    ));
    fams.sort_by(|a, b| a.name.cmp(&b.name));
    fams
}

/// The exposition: the store plus the self-metrics, unless they have their own path.
pub(super) async fn telemetry(app: &Arc<App>, parts: &Parts) -> Response {
    let extra = if app.settings.self_metrics_path.is_some() {
        Vec::new()
    } else {
        self_families(app)
    };
    let format = negotiate(parts.headers.get(header::ACCEPT));
    let gzip = accepts_gzip(parts);
    let node = app.node.clone();
    // Without self-metrics the body is a function of the store alone: serve the last one
    // again while the store did not change (no rendering, no copy, no compression).
    let whole_body = extra.is_empty();
    if whole_body {
        let generation = node.read(|s| s.generation());
        if let Some(body) = last_body(generation, format, gzip) {
            return exposition(body, format, gzip);
        }
    }
    let big = node.read(|s| s.series_count()) > OFFLOAD_SERIES;
    let rendered = offload(big, move || {
        let misses = GroupStore::render_cache_misses();
        node.read(|store| {
            let problems = store.inconsistencies();
            if !problems.is_empty() {
                return Err(problems);
            }
            Ok((store.generation(), render(store, &extra, format)))
        })
        .map(|(generation, body)| {
            let body = Bytes::from(compress(body, gzip));
            // Rendering a changed family of a large store decodes it and sorts it: give
            // that memory back rather than keep it in malloc's free lists.
            if big && GroupStore::render_cache_misses() != misses {
                release_memory();
            }
            (generation, body)
        })
    })
    .await;
    match rendered {
        Some(Ok((generation, body))) => {
            if whole_body {
                keep_body(generation, format, gzip, &body);
            }
            exposition(body, format, gzip)
        }
        Some(Err(problems)) => inconsistent(&problems),
        None => resp::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "An error has occurred while serving metrics:\n\ninternal error while rendering",
        ),
    }
}

/// Hands the memory glibc's malloc keeps after rendering a large store (the decoded families,
/// the sort buffers and the body: hundreds of MB at a million series) back to the system, so
/// the resident size stays that of the store and its render cache. Also run after writes
/// (see `batch`).
pub(super) fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free memory of malloc's own arenas to the kernel;
    // it has no preconditions and does not touch allocated blocks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The last body rendered without self-metrics: store generation, format, gzip, body.
/// [`GroupStore::generation`] is unique within the process, so one slot serves every node of
/// a process (tests run several) without mixing their stores up.
type LastBody = (u64, Format, bool, Bytes);
static LAST_BODY: Mutex<Option<LastBody>> = Mutex::new(None);

fn last_body(generation: u64, format: Format, gzip: bool) -> Option<Bytes> {
    let slot = LAST_BODY.lock().unwrap_or_else(|p| p.into_inner());
    match &*slot {
        Some((g, f, z, body)) if *g == generation && *f == format && *z == gzip => {
            Some(body.clone())
        }
        _ => None,
    }
}

fn keep_body(generation: u64, format: Format, gzip: bool, body: &Bytes) {
    let mut slot = LAST_BODY.lock().unwrap_or_else(|p| p.into_inner());
    *slot = Some((generation, format, gzip, body.clone()));
}

/// `--web.self-metrics-path`: the node's own metrics alone, text format.
pub(super) async fn self_metrics(app: &Arc<App>, parts: &Parts) -> Response {
    let gzip = accepts_gzip(parts);
    let body = render(&GroupStore::new(), &self_families(app), Format::Text);
    exposition(compress(body, gzip).into(), Format::Text, gzip)
}

fn render(store: &GroupStore, extra: &[MetricFamily], format: Format) -> Vec<u8> {
    let mut out = Vec::new();
    match format {
        Format::Text => pgw_core::render::text(store, extra, &mut out),
        Format::Protobuf => pgw_core::render::protobuf(store, extra, &mut out),
    }
    out
}

/// Spec §8.5: the whole scrape fails when the store is inconsistent.
fn inconsistent(problems: &[String]) -> Response {
    let mut msg = format!("{} error(s) occurred:", problems.len());
    for p in problems {
        msg.push_str("\n* ");
        msg.push_str(p);
    }
    tracing::error!(err = %msg, "error gathering metrics");
    resp::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("An error has occurred while serving metrics:\n\n{msg}"),
    )
}

fn exposition(body: Bytes, format: Format, gzip: bool) -> Response {
    let mut r = resp::with_body(StatusCode::OK, body);
    let ct = match format {
        Format::Text => TEXT_FORMAT,
        Format::Protobuf => PROTO_FORMAT,
    };
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    if gzip {
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

/// gzips `body` when `gzip`; falls back to the plain body if compression fails (it writes
/// to memory, so it does not).
fn compress(body: Vec<u8>, gzip: bool) -> Vec<u8> {
    if !gzip {
        return body;
    }
    let mut enc = GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        Compression::default(),
    );
    match enc.write_all(&body).and_then(|()| enc.finish()) {
        Ok(z) => z,
        Err(_) => body,
    }
}

/// promhttp's `gzipAccepted`: some comma-separated part of `Accept-Encoding` is `gzip` or
/// starts with `gzip;`. (A response is then always gzipped, even with `q=0`, as upstream.)
fn accepts_gzip(parts: &Parts) -> bool {
    parts
        .headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|p| p == "gzip" || p.starts_with("gzip;"))
}

/// `expfmt.Negotiate` without OpenMetrics: walk the `Accept` entries by descending `q`
/// (stable), take the first that is the delimited protobuf format or text 0.0.4.
fn negotiate(accept: Option<&HeaderValue>) -> Format {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return Format::Text;
    };
    // (q, position, media type, parameters)
    type Entry = (f64, usize, String, Vec<(String, String)>);
    let mut entries: Vec<Entry> = Vec::new();
    for (i, entry) in accept.split(',').enumerate() {
        let mut pieces = entry.split(';');
        let media = pieces
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let mut q = 1.0;
        let mut params = Vec::new();
        for p in pieces {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().trim_matches('"').to_string();
            if k == "q" {
                q = v.parse().unwrap_or(0.0);
            } else {
                params.push((k, v));
            }
        }
        entries.push((q, i, media, params));
    }
    entries.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, _, media, params) in entries {
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if media == "application/vnd.google.protobuf"
            && param("proto") == Some("io.prometheus.client.MetricFamily")
        {
            match param("encoding") {
                Some("delimited") => return Format::Protobuf,
                Some("text") | Some("compact-text") => return Format::Text,
                _ => {}
            }
        }
        if media == "text/plain" && matches!(param("version"), None | Some("0.0.4")) {
            return Format::Text;
        }
    }
    Format::Text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(s: &str) -> Format {
        negotiate(Some(&HeaderValue::from_str(s).expect("header")))
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(
            neg(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
            ),
            Format::Protobuf
        );
        assert_eq!(
            neg(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
            ),
            Format::Protobuf
        );
        assert_eq!(
            neg(
                "text/plain;version=0.0.4;q=0.9,application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5"
            ),
            Format::Text
        );
        assert_eq!(
            neg("application/openmetrics-text; version=1.0.0"),
            Format::Text
        );
        assert_eq!(neg("*/*"), Format::Text);
    }
}
