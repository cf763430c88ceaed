//! A route table with the semantics of the reference's router (`julienschmidt/httprouter`
//! behind `prometheus/common/route`), implemented here rather than with axum's router so
//! that every observable behaviour can be matched (spec §2):
//!
//! * routes are per method; `:param` matches one non-empty segment, `*rest` the rest of the
//!   path including its leading `/`;
//! * a miss on a method that has routes tries a trailing-slash redirect (add or remove one
//!   `/`), then a case-insensitive match of the fixed route text, and redirects: 301 for
//!   `GET`, 307 otherwise;
//! * otherwise, if other methods match the path, `OPTIONS` answers 200 and anything else
//!   405, both with `Allow` (sorted, `OPTIONS` included); else 404.

use http::Method;

/// One part of a route pattern.
#[derive(Clone, Debug)]
pub enum Part {
    /// Fixed text.
    Lit(Vec<u8>),
    /// `:name`: one non-empty segment.
    Param,
    /// `*name`: the rest of the path, starting with `/`.
    CatchAll,
}

/// A registered route: methods, pattern, and what it leads to.
#[derive(Clone, Debug)]
pub struct Route<K> {
    methods: Vec<Method>,
    parts: Vec<Part>,
    kind: K,
}

/// A route table; the first registered match wins.
#[derive(Clone, Debug)]
pub struct Table<K> {
    routes: Vec<Route<K>>,
    /// Paths for which httprouter recommends a trailing-slash redirect although the
    /// stripped path matches nothing (a `/` node with a wildcard child, e.g.
    /// `PUT /metrics/job/` → 307 `/metrics/job`), with the methods it applies to.
    tsr_quirks: Vec<(Vec<Method>, Vec<u8>)>,
}

/// What the table says about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<K> {
    /// A route matched, with its captured parameters in order.
    Match(K, Vec<Vec<u8>>),
    /// Redirect to this (decoded) path with this status.
    Redirect(u16, Vec<u8>),
    /// `OPTIONS` on a path other methods serve: 200 with this `Allow`.
    Options(String),
    /// 405 with this `Allow`.
    MethodNotAllowed(String),
    /// 404.
    NotFound,
}

impl<K: Clone> Default for Table<K> {
    fn default() -> Self {
        Table {
            routes: Vec::new(),
            tsr_quirks: Vec::new(),
        }
    }
}

impl<K: Clone> Table<K> {
    /// Registers `parts` for `methods`.
    pub fn add(&mut self, methods: &[Method], parts: Vec<Part>, kind: K) {
        self.routes.push(Route {
            methods: methods.to_vec(),
            parts,
            kind,
        });
    }

    /// Registers a trailing-slash redirect quirk (see [`Table`]).
    pub fn add_tsr_quirk(&mut self, methods: &[Method], path: Vec<u8>) {
        self.tsr_quirks.push((methods.to_vec(), path));
    }

    fn has_tree(&self, method: &Method) -> bool {
        self.routes.iter().any(|r| r.methods.contains(method))
    }

    fn lookup(&self, method: &Method, path: &[u8]) -> Option<(K, Vec<Vec<u8>>)> {
        self.routes
            .iter()
            .filter(|r| r.methods.contains(method))
            .find_map(|r| {
                match_parts(&r.parts, path, false).map(|(caps, _)| (r.kind.clone(), caps))
            })
    }

    /// The path with its fixed route text in canonical case, if some route of `method`
    /// matches `path` ignoring ASCII case.
    fn lookup_fixed_case(&self, method: &Method, path: &[u8]) -> Option<Vec<u8>> {
        self.routes
            .iter()
            .filter(|r| r.methods.contains(method))
            .find_map(|r| match_parts(&r.parts, path, true).map(|(_, fixed)| fixed))
    }

    /// Routes a request (`path` decoded and cleaned).
    pub fn route(&self, method: &Method, path: &[u8]) -> Outcome<K> {
        if let Some((k, caps)) = self.lookup(method, path) {
            return Outcome::Match(k, caps);
        }
        if self.has_tree(method) && path != b"/" {
            let code = if method == Method::GET { 301 } else { 307 };
            let toggled = toggle_trailing_slash(path);
            if self.lookup(method, &toggled).is_some()
                || self
                    .tsr_quirks
                    .iter()
                    .any(|(ms, p)| ms.contains(method) && p.as_slice() == path)
            {
                return Outcome::Redirect(code, toggled);
            }
            for candidate in [path, toggled.as_slice()] {
                if let Some(fixed) = self.lookup_fixed_case(method, candidate)
                    && fixed != path
                {
                    return Outcome::Redirect(code, fixed);
                }
            }
        }
        let mut allowed: Vec<&str> = [Method::DELETE, Method::GET, Method::POST, Method::PUT]
            .iter()
            .filter(|m| *m != method && self.lookup(m, path).is_some())
            .map(Method::as_str)
            .collect();
        if allowed.is_empty() {
            return Outcome::NotFound;
        }
        allowed.push("OPTIONS");
        allowed.sort_unstable();
        let allow = allowed.join(", ");
        if method == Method::OPTIONS {
            Outcome::Options(allow)
        } else {
            Outcome::MethodNotAllowed(allow)
        }
    }
}

fn toggle_trailing_slash(path: &[u8]) -> Vec<u8> {
    match path.strip_suffix(b"/") {
        Some(p) => p.to_vec(),
        None => {
            let mut p = path.to_vec();
            p.push(b'/');
            p
        }
    }
}

/// Matches `path` against `parts`; returns the captures and the path rebuilt with the
/// pattern's own text (differs from `path` only when `ignore_case`).
fn match_parts(parts: &[Part], path: &[u8], ignore_case: bool) -> Option<(Vec<Vec<u8>>, Vec<u8>)> {
    let mut rest = path;
    let mut caps = Vec::new();
    let mut fixed = Vec::with_capacity(path.len());
    for part in parts {
        match part {
            Part::Lit(lit) => {
                let head = rest.get(..lit.len())?;
                let same = if ignore_case {
                    head.eq_ignore_ascii_case(lit)
                } else {
                    head == lit.as_slice()
                };
                if !same {
                    return None;
                }
                fixed.extend_from_slice(lit);
                rest = &rest[lit.len()..];
            }
            Part::Param => {
                let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
                if end == 0 {
                    return None;
                }
                caps.push(rest[..end].to_vec());
                fixed.extend_from_slice(&rest[..end]);
                rest = &rest[end..];
            }
            Part::CatchAll => {
                if rest.first() != Some(&b'/') {
                    return None;
                }
                caps.push(rest.to_vec());
                fixed.extend_from_slice(rest);
                rest = &[];
            }
        }
    }
    rest.is_empty().then_some((caps, fixed))
}

/// `Part::Lit` from text.
pub fn lit(s: &str) -> Part {
    Part::Lit(s.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table<&'static str> {
        let mut t = Table::default();
        let push = [Method::PUT, Method::POST, Method::DELETE];
        t.add(&[Method::GET], vec![lit("/metrics")], "metrics");
        t.add(&push, vec![lit("/metrics/job/"), Part::Param], "push");
        t.add(
            &push,
            vec![lit("/metrics/job/"), Part::Param, Part::CatchAll],
            "push-labels",
        );
        t.add(
            &[Method::GET],
            vec![lit("/static"), Part::CatchAll],
            "static",
        );
        t.add(&[Method::GET], vec![lit("/")], "ui");
        t.add_tsr_quirk(&push, b"/metrics/job/".to_vec());
        t
    }

    #[test]
    fn matching() {
        let t = table();
        assert_eq!(
            t.route(&Method::GET, b"/metrics"),
            Outcome::Match("metrics", vec![])
        );
        assert_eq!(
            t.route(&Method::PUT, b"/metrics/job/j/a/b"),
            Outcome::Match("push-labels", vec![b"j".to_vec(), b"/a/b".to_vec()])
        );
        assert_eq!(
            t.route(&Method::PUT, b"/metrics/job/j/"),
            Outcome::Match("push-labels", vec![b"j".to_vec(), b"/".to_vec()])
        );
        assert_eq!(t.route(&Method::PUT, b"/metrics/job"), Outcome::NotFound);
    }

    #[test]
    fn redirects() {
        let t = table();
        assert_eq!(
            t.route(&Method::GET, b"/metrics/"),
            Outcome::Redirect(301, b"/metrics".to_vec())
        );
        assert_eq!(
            t.route(&Method::PUT, b"/metrics/job/"),
            Outcome::Redirect(307, b"/metrics/job".to_vec())
        );
        assert_eq!(
            t.route(&Method::GET, b"/static"),
            Outcome::Redirect(301, b"/static/".to_vec())
        );
        assert_eq!(
            t.route(&Method::GET, b"/METRICS"),
            Outcome::Redirect(301, b"/metrics".to_vec())
        );
        assert_eq!(
            t.route(&Method::POST, b"/Metrics/Job/x"),
            Outcome::Redirect(307, b"/metrics/job/x".to_vec())
        );
    }

    #[test]
    fn method_handling() {
        let t = table();
        assert_eq!(
            t.route(&Method::OPTIONS, b"/metrics/job/x"),
            Outcome::Options("DELETE, OPTIONS, POST, PUT".into())
        );
        assert_eq!(
            t.route(&Method::HEAD, b"/metrics"),
            Outcome::MethodNotAllowed("GET, OPTIONS".into())
        );
        assert_eq!(
            t.route(&Method::PUT, b"/metrics"),
            Outcome::MethodNotAllowed("GET, OPTIONS".into())
        );
        assert_eq!(t.route(&Method::OPTIONS, b"/nope"), Outcome::NotFound);
    }
}
