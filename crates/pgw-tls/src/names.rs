//! The names a certificate carries: its DNS subject alternative names and its subject common
//! name, read with a small, bounded DER reader (no recursion; every length is checked against
//! the input, so a malformed certificate yields no names rather than a panic).

/// One DER element: its tag, its content, and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed DER value, in order; stops at the first malformed one.
fn elements(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, content, rest) = tlv(input)?;
        input = rest;
        Some((tag, content))
    })
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// 2.5.4.3, commonName.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// 2.5.29.17, subjectAltName.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// `[2] IMPLICIT IA5String`: a dNSName in a GeneralName.
const DNS_NAME: u8 = 0x82;

/// The DNS names (subject alternative names) and the subject common name of a DER
/// certificate, DNS names first, without duplicates. Empty for input that is not a
/// certificate.
pub fn cert_names(der: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Some((SEQUENCE, cert, _)) = tlv(der) else {
        return out;
    };
    let Some((SEQUENCE, tbs, _)) = tlv(cert) else {
        return out;
    };
    let mut fields = elements(tbs).peekable();
    // version [0] EXPLICIT, optional
    if fields.peek().is_some_and(|(t, _)| *t == 0xa0) {
        fields.next();
    }
    // serial, signature algorithm, issuer, validity, subject
    let mut fields = fields.skip(4);
    let subject = fields
        .next()
        .filter(|(t, _)| *t == SEQUENCE)
        .map(|(_, c)| c);
    let mut common_names = Vec::new();
    if let Some(subject) = subject {
        for (tag, rdn) in elements(subject) {
            if tag != SET {
                continue;
            }
            for (tag, atv) in elements(rdn) {
                if tag != SEQUENCE {
                    continue;
                }
                let mut parts = elements(atv);
                if let (Some((OID, OID_CN)), Some((vtag, value))) = (parts.next(), parts.next())
                    // UTF8String, PrintableString, T61String, IA5String
                    && matches!(vtag, 0x0c | 0x13 | 0x14 | 0x16)
                    && let Ok(s) = std::str::from_utf8(value)
                {
                    common_names.push(s.to_string());
                }
            }
        }
    }
    // spki, then optional [1], [2], and [3] extensions
    for (tag, content) in fields {
        if tag != 0xa3 {
            continue;
        }
        let Some((SEQUENCE, exts, _)) = tlv(content) else {
            continue;
        };
        for (tag, ext) in elements(exts) {
            if tag != SEQUENCE {
                continue;
            }
            let mut parts = elements(ext);
            let Some((OID, OID_SAN)) = parts.next() else {
                continue;
            };
            // An optional `critical` BOOLEAN precedes the OCTET STRING.
            let value = parts.find(|(t, _)| *t == 0x04).map(|(_, v)| v);
            let Some((SEQUENCE, names, _)) = value.and_then(tlv) else {
                continue;
            };
            for (tag, name) in elements(names) {
                if tag == DNS_NAME
                    && let Ok(s) = std::str::from_utf8(name)
                    && !out.iter().any(|o| o == s)
                {
                    out.push(s.to_string());
                }
            }
        }
    }
    for cn in common_names {
        if !out.contains(&cn) {
            out.push(cn);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate made by the openssl CLI: DNS SANs first, then the CN; IP SANs are not
    /// names.
    #[test]
    fn names_of_an_openssl_certificate() {
        let dir = std::env::temp_dir().join(format!("pgw-tls-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "k.pem",
                "-out",
                "c.pem",
                "-days",
                "1",
                "-subj",
                "/O=pgw/CN=the-cn",
                "-addext",
                "subjectAltName=DNS:alpha,IP:127.0.0.1,DNS:beta.example",
            ])
            .current_dir(&dir)
            .output()
            .expect("run openssl (the tests need the openssl CLI)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let certs = crate::load_certs(&dir.join("c.pem"), "cert").expect("cert");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            cert_names(certs[0].as_ref()),
            ["alpha", "beta.example", "the-cn"]
        );
    }

    #[test]
    fn garbage_has_no_names() {
        assert!(cert_names(b"").is_empty());
        assert!(cert_names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(cert_names(&[0x30, 0x03, 0x30, 0x01]).is_empty());
        let mut deep = vec![0x30u8; 10_000];
        deep.extend([0x00, 0x00]);
        assert!(cert_names(&deep).is_empty());
    }
}
