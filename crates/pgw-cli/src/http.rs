//! The commands that use a node's public HTTP API (the Pushgateway API): `groups`, `delete`,
//! `wipe`.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::error::{CtlError, Result};
use crate::tls::TlsArgs;

/// Name of the synthetic push-time gauge of every group.
const PUSH_TIME: &str = "push_time_seconds";
/// Name of the synthetic failure-time gauge of every group.
const PUSH_FAILURE_TIME: &str = "push_failure_time_seconds";

/// One group as `pgwctl groups` reports it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupRow {
    /// The grouping key.
    pub labels: BTreeMap<String, String>,
    /// Last successful push, RFC 3339 UTC; `null` when it never succeeded.
    pub last_push: Option<String>,
    /// Last successful push, Unix seconds; `null` when it never succeeded.
    pub last_push_unix: Option<f64>,
    /// Last failed push, RFC 3339 UTC; `null` when none failed.
    pub last_failure: Option<String>,
    /// Last failed push, Unix seconds; `null` when none failed.
    pub last_failure_unix: Option<f64>,
    /// Whether the last push succeeded (no failure after the last success).
    pub last_push_successful: bool,
    /// The pushed metric family names (the two synthetic ones left out).
    pub families: Vec<String>,
}

/// A base URL (`http://host:port`, or `https://` when `https`) from `host:port` or a URL.
pub fn base_url(addr: &str, https: bool) -> String {
    let a = addr.trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else if https {
        format!("https://{a}")
    } else {
        format!("http://{a}")
    }
}

/// An HTTP client with the TLS options, and basic auth on every request when `--user` is
/// given.
fn client(timeout: Duration, tls: &TlsArgs) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(timeout);
    b = tls.apply_http(b)?;
    if let Some((user, pass)) = tls.basic_auth()? {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Basic {token}"))
            .map_err(|_| CtlError::usage("--user has characters a header cannot carry"))?;
        v.set_sensitive(true);
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::AUTHORIZATION, v);
        b = b.default_headers(h);
    }
    b.build()
        .map_err(|e| CtlError::failed(format!("cannot build an HTTP client: {e}")))
}

/// A non-success answer, with a hint for the statuses that TLS and credentials explain.
fn refused(what: &str, status: reqwest::StatusCode, body: &str) -> CtlError {
    let hint = match status.as_u16() {
        401 => " (give credentials with --user USER:PASSWORD or PGWCTL_USER)",
        403 => {
            " (these credentials' scope does not allow it: see pgw_authorization in the web config file)"
        }
        400 if body.contains("HTTPS server") => {
            " (the node serves TLS: give --cacert FILE, or an https:// address)"
        }
        _ => "",
    };
    CtlError::failed(format!("{what} answered {status}: {}{hint}", body.trim()))
}

fn send_error(base: &str, e: &reqwest::Error) -> CtlError {
    let msg = crate::client::error_chain(e);
    if e.is_connect() || e.is_timeout() {
        CtlError::unreachable(format!(
            "cannot reach the HTTP API at {base}: {msg}; check that the node runs and that \
             --http names its --web.listen-address"
        ))
    } else {
        CtlError::failed(format!("request to {base} failed: {msg}"))
    }
}

/// The value of the first sample of a synthetic time family, in seconds (`None` for 0).
fn time_of(group: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<f64> {
    let v = group
        .get(name)?
        .get("metrics")?
        .get(0)?
        .get("value")?
        .as_str()?
        .parse::<f64>()
        .ok()?;
    (v > 0.0).then_some(v)
}

/// Parses a `/api/v1/metrics` body.
pub fn parse_groups(body: &[u8]) -> std::result::Result<Vec<GroupRow>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let data = v
        .get("data")
        .and_then(|d| d.as_array())
        .ok_or("no \"data\" array")?;
    let mut out = Vec::with_capacity(data.len());
    for g in data {
        let Some(obj) = g.as_object() else {
            return Err("a group is not an object".into());
        };
        let labels: BTreeMap<String, String> = obj
            .get("labels")
            .and_then(|l| l.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let last_push_unix = time_of(obj, PUSH_TIME);
        let last_failure_unix = time_of(obj, PUSH_FAILURE_TIME);
        let families = obj
            .iter()
            .filter(|(k, v)| {
                v.is_object()
                    && v.get("metrics").is_some()
                    && k.as_str() != PUSH_TIME
                    && k.as_str() != PUSH_FAILURE_TIME
            })
            .map(|(k, _)| k.clone())
            .collect();
        out.push(GroupRow {
            labels,
            last_push: last_push_unix.map(crate::output::rfc3339),
            last_push_unix,
            last_failure: last_failure_unix.map(crate::output::rfc3339),
            last_failure_unix,
            last_push_successful: obj
                .get("last_push_successful")
                .and_then(|b| b.as_bool())
                .unwrap_or(true),
            families,
        });
    }
    Ok(out)
}

/// `GET /api/v1/metrics` (linearizable when asked).
pub async fn groups(
    base: &str,
    linearizable: bool,
    timeout: Duration,
    tls: &TlsArgs,
) -> Result<Vec<GroupRow>> {
    let url = if linearizable {
        format!("{base}/api/v1/metrics?consistency=linearizable")
    } else {
        format!("{base}/api/v1/metrics")
    };
    let resp = client(timeout, tls)?
        .get(&url)
        .send()
        .await
        .map_err(|e| send_error(base, &e))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| CtlError::failed(format!("reading the answer of {url}: {e}")))?;
    if !status.is_success() {
        return Err(refused(
            &format!("GET {url}"),
            status,
            &String::from_utf8_lossy(&body),
        ));
    }
    parse_groups(&body).map_err(|e| CtlError::failed(format!("GET {url}: unexpected answer: {e}")))
}

/// The URL path of a group: `/metrics/job@base64/<job>/<name>@base64/<value>...`. Every
/// value is base64url-encoded, so any value (with `/`, empty, non-ASCII) is exact.
pub fn group_path(labels: &[(String, String)]) -> std::result::Result<String, String> {
    let job = labels
        .iter()
        .find(|(k, _)| k == "job")
        .map(|(_, v)| v)
        .ok_or("the grouping key needs a job: give job=NAME")?;
    if job.is_empty() {
        return Err("the job must not be empty".into());
    }
    let enc = |v: &str| {
        if v.is_empty() {
            "=".to_string()
        } else {
            URL_SAFE_NO_PAD.encode(v)
        }
    };
    let mut path = format!("/metrics/job@base64/{}", enc(job));
    for (k, v) in labels.iter().filter(|(k, _)| k != "job") {
        let valid = k
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if k.is_empty() || !valid {
            return Err(format!(
                "{k:?} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)"
            ));
        }
        path.push_str(&format!("/{k}@base64/{}", enc(v)));
    }
    Ok(path)
}

/// `DELETE` of one group; the node answers 202 once the delete is committed.
pub async fn delete(
    base: &str,
    labels: &[(String, String)],
    timeout: Duration,
    tls: &TlsArgs,
) -> Result<String> {
    let path = group_path(labels).map_err(CtlError::usage)?;
    let url = format!("{base}{path}");
    let resp = client(timeout, tls)?
        .delete(&url)
        .send()
        .await
        .map_err(|e| send_error(base, &e))?;
    let status = resp.status();
    if status.as_u16() == 202 {
        return Ok(url);
    }
    let body = resp.text().await.unwrap_or_default();
    Err(refused(&format!("DELETE {url}"), status, &body))
}

/// `PUT /api/v1/admin/wipe`.
pub async fn wipe(base: &str, timeout: Duration, tls: &TlsArgs) -> Result<()> {
    let url = format!("{base}/api/v1/admin/wipe");
    let resp = client(timeout, tls)?
        .put(&url)
        .send()
        .await
        .map_err(|e| send_error(base, &e))?;
    let status = resp.status();
    if status.as_u16() == 202 {
        return Ok(());
    }
    if status.as_u16() == 404 {
        return Err(CtlError::failed(format!(
            "PUT {url} answered 404: the node runs without --web.enable-admin-api; restart it \
             with that flag, or delete groups one by one with `pgwctl delete`"
        )));
    }
    let body = resp.text().await.unwrap_or_default();
    Err(refused(&format!("PUT {url}"), status, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn group_paths_are_base64() {
        assert_eq!(
            group_path(&kv(&[("job", "a/b"), ("instance", "")])).unwrap(),
            "/metrics/job@base64/YS9i/instance@base64/="
        );
        assert!(group_path(&kv(&[("instance", "x")])).is_err());
        assert!(group_path(&kv(&[("job", "j"), ("1x", "v")])).is_err());
    }

    #[test]
    fn groups_from_the_api() {
        let body = br#"{"status":"success","data":[{"labels":{"job":"j","instance":"i"},"last_push_successful":false,
            "m":{"time_stamp":"x","type":"GAUGE","metrics":[{"labels":{},"value":"1"}]},
            "push_failure_time_seconds":{"time_stamp":"x","type":"GAUGE","metrics":[{"labels":{},"value":"1.7000000005e+09"}]},
            "push_time_seconds":{"time_stamp":"x","type":"GAUGE","metrics":[{"labels":{},"value":"1.7e+09"}]}}]}"#;
        let g = parse_groups(body).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].labels["job"], "j");
        assert_eq!(g[0].families, vec!["m".to_string()]);
        assert_eq!(g[0].last_push_unix, Some(1.7e9));
        assert_eq!(g[0].last_push.as_deref(), Some("2023-11-14T22:13:20.000Z"));
        assert_eq!(g[0].last_failure_unix, Some(1_700_000_000.5));
        assert!(!g[0].last_push_successful);
        let never = br#"{"data":[{"labels":{"job":"j"},"last_push_successful":true,
            "push_time_seconds":{"metrics":[{"value":"0"}]}}]}"#;
        assert_eq!(parse_groups(never).unwrap()[0].last_push, None);
    }
}
