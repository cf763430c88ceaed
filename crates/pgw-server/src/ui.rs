//! The web page at `/` and `/status`: server-rendered HTML, no framework.
//!
//! It shows one page of groups at a time ([`groups`]: a search over the grouping labels,
//! cursor paging, the number of matching groups): per group its grouping labels, last push
//! and last failure time in UTC, its families (name, type, HELP, last pushed, samples as
//! text) and a delete button; then the node's build information, flags and Raft status. Only
//! the page's groups are rendered, so the body does not grow with the store. Every piece of stored or
//! configured text goes through [`escape`]; the page loads its script and style from
//! `static/` (relative links, so it works under any route prefix and behind a proxy) and is
//! served with a `Content-Security-Policy` that allows no inline script, so label values
//! cannot inject markup or code.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::response::Response;
use http::StatusCode;
use http::header::{self, HeaderValue};
use pgw_core::pb::{Metric, MetricFamily, MetricType};

use crate::http::App;

mod groups;

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = include_str!("ui/pgw.css");
const JS: &str = include_str!("ui/pgw.js");

/// `GET <prefix>/static/*filepath`: the page's script and style; 404 for anything else.
pub(crate) fn static_asset(caps: &[Vec<u8>]) -> Response {
    let (body, ct) = match caps.first().map(Vec::as_slice) {
        Some(b"/pgw.css") => (CSS, "text/css; charset=utf-8"),
        Some(b"/pgw.js") => (JS, "text/javascript; charset=utf-8"),
        _ => {
            return crate::http::not_found();
        }
    };
    let mut r = Response::new(body.into());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

/// With more groups than this in the store (a search scans every key), or more series (a
/// page may hold large groups), the page is built on the blocking pool rather than on a
/// runtime thread.
const OFFLOAD_GROUPS: usize = 10_000;
const OFFLOAD_SERIES: usize = 20_000;

/// `GET <prefix>/` and `<prefix>/status`: the page for the query string `query` (see
/// [`groups`] for its parameters). A bad query is answered 400 with the page showing the
/// message next to the search form.
pub(crate) async fn page(app: &Arc<App>, query: Option<&str>) -> Response {
    let status = app.node.status();
    let (q, error) = match groups::Query::parse(query) {
        Ok(q) => (q, None),
        Err((q, msg)) => (q, Some(msg)),
    };
    let node = app.node.clone();
    let app2 = app.clone();
    let big = node.read(|s| s.len() > OFFLOAD_GROUPS || s.series_count() > OFFLOAD_SERIES);
    let code = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let html = crate::http::offload(big, move || {
        let sel = if error.is_some() {
            groups::Selection {
                total: node.read(|s| s.len()),
                ..Default::default()
            }
        } else {
            groups::select(|f| node.read(|s| f(s)), &q)
        };
        render_page(&app2, &q, &sel, error.as_deref(), &status)
    })
    .await;
    let Some(html) = html else {
        return crate::http::internal_error("internal error while rendering the page");
    };
    let mut r = Response::new(html.into());
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn time_or_never(ns: i64) -> String {
    if ns == 0 {
        "never".into()
    } else {
        crate::timefmt::human(i128::from(ns))
    }
}

/// One section of the page: its anchor and title in the navigation bar, and its HTML (a
/// whole `<section id="…">`). A new view (e.g. of the cluster) is one more entry in the list
/// [`render_page`] builds.
struct Section {
    id: &'static str,
    title: &'static str,
    html: String,
}

fn render_page(
    app: &App,
    q: &groups::Query,
    sel: &groups::Selection,
    error: Option<&str>,
    status: &pgw_raft::NodeStatus,
) -> String {
    let mut metrics = String::with_capacity(8192);
    groups::render(&mut metrics, q, sel, app.settings.enable_admin_api, error);
    let mut st = String::with_capacity(4096);
    render_status(&mut st, app, status);
    let sections = [
        Section {
            id: "metrics",
            title: "Metrics",
            html: metrics,
        },
        Section {
            id: "status",
            title: "Status",
            html: st,
        },
    ];
    let mut h = String::with_capacity(1024 + sections.iter().map(|s| s.html.len()).sum::<usize>());
    h.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"robots\" content=\"noindex,nofollow\">\n\
         <title>Pushgateway (pgw)</title>\n\
         <link rel=\"stylesheet\" href=\"static/pgw.css\">\n\
         <script src=\"static/pgw.js\" defer></script>\n</head>\n<body>\n\
         <header><h1>Pushgateway <small>pgw</small></h1><nav>",
    );
    for (i, s) in sections.iter().enumerate() {
        if i > 0 {
            h.push(' ');
        }
        let _ = write!(h, "<a href=\"#{}\">{}</a>", s.id, escape(s.title));
    }
    h.push_str("</nav></header>\n");
    for s in &sections {
        h.push_str(&s.html);
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn render_status(h: &mut String, app: &App, status: &pgw_raft::NodeStatus) {
    let b = app.metrics.build();
    h.push_str("<section id=\"status\">\n<h2>Status</h2>\n<table>\n");
    let mut row = |k: &str, v: &str| {
        let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    };
    row("Start time", &crate::timefmt::human(app.start_time_ns));
    row("Version", &b.version);
    row("Revision", &b.revision);
    row("Branch", &b.branch);
    row("Build user", &b.build_user);
    row("Build date", &b.build_date);
    row("Compiler", &b.rust_version);
    row("Raft node id", &status.id.to_string());
    row("Raft role", &status.role);
    row(
        "Raft leader",
        &status
            .leader
            .map_or_else(|| "none".to_string(), |l| l.to_string()),
    );
    row("Raft term", &status.term.to_string());
    row("Applied index", &status.applied_index.to_string());
    h.push_str("</table>\n<h3>Flags</h3>\n<table>\n");
    for (k, v) in &app.settings.flags {
        let _ = writeln!(
            h,
            "<tr><th>{}</th><td><code>{}</code></td></tr>",
            escape(k),
            escape(v)
        );
    }
    h.push_str("</table>\n</section>\n");
}

/// The samples of a family in text-format notation (display only).
fn samples_text(fam: &MetricFamily) -> String {
    let mut out = String::new();
    let name = fam.name();
    for m in &fam.metric {
        match fam.r#type() {
            MetricType::Summary => {
                let s = m.summary.clone().unwrap_or_default();
                for q in &s.quantile {
                    line(
                        &mut out,
                        name,
                        m,
                        Some(("quantile", q.quantile())),
                        q.value(),
                    );
                }
                line(&mut out, &format!("{name}_sum"), m, None, s.sample_sum());
                line_u(&mut out, &format!("{name}_count"), m, s.sample_count());
            }
            MetricType::Histogram | MetricType::GaugeHistogram => {
                let hist = m.histogram.clone().unwrap_or_default();
                for b in &hist.bucket {
                    let count = if b.cumulative_count_float() > 0.0 {
                        b.cumulative_count_float()
                    } else {
                        b.cumulative_count() as f64
                    };
                    line(
                        &mut out,
                        &format!("{name}_bucket"),
                        m,
                        Some(("le", b.upper_bound())),
                        count,
                    );
                }
                line(&mut out, &format!("{name}_sum"), m, None, hist.sample_sum());
                line_u(&mut out, &format!("{name}_count"), m, hist.sample_count());
            }
            _ => {
                let v = m
                    .gauge
                    .as_ref()
                    .map(|g| g.value())
                    .or_else(|| m.counter.as_ref().map(|c| c.value()))
                    .or_else(|| m.untyped.as_ref().map(|u| u.value()))
                    .unwrap_or(0.0);
                line(&mut out, name, m, None, v);
            }
        }
    }
    out
}

fn labels(out: &mut String, m: &Metric, extra: Option<(&str, f64)>) {
    let mut parts: Vec<String> = m
        .label
        .iter()
        .map(|l| format!("{}=\"{}\"", l.name(), escape_label(l.value())))
        .collect();
    if let Some((n, v)) = extra {
        parts.push(format!("{n}=\"{}\"", pgw_core::float::go_sprint(v)));
    }
    if !parts.is_empty() {
        out.push('{');
        out.push_str(&parts.join(","));
        out.push('}');
    }
}

fn line(out: &mut String, name: &str, m: &Metric, extra: Option<(&str, f64)>, v: f64) {
    out.push_str(name);
    labels(out, m, extra);
    let mut buf = Vec::new();
    pgw_core::float::write_text(&mut buf, v);
    out.push(' ');
    out.push_str(&String::from_utf8_lossy(&buf));
    out.push('\n');
}

fn line_u(out: &mut String, name: &str, m: &Metric, v: u64) {
    out.push_str(name);
    labels(out, m, None);
    let _ = writeln!(out, " {v}");
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn sample_lines() {
        use pgw_core::pb;
        let fam = MetricFamily {
            name: Some("m".into()),
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![pb::Metric {
                label: vec![pb::LabelPair {
                    name: Some("a".into()),
                    value: Some("x\"y".into()),
                }],
                gauge: Some(pb::Gauge { value: Some(1e6) }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(samples_text(&fam), "m{a=\"x\\\"y\"} 1e+06\n");
    }
}
