//! The "Metric groups" section of the web page: one page of groups at a time, with a
//! server-side search over the grouping labels and cursor paging.
//!
//! Query parameters of `GET /` (and `/status`), all optional, unknown ones ignored:
//!
//! - `q`: a search (see [`Filter`]); empty shows every group.
//! - `limit`: groups per page, 1 to [`MAX_LIMIT`] (default [`DEFAULT_LIMIT`]).
//! - `after` / `before`: a page cursor, the [`GroupingKey::cursor`] of the last (first) group
//!   of the page before (after) it. The page's own links carry them. A cursor names a
//!   position in grouping-key order, not an offset, so pages do not shift while groups are
//!   pushed or deleted, and a cursor whose group was deleted since still works.
//!
//! Cost: only the page's groups are copied out of the store and rendered, so the body does
//! not grow with the store. Without a search the page is found with two range lookups; with
//! one, the grouping keys are scanned (to count the matches) in chunks of [`SCAN_CHUNK`] keys,
//! each under its own short read lock, so writes are never held up for a whole scan. The
//! count is therefore that of a moment during the request, not a snapshot; each rendered
//! group is consistent in itself.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::ops::Bound;

use pgw_core::GroupStore;
use pgw_core::GroupingKey;
use pgw_core::store::Group;

use super::{escape, samples_text, time_or_never};

/// Groups per page when `limit` is not given.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// The largest `limit`: bounds the work and the body of one request.
pub(crate) const MAX_LIMIT: usize = 1000;
/// The longest search (bytes, decoded).
pub(crate) const MAX_SEARCH_BYTES: usize = 1024;
/// The most terms in one search.
pub(crate) const MAX_TERMS: usize = 16;
/// The longest cursor (bytes): far above any grouping key a push URL can carry.
const MAX_CURSOR_BYTES: usize = 64 * 1024;
/// Keys examined under one read lock while a search scans the store.
pub(crate) const SCAN_CHUNK: usize = 4096;

/// What to show: the parsed query string.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Query {
    /// The search as typed (shown in the search box and carried by the paging links).
    pub search: String,
    /// The parsed search.
    pub filter: Filter,
    /// Groups per page.
    pub limit: usize,
    /// Where the page starts or ends.
    pub cursor: Cursor,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            search: String::new(),
            filter: Filter::default(),
            limit: DEFAULT_LIMIT,
            cursor: Cursor::First,
        }
    }
}

/// The position of a page in grouping-key order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cursor {
    /// The first page.
    First,
    /// The page of the matching groups just after this key.
    After(GroupingKey),
    /// The page of the matching groups just before this key (the first page when fewer than
    /// a page's worth come before it).
    Before(GroupingKey),
}

impl Query {
    /// Parses the query string of a page request. On bad input returns the error message (a
    /// person can act on it) along with what could be parsed, so that the page can show the
    /// search box filled in again.
    pub(crate) fn parse(raw: Option<&str>) -> Result<Query, (Query, String)> {
        let mut q = Query::default();
        let mut seen = [false; 4];
        let mut after = None;
        let mut before = None;
        let mut limit = None;
        for pair in raw.unwrap_or_default().split('&') {
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "q" => 0,
                "limit" => 1,
                "after" => 2,
                "before" => 3,
                _ => continue,
            };
            // The first occurrence wins, as Go's `url.Values.Get`.
            if std::mem::replace(&mut seen[slot], true) {
                continue;
            }
            let Some(value) = form_decode(value) else {
                return Err((
                    q,
                    format!("the {name} parameter is not valid percent-encoded UTF-8"),
                ));
            };
            match slot {
                0 => q.search = value,
                1 => limit = Some(value),
                2 => after = Some(value),
                _ => before = Some(value),
            }
        }
        if q.search.len() > MAX_SEARCH_BYTES {
            let msg = format!(
                "the search is {} bytes long; at most {MAX_SEARCH_BYTES} are allowed",
                q.search.len()
            );
            q.search.clear();
            return Err((q, msg));
        }
        if let Some(l) = limit.filter(|l| !l.is_empty()) {
            match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = n,
                _ => {
                    return Err((
                        q,
                        format!(
                            "invalid limit {l:?}: give a number of groups per page from 1 to \
                             {MAX_LIMIT}"
                        ),
                    ));
                }
            }
        }
        q.filter = match Filter::parse(&q.search) {
            Ok(f) => f,
            Err(msg) => return Err((q, format!("invalid search: {msg}"))),
        };
        let cursor_err = |which: &str| {
            format!(
                "invalid page cursor in {which}=: follow the page's own links, or remove \
                 {which}= to start at the first page"
            )
        };
        // An empty cursor is no cursor (as an empty `limit` is the default).
        let after = after.filter(|c| !c.is_empty());
        let before = before.filter(|c| !c.is_empty());
        q.cursor = match (after, before) {
            (Some(_), Some(_)) => {
                return Err((q, "give either after= or before=, not both".into()));
            }
            (Some(c), None) => match decode_cursor(&c) {
                Some(k) => Cursor::After(k),
                None => return Err((q, cursor_err("after"))),
            },
            (None, Some(c)) => match decode_cursor(&c) {
                Some(k) => Cursor::Before(k),
                None => return Err((q, cursor_err("before"))),
            },
            (None, None) => Cursor::First,
        };
        Ok(q)
    }

    /// The relative URL (`?…`) of this query's page at `cursor`.
    fn href(&self, cursor: Option<(&str, &GroupingKey)>) -> String {
        let mut s = String::from("?");
        if !self.search.is_empty() {
            s.push_str("q=");
            s.push_str(&form_encode(&self.search));
        }
        if self.limit != DEFAULT_LIMIT {
            if s.len() > 1 {
                s.push('&');
            }
            let _ = write!(s, "limit={}", self.limit);
        }
        if let Some((name, key)) = cursor {
            if s.len() > 1 {
                s.push('&');
            }
            let _ = write!(s, "{name}={}", key.cursor());
        }
        s
    }
}

fn decode_cursor(token: &str) -> Option<GroupingKey> {
    if token.is_empty() || token.len() > MAX_CURSOR_BYTES {
        return None;
    }
    GroupingKey::from_cursor(token).ok()
}

/// Decodes an `application/x-www-form-urlencoded` value: `+` is a space, `%XX` a byte, and
/// the result must be UTF-8.
fn form_decode(raw: &str) -> Option<String> {
    let plus = raw.replace('+', " ");
    let bytes = crate::http::path::percent_decode(plus.as_bytes())?;
    String::from_utf8(bytes).ok()
}

/// Encodes a query value: RFC 3986 unreserved characters stay, a space becomes `+`, every
/// other byte `%XX`.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A search over grouping labels: terms separated by spaces or commas, all of which must
/// match (no term: every group).
///
/// | term | matches a group whose grouping key |
/// |---|---|
/// | `name=value` | has label `name` with exactly `value` |
/// | `name!=value` | does not have label `name` with exactly `value` |
/// | `name~text` | has label `name` whose value contains `text` (ASCII case-insensitive) |
/// | `text` | has a label name or value containing `text` (ASCII case-insensitive) |
///
/// A value or text may be double-quoted (`job="my job"`, with `\"` and `\\` escapes), so the
/// badges of the page can be pasted as they are shown. Label names are
/// `[a-zA-Z_][a-zA-Z0-9_]*`. Regular expressions (`=~`, `!~`) are refused with a message
/// rather than read as text.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Filter {
    terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq)]
enum Term {
    Is(String, String),
    IsNot(String, String),
    /// Label name and lower-cased text.
    Contains(String, String),
    /// Lower-cased text.
    Any(String),
}

impl Filter {
    /// Parses a search (see the type docs).
    ///
    /// # Errors
    /// A message naming the bad term: an unterminated quote, a regular-expression operator,
    /// or more than [`MAX_TERMS`] terms.
    pub(crate) fn parse(search: &str) -> Result<Filter, String> {
        let mut terms = Vec::new();
        for token in tokens(search)? {
            if terms.len() == MAX_TERMS {
                return Err(format!("more than {MAX_TERMS} terms"));
            }
            terms.push(Term::parse(&token)?);
        }
        Ok(Filter { terms })
    }

    /// Whether the search has no term (every group matches).
    pub(crate) fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether the group with key `key` matches every term.
    pub(crate) fn matches(&self, key: &GroupingKey) -> bool {
        self.terms.iter().all(|t| t.matches(key))
    }
}

/// Splits a search on spaces and commas outside double quotes (quotes are kept).
fn tokens(search: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in search.chars() {
        if quoted {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
        } else if c.is_whitespace() || c == ',' {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            if c == '"' {
                quoted = true;
            }
            cur.push(c);
        }
    }
    if quoted {
        return Err(format!("unterminated quote in {cur:?}"));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Removes the quotes of a double-quoted token and its `\"`/`\\` escapes; other text is
/// returned as it is.
fn unquote(s: &str) -> Result<String, String> {
    let Some(inner) = s.strip_prefix('"') else {
        return Ok(s.to_string());
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) => out.push(e),
                None => break,
            },
            '"' => {
                return if chars.as_str().is_empty() {
                    Ok(out)
                } else {
                    Err(format!("text after the closing quote in {s:?}"))
                };
            }
            c => out.push(c),
        }
    }
    Err(format!("unterminated quote in {s:?}"))
}

fn is_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

impl Term {
    fn parse(token: &str) -> Result<Term, String> {
        // The operator is the first `=`, `!` or `~` before any quote.
        let op_at = token
            .find(['=', '!', '~', '"'])
            .filter(|&i| token.as_bytes()[i] != b'"');
        let Some(i) = op_at else {
            return Ok(Term::Any(unquote(token)?.to_ascii_lowercase()));
        };
        let name = &token[..i];
        if !is_label_name(name) {
            // Not `name<op>…`: plain text to look for.
            return Ok(Term::Any(unquote(token)?.to_ascii_lowercase()));
        }
        let rest = &token[i..];
        let (op, value) = if let Some(v) = rest.strip_prefix("!=") {
            ("!=", v)
        } else if rest.starts_with("=~") || rest.starts_with("!~") {
            return Err(format!(
                "regular expressions are not supported ({token:?}): use {name}~TEXT to find \
                 a label value that contains TEXT"
            ));
        } else if let Some(v) = rest.strip_prefix('=') {
            ("=", v)
        } else if let Some(v) = rest.strip_prefix('~') {
            ("~", v)
        } else {
            return Ok(Term::Any(unquote(token)?.to_ascii_lowercase()));
        };
        let value = unquote(value)?;
        let name = name.to_string();
        Ok(match op {
            "=" => Term::Is(name, value),
            "!=" => Term::IsNot(name, value),
            _ => Term::Contains(name, value.to_ascii_lowercase()),
        })
    }

    fn matches(&self, key: &GroupingKey) -> bool {
        match self {
            Term::Is(n, v) => key.get(n) == Some(v.as_str()),
            Term::IsNot(n, v) => key.get(n) != Some(v.as_str()),
            Term::Contains(n, t) => key.get(n).is_some_and(|v| contains_ci(v, t)),
            Term::Any(t) => key
                .pairs()
                .iter()
                .any(|(n, v)| contains_ci(n, t) || contains_ci(v, t)),
        }
    }
}

/// Whether `hay` contains `needle_lower` (already lower-cased), ignoring ASCII case.
fn contains_ci(hay: &str, needle_lower: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle_lower.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// One page of groups and what the page says about the rest.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    /// Groups in the store.
    pub total: usize,
    /// Groups matching the search (all of them without one).
    pub matching: usize,
    /// The page's groups, in grouping-key order (copies: rendered without a lock).
    pub page: Vec<(GroupingKey, Group)>,
    /// Whether matching groups come before the page.
    pub prev: bool,
    /// Whether matching groups come after the page.
    pub next: bool,
}

/// The keys of a page, before the groups are copied.
#[derive(Debug, Default)]
struct PageKeys {
    matching: usize,
    keys: Vec<GroupingKey>,
    prev: bool,
    next: bool,
}

/// Selects the page `q` asks for. `read` runs a closure on the store under its read lock;
/// it is called a bounded number of times per [`SCAN_CHUNK`] keys, and each call does
/// bounded work (at most [`SCAN_CHUNK`] keys, or [`MAX_LIMIT`] groups copied).
pub(crate) fn select<R>(read: R, q: &Query) -> Selection
where
    R: Fn(&mut dyn FnMut(&GroupStore)),
{
    let keys = if q.filter.is_empty() {
        let mut keys = PageKeys::default();
        read(&mut |s| keys = unfiltered(s, q.limit, &q.cursor));
        keys
    } else {
        filtered(&read, q)
    };
    let mut sel = Selection {
        matching: keys.matching,
        prev: keys.prev,
        next: keys.next,
        ..Default::default()
    };
    read(&mut |s| {
        sel.total = s.len();
        // A group deleted since its key was picked is left out.
        sel.page = keys
            .keys
            .iter()
            .filter_map(|k| s.get(k).map(|g| (k.clone(), g.clone())))
            .collect();
    });
    sel
}

/// The page without a search: range lookups around the cursor, O(limit · log n).
fn unfiltered(s: &GroupStore, limit: usize, cursor: &Cursor) -> PageKeys {
    use Bound::{Excluded, Included, Unbounded};
    let first = || {
        let mut it = s.range((Unbounded, Unbounded)).map(|(k, _)| k);
        PageKeys {
            matching: s.len(),
            keys: it.by_ref().take(limit).cloned().collect(),
            prev: false,
            next: it.next().is_some(),
        }
    };
    match cursor {
        Cursor::First => first(),
        Cursor::After(c) => {
            let mut it = s.range((Excluded(c), Unbounded)).map(|(k, _)| k);
            PageKeys {
                matching: s.len(),
                keys: it.by_ref().take(limit).cloned().collect(),
                prev: s.range((Unbounded, Included(c))).next_back().is_some(),
                next: it.next().is_some(),
            }
        }
        Cursor::Before(c) => {
            let mut it = s.range((Unbounded, Excluded(c))).rev().map(|(k, _)| k);
            let mut keys: Vec<GroupingKey> = it.by_ref().take(limit).cloned().collect();
            if keys.len() < limit {
                return first();
            }
            keys.reverse();
            PageKeys {
                matching: s.len(),
                keys,
                prev: it.next().is_some(),
                next: s.range((Included(c), Unbounded)).next().is_some(),
            }
        }
    }
}

/// The page of a search: every key is tested (to count the matches), [`SCAN_CHUNK`] keys per
/// read lock, resuming after the last key seen.
fn filtered<R>(read: &R, q: &Query) -> PageKeys
where
    R: Fn(&mut dyn FnMut(&GroupStore)),
{
    let limit = q.limit;
    let mut out = PageKeys::default();
    // For `Before`: the last `limit` matches before the cursor, and the first `limit` matches
    // overall (the first page, shown when fewer than a page come before the cursor).
    let mut window: VecDeque<GroupingKey> = VecDeque::new();
    let mut head: Vec<GroupingKey> = Vec::new();
    let mut resume: Option<GroupingKey> = None;
    loop {
        let mut done = true;
        read(&mut |s| {
            let lower = resume.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut last = None;
            for (seen, (k, _)) in s.range((lower, Bound::Unbounded)).enumerate() {
                if seen == SCAN_CHUNK {
                    done = false;
                    break;
                }
                last = Some(k);
                if !q.filter.matches(k) {
                    continue;
                }
                out.matching += 1;
                match &q.cursor {
                    Cursor::First => {
                        if out.keys.len() < limit {
                            out.keys.push(k.clone());
                        } else {
                            out.next = true;
                        }
                    }
                    Cursor::After(c) => {
                        if k <= c {
                            out.prev = true;
                        } else if out.keys.len() < limit {
                            out.keys.push(k.clone());
                        } else {
                            out.next = true;
                        }
                    }
                    Cursor::Before(c) => {
                        if head.len() < limit {
                            head.push(k.clone());
                        }
                        if k < c {
                            window.push_back(k.clone());
                            if window.len() > limit {
                                window.pop_front();
                                out.prev = true;
                            }
                        } else {
                            out.next = true;
                        }
                    }
                }
            }
            let last = last.cloned();
            if !done {
                resume = last;
            }
        });
        if done {
            break;
        }
    }
    if let Cursor::Before(_) = q.cursor {
        if window.len() < limit {
            out.next = out.matching > head.len();
            out.prev = false;
            out.keys = head;
        } else {
            out.keys = window.into();
        }
    }
    out
}

/// Renders the section: heading, wipe button, search form, summary, pager and the page's
/// groups. `error` (a bad query) is shown instead of groups.
pub(crate) fn render(h: &mut String, q: &Query, sel: &Selection, admin: bool, error: Option<&str>) {
    let _ = write!(
        h,
        "<section id=\"metrics\">\n<h2>Metric groups <span class=\"count\">{}</span></h2>\n",
        sel.total
    );
    if admin {
        h.push_str(
            "<p><button type=\"button\" class=\"danger\" data-wipe=\"api/v1/admin/wipe\">\
             Delete all groups</button></p>\n",
        );
    }
    render_form(h, q);
    if let Some(msg) = error {
        let _ = writeln!(h, "<p class=\"error\">{}</p>", escape(msg));
        h.push_str("</section>\n");
        return;
    }
    if sel.total == 0 {
        h.push_str("<p class=\"empty\">No metric groups have been pushed.</p>\n</section>\n");
        return;
    }
    if sel.matching == 0 {
        let _ = writeln!(
            h,
            "<p class=\"summary empty\">No group matches <code>{}</code>.</p>",
            escape(&q.search)
        );
        h.push_str("</section>\n");
        return;
    }
    let _ = write!(
        h,
        "<p class=\"summary\">Showing <span class=\"shown\">{}</span> of \
         <span class=\"matching\">{}</span> groups",
        sel.page.len(),
        sel.matching
    );
    if !q.filter.is_empty() {
        let _ = write!(
            h,
            " matching <code>{}</code> ({} groups in total)",
            escape(&q.search),
            sel.total
        );
    }
    let _ = writeln!(h, ", at most {} per page.</p>", q.limit);
    render_pager(h, q, sel);
    for (key, group) in &sel.page {
        render_group(h, key, group);
    }
    render_pager(h, q, sel);
    h.push_str("</section>\n");
}

fn render_form(h: &mut String, q: &Query) {
    // No `action`: the form submits to the page it is on, under any route prefix.
    let _ = write!(
        h,
        "<form class=\"search\" method=\"get\" role=\"search\">\
         <input type=\"search\" name=\"q\" value=\"{}\" maxlength=\"{MAX_SEARCH_BYTES}\" \
         placeholder=\"job=&quot;api&quot; instance~db\" aria-label=\"Search groups by label\">",
        escape(&q.search)
    );
    if q.limit != DEFAULT_LIMIT {
        let _ = write!(
            h,
            "<input type=\"hidden\" name=\"limit\" value=\"{}\">",
            q.limit
        );
    }
    h.push_str("<button type=\"submit\">Search</button>");
    if !q.search.is_empty() {
        let clear = Query {
            search: String::new(),
            filter: Filter::default(),
            ..q.clone()
        };
        let _ = write!(h, " <a href=\"{}\">Clear</a>", escape(&clear.href(None)));
    }
    h.push_str(
        "<details class=\"syntax\"><summary>Search syntax</summary><p>Terms separated by \
         spaces, all of which must match a group's grouping labels: <code>name=value</code> \
         (exact), <code>name!=value</code>, <code>name~text</code> (the value contains the \
         text, ignoring case), or <code>text</code> (a label name or value contains it). \
         Quote values with spaces: <code>job=&quot;my job&quot;</code>.</p></details>\
         </form>\n",
    );
}

fn render_pager(h: &mut String, q: &Query, sel: &Selection) {
    if !sel.prev && !sel.next {
        return;
    }
    h.push_str("<nav class=\"pager\">");
    let link = |h: &mut String, rel: &str, class: &str, href: Option<String>, text: &str| match href
    {
        Some(href) => {
            let _ = write!(
                h,
                "<a class=\"{class}\" rel=\"{rel}\" href=\"{}\">{text}</a> ",
                escape(&href)
            );
        }
        None => {
            let _ = write!(h, "<span class=\"{class} disabled\">{text}</span> ");
        }
    };
    let first_key = sel.page.first().map(|(k, _)| k);
    let last_key = sel.page.last().map(|(k, _)| k);
    link(
        h,
        "first",
        "first",
        sel.prev.then(|| q.href(None)),
        "&laquo; First",
    );
    // An empty page (every group of it deleted meanwhile) pages from its cursor.
    let prev_at = first_key.or(match &q.cursor {
        Cursor::After(c) => Some(c),
        _ => None,
    });
    link(
        h,
        "prev",
        "prev",
        sel.prev
            .then_some(prev_at)
            .flatten()
            .map(|k| q.href(Some(("before", k)))),
        "&lsaquo; Previous",
    );
    let next_at = last_key.or(match &q.cursor {
        Cursor::Before(c) => Some(c),
        _ => None,
    });
    link(
        h,
        "next",
        "next",
        sel.next
            .then_some(next_at)
            .flatten()
            .map(|k| q.href(Some(("after", k)))),
        "Next &rsaquo;",
    );
    h.push_str("</nav>\n");
}

fn render_group(h: &mut String, key: &GroupingKey, group: &Group) {
    h.push_str("<details class=\"group\">\n<summary>");
    label_badges(h, key.pairs());
    if !group.last_push_successful() {
        h.push_str("<span class=\"badge failed\">Last push failed!</span> ");
    }
    let _ = write!(
        h,
        "<button type=\"button\" class=\"danger\" data-delete=\".{}\">Delete group</button>",
        escape(&key.url_path())
    );
    let _ = writeln!(
        h,
        "</summary>\n<p class=\"times\">Last push: {} · last failed push: {}</p>",
        escape(&time_or_never(group.push_time_ns())),
        escape(&time_or_never(group.push_failure_time_ns()))
    );
    for (name, sf) in &group.families {
        let fam = &sf.family();
        let _ = write!(
            h,
            "<details class=\"family\">\n<summary><code>{}</code> \
             <span class=\"badge type\">{}</span> <span class=\"help\">{}</span> \
             <span class=\"times\">last pushed: {}</span></summary>\n<pre>",
            escape(name),
            escape(fam.r#type().as_str_name()),
            escape(fam.help()),
            escape(&time_or_never(sf.time_ns))
        );
        h.push_str(&escape(&samples_text(fam)));
        h.push_str("</pre>\n</details>\n");
    }
    h.push_str("</details>\n");
}

fn label_badges(h: &mut String, pairs: &[(String, String)]) {
    for (name, value) in pairs {
        let class = match name.as_str() {
            "job" => "job",
            "instance" => "instance",
            _ => "label",
        };
        let _ = write!(
            h,
            "<span class=\"badge {class}\">{}=&quot;{}&quot;</span> ",
            escape(name),
            escape(value)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgw_core::{Command, Push};

    fn key(pairs: &[(&str, &str)]) -> GroupingKey {
        GroupingKey::from_pairs(pairs.iter().copied())
    }

    fn store(keys: &[GroupingKey]) -> GroupStore {
        let mut s = GroupStore::new();
        for (i, k) in keys.iter().enumerate() {
            let cmd = Command::Push(Push::new(k.clone(), true, 1 + i as i64, true, &[]));
            s.apply(&cmd);
        }
        s
    }

    fn jobs(n: usize) -> Vec<GroupingKey> {
        (0..n)
            .map(|i| {
                key(&[
                    ("job", &format!("j{:03}", i)),
                    ("zone", if i % 3 == 0 { "prod" } else { "dev" }),
                ])
            })
            .collect()
    }

    fn page(s: &GroupStore, raw: &str) -> Selection {
        let q = Query::parse(Some(raw)).expect("query parses");
        select(|f| f(s), &q)
    }

    fn jobs_of(sel: &Selection) -> Vec<String> {
        sel.page.iter().map(|(k, _)| k.job().to_string()).collect()
    }

    #[test]
    fn parses_terms() {
        let f = Filter::parse(r#"job="my job", env!=prod  host~DB  "a b" x"#).expect("parses");
        assert_eq!(
            f.terms,
            vec![
                Term::Is("job".into(), "my job".into()),
                Term::IsNot("env".into(), "prod".into()),
                Term::Contains("host".into(), "db".into()),
                Term::Any("a b".into()),
                Term::Any("x".into()),
            ]
        );
        assert!(Filter::parse("").expect("empty").is_empty());
        assert!(
            Filter::parse("job=~x")
                .unwrap_err()
                .contains("regular expressions")
        );
        assert!(
            Filter::parse("job=\"x")
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(Filter::parse(&"a ".repeat(17)).unwrap_err().contains("16"));
        // `=` without a label name before it is text.
        assert_eq!(
            Filter::parse("=x").expect("text").terms,
            vec![Term::Any("=x".into())]
        );
    }

    #[test]
    fn matching() {
        let k = key(&[("job", "Api-Server"), ("instance", "db-1:9100")]);
        let m = |s: &str| Filter::parse(s).expect("parses").matches(&k);
        assert!(m("job=Api-Server"));
        assert!(!m("job=api-server"));
        assert!(m("job~api"));
        assert!(m("API instance~DB-1"));
        assert!(m("instance!=x"));
        assert!(m("zone!=x"), "an absent label is not equal");
        assert!(!m("job!=Api-Server"));
        assert!(!m("zone=x"));
        assert!(!m("zone~"));
        assert!(m("9100"));
        assert!(m("instance"), "label names are searched too");
        assert!(!m("job=Api-Server instance~nope"));
    }

    #[test]
    fn query_string() {
        let q = Query::parse(Some("q=job%3D%22a+b%22&limit=5&other=1")).expect("parses");
        assert_eq!(q.search, "job=\"a b\"");
        assert_eq!(q.limit, 5);
        assert_eq!(q.cursor, Cursor::First);
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "q=%zz",
            "after=nope",
            "before=%00",
            "q=job=~a",
        ] {
            let (_, msg) = Query::parse(Some(bad)).expect_err(bad);
            assert!(!msg.is_empty());
        }
        let k = key(&[("job", "a/b"), ("x", "")]);
        let raw = format!("after={}&before={}", k.cursor(), k.cursor());
        assert!(Query::parse(Some(&raw)).unwrap_err().1.contains("not both"));
        let q = Query::parse(Some(&format!("after={}", k.cursor()))).expect("cursor");
        assert_eq!(q.cursor, Cursor::After(k.clone()));
        // The links round-trip the query.
        let q = Query {
            search: "job=\"a b\" ü&x".into(),
            limit: 7,
            ..Query::default()
        };
        let href = q.href(Some(("after", &k)));
        let back = Query::parse(Some(&href[1..])).expect("own link parses");
        assert_eq!(back.search, q.search);
        assert_eq!(back.limit, 7);
        assert_eq!(back.cursor, Cursor::After(k));
    }

    /// Walking forward and back through the pages visits every matching group once, in
    /// order, with and without a search.
    #[test]
    fn paging_walks_every_group() {
        let s = store(&jobs(25));
        for (search, want) in [("", 25), ("q=zone%3Dprod&", 9)] {
            let mut seen = Vec::new();
            let mut sel = page(&s, &format!("{search}limit=4"));
            assert!(!sel.prev);
            loop {
                assert_eq!(sel.matching, want);
                assert_eq!(sel.total, 25);
                seen.extend(jobs_of(&sel));
                if !sel.next {
                    break;
                }
                let last = &sel.page.last().expect("page").0;
                let next = page(&s, &format!("{search}limit=4&after={}", last.cursor()));
                assert!(next.prev);
                // Back from the next page is this page.
                let first = &next.page[0].0;
                let back = page(&s, &format!("{search}limit=4&before={}", first.cursor()));
                assert_eq!(jobs_of(&back), jobs_of(&sel));
                sel = next;
            }
            let mut sorted = seen.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(seen, sorted);
            assert_eq!(seen.len(), want);
        }
    }

    /// Back from a page whose predecessors are fewer than a page: the first page.
    #[test]
    fn before_near_the_start_is_the_first_page() {
        let s = store(&jobs(10));
        let k = key(&[("job", "j002"), ("zone", "dev")]);
        for search in ["", "q=j0&"] {
            let sel = page(&s, &format!("{search}limit=4&before={}", k.cursor()));
            assert_eq!(jobs_of(&sel), ["j000", "j001", "j002", "j003"], "{search}");
            assert!(!sel.prev);
            assert!(sel.next);
        }
    }

    /// A cursor whose group was deleted still places the page; groups added before it do
    /// not shift it.
    #[test]
    fn cursor_is_stable() {
        let mut s = store(&jobs(10));
        let k = key(&[("job", "j004"), ("zone", "dev")]);
        s.apply(&Command::Delete { key: k.clone() });
        s.apply(&Command::Push(Push::new(
            key(&[("job", "a-new")]),
            true,
            99,
            true,
            &[],
        )));
        for search in ["", "q=j&"] {
            let sel = page(&s, &format!("{search}limit=3&after={}", k.cursor()));
            assert_eq!(jobs_of(&sel), ["j005", "j006", "j007"], "{search}");
            assert!(sel.prev && sel.next);
        }
    }

    /// A search scans in chunks: every chunk takes the lock anew and the count is exact.
    #[test]
    fn search_scans_in_chunks() {
        let n = SCAN_CHUNK * 2 + 10;
        let keys: Vec<GroupingKey> = (0..n)
            .map(|i| key(&[("job", &format!("g{i:06}"))]))
            .collect();
        let s = store(&keys);
        let calls = std::cell::Cell::new(0);
        let q = Query::parse(Some("q=job~1&limit=3")).expect("parses");
        let sel = select(
            |f| {
                calls.set(calls.get() + 1);
                f(&s)
            },
            &q,
        );
        let want = keys.iter().filter(|k| k.job().contains('1')).count();
        assert_eq!(sel.matching, want);
        assert_eq!(jobs_of(&sel), ["g000001", "g000010", "g000011"]);
        // Three chunks plus the copy of the page.
        assert_eq!(calls.get(), 4);
    }

    /// The rendered section holds only the page: its size does not depend on the store's.
    #[test]
    fn body_does_not_grow_with_the_store() {
        let render_first = |n: usize| {
            let keys: Vec<GroupingKey> = (0..n)
                .map(|i| key(&[("job", &format!("g{i:06}"))]))
                .collect();
            let s = store(&keys);
            let q = Query::default();
            let sel = select(|f| f(&s), &q);
            let mut h = String::new();
            render(&mut h, &q, &sel, true, None);
            h
        };
        let small = render_first(150);
        let large = render_first(20_000);
        assert_eq!(
            small.matches("<details class=\"group\">").count(),
            DEFAULT_LIMIT
        );
        assert!(
            small.len().abs_diff(large.len()) < 64,
            "{} vs {}",
            small.len(),
            large.len()
        );
    }
}
