//! Reading a stored family's protobuf encoding in place, without decoding it into owned
//! `MetricFamily` structs: the fast path of rendering a changed family (no allocation per
//! series or label). It reads what sorting needs and the text rendering of counter, gauge and
//! untyped samples (HELP, type, label pairs, the three scalar values, timestamps), and where
//! each metric's message lies (protobuf output copies it as it is), with prost's decoding
//! semantics: a repeated field appends, a later scalar replaces an earlier one, a repeated
//! sub-message merges, unknown fields are skipped. Anything it cannot read (malformed bytes,
//! invalid UTF-8) yields `None`; the caller then decodes with prost.

use std::cmp::Ordering;
use std::ops::Range;

/// A family read in place. Strings borrow from the encoding.
pub(crate) struct FamilyView<'a> {
    /// `help` as prost would decode it (`None` when absent).
    pub help: Option<&'a str>,
    /// `type` as prost would decode it (`None` when absent).
    pub ty: Option<i32>,
    /// Every metric, in stored order.
    pub metrics: Vec<MetricView>,
    /// The label pairs of all metrics; each metric holds its range.
    pub labels: Vec<(&'a str, &'a str)>,
    /// The encoding read; each metric holds the range of its own message.
    bytes: &'a [u8],
}

/// One metric of a [`FamilyView`].
pub(crate) struct MetricView {
    /// Its label pairs: `labels[range]` of the family view.
    pub labels: Range<usize>,
    /// `gauge.value`, `counter.value`, `untyped.value` as the prost accessors return them
    /// when the sub-message is present (absent value: 0).
    pub gauge: Option<f64>,
    pub counter: Option<f64>,
    pub untyped: Option<f64>,
    pub timestamp_ms: Option<i64>,
    /// Its encoded `Metric` message: `bytes[raw]` of the family view.
    raw: Range<usize>,
}

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

/// A protobuf wire reader over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first()?;
            self.buf = rest;
            v |= u64::from(b & 0x7F) << (7 * i);
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    /// The next field's number and wire type, `None` at the end.
    fn key(&mut self) -> Option<Option<(u64, u64)>> {
        if self.buf.is_empty() {
            return Some(None);
        }
        let k = self.varint()?;
        Some(Some((k >> 3, k & 7)))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        if n > self.buf.len() {
            return None;
        }
        let (b, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(b)
    }

    fn fixed64(&mut self) -> Option<u64> {
        if self.buf.len() < 8 {
            return None;
        }
        let (b, rest) = self.buf.split_at(8);
        self.buf = rest;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    fn skip(&mut self, wire: u64) -> Option<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.fixed64().map(drop),
            LEN => self.bytes().map(drop),
            FIXED32 if self.buf.len() >= 4 => {
                self.buf = &self.buf[4..];
                Some(())
            }
            _ => None,
        }
    }

    /// Calls `f(field, wire, reader)` for every field; `f` must consume the field.
    fn fields(mut self, mut f: impl FnMut(u64, u64, &mut Self) -> Option<()>) -> Option<()> {
        while let Some((field, wire)) = self.key()? {
            f(field, wire, &mut self)?;
        }
        Some(())
    }
}

/// `value` (field 1, double) of a `Gauge`, `Counter` or `Untyped`, merged into `prev`.
fn scalar(bytes: &[u8], prev: Option<f64>) -> Option<f64> {
    let mut value = prev.unwrap_or(0.0);
    Reader { buf: bytes }.fields(|field, wire, r| match (field, wire) {
        (1, FIXED64) => {
            value = f64::from_bits(r.fixed64()?);
            Some(())
        }
        (1, _) => None,
        _ => r.skip(wire),
    })?;
    Some(value)
}

/// Reads a stored family (see the module docs).
pub(crate) fn read_family(bytes: &[u8]) -> Option<FamilyView<'_>> {
    let mut view = FamilyView {
        help: None,
        ty: None,
        metrics: Vec::new(),
        labels: Vec::new(),
        bytes,
    };
    Reader { buf: bytes }.fields(|field, wire, r| match (field, wire) {
        (2, LEN) => {
            view.help = Some(r.str()?);
            Some(())
        }
        (3, VARINT) => {
            // An enum is an int32: prost truncates the varint.
            view.ty = Some(r.varint()? as i32);
            Some(())
        }
        (4, LEN) => {
            let metric = r.bytes()?;
            let mut m = read_metric(metric, &mut view.labels)?;
            // Where the sub-slice starts within `bytes`.
            let start = (metric.as_ptr() as usize).checked_sub(bytes.as_ptr() as usize)?;
            m.raw = start..start + metric.len();
            view.metrics.push(m);
            Some(())
        }
        (1 | 5, LEN) => r.str().map(drop),
        // A known field with another wire type: prost refuses the message.
        (1..=5, _) => None,
        _ => r.skip(wire),
    })?;
    Some(view)
}

fn read_metric<'a>(bytes: &'a [u8], labels: &mut Vec<(&'a str, &'a str)>) -> Option<MetricView> {
    let start = labels.len();
    let mut m = MetricView {
        labels: start..start,
        gauge: None,
        counter: None,
        untyped: None,
        timestamp_ms: None,
        raw: 0..0,
    };
    Reader { buf: bytes }.fields(|field, wire, r| {
        match (field, wire) {
            (1, LEN) => {
                let (mut name, mut value) = ("", "");
                Reader { buf: r.bytes()? }.fields(|field, wire, r| match (field, wire) {
                    (1, LEN) => {
                        name = r.str()?;
                        Some(())
                    }
                    (2, LEN) => {
                        value = r.str()?;
                        Some(())
                    }
                    (1 | 2, _) => None,
                    _ => r.skip(wire),
                })?;
                labels.push((name, value));
            }
            (2, LEN) => m.gauge = Some(scalar(r.bytes()?, m.gauge)?),
            (3, LEN) => m.counter = Some(scalar(r.bytes()?, m.counter)?),
            (5, LEN) => m.untyped = Some(scalar(r.bytes()?, m.untyped)?),
            // int64: the varint's two's complement.
            (6, VARINT) => m.timestamp_ms = Some(r.varint()? as i64),
            (4 | 7, LEN) => r.skip(wire)?,
            (1..=7, _) => return None,
            _ => r.skip(wire)?,
        }
        Some(())
    })?;
    m.labels = start..labels.len();
    Some(m)
}

impl FamilyView<'_> {
    /// The encoded `Metric` message of `m`, as stored: what prost encodes the decoded
    /// metric to, since the stored bytes are prost's encoding of it.
    pub fn raw_of(&self, m: &MetricView) -> &[u8] {
        self.bytes.get(m.raw.clone()).unwrap_or_default()
    }

    /// The label pairs of `m`.
    pub fn labels_of(&self, m: &MetricView) -> &[(&str, &str)] {
        self.labels.get(m.labels.clone()).unwrap_or_default()
    }

    /// The order of two of its metrics: [`cmp_samples`].
    pub fn cmp(&self, a: &MetricView, b: &MetricView) -> Ordering {
        cmp_samples(
            (self.labels_of(a), a.timestamp_ms),
            (self.labels_of(b), b.timestamp_ms),
        )
    }
}

/// client_golang's `MetricSorter` order of two samples given by their label pairs and
/// timestamps, then label names pairwise: the order of `render::cmp_metrics` on decoded
/// metrics.
pub(crate) fn cmp_samples(
    (la, ta): (&[(&str, &str)], Option<i64>),
    (lb, tb): (&[(&str, &str)], Option<i64>),
) -> Ordering {
    la.len()
        .cmp(&lb.len())
        .then_with(|| pairwise(la, lb, false))
        .then_with(|| match (ta, tb) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => x.cmp(&y),
        })
        .then_with(|| pairwise(la, lb, true))
}

/// The first difference between the label values (or, with `names`, the label names) of
/// `la` and `lb`, pair by pair.
fn pairwise(la: &[(&str, &str)], lb: &[(&str, &str)], names: bool) -> Ordering {
    la.iter()
        .zip(lb)
        .map(|(x, y)| if names { x.0.cmp(y.0) } else { x.1.cmp(y.1) })
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{Counter, Gauge, LabelPair, Metric, MetricFamily, Untyped};
    use proptest::prelude::*;
    use prost::Message;

    fn arb_metric() -> impl Strategy<Value = Metric> {
        (
            proptest::collection::vec(("[a-c]{0,2}", "[a\\x00é]{0,2}"), 0..3),
            proptest::option::of(any::<f64>()),
            proptest::option::of(proptest::option::of(any::<f64>())),
            proptest::option::of(any::<f64>()),
            proptest::option::of(any::<i64>()),
        )
            .prop_map(|(ls, g, c, u, ts)| Metric {
                label: ls
                    .into_iter()
                    .map(|(n, v)| LabelPair {
                        name: Some(n),
                        value: Some(v),
                    })
                    .collect(),
                gauge: g.map(|v| Gauge { value: Some(v) }),
                counter: c.map(|value| Counter {
                    value,
                    ..Default::default()
                }),
                untyped: u.map(|v| Untyped { value: Some(v) }),
                timestamp_ms: ts,
                ..Default::default()
            })
    }

    proptest! {
        /// The view reads what prost decodes.
        #[test]
        fn reads_what_prost_decodes(
            help in proptest::option::of("[a-z]{0,3}"),
            ty in proptest::option::of(-3i32..7),
            metrics in proptest::collection::vec(arb_metric(), 0..5),
        ) {
            let fam = MetricFamily { name: Some("m".into()), help, r#type: ty, metric: metrics, unit: None };
            let bytes = fam.encode_to_vec();
            let v = read_family(&bytes).expect("readable");
            prop_assert_eq!(v.help, fam.help.as_deref());
            prop_assert_eq!(v.ty, fam.r#type);
            prop_assert_eq!(v.metrics.len(), fam.metric.len());
            for (mv, m) in v.metrics.iter().zip(&fam.metric) {
                let want: Vec<(&str, &str)> = m.label.iter().map(|l| (l.name(), l.value())).collect();
                prop_assert_eq!(v.labels_of(mv), &want[..]);
                let bits = |x: Option<f64>| x.map(f64::to_bits);
                prop_assert_eq!(bits(mv.gauge), bits(m.gauge.as_ref().map(|g| g.value())));
                prop_assert_eq!(bits(mv.counter), bits(m.counter.as_ref().map(|c| c.value())));
                prop_assert_eq!(bits(mv.untyped), bits(m.untyped.as_ref().map(|u| u.value())));
                prop_assert_eq!(mv.timestamp_ms, m.timestamp_ms);
                prop_assert_eq!(v.raw_of(mv), &m.encode_to_vec()[..]);
            }
        }

        /// Bytes that are not a family never panic the reader.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = read_family(&bytes);
        }
    }

    #[test]
    fn repeated_sub_messages_merge_as_prost_does() {
        // Two `gauge` fields: the second has no value, so the first's is kept.
        let first = Metric {
            gauge: Some(Gauge { value: Some(2.5) }),
            ..Default::default()
        };
        let second = Metric {
            gauge: Some(Gauge { value: None }),
            timestamp_ms: Some(-1),
            ..Default::default()
        };
        let mut m = first.encode_to_vec();
        m.extend(second.encode_to_vec());
        let mut fam = vec![0x22];
        prost::encoding::encode_varint(m.len() as u64, &mut fam);
        fam.extend(&m);
        let v = read_family(&fam).expect("readable");
        let prost = MetricFamily::decode(&fam[..]).expect("decodes");
        assert_eq!(v.metrics[0].gauge, prost.metric[0].gauge.map(|g| g.value()));
        assert_eq!(v.metrics[0].gauge, Some(2.5));
        assert_eq!(v.metrics[0].timestamp_ms, Some(-1));
    }
}
