//! Request-path handling as Go's `net/http` does it before the reference's router sees a
//! path (spec §2): percent-decoding into bytes, `ServeMux` path cleaning, and re-escaping a
//! path for a `Location` header.

/// Percent-decodes a request path into bytes, as Go's `url.PathUnescape`: `%XX` becomes the
/// byte (so `%2F` becomes a separator), `+` stays a plus. `None` for a malformed escape
/// (`%`, `%4`, `%zz`), which Go's server refuses with 400.
pub fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let hi = hex(*raw.get(i + 1)?)?;
            let lo = hex(*raw.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Go's `path.Clean` on bytes (rooted): collapses `//`, removes `.` and resolves `..`.
/// With `keep_trailing_slash` it is `ServeMux`'s `cleanPath`: a trailing `/` survives
/// (except for the root).
pub fn clean(p: &[u8], keep_trailing_slash: bool) -> Vec<u8> {
    let mut segs: Vec<&[u8]> = Vec::new();
    for seg in p.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = Vec::with_capacity(p.len() + 1);
    for s in &segs {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || (keep_trailing_slash && p.last() == Some(&b'/')) {
        out.push(b'/');
    }
    out
}

/// Escapes a decoded path for a URL as Go's `url.URL.EscapedPath` does for a path without
/// a raw form: letters, digits, `-_.~` and `$&+,/:;=@` stay, everything else is `%XX`.
pub fn escape(p: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(p.len());
    for &b in p {
        if b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode(b"/a%2Fb").as_deref(), Some(&b"/a/b"[..]));
        assert_eq!(percent_decode(b"/a+b%20c").as_deref(), Some(&b"/a+b c"[..]));
        assert_eq!(percent_decode(b"/%FF").as_deref(), Some(&b"/\xff"[..]));
        assert_eq!(percent_decode(b"/%zz"), None);
        assert_eq!(percent_decode(b"/%4"), None);
        assert_eq!(percent_decode(b"/%"), None);
    }

    #[test]
    fn cleaning() {
        let c = |p: &str| String::from_utf8(clean(p.as_bytes(), true)).unwrap();
        assert_eq!(c("/metrics/job/j/a//b/c"), "/metrics/job/j/a/b/c");
        assert_eq!(c("/a/./b"), "/a/b");
        assert_eq!(c("/a/../b"), "/b");
        assert_eq!(c("/.."), "/");
        assert_eq!(c("/metrics/"), "/metrics/");
        assert_eq!(c("/a//"), "/a/");
        assert_eq!(c(""), "/");
        assert_eq!(c("/"), "/");
        assert_eq!(
            String::from_utf8(clean(b"/pfx//metrics/", false)).unwrap(),
            "/pfx/metrics"
        );
    }

    #[test]
    fn escaping() {
        assert_eq!(escape(b"/metrics/job/a b"), "/metrics/job/a%20b");
        assert_eq!(escape(b"/x?y#z\xff"), "/x%3Fy%23z%FF");
        assert_eq!(escape(b"/a@b=c:d"), "/a@b=c:d");
    }
}
