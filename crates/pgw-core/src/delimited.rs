//! Delimited protobuf (`varint length + MetricFamily`, repeated), spec §4.3.
//!
//! Errors carry Go's texts, as the reference (`protodelim` over `binary.ReadUvarint`)
//! reports them: `unexpected EOF` for a body cut anywhere inside a length or a message,
//! `binary: varint overflows a 64-bit integer` for an overlong length, and a `proto: ...`
//! message for bytes that are not a `MetricFamily`.

use std::collections::BTreeMap;

use prost::Message;

use crate::pb::MetricFamily;

/// A malformed delimited-protobuf body. `Display` is the 400 body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Decodes a push body. A later family with the same name replaces an earlier one; the
/// result is sorted by family name. An empty body is an empty push.
///
/// A family without a name is keyed (and sorted) as the empty name, as the reference's
/// `GetName()` map does; rejecting it is validation's business.
pub fn decode(bytes: &[u8]) -> Result<Vec<MetricFamily>, DecodeError> {
    let mut by_name: BTreeMap<String, MetricFamily> = BTreeMap::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (len, used) = read_uvarint(rest)?;
        rest = rest.get(used..).unwrap_or_default();
        // Never trust the length beyond what is actually there.
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= rest.len())
            .ok_or_else(unexpected_eof)?;
        let (message, tail) = rest.split_at(len);
        let family =
            MetricFamily::decode(message).map_err(|e| DecodeError(format!("proto: {e}")))?;
        by_name.insert(family.name.clone().unwrap_or_default(), family);
        rest = tail;
    }
    Ok(by_name.into_values().collect())
}

/// Encodes families as a delimited stream, in the given order.
pub fn encode(families: &[MetricFamily]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in families {
        // Writing into a Vec cannot run out of space.
        let _ = f.encode_length_delimited(&mut out);
    }
    out
}

fn unexpected_eof() -> DecodeError {
    DecodeError("unexpected EOF".to_owned())
}

/// Go's `binary.ReadUvarint` on a non-empty buffer: the value and the bytes it used.
fn read_uvarint(buf: &[u8]) -> Result<(u64, usize), DecodeError> {
    const MAX_LEN: usize = 10;
    let mut x: u64 = 0;
    let mut shift: u32 = 0;
    for i in 0..MAX_LEN {
        let Some(&b) = buf.get(i) else {
            return Err(unexpected_eof());
        };
        if b < 0x80 {
            if i == MAX_LEN - 1 && b > 1 {
                break;
            }
            return Ok((x | (u64::from(b) << shift), i + 1));
        }
        x |= u64::from(b & 0x7f) << shift;
        shift += 7;
    }
    Err(DecodeError(
        "binary: varint overflows a 64-bit integer".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{Gauge, LabelPair, Metric, MetricType};
    use proptest::prelude::*;

    fn family(name: &str, value: f64) -> MetricFamily {
        MetricFamily {
            name: Some(name.to_owned()),
            help: Some("help".to_owned()),
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![Metric {
                label: vec![LabelPair {
                    name: Some("a".to_owned()),
                    value: Some("b".to_owned()),
                }],
                gauge: Some(Gauge { value: Some(value) }),
                ..Default::default()
            }],
            unit: None,
        }
    }

    #[test]
    fn empty_body_is_empty_push() {
        assert_eq!(decode(&[]), Ok(vec![]));
    }

    #[test]
    fn round_trip_sorted() {
        let fams = vec![family("b", 1.0), family("a", 2.0), family("c", 3.0)];
        let decoded = decode(&encode(&fams)).unwrap();
        let names: Vec<_> = decoded.iter().filter_map(|f| f.name.as_deref()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(decoded[0], fams[1]);
    }

    #[test]
    fn later_family_replaces_earlier() {
        let fams = vec![family("x", 1.0), family("y", 5.0), family("x", 2.0)];
        let decoded = decode(&encode(&fams)).unwrap();
        assert_eq!(decoded, vec![family("x", 2.0), family("y", 5.0)]);
    }

    #[test]
    fn zero_length_message_is_an_unnamed_family() {
        let decoded = decode(&[0]).unwrap();
        assert_eq!(decoded, vec![MetricFamily::default()]);
        // An empty family with no metrics is kept as is.
        let mut f = family("e", 0.0);
        f.metric.clear();
        assert_eq!(decode(&encode(std::slice::from_ref(&f))).unwrap(), vec![f]);
    }

    #[test]
    fn truncated_bodies() {
        assert_eq!(decode(&[0x80]), Err(DecodeError("unexpected EOF".into())));
        assert_eq!(decode(&[0x05]), Err(DecodeError("unexpected EOF".into())));
        assert_eq!(
            decode(&[0x05, 1, 2]),
            Err(DecodeError("unexpected EOF".into()))
        );
        // A huge announced length must not allocate.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(DecodeError("unexpected EOF".into()))
        );
    }

    #[test]
    fn overlong_varint() {
        let msg = "binary: varint overflows a 64-bit integer";
        assert_eq!(decode(&[0xff; 11]), Err(DecodeError(msg.into())));
        let mut ten = vec![0xff; 9];
        ten.push(0x02);
        assert_eq!(decode(&ten), Err(DecodeError(msg.into())));
        // 2^64-1 is the largest value and is fine as a varint (then too long for the body).
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(decode(&max), Err(DecodeError("unexpected EOF".into())));
    }

    #[test]
    fn bad_protobuf() {
        // Field 1 (name) as length-delimited, announcing more than the message holds.
        let err = decode(&[0x02, 0x0a, 0x05]).unwrap_err();
        assert!(err.0.starts_with("proto: "), "{err}");
        // Invalid wire type 7.
        let err = decode(&[0x01, 0x0f]).unwrap_err();
        assert!(err.0.starts_with("proto: "), "{err}");
        // A name that is not UTF-8.
        let err = decode(&[0x03, 0x0a, 0x01, 0xff]).unwrap_err();
        assert!(err.0.starts_with("proto: "), "{err}");
    }

    #[test]
    fn text_body_is_an_error_not_a_panic() {
        assert!(decode(b"some_metric 1\n").is_err());
    }

    fn arb_family() -> impl Strategy<Value = MetricFamily> {
        (
            "[a-z_]{1,6}",
            prop::option::of(".{0,10}"),
            prop::collection::vec((any::<f64>(), prop::option::of(any::<i64>())), 0..4),
        )
            .prop_map(|(name, help, values)| MetricFamily {
                name: Some(name),
                help,
                r#type: Some(MetricType::Gauge as i32),
                metric: values
                    .into_iter()
                    .map(|(v, ts)| Metric {
                        gauge: Some(Gauge { value: Some(v) }),
                        timestamp_ms: ts,
                        ..Default::default()
                    })
                    .collect(),
                unit: None,
            })
    }

    proptest! {
        #[test]
        fn round_trip_and_truncation(fams in prop::collection::vec(arb_family(), 1..5)) {
            let bytes = encode(&fams);
            let decoded = decode(&bytes).map_err(|e| TestCaseError::fail(e.0))?;
            // Expected: last family per name wins, sorted by name.
            let mut expected: BTreeMap<String, MetricFamily> = BTreeMap::new();
            for f in &fams {
                expected.insert(f.name.clone().unwrap_or_default(), f.clone());
            }
            let expected: Vec<MetricFamily> = expected.into_values().collect();
            // Compare encodings (NaN != NaN for PartialEq).
            prop_assert_eq!(encode(&decoded), encode(&expected));
            // Every cut that is not at a message boundary is an error.
            let mut boundaries = std::collections::HashSet::new();
            let mut pos = 0;
            boundaries.insert(0);
            for f in &fams {
                pos += f.encoded_len();
                pos += prost::length_delimiter_len(f.encoded_len());
                boundaries.insert(pos);
            }
            for cut in 0..bytes.len() {
                let r = decode(&bytes[..cut]);
                if boundaries.contains(&cut) {
                    prop_assert!(r.is_ok());
                } else {
                    prop_assert_eq!(r, Err(DecodeError("unexpected EOF".into())));
                }
            }
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }
    }
}
