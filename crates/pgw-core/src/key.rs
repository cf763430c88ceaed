//! Grouping keys and the push URL grammar (spec §3).
//!
//! A grouping key is the set of labels that identifies a group; it always contains `job`.
//! Label names are unique and kept sorted by name, so two keys are equal exactly when the
//! reference Pushgateway would consider them the same group (label order in the URL is
//! irrelevant; a present-but-empty label is part of the key).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use serde::{Deserialize, Serialize};

/// A canonical grouping key: label pairs sorted by name, names unique, always with `job`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupingKey(Vec<(String, String)>);

impl GroupingKey {
    /// Builds a key from label pairs; later duplicates of a name overwrite earlier ones.
    /// Callers guarantee that `job` is present.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut map = std::collections::BTreeMap::new();
        for (k, v) in pairs {
            map.insert(k.into(), v.into());
        }
        GroupingKey(map.into_iter().collect())
    }

    /// The label pairs, sorted by name.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// The `job` label.
    pub fn job(&self) -> &str {
        self.get("job").unwrap_or("")
    }

    /// Checks that this key is one [`parse`] can produce: label names unique and sorted,
    /// each matching `[a-zA-Z_][a-zA-Z0-9_]*` without a leading `__`, and a non-empty `job`.
    /// A key decoded from bytes (a forwarded command) may be anything; [`GroupingKey::get`],
    /// the store and rendering rely on this. Linear in the key's size.
    ///
    /// # Errors
    /// [`KeyError::LabelName`], [`KeyError::NotCanonical`] or [`KeyError::JobRequired`].
    pub fn check(&self) -> Result<(), KeyError> {
        let mut previous: Option<&str> = None;
        for (name, _) in &self.0 {
            if !is_label_name(name.as_bytes()) || name.starts_with("__") {
                return Err(KeyError::LabelName(crate::policy::clip(name, 200)));
            }
            if previous.is_some_and(|p| p >= name.as_str()) {
                return Err(KeyError::NotCanonical(crate::policy::clip(name, 200)));
            }
            previous = Some(name);
        }
        if self.job().is_empty() {
            return Err(KeyError::JobRequired);
        }
        Ok(())
    }

    /// A key with exactly these pairs, unchecked (tests of forged input).
    #[cfg(test)]
    pub(crate) fn forged_for_tests(pairs: Vec<(String, String)>) -> Self {
        GroupingKey(pairs)
    }
}

/// A malformed push or delete URL (spec §3). `Display` is the reference's message; the HTTP
/// layer answers 400 with it. Quoted parts are quoted like Go's `%q`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// `@base64` job that does not decode. The reference always prints an empty name here
    /// (quirk Q7); pgw prints the segment it got.
    #[error("invalid base64 encoding in job name {}: {err}", GoQuote(.job))]
    JobBase64 {
        /// The job segment as received (lossy UTF-8).
        job: String,
        /// Go's error text, e.g. `illegal base64 data at input byte 0`.
        err: String,
    },
    /// An odd number of `/`-separated components after the job.
    #[error("odd number of components in label string {}", GoQuote(.0))]
    OddComponents(String),
    /// A label name that is not `[a-zA-Z_][a-zA-Z0-9_]*` or starts with `__`.
    #[error("improper label name {}", GoQuote(.0))]
    LabelName(String),
    /// An `@base64` label value that does not decode.
    #[error("invalid base64 encoding for label {name}={}: {err}", GoQuote(.value))]
    LabelBase64 {
        /// The label name, without `@base64`.
        name: String,
        /// The value segment as received (lossy UTF-8).
        value: String,
        /// Go's error text, e.g. `illegal base64 data at input byte 0`.
        err: String,
    },
    /// Empty job (only reachable through `job@base64/=`).
    #[error("job name is required")]
    JobRequired,
    /// A label value (or the job) that is not valid UTF-8 (fixes quirk Q3).
    #[error("invalid UTF-8 in value of label {}", GoQuote(.0))]
    NotUtf8(String),
    /// A decoded key whose label names are not unique and sorted (never from a URL).
    #[error("label {} is out of order or repeated in the grouping key", GoQuote(.0))]
    NotCanonical(String),
}

/// The suffix of a label name (or of the `job` route segment) whose value is base64url.
const BASE64_SUFFIX: &[u8] = b"@base64";

/// Parses the grouping key of a push or delete URL, in the reference's order of checks
/// (spec §3; the first failure wins):
///
/// 1. with `job_base64`, the job is decoded ([`KeyError::JobBase64`]);
/// 2. `labels` longer than one byte loses its leading `/` and is split on `/`; an odd number
///    of components is [`KeyError::OddComponents`];
/// 3. each name (without a trailing `@base64`) must match `[a-zA-Z_][a-zA-Z0-9_]*` and must
///    not start with `__` ([`KeyError::LabelName`]);
/// 4. `@base64` values are decoded ([`KeyError::LabelBase64`]); later duplicates of a name
///    overwrite earlier ones;
/// 5. an empty job is [`KeyError::JobRequired`];
/// 6. the path job always wins over a `job` label pair.
///
/// Finally every value, the job included, must be UTF-8 ([`KeyError::NotUtf8`], checked in
/// label-name order). The reference skips this check and later poisons its store (quirk Q3).
///
/// Base64 is the URL-safe alphabet; all trailing `=` are stripped, then the rest is decoded
/// without padding exactly like Go's `base64.RawURLEncoding` (`=` alone is the empty string,
/// CR and LF are ignored, non-zero trailing bits are accepted).
///
/// `job` is the percent-decoded job segment, `job_base64` says whether the route was
/// `/metrics/job@base64/`, and `labels` is the percent-decoded rest of the path after the job
/// segment: empty, or starting with `/`.
pub fn parse(job: &[u8], job_base64: bool, labels: &[u8]) -> Result<GroupingKey, KeyError> {
    // Step 1.
    let job: Cow<'_, [u8]> = if job_base64 {
        match decode_base64(job) {
            Ok(v) => Cow::Owned(v),
            Err(err) => {
                return Err(KeyError::JobBase64 {
                    job: lossy(job),
                    err: err.to_string(),
                });
            }
        }
    } else {
        Cow::Borrowed(job)
    };

    // Steps 2–4.
    let mut map: BTreeMap<&[u8], Cow<'_, [u8]>> = BTreeMap::new();
    if labels.len() > 1 {
        let rest = labels.strip_prefix(b"/").unwrap_or(labels);
        let components: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
        if !components.len().is_multiple_of(2) {
            return Err(KeyError::OddComponents(lossy(labels)));
        }
        for pair in components.chunks_exact(2) {
            let (name, value) = (pair[0], pair[1]);
            let (trimmed, base64) = match name.strip_suffix(BASE64_SUFFIX) {
                Some(t) => (t, true),
                None => (name, false),
            };
            if !is_label_name(trimmed) || trimmed.starts_with(b"__") {
                return Err(KeyError::LabelName(lossy(trimmed)));
            }
            let value = if base64 {
                match decode_base64(value) {
                    Ok(v) => Cow::Owned(v),
                    Err(err) => {
                        return Err(KeyError::LabelBase64 {
                            name: lossy(trimmed),
                            value: lossy(value),
                            err: err.to_string(),
                        });
                    }
                }
            } else {
                Cow::Borrowed(value)
            };
            map.insert(trimmed, value);
        }
    }

    // Step 5.
    if job.is_empty() {
        return Err(KeyError::JobRequired);
    }
    // Step 6.
    map.insert(b"job", job);

    // UTF-8 (the Q3 fix). Names are ASCII by now (step 3).
    let mut pairs = Vec::with_capacity(map.len());
    for (name, value) in map {
        let name = lossy(name);
        let value = match value {
            Cow::Borrowed(b) => match std::str::from_utf8(b) {
                Ok(s) => s.to_owned(),
                Err(_) => return Err(KeyError::NotUtf8(name)),
            },
            Cow::Owned(v) => match String::from_utf8(v) {
                Ok(s) => s,
                Err(_) => return Err(KeyError::NotUtf8(name)),
            },
        };
        pairs.push((name, value));
    }
    // The map iterated in byte order of the names, which is `String` order.
    Ok(GroupingKey(pairs))
}

/// `^[a-zA-Z_][a-zA-Z0-9_]*$` (prometheus/common `model.LabelNameRE`).
fn is_label_name(name: &[u8]) -> bool {
    match name.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || *first == b'_')
                && rest.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        }
        None => false,
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Go's `base64.CorruptInputError`: the offset of the offending input byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CorruptInput(usize);

impl fmt::Display for CorruptInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "illegal base64 data at input byte {}", self.0)
    }
}

/// The pushgateway's `decodeBase64`: strip all trailing `=`, then Go's
/// `base64.RawURLEncoding.DecodeString` (non-strict: CR/LF skipped, trailing bits ignored),
/// with Go's error offsets.
fn decode_base64(input: &[u8]) -> Result<Vec<u8>, CorruptInput> {
    let mut end = input.len();
    while end > 0 && input[end - 1] == b'=' {
        end -= 1;
    }
    let src = &input[..end];
    let mut out = Vec::with_capacity(src.len() / 4 * 3 + 3);
    let mut si = 0;
    while si < src.len() {
        // Go's decodeQuantum.
        let mut quantum = [0u8; 4];
        let mut j = 0;
        let mut dlen = 4;
        while j < 4 {
            if si == src.len() {
                if j == 0 {
                    return Ok(out);
                }
                if j == 1 {
                    return Err(CorruptInput(si - j));
                }
                dlen = j;
                break;
            }
            let c = src[si];
            si += 1;
            match base64_value(c) {
                Some(v) => {
                    quantum[j] = v;
                    j += 1;
                }
                None if c == b'\n' || c == b'\r' => {}
                None => return Err(CorruptInput(si - 1)),
            }
        }
        let val = (u32::from(quantum[0]) << 18)
            | (u32::from(quantum[1]) << 12)
            | (u32::from(quantum[2]) << 6)
            | u32::from(quantum[3]);
        let bytes = [(val >> 16) as u8, (val >> 8) as u8, val as u8];
        out.extend_from_slice(&bytes[..dlen - 1]);
    }
    Ok(out)
}

/// The URL-safe base64 alphabet.
fn base64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Formats a string like Go's `%q` (`strconv.Quote`): double quotes; `"` and `\` escaped;
/// `\a \b \f \n \r \t \v`; other ASCII controls as `\xNN`; non-printable non-ASCII as
/// `\uNNNN`/`\UNNNNNNNN`. Printability outside ASCII is approximated (controls, white space,
/// format characters, private use and non-characters are escaped).
struct GoQuote<'a>(&'a str);

impl fmt::Display for GoQuote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                ' '..='~' => f.write_char(c)?,
                '\u{7}' => f.write_str("\\a")?,
                '\u{8}' => f.write_str("\\b")?,
                '\u{c}' => f.write_str("\\f")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\u{b}' => f.write_str("\\v")?,
                '\0'..='\u{1f}' | '\u{7f}' => write!(f, "\\x{:02x}", c as u32)?,
                c if go_printable(c) => f.write_char(c)?,
                c if (c as u32) < 0x10000 => write!(f, "\\u{:04x}", c as u32)?,
                c => write!(f, "\\U{:08x}", c as u32)?,
            }
        }
        f.write_char('"')
    }
}

/// Approximates Go's `unicode.IsPrint` for non-ASCII characters.
fn go_printable(c: char) -> bool {
    let u = c as u32;
    !(c.is_control()
        || c.is_whitespace()
        || u == 0xAD
        || (0x600..=0x605).contains(&u)
        || u == 0x61C
        || u == 0x6DD
        || u == 0x70F
        || u == 0x180E
        || (0x200B..=0x200F).contains(&u)
        || (0x202A..=0x202E).contains(&u)
        || (0x2060..=0x206F).contains(&u)
        || u == 0xFEFF
        || (0xFFF9..=0xFFFB).contains(&u)
        || (0xE000..=0xF8FF).contains(&u)
        || u >= 0xF0000
        || (u & 0xFFFE) == 0xFFFE
        || (0xFDD0..=0xFDEF).contains(&u))
}

/// Bytes of a plain path segment value that are percent-encoded: everything but the RFC 3986
/// unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl GroupingKey {
    /// The URL path of this group's push endpoint, relative to the route prefix, e.g.
    /// `/metrics/job/j/instance/i`: `job` first, then the other labels in name order. Values
    /// that cannot travel as a plain path segment (empty, containing `/`, or `.`/`..`, which
    /// HTTP path cleaning would eat) use the `@base64` form (URL-safe alphabet, no padding,
    /// `=` for the empty value); other values are percent-encoded except for the RFC 3986
    /// unreserved characters. Percent-decoding the segments and passing them to [`parse`]
    /// gives back this key.
    pub fn url_path(&self) -> String {
        let mut s = String::from("/metrics/job");
        push_segment(&mut s, self.job());
        for (name, value) in &self.0 {
            if name == "job" {
                continue;
            }
            s.push('/');
            s.push_str(name);
            push_segment(&mut s, value);
        }
        s
    }
}

/// Appends `/<value>` (percent-encoded) or `@base64/<b64>` to a path that ends with a name.
fn push_segment(s: &mut String, value: &str) {
    if value.is_empty() || value.contains('/') || value == "." || value == ".." {
        s.push_str("@base64/");
        if value.is_empty() {
            s.push('=');
        } else {
            s.push_str(&URL_SAFE_NO_PAD.encode(value));
        }
    } else {
        s.push('/');
        s.extend(utf8_percent_encode(value, SEGMENT));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(pairs: &[(&str, &str)]) -> GroupingKey {
        GroupingKey::from_pairs(pairs.iter().copied())
    }

    fn err(job: &[u8], b64: bool, labels: &[u8]) -> String {
        parse(job, b64, labels).unwrap_err().to_string()
    }

    /// What the HTTP layer does: split `/metrics/job[@base64]/<job><labels>` and
    /// percent-decode both parts.
    fn parse_path(path: &str) -> Result<GroupingKey, KeyError> {
        let rest = path.strip_prefix("/metrics/job").unwrap();
        let (b64, rest) = match rest.strip_prefix("@base64/") {
            Some(r) => (true, r),
            None => (false, rest.strip_prefix('/').unwrap()),
        };
        let (job, labels) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let job: Vec<u8> = percent_encoding::percent_decode_str(job).collect();
        let labels: Vec<u8> = percent_encoding::percent_decode_str(labels).collect();
        parse(&job, b64, &labels)
    }

    #[test]
    fn plain() {
        assert_eq!(parse(b"j", false, b""), Ok(key(&[("job", "j")])));
        assert_eq!(parse(b"j", false, b"/"), Ok(key(&[("job", "j")])));
        assert_eq!(
            parse(b"j", false, b"/instance/i/a/"),
            Ok(key(&[("a", ""), ("instance", "i"), ("job", "j")]))
        );
        assert_eq!(
            parse(b"j", false, b"/b/2/a/1"),
            Ok(key(&[("a", "1"), ("b", "2"), ("job", "j")]))
        );
        // Spaces, plus signs, UTF-8 pass through unchanged.
        assert_eq!(
            parse("j ö+".as_bytes(), false, "/a/x y+é".as_bytes()),
            Ok(key(&[("a", "x y+é"), ("job", "j ö+")]))
        );
        // An empty plain value is a present-but-empty label.
        assert_eq!(
            parse(b"j", false, b"/a/"),
            Ok(key(&[("a", ""), ("job", "j")]))
        );
    }

    #[test]
    fn odd_components() {
        assert_eq!(
            err(b"j", false, b"/a/b/"),
            r#"odd number of components in label string "/a/b/""#
        );
        assert_eq!(
            err(b"j", false, b"/a"),
            r#"odd number of components in label string "/a""#
        );
        assert_eq!(
            err(b"j", false, b"/a/b/c"),
            r#"odd number of components in label string "/a/b/c""#
        );
        // Checked before any label name.
        assert!(matches!(
            parse(b"j", false, b"/__a/b/c"),
            Err(KeyError::OddComponents(_))
        ));
        // "//" is one empty pair: an empty name.
        assert_eq!(err(b"j", false, b"//"), r#"improper label name """#);
    }

    #[test]
    fn label_names() {
        for bad in ["1a", "a-b", "a.b", "", "é", "__x", "__"] {
            let labels = format!("/{bad}/v");
            assert_eq!(
                parse(b"j", false, labels.as_bytes()),
                Err(KeyError::LabelName(bad.into())),
                "{bad}"
            );
        }
        for good in ["a", "_", "_a", "A_1", "_x_", "job", "instance"] {
            let labels = format!("/{good}/v");
            assert!(parse(b"j", false, labels.as_bytes()).is_ok(), "{good}");
        }
        assert_eq!(
            err(b"j", false, b"/__x@base64/YQ"),
            r#"improper label name "__x""#
        );
        assert_eq!(
            err(b"j", false, b"/@base64/YQ"),
            r#"improper label name """#
        );
        // Only one @base64 suffix is stripped.
        assert_eq!(
            err(b"j", false, b"/a@base64@base64/YQ"),
            r#"improper label name "a@base64""#
        );
        assert_eq!(
            err(b"j", false, b"/a/1/b c/2"),
            r#"improper label name "b c""#
        );
    }

    #[test]
    fn base64_values() {
        let ok = |labels: &str| parse(b"j", false, labels.as_bytes());
        assert_eq!(ok("/a@base64/YWJj"), Ok(key(&[("a", "abc"), ("job", "j")])));
        assert_eq!(ok("/a@base64/YWI"), Ok(key(&[("a", "ab"), ("job", "j")])));
        assert_eq!(ok("/a@base64/YWI="), Ok(key(&[("a", "ab"), ("job", "j")])));
        assert_eq!(
            ok("/a@base64/YWI==="),
            Ok(key(&[("a", "ab"), ("job", "j")]))
        );
        assert_eq!(ok("/a@base64/YQ=="), Ok(key(&[("a", "a"), ("job", "j")])));
        assert_eq!(
            ok("/a@base64/YWJjZA"),
            Ok(key(&[("a", "abcd"), ("job", "j")]))
        );
        assert_eq!(ok("/a@base64/="), Ok(key(&[("a", ""), ("job", "j")])));
        assert_eq!(ok("/a@base64/==="), Ok(key(&[("a", ""), ("job", "j")])));
        assert_eq!(ok("/a@base64/"), Ok(key(&[("a", ""), ("job", "j")])));
        // URL-safe alphabet: "/" encodes as "Lw".
        assert_eq!(
            ok("/a@base64/L3Zhci90bXA"),
            Ok(key(&[("a", "/var/tmp"), ("job", "j")]))
        );
        // Non-zero trailing bits are accepted (Go is not strict).
        assert_eq!(ok("/a@base64/YR"), Ok(key(&[("a", "a"), ("job", "j")])));
        // CR and LF are skipped.
        assert_eq!(
            ok("/a@base64/YW\nJj\r"),
            Ok(key(&[("a", "abc"), ("job", "j")]))
        );
    }

    #[test]
    fn base64_errors() {
        let e = |labels: &str| err(b"j", false, labels.as_bytes());
        assert_eq!(
            e("/a@base64/Y"),
            r#"invalid base64 encoding for label a="Y": illegal base64 data at input byte 0"#
        );
        assert_eq!(
            e("/a@base64/YW!j"),
            r#"invalid base64 encoding for label a="YW!j": illegal base64 data at input byte 2"#
        );
        // '=' inside the data is not padding.
        assert_eq!(
            e("/a@base64/YW=j"),
            r#"invalid base64 encoding for label a="YW=j": illegal base64 data at input byte 2"#
        );
        // Standard alphabet is refused.
        assert_eq!(
            e("/a@base64/+w"),
            r#"invalid base64 encoding for label a="+w": illegal base64 data at input byte 0"#
        );
        // A dangling 6-bit group after full quanta.
        assert_eq!(
            e("/a@base64/YWJjZ"),
            r#"invalid base64 encoding for label a="YWJjZ": illegal base64 data at input byte 4"#
        );
        assert_eq!(
            e("/a@base64/YWJjZ=="),
            r#"invalid base64 encoding for label a="YWJjZ==": illegal base64 data at input byte 4"#
        );
        // Go's offset formula with a skipped newline.
        assert_eq!(
            e("/a@base64/Y\n"),
            "invalid base64 encoding for label a=\"Y\\n\": illegal base64 data at input byte 1"
        );
    }

    #[test]
    fn job_base64() {
        assert_eq!(parse(b"Zm9v", true, b""), Ok(key(&[("job", "foo")])));
        assert_eq!(
            parse(b"Zm9v==", true, b"/a/b"),
            Ok(key(&[("a", "b"), ("job", "foo")]))
        );
        assert_eq!(parse(b"L3g", true, b""), Ok(key(&[("job", "/x")])));
        assert_eq!(
            err(b"!", true, b""),
            r#"invalid base64 encoding in job name "!": illegal base64 data at input byte 0"#
        );
        assert_eq!(err(b"=", true, b""), "job name is required");
        assert_eq!(err(b"", true, b""), "job name is required");
        // A plain job is never decoded.
        assert_eq!(parse(b"Zm9v", false, b""), Ok(key(&[("job", "Zm9v")])));
        assert_eq!(parse(b"=", false, b""), Ok(key(&[("job", "=")])));
    }

    #[test]
    fn order_of_checks() {
        // 1 before 2.
        assert!(matches!(
            parse(b"!", true, b"/a"),
            Err(KeyError::JobBase64 { .. })
        ));
        // 2 before 3.
        assert!(matches!(
            parse(b"j", false, b"/1/x/y"),
            Err(KeyError::OddComponents(_))
        ));
        // 3 and 4 pair by pair: whichever pair comes first.
        assert!(matches!(
            parse(b"j", false, b"/a@base64/!/__b/c"),
            Err(KeyError::LabelBase64 { .. })
        ));
        assert!(matches!(
            parse(b"j", false, b"/__b/c/a@base64/!"),
            Err(KeyError::LabelName(_))
        ));
        // 3 and 4 before 5.
        assert!(matches!(
            parse(b"=", true, b"/__a/b"),
            Err(KeyError::LabelName(_))
        ));
        assert!(matches!(
            parse(b"", false, b"/a@base64/!"),
            Err(KeyError::LabelBase64 { .. })
        ));
        assert_eq!(parse(b"", false, b"/a/b"), Err(KeyError::JobRequired));
        // 5 before the UTF-8 check.
        assert_eq!(parse(b"", false, b"/a/\xff"), Err(KeyError::JobRequired));
    }

    #[test]
    fn path_job_wins_and_duplicates() {
        assert_eq!(parse(b"j", false, b"/job/other"), Ok(key(&[("job", "j")])));
        assert_eq!(
            parse(b"j", false, b"/job@base64/b3RoZXI"),
            Ok(key(&[("job", "j")]))
        );
        // The job label pair is still validated.
        assert!(matches!(
            parse(b"j", false, b"/job@base64/!"),
            Err(KeyError::LabelBase64 { .. })
        ));
        // Later duplicates overwrite earlier ones, base64 or not.
        assert_eq!(
            parse(b"j", false, b"/a/1/a/2"),
            Ok(key(&[("a", "2"), ("job", "j")]))
        );
        assert_eq!(
            parse(b"j", false, b"/a/1/a@base64/Mg"),
            Ok(key(&[("a", "2"), ("job", "j")]))
        );
        assert_eq!(
            parse(b"j", false, b"/a@base64/Mg/a/3"),
            Ok(key(&[("a", "3"), ("job", "j")]))
        );
        assert_eq!(
            parse(b"j", false, b"/a/\xff/a/ok"),
            Ok(key(&[("a", "ok"), ("job", "j")]))
        );
        assert_eq!(parse(b"j", false, b"/job/\xff"), Ok(key(&[("job", "j")])));
    }

    #[test]
    fn utf8() {
        assert_eq!(
            parse(b"\xff", false, b""),
            Err(KeyError::NotUtf8("job".into()))
        );
        assert_eq!(
            parse(b"_w", true, b""),
            Err(KeyError::NotUtf8("job".into()))
        );
        assert_eq!(
            parse(b"j", false, b"/a/\xff"),
            Err(KeyError::NotUtf8("a".into()))
        );
        assert_eq!(
            parse(b"j", false, b"/a@base64/_w"),
            Err(KeyError::NotUtf8("a".into()))
        );
        // Label-name order decides which is reported.
        assert_eq!(
            parse(b"\xff", false, b"/z/\xff/b/\xfe"),
            Err(KeyError::NotUtf8("b".into()))
        );
        assert_eq!(
            err(b"j", false, b"/a/\xc3"),
            r#"invalid UTF-8 in value of label "a""#
        );
    }

    #[test]
    fn go_quote() {
        assert_eq!(
            KeyError::OddComponents("/a\"b\\c\n\t\u{1}\u{7f}é\u{200b}\u{1F600}".into()).to_string(),
            r#"odd number of components in label string "/a\"b\\c\n\t\x01\x7fé\u200b😀""#
        );
        assert_eq!(
            KeyError::LabelName("\u{a0}\u{e000}\u{10ffff}".into()).to_string(),
            r#"improper label name "\u00a0\ue000\U0010ffff""#
        );
    }

    #[test]
    fn url_paths() {
        assert_eq!(key(&[("job", "j")]).url_path(), "/metrics/job/j");
        assert_eq!(
            key(&[("job", "j"), ("instance", "i"), ("a", "1")]).url_path(),
            "/metrics/job/j/a/1/instance/i"
        );
        assert_eq!(
            key(&[("job", "j"), ("a", "")]).url_path(),
            "/metrics/job/j/a@base64/="
        );
        assert_eq!(
            key(&[("job", "j"), ("a", "/x")]).url_path(),
            "/metrics/job/j/a@base64/L3g"
        );
        assert_eq!(
            key(&[("job", "a/b")]).url_path(),
            "/metrics/job@base64/YS9i"
        );
        assert_eq!(key(&[("job", ".")]).url_path(), "/metrics/job@base64/Lg");
        assert_eq!(
            key(&[("job", "j"), ("a", "..")]).url_path(),
            "/metrics/job/j/a@base64/Li4"
        );
        assert_eq!(
            key(&[("job", "j x"), ("a", "é%?#+")]).url_path(),
            "/metrics/job/j%20x/a/%C3%A9%25%3F%23%2B"
        );
        assert_eq!(
            key(&[("job", "a-b.c_d~e")]).url_path(),
            "/metrics/job/a-b.c_d~e"
        );
        for k in [
            key(&[("job", "j"), ("instance", "i"), ("a", "1")]),
            key(&[("job", "j"), ("a", "")]),
            key(&[("job", "a/b"), ("z", "%2F"), ("y", "=")]),
            key(&[("job", ".."), ("a", "."), ("b", "a@base64")]),
        ] {
            assert_eq!(parse_path(&k.url_path()), Ok(k));
        }
    }

    fn arb_key() -> impl Strategy<Value = GroupingKey> {
        let name = "[a-zA-Z_][a-zA-Z0-9_]{0,8}".prop_filter("reserved", |n| !n.starts_with("__"));
        let value = prop_oneof![Just(String::new()), "[a-z/.=@%+ ]{0,6}", any::<String>(),];
        let job = prop_oneof!["[a-z/.=@%]{1,6}", ".+"];
        (job, proptest::collection::vec((name, value), 0..5)).prop_map(|(job, pairs)| {
            let mut all = pairs;
            all.retain(|(n, _)| n != "job");
            all.push(("job".to_string(), job));
            GroupingKey::from_pairs(all)
        })
    }

    proptest! {
        #[test]
        fn url_path_round_trips(k in arb_key()) {
            let path = k.url_path();
            prop_assert!(!path.contains("//"), "{}", path);
            prop_assert!(!path.contains("/./") && !path.contains("/../") && !path.ends_with("/.") && !path.ends_with("/.."), "{}", path);
            prop_assert_eq!(parse_path(&path), Ok(k));
        }

        #[test]
        fn never_panics(job in proptest::collection::vec(any::<u8>(), 0..12), b64 in any::<bool>(), labels in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = parse(&job, b64, &labels);
            let mut l = b"/".to_vec();
            l.extend_from_slice(&labels);
            if let Ok(k) = parse(&job, b64, &l) {
                prop_assert!(!k.job().is_empty());
                prop_assert!(k.pairs().windows(2).all(|w| w[0].0 < w[1].0));
            }
        }

        #[test]
        fn base64_matches_crate(data in proptest::collection::vec(any::<u8>(), 0..40), pad in 0usize..4) {
            let mut enc = URL_SAFE_NO_PAD.encode(&data);
            enc.push_str(&"=".repeat(pad));
            prop_assert_eq!(decode_base64(enc.as_bytes()), Ok(data));
        }
    }
}
