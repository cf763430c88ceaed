//! Request-body decoding before parsing (spec §4.1, §4.2): `Content-Encoding` and the
//! choice between text and delimited protobuf.
//!
//! Decoding is bounded: a compressed body is inflated through a reader that stops one byte
//! past the limit, so a zip bomb costs at most `max` bytes of memory before it is refused.
//! Error texts are Go's (`gzip: invalid header`, `unexpected EOF`, `EOF`, ...), because the
//! reference answers 400 with the decoder's error.

use std::collections::HashMap;
use std::io::{self, Read};

/// A body that could not be decoded. `Display` is the response body (400, or 413 for
/// [`BodyError::TooLarge`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// gzip or snappy stream errors, with the decoder's message.
    #[error("{0}")]
    Decode(String),
    /// The decoded body exceeds the limit.
    #[error("request body exceeds the limit of {limit} bytes (--push.max-body-bytes)")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
}

/// Decodes `body` according to `Content-Encoding` (`gzip` and framed `snappy`,
/// case-insensitive; anything else is passed through unchanged). The decoded size is
/// bounded by `max` bytes.
pub fn decode(
    content_encoding: Option<&str>,
    body: &[u8],
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    let encoding = content_encoding.map(go_to_lower);
    match encoding.as_deref() {
        Some("gzip") => gunzip(body, max),
        Some("snappy") => unsnappy(body, max),
        _ => {
            if body.len() > max {
                Err(BodyError::TooLarge { limit: max })
            } else {
                Ok(body.to_vec())
            }
        }
    }
}

/// Whether a `Content-Type` selects the delimited-protobuf push format (spec §4.2); every
/// other value, or none, means text format 0.0.4.
///
/// The header is parsed like Go's `mime.ParseMediaType`: the media type and parameter
/// names are case-insensitive, parameters may come in any order, values may be quoted (or
/// given in RFC 2231 form), and a header that does not parse means text. The values of
/// `encoding` and `proto` are compared exactly.
pub fn is_delimited_protobuf(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else {
        return false;
    };
    match parse_media_type(value) {
        Some((media_type, params)) => {
            media_type == "application/vnd.google.protobuf"
                && params.get("encoding").map(String::as_str) == Some("delimited")
                && params.get("proto").map(String::as_str)
                    == Some("io.prometheus.client.MetricFamily")
        }
        None => false,
    }
}

/// Reads `reader` to its end, refusing more than `max` bytes of output.
fn read_bounded(
    reader: impl Read,
    max: usize,
    map_err: impl Fn(io::Error) -> String,
) -> Result<Vec<u8>, BodyError> {
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::new();
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Decode(map_err(e)))?;
    if out.len() > max {
        return Err(BodyError::TooLarge { limit: max });
    }
    Ok(out)
}

/// gzip, multi-member like Go's `gzip.Reader`.
fn gunzip(body: &[u8], max: usize) -> Result<Vec<u8>, BodyError> {
    // Go's `gzip.NewReader` reads the 10-byte header eagerly; mirror its three errors.
    match body {
        [] => return Err(BodyError::Decode("EOF".to_owned())),
        _ if body.len() < 10 => return Err(BodyError::Decode("unexpected EOF".to_owned())),
        [0x1f, 0x8b, 8, ..] => {}
        _ => return Err(BodyError::Decode("gzip: invalid header".to_owned())),
    }
    read_bounded(
        flate2::bufread::MultiGzDecoder::new(body),
        max,
        gzip_message,
    )
}

/// Go's text for a gzip/flate stream error.
fn gzip_message(e: io::Error) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return "unexpected EOF".to_owned();
    }
    let text = e.to_string();
    if text.contains("header") {
        "gzip: invalid header".to_owned()
    } else if text.contains("checksum") {
        "gzip: invalid checksum".to_owned()
    } else if text.contains("deflate") {
        "flate: corrupt input".to_owned()
    } else {
        format!("gzip: {text}")
    }
}

/// Framed snappy, like Go's `snappy.NewReader`. An empty body decodes to an empty body.
fn unsnappy(body: &[u8], max: usize) -> Result<Vec<u8>, BodyError> {
    read_bounded(snap::read::FrameDecoder::new(body), max, |e| {
        let unsupported = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<snap::Error>())
            .is_some_and(|se| matches!(se, snap::Error::UnsupportedChunkType { .. }));
        if unsupported {
            "snappy: unsupported input".to_owned()
        } else {
            "snappy: corrupt input".to_owned()
        }
    })
}

/// Go's `strings.ToLower` with its simple (one-to-one) case mapping.
fn go_to_lower(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '\u{130}' {
                return 'i';
            }
            let mut low = c.to_lowercase();
            match (low.next(), low.next()) {
                (Some(l), None) => l,
                _ => c,
            }
        })
        .collect()
}

fn is_tspecial(c: u8) -> bool {
    b"()<>@,;:\\\"/[]?=".contains(&c)
}

fn is_token_char(c: u8) -> bool {
    c > 0x20 && c < 0x7f && !is_tspecial(c)
}

/// Splits `v` into its leading token and the rest.
fn consume_token(v: &str) -> (&str, &str) {
    let end = v.bytes().position(|b| !is_token_char(b)).unwrap_or(v.len());
    // `end` is at an ASCII byte or the end, so both halves are valid.
    (v.get(..end).unwrap_or(""), v.get(end..).unwrap_or(""))
}

/// A token or a quoted string; `None` if neither is there.
fn consume_value(v: &str) -> Option<(String, &str)> {
    let bytes = v.as_bytes();
    if bytes.first() != Some(&b'"') {
        let (token, rest) = consume_token(v);
        return if token.is_empty() {
            None
        } else {
            Some((token.to_owned(), rest))
        };
    }
    let mut value = Vec::new();
    let mut i = 1;
    while let Some(&c) = bytes.get(i) {
        match c {
            b'"' => {
                let value = String::from_utf8(value).ok()?;
                return Some((value, v.get(i + 1..).unwrap_or("")));
            }
            // A backslash escapes only a tspecial; otherwise it is literal (MSIE paths).
            b'\\' if bytes.get(i + 1).is_some_and(|&n| is_tspecial(n)) => {
                value.extend(bytes.get(i + 1));
                i += 2;
                continue;
            }
            b'\r' | b'\n' => return None,
            _ => value.push(c),
        }
        i += 1;
    }
    None
}

/// One `; name=value` parameter: lower-cased name, value and the rest.
fn consume_media_param(v: &str) -> Option<(String, String, &str)> {
    let rest = v.trim_start().strip_prefix(';')?.trim_start();
    let (name, rest) = consume_token(rest);
    if name.is_empty() {
        return None;
    }
    let rest = rest.trim_start().strip_prefix('=')?.trim_start();
    let (value, rest) = consume_value(rest)?;
    Some((name.to_ascii_lowercase(), value, rest))
}

/// Go's `mime.ParseMediaType`: the lower-cased media type and its parameters, or `None`
/// where Go returns an error.
fn parse_media_type(v: &str) -> Option<(String, HashMap<String, String>)> {
    let base = v.split(';').next().unwrap_or("");
    let media_type = go_to_lower(base).trim().to_owned();
    check_media_type(&media_type)?;
    let mut params: HashMap<String, String> = HashMap::new();
    // Parameters with a `*` in their name (RFC 2231), by base name.
    let mut continuation: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut v = v.get(base.len()..).unwrap_or("");
    loop {
        v = v.trim_start();
        if v.is_empty() {
            break;
        }
        let Some((key, value, rest)) = consume_media_param(v) else {
            if v.trim() == ";" {
                // A trailing semicolon is fine.
                break;
            }
            return None;
        };
        let map = match key.split_once('*') {
            Some((base_name, _)) => continuation.entry(base_name.to_owned()).or_default(),
            None => &mut params,
        };
        if map.get(&key).is_some_and(|old| *old != value) {
            return None;
        }
        map.insert(key, value);
        v = rest;
    }
    for (key, pieces) in continuation {
        if let Some(single) = pieces.get(&format!("{key}*")) {
            if let Some(decoded) = decode_2231(single) {
                params.insert(key, decoded);
            }
            continue;
        }
        let mut joined = Vec::new();
        let mut valid = false;
        for n in 0usize.. {
            if let Some(simple) = pieces.get(&format!("{key}*{n}")) {
                valid = true;
                joined.extend_from_slice(simple.as_bytes());
                continue;
            }
            let Some(encoded) = pieces.get(&format!("{key}*{n}*")) else {
                break;
            };
            valid = true;
            if n == 0 {
                if let Some(decoded) = decode_2231(encoded) {
                    joined.extend_from_slice(decoded.as_bytes());
                }
            } else if let Some(decoded) = percent_unescape(encoded) {
                joined.extend_from_slice(&decoded);
            }
        }
        if valid {
            params.insert(key, String::from_utf8_lossy(&joined).into_owned());
        }
    }
    Some((media_type, params))
}

/// `type` or `type/subtype`, both tokens.
fn check_media_type(s: &str) -> Option<()> {
    let (typ, rest) = consume_token(s);
    if typ.is_empty() {
        return None;
    }
    if rest.is_empty() {
        return Some(());
    }
    let (subtype, rest) = consume_token(rest.strip_prefix('/')?);
    (!subtype.is_empty() && rest.is_empty()).then_some(())
}

/// `charset'language'percent-encoded` with charset `us-ascii` or `utf-8`.
fn decode_2231(v: &str) -> Option<String> {
    let (charset, rest) = v.split_once('\'')?;
    let (_language, encoded) = rest.split_once('\'')?;
    if !matches!(charset.to_ascii_lowercase().as_str(), "us-ascii" | "utf-8") {
        return None;
    }
    percent_unescape(encoded).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn percent_unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        if c == b'%' {
            let hex = |j: usize| bytes.get(j).and_then(|&h| char::from(h).to_digit(16));
            let (hi, lo) = (hex(i + 1)?, hex(i + 2)?);
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn snappy(data: &[u8]) -> Vec<u8> {
        let mut e = snap::write::FrameEncoder::new(Vec::new());
        e.write_all(data).unwrap();
        e.into_inner().unwrap()
    }

    fn decode_err(enc: &str, body: &[u8]) -> String {
        decode(Some(enc), body, 1 << 20).unwrap_err().to_string()
    }

    #[test]
    fn identity_passes_through() {
        for enc in [
            None,
            Some("identity"),
            Some("deflate"),
            Some("br"),
            Some(""),
        ] {
            assert_eq!(decode(enc, b"m 1\n", 100).unwrap(), b"m 1\n");
        }
        // Unknown encodings are not decoded, even if the body is gzip.
        let gz = gzip(b"m 1\n");
        assert_eq!(decode(Some("x-gzip"), &gz, 100).unwrap(), gz);
    }

    #[test]
    fn identity_is_bounded() {
        assert_eq!(decode(None, b"12345", 5).unwrap(), b"12345");
        assert_eq!(
            decode(None, b"123456", 5),
            Err(BodyError::TooLarge { limit: 5 })
        );
    }

    #[test]
    fn gzip_round_trip_any_case() {
        let data = b"# TYPE m counter\nm 1\n".repeat(100);
        let gz = gzip(&data);
        for enc in ["gzip", "GZIP", "Gzip", "gZiP"] {
            assert_eq!(decode(Some(enc), &gz, data.len()).unwrap(), data, "{enc}");
        }
        assert_eq!(decode(Some("gzip"), &gzip(b""), 0).unwrap(), b"");
    }

    #[test]
    fn gzip_with_optional_header_fields() {
        let mut e = flate2::GzBuilder::new()
            .filename("metrics.txt")
            .comment("pushed")
            .extra(vec![1, 2, 3])
            .write(Vec::new(), flate2::Compression::fast());
        e.write_all(b"m 1\n").unwrap();
        let gz = e.finish().unwrap();
        assert_eq!(decode(Some("gzip"), &gz, 100).unwrap(), b"m 1\n");
    }

    #[test]
    fn gzip_multi_member() {
        let mut gz = gzip(b"a 1\n");
        gz.extend(gzip(b"b 2\n"));
        assert_eq!(decode(Some("gzip"), &gz, 100).unwrap(), b"a 1\nb 2\n");
    }

    #[test]
    fn gzip_bomb_is_refused() {
        // 64 MiB of zeros compress to ~64 KiB; the limit stops inflation early.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&chunk).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        assert_eq!(
            decode(Some("gzip"), &bomb, 1 << 20),
            Err(BodyError::TooLarge { limit: 1 << 20 })
        );
        // Exactly at the limit is fine.
        let gz = gzip(&[7u8; 1000]);
        assert_eq!(decode(Some("gzip"), &gz, 1000).unwrap().len(), 1000);
        assert_eq!(
            decode(Some("gzip"), &gz, 999),
            Err(BodyError::TooLarge { limit: 999 })
        );
    }

    #[test]
    fn gzip_errors_have_go_texts() {
        assert_eq!(decode_err("gzip", b""), "EOF");
        assert_eq!(decode_err("gzip", b"\x1f\x8b\x08"), "unexpected EOF");
        assert_eq!(decode_err("gzip", b"m 1\n"), "unexpected EOF");
        assert_eq!(
            decode_err("gzip", b"some_metric 1\n"),
            "gzip: invalid header"
        );
        assert_eq!(
            decode_err("gzip", b"\x1f\x8b\x07\0\0\0\0\0\0\0\0"),
            "gzip: invalid header"
        );
        let gz = gzip(b"some text that is long enough\n");
        // Truncated anywhere after the header: unexpected EOF.
        for cut in 10..gz.len() {
            assert_eq!(
                decode_err("gzip", &gz[..cut]),
                "unexpected EOF",
                "cut {cut}"
            );
        }
        // Corrupted checksum.
        let mut bad = gz.clone();
        let n = bad.len();
        bad[n - 8] ^= 0xff;
        assert_eq!(decode_err("gzip", &bad), "gzip: invalid checksum");
        // Corrupted deflate data (reserved block type 3).
        let mut bad = gz[..10].to_vec();
        bad.extend([0xff; 20]);
        assert_eq!(decode_err("gzip", &bad), "flate: corrupt input");
        // Trailing garbage after a member is not a gzip header.
        let mut bad = gz.clone();
        bad.extend(b"garbage!!!!!!");
        assert_eq!(decode_err("gzip", &bad), "gzip: invalid header");
    }

    #[test]
    fn snappy_round_trip_and_errors() {
        let data = b"m{a=\"b\"} 1\n".repeat(50);
        let sz = snappy(&data);
        for enc in ["snappy", "SNAPPY"] {
            assert_eq!(decode(Some(enc), &sz, data.len()).unwrap(), data);
        }
        assert_eq!(decode(Some("snappy"), b"", 10).unwrap(), b"");
        assert_eq!(
            decode(Some("snappy"), &sz, data.len() - 1),
            Err(BodyError::TooLarge {
                limit: data.len() - 1
            })
        );
        assert_eq!(decode_err("snappy", b"m 1\n"), "snappy: corrupt input");
        for cut in 1..sz.len() {
            if cut == 10 {
                // Right after the stream identifier: a valid, empty stream.
                assert_eq!(decode(Some("snappy"), &sz[..cut], 10).unwrap(), b"");
            } else {
                assert_eq!(
                    decode_err("snappy", &sz[..cut]),
                    "snappy: corrupt input",
                    "cut {cut}"
                );
            }
        }
        // A reserved unskippable chunk type after the stream identifier.
        let mut bad = sz[..10].to_vec();
        bad.extend([0x02, 0x01, 0x00, 0x00, 0x00]);
        assert_eq!(decode_err("snappy", &bad), "snappy: unsupported input");
    }

    #[test]
    fn snappy_bomb_is_refused() {
        let data = vec![0u8; 4 << 20];
        let sz = snappy(&data);
        assert_eq!(
            decode(Some("snappy"), &sz, 1 << 20),
            Err(BodyError::TooLarge { limit: 1 << 20 })
        );
    }

    const PB: &str = "application/vnd.google.protobuf";

    #[test]
    fn delimited_content_types() {
        for ct in [
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
            "application/vnd.google.protobuf;encoding=delimited;proto=io.prometheus.client.MetricFamily",
            "Application/VND.Google.Protobuf; PROTO=io.prometheus.client.MetricFamily; Encoding=delimited",
            "application/vnd.google.protobuf; proto=\"io.prometheus.client.MetricFamily\"; encoding=\"delimited\"",
            "  application/vnd.google.protobuf ; proto = io.prometheus.client.MetricFamily ;encoding= delimited ;",
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; foo=bar",
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; encoding=delimited",
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding*=utf-8''delimited",
            "application/vnd.google.protobuf; proto*0=io.prometheus.; proto*1=client.MetricFamily; encoding=delimited",
            "application/vnd.google.protobuf; proto=\"io.prometheus.client.MetricFamily\"; encoding=\"delimited\"; x=\"a\\\"b\"",
        ] {
            assert!(is_delimited_protobuf(Some(ct)), "{ct}");
        }
    }

    #[test]
    fn text_content_types() {
        for ct in [
            "",
            "text/plain",
            "text/plain; version=0.0.4",
            "application/json",
            "application/x-protobuf",
            "application/openmetrics-text; version=1.0.0",
            PB,
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=text",
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=Delimited",
            "application/vnd.google.protobuf; proto=io.prometheus.client.metricfamily; encoding=delimited",
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily",
            // Go refuses these headers entirely.
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; encoding=text",
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; bad",
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=\"delimited",
            "application/vnd.google.protobuf/x; proto=io.prometheus.client.MetricFamily; encoding=delimited",
            "application/vnd.google.protobuf proto=io.prometheus.client.MetricFamily; encoding=delimited",
            "; proto=io.prometheus.client.MetricFamily; encoding=delimited",
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited;;",
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=",
            // A backslash before a non-special character stays.
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=\"deli\\mited\"",
        ] {
            assert!(!is_delimited_protobuf(Some(ct)), "{ct}");
        }
        assert!(!is_delimited_protobuf(None));
    }

    #[test]
    fn media_type_parsing() {
        let (t, p) = parse_media_type("Text/Plain; Charset=\"UTF-8\"; a=\"x\\\"y\"").unwrap();
        assert_eq!(t, "text/plain");
        assert_eq!(p.get("charset").map(String::as_str), Some("UTF-8"));
        assert_eq!(p.get("a").map(String::as_str), Some("x\"y"));
        let (_, p) = parse_media_type("a/b; f=\"C:\\dev\\x\"").unwrap();
        assert_eq!(p.get("f").map(String::as_str), Some("C:\\dev\\x"));
        let (t, p) = parse_media_type("text").unwrap();
        assert_eq!((t.as_str(), p.len()), ("text", 0));
        assert!(parse_media_type("").is_none());
        assert!(parse_media_type("a/").is_none());
        assert!(parse_media_type("a/b c").is_none());
        // A continuation without part 0 is dropped, not an error.
        let (_, p) = parse_media_type("a/b; x*1=y").unwrap();
        assert!(!p.contains_key("x"));
        // Unsupported RFC 2231 charset: dropped.
        let (_, p) = parse_media_type("a/b; x*=latin1''y").unwrap();
        assert!(!p.contains_key("x"));
        let (_, p) = parse_media_type("a/b; x*=UTF-8'en'a%20b").unwrap();
        assert_eq!(p.get("x").map(String::as_str), Some("a b"));
    }

    #[test]
    fn go_lowercase() {
        assert_eq!(go_to_lower("GZIP"), "gzip");
        assert_eq!(go_to_lower("\u{130}"), "i");
        assert_eq!(go_to_lower("\u{212a}"), "k");
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(
            enc in proptest::sample::select(vec!["gzip", "snappy", "identity"]),
            body in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..200),
        ) {
            let _ = decode(Some(enc), &body, 1000);
        }

        #[test]
        fn gzip_round_trip(data in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..2000)) {
            let gz = gzip(&data);
            proptest::prop_assert_eq!(decode(Some("gzip"), &gz, data.len()).unwrap(), data.clone());
            let sz = snappy(&data);
            proptest::prop_assert_eq!(decode(Some("snappy"), &sz, data.len()).unwrap(), data);
        }

        #[test]
        fn content_type_never_panics(ct in "\\PC{0,80}") {
            let _ = is_delimited_protobuf(Some(&ct));
        }
    }
}
