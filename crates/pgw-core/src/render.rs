//! Rendering the store: text format 0.0.4, delimited protobuf, and the `/api/v1/metrics`
//! JSON (spec §8, §9.2). Output is deterministic: families sorted by name, series in the
//! reference's order with a total tie-break, HELP chosen by a fixed rule.
//!
//! # Merging (`/metrics`, text and protobuf)
//!
//! The families of all groups are merged by name together with `extra`, the node-local
//! self-metrics (complete families the caller gathered; their label pairs must be sorted by
//! name, as every Prometheus client library produces them). Families are sorted by name
//! (byte order) and families without any sample are left out.
//!
//! * **HELP** (deliberate deviation, quirk Q4): the reference takes the HELP of whichever
//!   group Go's map iteration visits first, i.e. a random one per scrape. pgw uses the HELP
//!   of `extra` when the name is one of its families (no HELP line if that one has none);
//!   otherwise the first non-empty HELP in grouping-key order; otherwise no HELP line.
//! * **TYPE**: `extra`'s when present, otherwise that of the first group in grouping-key
//!   order. (The consistency check keeps the pushed types of one name equal; a self-metric
//!   name is reserved.) Each sample is rendered according to the type of the family it came
//!   from, so a type clash can never make a sample unrenderable.
//! * **Series order** (quirk Q5, copied): client_golang's `MetricSorter`: number of label
//!   pairs, then label values compared pairwise in label-name order (names ignored), then
//!   timestamps (missing last). pgw breaks the remaining ties by the label names pairwise and
//!   finally by source (`extra` first, then groups in grouping-key order, then the stored
//!   order), so the output is a total order and every replica renders the same bytes.
//!
//! # Text details
//!
//! As prometheus/common `expfmt.MetricFamilyToText`: `# HELP` (escaping `\` and newline),
//! `# TYPE` (`gauge_histogram` is written `histogram`; an unknown type is written
//! `untyped`), one line per sample without timestamp; label values escape `\`, `"` and
//! newline; `le` / `quantile` come last; histogram buckets in stored order, plus a
//! `le="+Inf"` bucket holding the sample count unless a `+Inf` bucket exists; counts use the
//! `_float` field when it is non-zero; floats via [`crate::float::write_text`].
//!
//! # Caching (`/metrics`)
//!
//! A scrape renders only what changed since the previous one. Each family name keeps its
//! merged rendering in the store (`GroupStore::rendered`), dropped by any write touching
//! the name. Behind it, each group's family keeps its own sorted rendering (a *run*, in its
//! [`StoredFamily`], dropped when a write replaces that family) with the sort keys of its
//! first and last sample. When the runs of a name's holders do not interleave in the merged
//! order (the usual case: the grouping labels, different in every group, sort before the
//! other labels) the merged family is its header and the runs one after the other, kept only
//! once, in the runs; so after a push to one of 10k groups only that group's run is rendered
//! again. Otherwise the name is rendered by the plain merge (decode every holder, sort all
//! samples). Both read the stored protobuf in place (the `view` module: no allocation per
//! sample): protobuf output copies each stored metric message, text output of counters,
//! gauges and untyped families is written from the values read; text of summaries and
//! histograms is rendered from families decoded with prost. Whichever way, the bytes are
//! those of the plain merge of decoded families (a property test checks it).
//!
//! # `/api/v1/metrics`
//!
//! As upstream's `api/v1/api.go` (`json.Marshal` of maps and structs): see
//! [`api_metrics_json`].

use std::cmp::Ordering;
use std::sync::Arc;

use prost::Message;

use crate::float::{go_sprint, write_go, write_text, write_u64};
use crate::pb::{Histogram, LabelPair, Metric, MetricFamily, Summary};
use crate::store::{Group, GroupStore, RenderSlot, StoredFamily};
use crate::view::{FamilyView, MetricView};

const COUNTER: i32 = 0;
const GAUGE: i32 = 1;
const SUMMARY: i32 = 2;
const UNTYPED: i32 = 3;
const HISTOGRAM: i32 = 4;
const GAUGE_HISTOGRAM: i32 = 5;

/// One source family of a merged family: from `extra` (`src == 0`) or from group `src - 1`
/// in grouping-key order.
struct Part<'a> {
    name: &'a str,
    src: usize,
    fam: &'a MetricFamily,
}

/// A merged family ready to render.
struct Merged<'a> {
    name: &'a str,
    help: Option<&'a str>,
    ty: i32,
}

/// Appends the rendering of every family of the store and of `extra`, merged by name and in
/// name order, to `out`. A name that `extra` does not have is served from the store's render
/// cache ([`GroupStore::rendered`]), so a scrape re-renders only what changed since the
/// previous one; a name `extra` has (node-local self-metrics, which change every scrape) is
/// rendered afresh.
fn render_all(store: &GroupStore, extra: &[MetricFamily], slot: RenderSlot, out: &mut Vec<u8>) {
    let mut extras: Vec<&MetricFamily> = extra.iter().filter(|f| !f.name().is_empty()).collect();
    // Stable: several `extra` families of one name keep their order.
    extras.sort_by(|a, b| a.name().cmp(b.name()));
    let mut names = store.family_names().peekable();
    let mut next_extra = 0;
    loop {
        let from_store = names.peek().copied();
        let from_extra = extras.get(next_extra).map(|f| f.name());
        let name = match (from_store, from_extra) {
            (None, None) => break,
            (Some(s), None) => s,
            (None, Some(e)) => e,
            (Some(s), Some(e)) => s.min(e),
        };
        if from_store == Some(name) {
            names.next();
        }
        let mut parts = Vec::new();
        while let Some(&fam) = extras.get(next_extra).filter(|f| f.name() == name) {
            parts.push(Part { name, src: 0, fam });
            next_extra += 1;
        }
        if parts.is_empty() {
            match store.rendered(name, slot, || plan_family(store, name, slot)) {
                Some(Rendered::Bytes(bytes)) => out.extend_from_slice(bytes),
                Some(Rendered::Runs { header, runs }) => {
                    out.extend_from_slice(header);
                    for run in runs.iter() {
                        out.extend_from_slice(&run.payload);
                    }
                }
                None => {}
            }
        } else {
            let fams = holder_families(store, name);
            parts.extend(parts_of(name, &fams));
            write_parts(&parts, slot, &mut Sorter::default(), out);
        }
    }
}

/// How the render cache serves one family merged across its holders
/// ([`GroupStore::rendered`]).
#[derive(Clone, Debug)]
pub(crate) enum Rendered {
    /// The whole rendering.
    Bytes(Box<[u8]>),
    /// The family's header, then the holders' [`Run`]s in merged order: the holders'
    /// samples do not interleave in the sort order, so the merged family is their runs one
    /// after the other. The runs are shared with the holders' caches, kept in memory once.
    Runs {
        header: Box<[u8]>,
        runs: Box<[Arc<Run>]>,
    },
}

/// One group's family rendered on its own: its samples in sorted order, cached in its
/// [`StoredFamily`] until a write replaces the family. A family merged across many groups
/// (the usual case: every instance of a job pushes the same names) is, after a push to one of
/// them, re-rendered by rendering that group's run and copying the others.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    /// The rendered samples, in sorted order.
    payload: Box<[u8]>,
    /// The sort keys of the first and the last sample; `None` when the family has none.
    bounds: Option<Box<(RunKey, RunKey)>>,
    /// The family's HELP when not empty.
    help: Option<Box<str>>,
    /// The family's type, as [`ty_of`].
    ty: i32,
}

/// A sample's position in the merged order, comparable across groups: as [`Sorter::sort`]
/// (number of labels, values pairwise, timestamp with none last, names pairwise); only the
/// source order, which breaks the remaining ties, is not in it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RunKey {
    nl: usize,
    /// Label values encoded as in [`Sorter`], so that byte order is pairwise order.
    values: Box<[u8]>,
    /// `(false, ts)` for a timestamp, `(true, 0)` for none (sorted last).
    ts: (bool, i64),
    /// Label names, encoded like the values.
    names: Box<[u8]>,
}

impl RunKey {
    fn of(m: &Metric) -> Self {
        Self::new(
            m.label.iter().map(|l| (l.name(), l.value())),
            m.timestamp_ms,
        )
    }

    /// The key of a sample with label pairs `(name, value)` and timestamp `ts`.
    fn new<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>, ts: Option<i64>) -> Self {
        let mut values = Vec::new();
        let mut names = Vec::new();
        let mut nl = 0;
        for (n, v) in labels {
            encode_ordered(&mut values, v.as_bytes());
            encode_ordered(&mut names, n.as_bytes());
            nl += 1;
        }
        RunKey {
            nl,
            values: values.into(),
            ts: match ts {
                Some(t) => (false, t),
                None => (true, 0),
            },
            names: names.into(),
        }
    }
}

/// Appends `v` so that comparing concatenations byte-wise compares the strings pairwise:
/// `00` escaped as `00 FF`, each string terminated by `00 01`.
fn encode_ordered(out: &mut Vec<u8>, v: &[u8]) {
    if v.contains(&0) {
        for &b in v {
            if b == 0 {
                out.extend_from_slice(&[0, 0xFF]);
            } else {
                out.push(b);
            }
        }
    } else {
        out.extend_from_slice(v);
    }
    out.extend_from_slice(&[0, 1]);
}

/// Renders `sf` (family `name` of one group) on its own, in the format of `slot`.
fn build_run(sf: &StoredFamily, name: &str, slot: RenderSlot) -> Run {
    build_run_in_place(sf, name, slot).unwrap_or_else(|| build_run_decoded(sf, name, slot))
}

/// Whether samples of a family of type `ty` can be rendered in `slot` from the stored
/// encoding read in place: protobuf always (the stored metric bytes are copied), text for
/// counters, gauges and untyped (summaries and histograms are decoded).
fn in_place(slot: RenderSlot, ty: i32) -> bool {
    slot == RenderSlot::Protobuf || !matches!(ty, SUMMARY | HISTOGRAM | GAUGE_HISTOGRAM)
}

/// [`in_place`] by the stored family's known type, before reading it: `false` only when it
/// surely is not.
fn maybe_in_place(slot: RenderSlot, sf: &StoredFamily) -> bool {
    sf.known_type().is_none_or(|t| in_place(slot, t as i32))
}

/// One sample read in place, in the format of `slot` (see [`in_place`]).
fn write_view_sample_as(
    slot: RenderSlot,
    out: &mut Vec<u8>,
    name: &[u8],
    ty: i32,
    view: &FamilyView<'_>,
    m: &MetricView,
) {
    match slot {
        RenderSlot::Text => write_view_sample(out, name, ty, view, m),
        RenderSlot::Protobuf => {
            // Field 4 (metric), length-delimited: the stored message as it is.
            let raw = view.raw_of(m);
            out.push(0x22);
            prost::encoding::encode_varint(raw.len() as u64, out);
            out.extend_from_slice(raw);
        }
    }
}

/// [`build_run`] reading the stored encoding in place (the `view` module): no allocation
/// per sample. `None` when [`in_place`] says no (or the view cannot read the bytes).
fn build_run_in_place(sf: &StoredFamily, name: &str, slot: RenderSlot) -> Option<Run> {
    if !maybe_in_place(slot, sf) {
        return None;
    }
    let view = crate::view::read_family(sf.encoded())?;
    let ty = view.ty.unwrap_or(COUNTER);
    if !in_place(slot, ty) {
        return None;
    }
    let ms = &view.metrics;
    let mut order: Vec<&crate::view::MetricView> = ms.iter().collect();
    // Stable: equal samples keep their stored order, as in the merge.
    if !order.is_sorted_by(|a, b| view.cmp(a, b) != Ordering::Greater) {
        order.sort_by(|a, b| view.cmp(a, b));
    }
    let name_b = name.as_bytes();
    let label_bytes: usize = view.labels.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let mut payload = Vec::with_capacity(ms.len() * (name_b.len() + 24) + label_bytes);
    for m in &order {
        write_view_sample_as(slot, &mut payload, name_b, ty, &view, m);
    }
    let key = |m: &crate::view::MetricView| {
        RunKey::new(view.labels_of(m).iter().copied(), m.timestamp_ms)
    };
    Some(Run {
        payload: payload.into(),
        bounds: match (order.first(), order.last()) {
            (Some(first), Some(last)) => Some(Box::new((key(first), key(last)))),
            _ => None,
        },
        help: view.help.filter(|h| !h.is_empty()).map(Into::into),
        ty,
    })
}

/// The text line of a counter, gauge or untyped sample read in place, rendered as
/// [`write_sample_text`] renders it decoded.
fn write_view_sample(
    out: &mut Vec<u8>,
    name: &[u8],
    ty: i32,
    view: &FamilyView<'_>,
    m: &MetricView,
) {
    out.extend_from_slice(name);
    let labels = view.labels_of(m);
    if !labels.is_empty() {
        out.push(b'{');
        for (i, (n, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b"=\"");
            escape_label_value(out, v);
            out.push(b'"');
        }
        out.push(b'}');
    }
    out.push(b' ');
    write_text(out, pick_scalar(ty, m.gauge, m.counter, m.untyped));
    out.push(b'\n');
}

/// [`build_run`] by decoding the family with prost.
fn build_run_decoded(sf: &StoredFamily, name: &str, slot: RenderSlot) -> Run {
    let fam = sf.family();
    let parts = [Part {
        name,
        src: 1,
        fam: &fam,
    }];
    let mut run = Run {
        payload: Box::default(),
        bounds: None,
        help: fam
            .help
            .as_deref()
            .filter(|h| !h.is_empty())
            .map(Into::into),
        ty: ty_of(&fam),
    };
    let mut scratch = Vec::new();
    for_each_merged(
        &parts,
        &mut Sorter::default(),
        |buf, name, ty, m| render_sample(slot, &mut scratch, buf, name, ty, m),
        |_, sorter| {
            let mut payload = Vec::with_capacity(sorter.payload.len());
            for p in sorter.payloads() {
                payload.extend_from_slice(p);
            }
            run.payload = payload.into();
            let metric_at = |k: Option<&SortKey>| {
                k.and_then(|k| sorter.entries.get(k.seq as usize))
                    .map(|e| e.item)
            };
            if let (Some(first), Some(last)) = (
                metric_at(sorter.order.first()),
                metric_at(sorter.order.last()),
            ) {
                run.bounds = Some(Box::new((RunKey::of(first), RunKey::of(last))));
            }
        },
    );
    run
}

/// Plans the rendering of family `name` (held by groups only) for the render cache: the runs
/// of its holders one after the other when their samples do not interleave in the merged
/// order (caching the runs), otherwise the whole merged rendering.
fn plan_family(store: &GroupStore, name: &str, slot: RenderSlot) -> Rendered {
    let holders: Vec<&StoredFamily> = store.holders(name).map(|(_, sf)| sf).collect();
    // Each holder's run, and whether it was rendered now: those are cached only if the plan
    // uses them. Two holders in a row whose samples interleave (or tie) end the attempt
    // early: the plain merge it is then.
    let mut runs: Vec<(Arc<Run>, bool)> = Vec::with_capacity(holders.len());
    let mut prev: Option<usize> = None;
    for sf in &holders {
        let (run, fresh) = match sf.run(slot) {
            Some(run) => (run.clone(), false),
            None => (Arc::new(build_run(sf, name, slot)), true),
        };
        if let Some((first, last)) = run.bounds.as_deref() {
            if let Some((pf, pl)) = prev.and_then(|p| runs[p].0.bounds.as_deref())
                && !(pl < first || last < pf)
            {
                return plain_merge(store, name, slot);
            }
            prev = Some(runs.len());
        }
        runs.push((run, fresh));
    }
    // The runs with samples, by (first sample, holder position).
    let mut keyed: Vec<(usize, &(RunKey, RunKey))> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, (run, _))| Some((i, run.bounds.as_deref()?)))
        .collect();
    if keyed.is_empty() {
        // No samples at all: the family is left out.
        return Rendered::Bytes(Box::default());
    }
    keyed.sort_by(|(i, x), (j, y)| x.0.cmp(&y.0).then(i.cmp(j)));
    let disjoint = keyed.windows(2).all(|w| match w[0].1.1.cmp(&w[1].1.0) {
        Ordering::Less => true,
        Ordering::Equal => w[0].0 < w[1].0,
        Ordering::Greater => false,
    });
    if !disjoint {
        return plain_merge(store, name, slot);
    }
    let merged = Merged {
        name,
        help: runs.iter().find_map(|(r, _)| r.help.as_deref()),
        ty: runs.first().map_or(UNTYPED, |(r, _)| r.ty),
    };
    let ordered: Box<[Arc<Run>]> = keyed.iter().map(|&(i, _)| runs[i].0.clone()).collect();
    let mut header = Vec::new();
    let payload_len = ordered.iter().map(|r| r.payload.len()).sum();
    write_header(slot, &mut header, &merged, payload_len);
    for (sf, (run, fresh)) in holders.iter().zip(runs) {
        if fresh {
            sf.set_run(slot, run);
        }
    }
    Rendered::Runs {
        header: header.into(),
        runs: ordered,
    }
}

/// Family `name` rendered by reading every holder's family and sorting all samples.
fn plain_merge(store: &GroupStore, name: &str, slot: RenderSlot) -> Rendered {
    if let Some(bytes) = merge_in_place(store, name, slot) {
        return Rendered::Bytes(bytes.into());
    }
    let fams = holder_families(store, name);
    let parts: Vec<Part<'_>> = parts_of(name, &fams).collect();
    let mut buf = Vec::new();
    write_parts(&parts, slot, &mut Sorter::default(), &mut buf);
    Rendered::Bytes(buf.into())
}

/// [`plain_merge`] reading the stored families in place. `None` when [`in_place`] says no
/// for a holder's family (or the view cannot read it): then all are decoded.
fn merge_in_place(store: &GroupStore, name: &str, slot: RenderSlot) -> Option<Vec<u8>> {
    if !store.holders(name).all(|(_, sf)| maybe_in_place(slot, sf)) {
        return None;
    }
    let views: Vec<FamilyView<'_>> = store
        .holders(name)
        .map(|(_, sf)| crate::view::read_family(sf.encoded()))
        .collect::<Option<_>>()?;
    let tys: Vec<i32> = views.iter().map(|v| v.ty.unwrap_or(COUNTER)).collect();
    if !tys.iter().all(|&t| in_place(slot, t)) {
        return None;
    }
    let mut sorter: Sorter<ViewSample<'_>> = Sorter::default();
    for (view, &ty) in views.iter().zip(&tys) {
        for m in &view.metrics {
            let pstart = sorter.payload.len();
            write_view_sample_as(slot, &mut sorter.payload, name.as_bytes(), ty, view, m);
            let pend = sorter.payload.len();
            sorter.push(ViewSample { view, m }, pstart, pend);
        }
    }
    let mut out = Vec::new();
    if sorter.is_empty() {
        return Some(out);
    }
    sorter.sort();
    let merged = Merged {
        name,
        help: views.iter().find_map(|v| v.help.filter(|h| !h.is_empty())),
        ty: tys.first().copied().unwrap_or(UNTYPED),
    };
    out.reserve(sorter.payload.len() + 256);
    write_header(slot, &mut out, &merged, sorter.payload.len());
    for p in sorter.payloads() {
        out.extend_from_slice(p);
    }
    Some(out)
}

/// The families named `name` of every group holding one, decoded, in grouping-key order.
fn holder_families(store: &GroupStore, name: &str) -> Vec<MetricFamily> {
    store.holders(name).map(|(_, sf)| sf.family()).collect()
}

/// `fams` (of groups, in grouping-key order) as the parts of the merged family `name`.
fn parts_of<'a>(name: &'a str, fams: &'a [MetricFamily]) -> impl Iterator<Item = Part<'a>> {
    fams.iter().enumerate().map(move |(i, fam)| Part {
        name,
        src: i + 1,
        fam,
    })
}

/// Renders `parts` (sorted by name, then source) in the format of `slot`, appending to `out`.
fn write_parts<'a>(
    parts: &[Part<'a>],
    slot: RenderSlot,
    sorter: &mut Sorter<&'a Metric>,
    out: &mut Vec<u8>,
) {
    let mut scratch = Vec::new();
    let render = |buf: &mut Vec<u8>, name: &str, ty: i32, m: &Metric| {
        render_sample(slot, &mut scratch, buf, name, ty, m)
    };
    for_each_merged(parts, sorter, render, |fam, sorter| {
        write_header(slot, out, fam, sorter.payload.len());
        for p in sorter.payloads() {
            out.extend_from_slice(p);
        }
    });
}

/// One sample in the format of `slot`: text lines, or field 4 (metric) of a `MetricFamily`.
fn render_sample(
    slot: RenderSlot,
    scratch: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    name: &str,
    ty: i32,
    m: &Metric,
) {
    match slot {
        RenderSlot::Text => write_sample_text(buf, scratch, name.as_bytes(), ty, m),
        RenderSlot::Protobuf => {
            // Field 4 (metric), length-delimited. Encoding into a Vec cannot run out of space.
            buf.push(0x22);
            let _ = m.encode_length_delimited(buf);
        }
    }
}

/// One sample of a merged family.
struct Entry<T> {
    /// The encoded label values: `keys[start..end]` of the [`Sorter`].
    start: usize,
    end: usize,
    /// The rendered sample: `payload[pstart..pend]` of the [`Sorter`].
    pstart: usize,
    pend: usize,
    item: T,
}

/// What the sort moves around: small, with the common comparisons inline.
#[derive(Clone, Copy)]
struct SortKey {
    /// The first 16 bytes of the encoded label values, big-endian, zero-padded.
    prefix: [u64; 2],
    /// Number of label pairs.
    nl: u32,
    /// Index into the entries = push order (source order, then stored order).
    seq: u32,
}

/// Reusable buffers for sorting the samples of one merged family.
///
/// Comparing label values through `Metric → Vec<LabelPair> → String` chases pointers all
/// over the heap; at 100k series that cache-misses its way to >100 ms. Instead each sample's
/// label values are encoded once into one contiguous buffer so that comparing the encodings
/// byte-wise is the same as comparing the values pairwise (each value with `00` escaped as
/// `00 FF`, terminated by `00 01`), with the first 16 bytes inlined in the sort key. In the
/// same sequential pass each sample is rendered into `payload`, so that writing the output in
/// sorted order copies contiguous bytes instead of chasing pointers again.
struct Sorter<T> {
    keys: Vec<u8>,
    payload: Vec<u8>,
    entries: Vec<Entry<T>>,
    order: Vec<SortKey>,
}

impl<T> Default for Sorter<T> {
    fn default() -> Self {
        Sorter {
            keys: Vec::new(),
            payload: Vec::new(),
            entries: Vec::new(),
            order: Vec::new(),
        }
    }
}

/// A sample as the [`Sorter`] sees it: a decoded metric, or one read in place.
trait Sample: Copy {
    /// Number of label pairs.
    fn label_count(self) -> usize;
    /// Appends the label values, each encoded with [`encode_ordered`].
    fn encode_values(self, out: &mut Vec<u8>);
    /// The whole order: [`cmp_metrics`].
    fn cmp_full(self, other: Self) -> Ordering;
}

impl Sample for &Metric {
    fn label_count(self) -> usize {
        self.label.len()
    }
    fn encode_values(self, out: &mut Vec<u8>) {
        for lp in &self.label {
            encode_ordered(out, lp.value().as_bytes());
        }
    }
    fn cmp_full(self, other: Self) -> Ordering {
        cmp_metrics(self, other)
    }
}

/// A metric read in place, with the family view holding its labels.
#[derive(Clone, Copy)]
struct ViewSample<'a> {
    view: &'a FamilyView<'a>,
    m: &'a MetricView,
}

impl Sample for ViewSample<'_> {
    fn label_count(self) -> usize {
        self.view.labels_of(self.m).len()
    }
    fn encode_values(self, out: &mut Vec<u8>) {
        for (_, v) in self.view.labels_of(self.m) {
            encode_ordered(out, v.as_bytes());
        }
    }
    fn cmp_full(self, other: Self) -> Ordering {
        crate::view::cmp_samples(
            (self.view.labels_of(self.m), self.m.timestamp_ms),
            (other.view.labels_of(other.m), other.m.timestamp_ms),
        )
    }
}

impl<T: Sample> Sorter<T> {
    /// Adds a sample without a sort key (see [`Sorter::build_keys`]).
    fn push_unkeyed(&mut self, item: T, pstart: usize, pend: usize) {
        self.entries.push(Entry {
            start: 0,
            end: 0,
            pstart,
            pend,
            item,
        });
    }

    /// Computes the sort keys of all entries added with [`Sorter::push_unkeyed`].
    fn build_keys(&mut self) {
        self.keys.clear();
        self.order.clear();
        for i in 0..self.entries.len() {
            let (start, key) = self.encode_key(self.entries[i].item, i);
            self.entries[i].start = start;
            self.entries[i].end = self.keys.len();
            self.order.push(key);
        }
    }

    /// The order as pushed (for input already known to be sorted).
    fn keep_push_order(&mut self) {
        self.order.clear();
        let n = self.entries.len();
        self.order.extend((0..n).map(|i| SortKey {
            prefix: [0, 0],
            nl: 0,
            seq: u32::try_from(i).unwrap_or(u32::MAX),
        }));
    }

    /// Adds a sample with its sort key.
    fn push(&mut self, item: T, pstart: usize, pend: usize) {
        let (start, key) = self.encode_key(item, self.entries.len());
        self.order.push(key);
        self.entries.push(Entry {
            start,
            end: self.keys.len(),
            pstart,
            pend,
            item,
        });
    }

    /// Appends the encoded label values of `item` to `keys`; returns where they start and
    /// the sort key for entry `seq`.
    fn encode_key(&mut self, item: T, seq: usize) -> (usize, SortKey) {
        let start = self.keys.len();
        item.encode_values(&mut self.keys);
        let end = self.keys.len();
        let mut p = [0u8; 16];
        let n = (end - start).min(16);
        p[..n].copy_from_slice(&self.keys[start..start + n]);
        let (p0, p1) = p.split_at(8);
        let key = SortKey {
            prefix: [
                u64::from_be_bytes(p0.try_into().unwrap_or_default()),
                u64::from_be_bytes(p1.try_into().unwrap_or_default()),
            ],
            nl: u32::try_from(item.label_count()).unwrap_or(u32::MAX),
            seq: u32::try_from(seq).unwrap_or(u32::MAX),
        };
        (start, key)
    }

    /// Sorts by (number of labels, values pairwise, timestamp, names pairwise, push order).
    /// The push order is unique per entry, so the order is total and an unstable sort is
    /// deterministic. Input that is already in order (one group, stored sorted) is detected
    /// in linear time.
    fn sort(&mut self) {
        let keys = &self.keys;
        let entries = &self.entries;
        let cmp = |a: &SortKey, b: &SortKey| {
            a.nl.cmp(&b.nl)
                .then(a.prefix.cmp(&b.prefix))
                .then_with(|| {
                    let (x, y) = (entries.get(a.seq as usize), entries.get(b.seq as usize));
                    match (x, y) {
                        (Some(x), Some(y)) => {
                            let kx = keys.get(x.start..x.end).unwrap_or_default();
                            let ky = keys.get(y.start..y.end).unwrap_or_default();
                            kx.cmp(ky).then_with(|| x.item.cmp_full(y.item))
                        }
                        _ => Ordering::Equal,
                    }
                })
                .then(a.seq.cmp(&b.seq))
        };
        if !self
            .order
            .is_sorted_by(|a, b| cmp(a, b) != Ordering::Greater)
        {
            self.order.sort_unstable_by(cmp);
        }
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.payload.clear();
        self.entries.clear();
        self.order.clear();
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The rendered payloads in sorted order.
    fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        self.order.iter().map(|k| {
            self.entries
                .get(k.seq as usize)
                .and_then(|e| self.payload.get(e.pstart..e.pend))
                .unwrap_or_default()
        })
    }
}

/// Walks the merged families in name order, skipping those without samples. Each sample is
/// rendered by `render(payload, family name, source type, sample)`; then `f` gets the family
/// and the sorter holding its samples in sorted order.
fn for_each_merged<'a>(
    parts: &[Part<'a>],
    sorter: &mut Sorter<&'a Metric>,
    mut render: impl FnMut(&mut Vec<u8>, &str, i32, &Metric),
    mut f: impl FnMut(&Merged<'a>, &Sorter<&'a Metric>),
) {
    let mut start = 0;
    while start < parts.len() {
        let name = parts[start].name;
        let mut end = start + 1;
        while end < parts.len() && parts[end].name == name {
            end += 1;
        }
        let run = &parts[start..end];
        start = end;

        sorter.clear();
        if let [p] = run {
            // One source (the common case: a name pushed by one group): often stored in
            // order already, which is checked while the metrics are hot in the cache; keys
            // are only built when a sort is needed.
            let ty = ty_of(p.fam);
            let mut in_order = true;
            let mut prev: Option<&Metric> = None;
            for m in &p.fam.metric {
                let pstart = sorter.payload.len();
                render(&mut sorter.payload, name, ty, m);
                let pend = sorter.payload.len();
                sorter.push_unkeyed(m, pstart, pend);
                if let Some(prev) = prev {
                    in_order = in_order && cmp_metrics(prev, m) != Ordering::Greater;
                }
                prev = Some(m);
            }
            if in_order {
                sorter.keep_push_order();
            } else {
                sorter.build_keys();
                sorter.sort();
            }
        } else {
            for p in run {
                let ty = ty_of(p.fam);
                for m in &p.fam.metric {
                    let pstart = sorter.payload.len();
                    render(&mut sorter.payload, name, ty, m);
                    let pend = sorter.payload.len();
                    sorter.push(m, pstart, pend);
                }
            }
            sorter.sort();
        }
        if sorter.is_empty() {
            continue;
        }

        let (help, ty) = match run.first() {
            Some(p) if p.src == 0 => (
                p.fam.help.as_deref().filter(|h| !h.is_empty()),
                ty_of(p.fam),
            ),
            Some(p) => (
                run.iter()
                    .find_map(|p| p.fam.help.as_deref().filter(|h| !h.is_empty())),
                ty_of(p.fam),
            ),
            None => (None, UNTYPED),
        };
        f(&Merged { name, help, ty }, sorter);
    }
}

/// The family's type as Go's `GetType()` sees it (absent = `COUNTER`).
fn ty_of(fam: &MetricFamily) -> i32 {
    fam.r#type.unwrap_or(COUNTER)
}

/// client_golang's `MetricSorter`, then label names pairwise.
fn cmp_metrics(a: &Metric, b: &Metric) -> Ordering {
    a.label
        .len()
        .cmp(&b.label.len())
        .then_with(|| {
            for (x, y) in a.label.iter().zip(&b.label) {
                match x.value().cmp(y.value()) {
                    Ordering::Equal => {}
                    o => return o,
                }
            }
            Ordering::Equal
        })
        .then_with(|| match (a.timestamp_ms, b.timestamp_ms) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => x.cmp(&y),
        })
        .then_with(|| {
            for (x, y) in a.label.iter().zip(&b.label) {
                match x.name().cmp(y.name()) {
                    Ordering::Equal => {}
                    o => return o,
                }
            }
            Ordering::Equal
        })
}

/// Renders the store plus `extra` (node-local self-metrics) as text format 0.0.4, appending
/// to `out`. See the module docs for merging, HELP/TYPE choice and ordering. Families that
/// `extra` does not have come from the store's render cache when they did not change since
/// the last rendering.
pub fn text(store: &GroupStore, extra: &[MetricFamily], out: &mut Vec<u8>) {
    out.reserve(store.series_count().saturating_mul(72));
    render_all(store, extra, RenderSlot::Text, out);
}

/// `# HELP` (if any) and `# TYPE` lines.
fn write_family_header(out: &mut Vec<u8>, fam: &Merged<'_>) {
    let name = fam.name.as_bytes();
    if let Some(help) = fam.help {
        out.extend_from_slice(b"# HELP ");
        out.extend_from_slice(name);
        out.push(b' ');
        escape_help(out, help);
        out.push(b'\n');
    }
    out.extend_from_slice(b"# TYPE ");
    out.extend_from_slice(name);
    out.extend_from_slice(match fam.ty {
        COUNTER => b" counter\n".as_slice(),
        GAUGE => b" gauge\n",
        SUMMARY => b" summary\n",
        HISTOGRAM | GAUGE_HISTOGRAM => b" histogram\n",
        _ => b" untyped\n",
    });
}

/// The line(s) of one sample, rendered according to the type `ty` of its source family.
fn write_sample_text(out: &mut Vec<u8>, scratch: &mut Vec<u8>, name: &[u8], ty: i32, m: &Metric) {
    match ty {
        SUMMARY => write_summary(out, scratch, name, m),
        HISTOGRAM | GAUGE_HISTOGRAM => write_histogram(out, scratch, name, m),
        _ => {
            out.extend_from_slice(name);
            if !m.label.is_empty() {
                out.push(b'{');
                write_label_pairs(out, &m.label);
                out.push(b'}');
            }
            out.push(b' ');
            write_text(out, scalar_value(m, ty));
            out.push(b'\n');
        }
    }
}

/// The value of a counter, gauge or untyped sample: the field of `ty` first, then Go's
/// `getValue` order (gauge, counter, untyped), else 0.
fn scalar_value(m: &Metric, ty: i32) -> f64 {
    pick_scalar(
        ty,
        m.gauge.as_ref().map(|g| g.value()),
        m.counter.as_ref().map(|c| c.value()),
        m.untyped.as_ref().map(|u| u.value()),
    )
}

/// [`scalar_value`] from the values of the gauge, counter and untyped fields (`None` when the
/// field is absent).
fn pick_scalar(ty: i32, gauge: Option<f64>, counter: Option<f64>, untyped: Option<f64>) -> f64 {
    let own = match ty {
        COUNTER => counter,
        GAUGE => gauge,
        UNTYPED => untyped,
        _ => None,
    };
    own.or(gauge).or(counter).or(untyped).unwrap_or(0.0)
}

/// `n1="v1",n2="v2"` (no braces).
fn write_label_pairs(out: &mut Vec<u8>, labels: &[LabelPair]) {
    for (i, lp) in labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(lp.name().as_bytes());
        out.extend_from_slice(b"=\"");
        escape_label_value(out, lp.value());
        out.push(b'"');
    }
}

/// One line `name suffix {labels[,extra="v"]} value` with pre-rendered `labels`.
fn write_line(
    out: &mut Vec<u8>,
    name: &[u8],
    suffix: &[u8],
    labels: &[u8],
    extra: Option<(&[u8], f64)>,
    value: f64,
) {
    out.extend_from_slice(name);
    out.extend_from_slice(suffix);
    match extra {
        Some((lname, lvalue)) => {
            out.push(b'{');
            if !labels.is_empty() {
                out.extend_from_slice(labels);
                out.push(b',');
            }
            out.extend_from_slice(lname);
            out.extend_from_slice(b"=\"");
            write_text(out, lvalue);
            out.push(b'"');
            out.push(b'}');
        }
        None if !labels.is_empty() => {
            out.push(b'{');
            out.extend_from_slice(labels);
            out.push(b'}');
        }
        None => {}
    }
    out.push(b' ');
    write_text(out, value);
    out.push(b'\n');
}

fn write_summary(out: &mut Vec<u8>, scratch: &mut Vec<u8>, name: &[u8], m: &Metric) {
    scratch.clear();
    write_label_pairs(scratch, &m.label);
    let default = Summary::default();
    let s = m.summary.as_deref().unwrap_or(&default);
    for q in &s.quantile {
        write_line(
            out,
            name,
            b"",
            scratch,
            Some((b"quantile", q.quantile())),
            q.value(),
        );
    }
    write_line(out, name, b"_sum", scratch, None, s.sample_sum());
    write_line(out, name, b"_count", scratch, None, s.sample_count() as f64);
}

fn write_histogram(out: &mut Vec<u8>, scratch: &mut Vec<u8>, name: &[u8], m: &Metric) {
    scratch.clear();
    write_label_pairs(scratch, &m.label);
    let default = Histogram::default();
    let h = m.histogram.as_deref().unwrap_or(&default);
    let mut inf_seen = false;
    for b in &h.bucket {
        let v = match b.cumulative_count_float() {
            0.0 => b.cumulative_count() as f64,
            v => v,
        };
        write_line(
            out,
            name,
            b"_bucket",
            scratch,
            Some((b"le", b.upper_bound())),
            v,
        );
        if b.upper_bound() == f64::INFINITY {
            inf_seen = true;
        }
    }
    let count = match h.sample_count_float() {
        0.0 => h.sample_count() as f64,
        v => v,
    };
    if !inf_seen {
        write_line(
            out,
            name,
            b"_bucket",
            scratch,
            Some((b"le", f64::INFINITY)),
            count,
        );
    }
    write_line(out, name, b"_sum", scratch, None, h.sample_sum());
    write_line(out, name, b"_count", scratch, None, count);
}

/// HELP text: `\` → `\\`, newline → `\n`.
fn escape_help(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    if !b.iter().any(|&c| c == b'\\' || c == b'\n') {
        out.extend_from_slice(b);
        return;
    }
    for &c in b {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            c => out.push(c),
        }
    }
}

/// Label value: `\` → `\\`, `"` → `\"`, newline → `\n`.
fn escape_label_value(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    if !b.iter().any(|&c| c == b'\\' || c == b'\n' || c == b'"') {
        out.extend_from_slice(b);
        return;
    }
    for &c in b {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' => out.extend_from_slice(b"\\\""),
            c => out.push(c),
        }
    }
}

/// Renders the same merged, sorted families as [`text`] as a delimited protobuf stream
/// (`varint length + io.prometheus.client.MetricFamily`, repeated), appending to `out`. Each
/// family carries the chosen name, HELP (absent when none is chosen), type and the sorted
/// metrics as stored (a metric's native-histogram fields included).
pub fn protobuf(store: &GroupStore, extra: &[MetricFamily], out: &mut Vec<u8>) {
    out.reserve(store.series_count().saturating_mul(64));
    render_all(store, extra, RenderSlot::Protobuf, out);
}

/// The header of merged family `fam` in the format of `slot`, followed by `payload_len`
/// bytes of rendered samples: its `# HELP`/`# TYPE` lines, or the start of its protobuf
/// message.
fn write_header(slot: RenderSlot, out: &mut Vec<u8>, fam: &Merged<'_>, payload_len: usize) {
    match slot {
        RenderSlot::Text => write_family_header(out, fam),
        RenderSlot::Protobuf => write_family_proto_header(out, fam, payload_len),
    }
}

/// The start of one delimited `MetricFamily` message: its length, name, HELP and type; the
/// `payload_len` bytes of pre-encoded metrics (field 4) that complete it follow.
fn write_family_proto_header(out: &mut Vec<u8>, fam: &Merged<'_>, payload_len: usize) {
    let name = fam.name.as_bytes();
    let ty = i64::from(fam.ty) as u64;
    let mut len = 1 + prost::length_delimiter_len(name.len()) + name.len();
    if let Some(h) = fam.help {
        len += 1 + prost::length_delimiter_len(h.len()) + h.len();
    }
    len += 1 + prost::encoding::encoded_len_varint(ty);
    len += payload_len;

    prost::encoding::encode_varint(len as u64, out);
    // Field 1 (name), length-delimited.
    out.push(0x0A);
    prost::encoding::encode_varint(name.len() as u64, out);
    out.extend_from_slice(name);
    if let Some(h) = fam.help {
        // Field 2 (help).
        out.push(0x12);
        prost::encoding::encode_varint(h.len() as u64, out);
        out.extend_from_slice(h.as_bytes());
    }
    // Field 3 (type), varint; negative enum values sign-extend as in protobuf.
    out.push(0x18);
    prost::encoding::encode_varint(ty, out);
}

/// Renders the `/api/v1/metrics` body, appending to `out`:
///
/// ```text
/// {"status":"success","data":[<group>,...]}
/// ```
///
/// Groups come in grouping-key order (deliberate: upstream's order is Go map order, i.e.
/// random). Everything else is upstream's `json.Marshal` output, byte for byte:
///
/// * `<group>` is one JSON object (a Go map, so keys sorted byte-wise) holding `"labels"`
///   (the grouping key as an object), `"last_push_successful"` (bool) and one key per stored
///   family name, the two synthetic ones included. A family named `labels` or
///   `last_push_successful` replaces that key, as in upstream (quirk Q9).
/// * a family is `{"time_stamp":..,"type":..,"help":..,"metrics":[..]}` (struct order):
///   `time_stamp` is RFC3339Nano in UTC of the write that stored it (`0001-01-01T00:00:00Z`
///   for never), `type` the enum name (`COUNTER`, …, a number for an unknown value), `help`
///   omitted when empty, `metrics` in stored order (`[]` when none).
/// * a metric is a Go map (keys sorted): `labels` (object) plus, by family type,
///   `value` (counter, gauge, untyped and anything else), `count`/`quantiles`/`sum`
///   (summary) or `buckets`/`count`/`sum` (histogram). Every number is a string formatted
///   with Go's `fmt.Sprint` ([`crate::float::go_sprint`]; counts as integers unless the
///   `_float` count is positive); `quantiles` and `buckets` map `fmt.Sprint(bound)` to the
///   value. Native-histogram buckets are not rendered (upstream v1.8+ renders them in a
///   different encoding; v1.5.1 ignores them as pgw does).
/// * strings are escaped as Go does: `"`, `\`, `\n`, `\r`, `\t`, other control characters
///   as `\u00XX`, and `<`, `>`, `&`, U+2028, U+2029 as `\u003c`, `\u003e`, `\u0026`,
///   `\u2028`, `\u2029`.
pub fn api_metrics_json(store: &GroupStore, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"status\":\"success\",\"data\":[");
    for (i, (key, group)) in store.groups().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_group_json(out, key.pairs(), group);
    }
    out.extend_from_slice(b"]}");
}

enum GroupEntry<'a> {
    Labels,
    LastPush,
    Family(&'a StoredFamily),
}

fn write_group_json(out: &mut Vec<u8>, key: &[(String, String)], group: &Group) {
    let mut entries: Vec<(&str, GroupEntry<'_>)> = Vec::with_capacity(group.families.len() + 2);
    if !group.families.contains_key("labels") {
        entries.push(("labels", GroupEntry::Labels));
    }
    if !group.families.contains_key("last_push_successful") {
        entries.push(("last_push_successful", GroupEntry::LastPush));
    }
    for (name, sf) in &group.families {
        entries.push((name.as_str(), GroupEntry::Family(sf)));
    }
    entries.sort_by(|a, b| a.0.cmp(b.0));

    out.push(b'{');
    for (i, (name, entry)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, name);
        out.push(b':');
        match entry {
            GroupEntry::Labels => {
                write_json_object(out, key.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }
            GroupEntry::LastPush => out.extend_from_slice(if group.last_push_successful() {
                b"true".as_slice()
            } else {
                b"false"
            }),
            GroupEntry::Family(sf) => write_family_json(out, sf),
        }
    }
    out.push(b'}');
}

fn write_family_json(out: &mut Vec<u8>, sf: &StoredFamily) {
    let fam = &sf.family();
    let ty = ty_of(fam);
    out.extend_from_slice(b"{\"time_stamp\":\"");
    write_rfc3339_nano(out, sf.time_ns);
    out.extend_from_slice(b"\",\"type\":\"");
    match ty {
        COUNTER => out.extend_from_slice(b"COUNTER"),
        GAUGE => out.extend_from_slice(b"GAUGE"),
        SUMMARY => out.extend_from_slice(b"SUMMARY"),
        UNTYPED => out.extend_from_slice(b"UNTYPED"),
        HISTOGRAM => out.extend_from_slice(b"HISTOGRAM"),
        GAUGE_HISTOGRAM => out.extend_from_slice(b"GAUGE_HISTOGRAM"),
        n => {
            if n < 0 {
                out.push(b'-');
            }
            write_u64(out, u64::from(n.unsigned_abs()));
        }
    }
    out.push(b'"');
    if let Some(help) = fam.help.as_deref().filter(|h| !h.is_empty()) {
        out.extend_from_slice(b",\"help\":");
        write_json_str(out, help);
    }
    out.extend_from_slice(b",\"metrics\":[");
    for (i, m) in fam.metric.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_metric_json(out, m, ty);
    }
    out.extend_from_slice(b"]}");
}

fn write_metric_json(out: &mut Vec<u8>, m: &Metric, ty: i32) {
    // Keys in Go's sorted order: buckets, count, labels, quantiles, sum, value.
    match ty {
        SUMMARY => {
            let default = Summary::default();
            let s = m.summary.as_deref().unwrap_or(&default);
            out.extend_from_slice(b"{\"count\":\"");
            write_u64(out, s.sample_count());
            out.extend_from_slice(b"\",\"labels\":");
            write_metric_labels(out, &m.label);
            out.extend_from_slice(b",\"quantiles\":");
            let mut q: Vec<(String, String)> = s
                .quantile
                .iter()
                .map(|q| (go_sprint(q.quantile()), go_sprint(q.value())))
                .collect();
            write_string_map(out, &mut q);
            out.extend_from_slice(b",\"sum\":\"");
            write_go(out, s.sample_sum());
            out.extend_from_slice(b"\"}");
        }
        HISTOGRAM => {
            let default = Histogram::default();
            let h = m.histogram.as_deref().unwrap_or(&default);
            out.extend_from_slice(b"{\"buckets\":");
            let mut b: Vec<(String, String)> = h
                .bucket
                .iter()
                .map(|b| {
                    let count = if b.cumulative_count_float() > 0.0 {
                        go_sprint(b.cumulative_count_float())
                    } else {
                        b.cumulative_count().to_string()
                    };
                    (go_sprint(b.upper_bound()), count)
                })
                .collect();
            write_string_map(out, &mut b);
            out.extend_from_slice(b",\"count\":\"");
            if h.sample_count_float() > 0.0 {
                write_go(out, h.sample_count_float());
            } else {
                write_u64(out, h.sample_count());
            }
            out.extend_from_slice(b"\",\"labels\":");
            write_metric_labels(out, &m.label);
            out.extend_from_slice(b",\"sum\":\"");
            write_go(out, h.sample_sum());
            out.extend_from_slice(b"\"}");
        }
        _ => {
            out.extend_from_slice(b"{\"labels\":");
            write_metric_labels(out, &m.label);
            out.extend_from_slice(b",\"value\":\"");
            let v = m
                .gauge
                .as_ref()
                .map(|g| g.value())
                .or_else(|| m.counter.as_ref().map(|c| c.value()))
                .or_else(|| m.untyped.as_ref().map(|u| u.value()))
                .unwrap_or(0.0);
            write_go(out, v);
            out.extend_from_slice(b"\"}");
        }
    }
}

/// A metric's labels as a Go `map[string]string`: sorted by name, a later duplicate name
/// wins.
fn write_metric_labels(out: &mut Vec<u8>, labels: &[LabelPair]) {
    if labels.windows(2).all(|w| w[0].name() < w[1].name()) {
        write_json_object(out, labels.iter().map(|lp| (lp.name(), lp.value())));
    } else {
        let mut v: Vec<(String, String)> = labels
            .iter()
            .map(|lp| (lp.name().to_owned(), lp.value().to_owned()))
            .collect();
        write_string_map(out, &mut v);
    }
}

/// A Go `map[string]string` built by assigning `entries` in order: sorted by key, the last
/// assignment of a key wins.
fn write_string_map(out: &mut Vec<u8>, entries: &mut [(String, String)]) {
    // Stable sort keeps assignment order within a key; keep the last of each run.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut i = 0;
    out.push(b'{');
    let mut first = true;
    while i < entries.len() {
        let mut j = i;
        while j + 1 < entries.len() && entries[j + 1].0 == entries[i].0 {
            j += 1;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_json_str(out, &entries[j].0);
        out.push(b':');
        write_json_str(out, &entries[j].1);
        i = j + 1;
    }
    out.push(b'}');
}

/// A JSON object of string pairs, already sorted and unique.
fn write_json_object<'a>(out: &mut Vec<u8>, pairs: impl Iterator<Item = (&'a str, &'a str)>) {
    out.push(b'{');
    for (i, (k, v)) in pairs.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, k);
        out.push(b':');
        write_json_str(out, v);
    }
    out.push(b'}');
}

/// A JSON string as Go's `encoding/json` writes it (HTML-safe).
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let esc: Option<&[u8]> = match c {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f | b'<' | b'>' | b'&' => Some(b""),
            // U+2028 and U+2029 are E2 80 A8 / E2 80 A9.
            0xE2 if b.get(i + 1) == Some(&0x80) && matches!(b.get(i + 2), Some(0xA8 | 0xA9)) => {
                Some(b"")
            }
            _ => None,
        };
        match esc {
            None => i += 1,
            Some(e) => {
                out.extend_from_slice(&b[start..i]);
                if !e.is_empty() {
                    out.extend_from_slice(e);
                    i += 1;
                } else if c == 0xE2 {
                    out.extend_from_slice(if b[i + 2] == 0xA8 {
                        b"\\u2028"
                    } else {
                        b"\\u2029"
                    });
                    i += 3;
                } else {
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(c >> 4)]);
                    out.push(HEX[usize::from(c & 0xF)]);
                    i += 1;
                }
                start = i;
            }
        }
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// Appends `time_ns` (ns since the Unix epoch, UTC) as Go's `time.Time` JSON text without the
/// quotes: RFC3339 with the fraction of a second trimmed of trailing zeros (RFC3339Nano),
/// e.g. `2026-11-21T15:13:41.38601046Z`. `0` is Go's zero time, `0001-01-01T00:00:00Z`.
pub fn write_rfc3339_nano(out: &mut Vec<u8>, time_ns: i64) {
    if time_ns == 0 {
        out.extend_from_slice(b"0001-01-01T00:00:00Z");
        return;
    }
    let secs = time_ns.div_euclid(1_000_000_000);
    let nanos = time_ns.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = crate::civil::civil_from_days(days);
    // The i64 nanosecond range spans the years 1677..=2262: always four digits.
    push_2(out, (y / 100) as u32);
    push_2(out, (y % 100) as u32);
    out.push(b'-');
    push_2(out, m);
    out.push(b'-');
    push_2(out, d);
    out.push(b'T');
    push_2(out, sod / 3600);
    out.push(b':');
    push_2(out, sod / 60 % 60);
    out.push(b':');
    push_2(out, sod % 60);
    if nanos != 0 {
        let mut digits = [0u8; 9];
        let mut n = nanos;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        let len = 9 - digits.iter().rev().take_while(|&&d| d == b'0').count();
        out.push(b'.');
        out.extend_from_slice(&digits[..len]);
    }
    out.push(b'Z');
}

fn push_2(out: &mut Vec<u8>, v: u32) {
    out.push(b'0' + (v / 10 % 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::key::GroupingKey;
    use crate::pb::{Bucket, Counter, Gauge, Quantile, Untyped};
    use crate::store::synthetic;
    use proptest::prelude::*;

    fn key(pairs: &[(&str, &str)]) -> GroupingKey {
        GroupingKey::from_pairs(pairs.iter().copied())
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
        let mut v: Vec<LabelPair> = pairs
            .iter()
            .map(|(n, v)| LabelPair {
                name: Some(n.to_string()),
                value: Some(v.to_string()),
            })
            .collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    fn gauge(l: &[(&str, &str)], v: f64) -> Metric {
        Metric {
            label: labels(l),
            gauge: Some(Gauge { value: Some(v) }),
            ..Default::default()
        }
    }

    fn counter(l: &[(&str, &str)], v: f64) -> Metric {
        Metric {
            label: labels(l),
            counter: Some(Counter {
                value: Some(v),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn untyped(l: &[(&str, &str)], v: f64) -> Metric {
        Metric {
            label: labels(l),
            untyped: Some(Untyped { value: Some(v) }),
            ..Default::default()
        }
    }

    fn hist(l: &[(&str, &str)], buckets: &[(f64, u64)], count: u64, sum: f64) -> Metric {
        Metric {
            label: labels(l),
            histogram: Some(Box::new(Histogram {
                sample_count: Some(count),
                sample_sum: Some(sum),
                bucket: buckets
                    .iter()
                    .map(|&(ub, c)| Bucket {
                        upper_bound: Some(ub),
                        cumulative_count: Some(c),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn summary(l: &[(&str, &str)], qs: &[(f64, f64)], count: u64, sum: f64) -> Metric {
        Metric {
            label: labels(l),
            summary: Some(Box::new(Summary {
                sample_count: Some(count),
                sample_sum: Some(sum),
                quantile: qs
                    .iter()
                    .map(|&(q, v)| Quantile {
                        quantile: Some(q),
                        value: Some(v),
                    })
                    .collect(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn fam(name: &str, help: Option<&str>, ty: i32, metric: Vec<Metric>) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            help: help.map(Into::into),
            r#type: Some(ty),
            metric,
            unit: None,
        }
    }

    /// A store from (key, family, time_ns) records.
    fn store(records: Vec<(GroupingKey, MetricFamily, i64)>) -> GroupStore {
        GroupStore::restore(
            0,
            records.into_iter().map(|(k, f, t)| {
                let name = f.name().to_string();
                (k, name, StoredFamily::new(t, &f))
            }),
        )
    }

    fn text_of(s: &GroupStore, extra: &[MetricFamily]) -> String {
        let mut out = Vec::new();
        text(s, extra, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn json_of(s: &GroupStore) -> String {
        let mut out = Vec::new();
        api_metrics_json(s, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn empty() {
        let s = GroupStore::new();
        assert_eq!(text_of(&s, &[]), "");
        assert_eq!(json_of(&s), r#"{"status":"success","data":[]}"#);
        let mut out = Vec::new();
        protobuf(&s, &[], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn ordering() {
        let j = key(&[("job", "j")]);
        let k = key(&[("job", "k")]);
        let s = store(vec![
            (
                j.clone(),
                fam("zz", None, GAUGE, vec![gauge(&[("job", "j")], 1.0)]),
                0,
            ),
            (
                j.clone(),
                fam(
                    "m",
                    None,
                    GAUGE,
                    vec![
                        gauge(&[("a", "2"), ("job", "j")], 2.0),
                        gauge(&[("a", ""), ("instance", ""), ("job", "j")], 3.0),
                        gauge(&[("b", "1"), ("job", "j")], 4.0),
                        gauge(&[("instance", ""), ("job", "j")], 5.0),
                    ],
                ),
                0,
            ),
            (
                k.clone(),
                fam(
                    "m",
                    None,
                    GAUGE,
                    vec![gauge(&[("a", "1"), ("job", "k")], 6.0), gauge(&[], 7.0)],
                ),
                0,
            ),
            (
                k.clone(),
                fam(
                    "a_first",
                    None,
                    COUNTER,
                    vec![counter(&[("job", "k")], 0.5)],
                ),
                0,
            ),
            (
                k.clone(),
                fam(
                    "B_upper",
                    None,
                    UNTYPED,
                    vec![untyped(&[("job", "k")], -0.0)],
                ),
                0,
            ),
        ]);
        let want = "\
# TYPE B_upper untyped
B_upper{job=\"k\"} 0
# TYPE a_first counter
a_first{job=\"k\"} 0.5
# TYPE m gauge
m 7
m{instance=\"\",job=\"j\"} 5
m{b=\"1\",job=\"j\"} 4
m{a=\"1\",job=\"k\"} 6
m{a=\"2\",job=\"j\"} 2
m{a=\"\",instance=\"\",job=\"j\"} 3
# TYPE zz gauge
zz{job=\"j\"} 1
";
        assert_eq!(text_of(&s, &[]), want);
    }

    #[test]
    fn ties_are_broken_by_names_then_group() {
        // Same values, different names; then identical series in two groups (only possible
        // with the consistency check off).
        let s = store(vec![
            (
                key(&[("job", "b")]),
                fam(
                    "m",
                    None,
                    GAUGE,
                    vec![gauge(&[("y", "v")], 2.0), gauge(&[("x", "v")], 1.0)],
                ),
                0,
            ),
            (
                key(&[("job", "a")]),
                fam("m", None, GAUGE, vec![gauge(&[("y", "v")], 3.0)]),
                0,
            ),
        ]);
        assert_eq!(
            text_of(&s, &[]),
            "# TYPE m gauge\nm{x=\"v\"} 1\nm{y=\"v\"} 3\nm{y=\"v\"} 2\n"
        );
    }

    #[test]
    fn help_rule() {
        let s = store(vec![
            (
                key(&[("job", "a")]),
                fam("m", None, GAUGE, vec![gauge(&[("job", "a")], 1.0)]),
                0,
            ),
            (
                key(&[("job", "b")]),
                fam("m", Some(""), GAUGE, vec![gauge(&[("job", "b")], 2.0)]),
                0,
            ),
            (
                key(&[("job", "c")]),
                fam(
                    "m",
                    Some("help two"),
                    GAUGE,
                    vec![gauge(&[("job", "c")], 3.0)],
                ),
                0,
            ),
            (
                key(&[("job", "d")]),
                fam(
                    "m",
                    Some("help one"),
                    GAUGE,
                    vec![gauge(&[("job", "d")], 4.0)],
                ),
                0,
            ),
            (
                key(&[("job", "a")]),
                fam("n", None, GAUGE, vec![gauge(&[("job", "a")], 1.0)]),
                0,
            ),
        ]);
        let t = text_of(&s, &[]);
        assert!(
            t.starts_with("# HELP m help two\n# TYPE m gauge\nm{job=\"a\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("# TYPE n gauge\nn{job=\"a\"} 1\n"), "{t}");
        assert!(!t.contains("# HELP n"), "{t}");

        // extra wins, for HELP and TYPE, and is merged.
        let extra = [fam(
            "m",
            Some("own help"),
            UNTYPED,
            vec![untyped(&[("x", "y")], 9.0)],
        )];
        let t = text_of(&s, &extra);
        assert!(
            t.starts_with(
                "# HELP m own help\n# TYPE m untyped\nm{job=\"a\"} 1\nm{job=\"b\"} 2\nm{job=\"c\"} 3\nm{job=\"d\"} 4\nm{x=\"y\"} 9\n"
            ),
            "{t}"
        );
        // extra without HELP: no HELP line.
        let extra = [fam("m", None, GAUGE, vec![])];
        let t = text_of(&s, &extra);
        assert!(t.starts_with("# TYPE m gauge\n"), "{t}");
        // extra alone, and extra-only names.
        let extra = [
            fam("pgw_up", Some("Up."), GAUGE, vec![gauge(&[], 1.0)]),
            fam("empty", Some("x"), GAUGE, vec![]),
        ];
        let t = text_of(&GroupStore::new(), &extra);
        assert_eq!(t, "# HELP pgw_up Up.\n# TYPE pgw_up gauge\npgw_up 1\n");
    }

    #[test]
    fn histograms_and_summaries() {
        let k = key(&[("job", "j")]);
        let s = store(vec![
            (
                k.clone(),
                fam(
                    "h",
                    Some("A histogram."),
                    HISTOGRAM,
                    vec![
                        hist(&[("job", "j")], &[(0.5, 1), (1.0, 2), (1e3, 3)], 4, 12.5),
                        hist(
                            &[("job", "j"), ("x", "1")],
                            &[(1.0, 2), (f64::INFINITY, 5)],
                            5,
                            1e6,
                        ),
                        hist(&[("job", "j"), ("x", "2")], &[], 0, 0.0),
                    ],
                ),
                0,
            ),
            (
                k.clone(),
                fam(
                    "sx",
                    None,
                    SUMMARY,
                    vec![
                        summary(
                            &[("instance", ""), ("job", "le"), ("zz", "1")],
                            &[(0.5, 1.5), (0.99, f64::NAN)],
                            1234567,
                            -1.0,
                        ),
                        summary(&[], &[], 0, 0.0),
                    ],
                ),
                0,
            ),
        ]);
        let want = r#"# HELP h A histogram.
# TYPE h histogram
h_bucket{job="j",le="0.5"} 1
h_bucket{job="j",le="1"} 2
h_bucket{job="j",le="1000"} 3
h_bucket{job="j",le="+Inf"} 4
h_sum{job="j"} 12.5
h_count{job="j"} 4
h_bucket{job="j",x="1",le="1"} 2
h_bucket{job="j",x="1",le="+Inf"} 5
h_sum{job="j",x="1"} 1e+06
h_count{job="j",x="1"} 5
h_bucket{job="j",x="2",le="+Inf"} 0
h_sum{job="j",x="2"} 0
h_count{job="j",x="2"} 0
# TYPE sx summary
sx_sum 0
sx_count 0
sx{instance="",job="le",zz="1",quantile="0.5"} 1.5
sx{instance="",job="le",zz="1",quantile="0.99"} NaN
sx_sum{instance="",job="le",zz="1"} -1
sx_count{instance="",job="le",zz="1"} 1.234567e+06
"#;
        assert_eq!(text_of(&s, &[]), want);
    }

    #[test]
    fn float_counts_and_gauge_histogram() {
        let mut m = hist(&[], &[(1.0, 0)], 0, 2.0);
        if let Some(h) = m.histogram.as_mut() {
            h.sample_count_float = Some(2.5);
            h.bucket[0].cumulative_count_float = Some(1.5);
        }
        let s = store(vec![(
            key(&[("job", "j")]),
            fam("gh", None, GAUGE_HISTOGRAM, vec![m]),
            0,
        )]);
        assert_eq!(
            text_of(&s, &[]),
            "# TYPE gh histogram\ngh_bucket{le=\"1\"} 1.5\ngh_bucket{le=\"+Inf\"} 2.5\ngh_sum 2\ngh_count 2.5\n"
        );
    }

    #[test]
    fn escaping() {
        let s = store(vec![(
            key(&[("job", "j")]),
            fam(
                "e",
                Some("a \\ b\nc \"q\""),
                COUNTER,
                vec![counter(&[("job", "j"), ("v", "x\\y\"z\nw")], 1.0)],
            ),
            0,
        )]);
        assert_eq!(
            text_of(&s, &[]),
            "# HELP e a \\\\ b\\nc \"q\"\n# TYPE e counter\ne{job=\"j\",v=\"x\\\\y\\\"z\\nw\"} 1\n"
        );
    }

    #[test]
    fn empty_families_are_omitted_and_missing_type_is_counter() {
        let mut no_type = fam("t", None, 0, vec![counter(&[], 2.0)]);
        no_type.r#type = None;
        let s = store(vec![
            (
                key(&[("job", "j")]),
                fam("empty", Some("h"), GAUGE, vec![]),
                0,
            ),
            (
                key(&[("job", "k")]),
                fam("empty", Some("h"), GAUGE, vec![]),
                0,
            ),
            (key(&[("job", "j")]), no_type, 0),
            (
                key(&[("job", "j")]),
                fam("odd", None, 42, vec![untyped(&[], 3.0)]),
                0,
            ),
        ]);
        assert_eq!(
            text_of(&s, &[]),
            "# TYPE odd untyped\nodd 3\n# TYPE t counter\nt 2\n"
        );
    }

    #[test]
    fn synthetic_families_render_like_the_reference() {
        let k = key(&[("job", "j")]);
        let s = store(vec![
            (
                k.clone(),
                synthetic(crate::store::PUSH_TIME, &k, 1_795_274_102_585_044_700),
                1_795_274_102_585_044_700,
            ),
            (
                k.clone(),
                synthetic(crate::store::PUSH_FAILURE_TIME, &k, 0),
                0,
            ),
        ]);
        assert_eq!(
            text_of(&s, &[]),
            "# HELP push_failure_time_seconds Last Unix time when changing this group in the Pushgateway failed.
# TYPE push_failure_time_seconds gauge
push_failure_time_seconds{instance=\"\",job=\"j\"} 0
# HELP push_time_seconds Last Unix time when changing this group in the Pushgateway succeeded.
# TYPE push_time_seconds gauge
push_time_seconds{instance=\"\",job=\"j\"} 1.7952741025850446e+09
"
        );
    }

    fn sample_store() -> GroupStore {
        let a = key(&[("job", "a")]);
        let b = key(&[("job", "b"), ("instance", "i")]);
        let mut recs = Vec::new();
        for (k, t) in [
            (&a, 1_700_000_000_123_000_000i64),
            (&b, 1_700_000_001_000_000_000),
        ] {
            recs.push((k.clone(), synthetic(crate::store::PUSH_TIME, k, t), t));
            recs.push((
                k.clone(),
                synthetic(crate::store::PUSH_FAILURE_TIME, k, 0),
                0,
            ));
        }
        let with_inst = |k: &GroupingKey, extra: &[(&str, &str)]| {
            let mut l: Vec<(&str, &str)> = k
                .pairs()
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            if k.get("instance").is_none() {
                l.push(("instance", ""));
            }
            l.extend_from_slice(extra);
            l.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let la = with_inst(&a, &[("x", "1")]);
        let la: Vec<(&str, &str)> = la.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let lb = with_inst(&b, &[]);
        let lb: Vec<(&str, &str)> = lb.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        recs.push((
            a.clone(),
            fam(
                "m",
                Some("some <help> & more"),
                GAUGE,
                vec![gauge(&la, 1e-7)],
            ),
            1_700_000_000_123_000_000,
        ));
        recs.push((
            b.clone(),
            fam("m", None, GAUGE, vec![gauge(&lb, 42.0)]),
            1_700_000_001_000_000_000,
        ));
        recs.push((
            a.clone(),
            fam(
                "h",
                None,
                HISTOGRAM,
                vec![hist(&la, &[(0.5, 1), (1.0, 2), (f64::INFINITY, 3)], 3, 2.5)],
            ),
            1_700_000_000_123_000_000,
        ));
        recs.push((
            a.clone(),
            fam(
                "s",
                None,
                SUMMARY,
                vec![summary(&la, &[(0.9, 4.0), (0.5, -0.0)], 7, 8.5)],
            ),
            1_700_000_000_123_000_000,
        ));
        recs.push((
            b.clone(),
            fam("labels", None, UNTYPED, vec![untyped(&lb, -1.0)]),
            1_700_000_001_000_000_000,
        ));
        recs.push((
            b.clone(),
            fam("c", None, COUNTER, vec![counter(&lb, 1234567.0)]),
            1_700_000_001_000_000_000,
        ));
        store(recs)
    }

    #[test]
    fn json_shape() {
        let want = concat!(
            r#"{"status":"success","data":["#,
            // Group {instance="i",job="b"} (grouping-key order: "instance" < "job"): the family "labels" replaces the key (Q9).
            r#"{"c":{"time_stamp":"2023-11-14T22:13:21Z","type":"COUNTER","metrics":[{"labels":{"instance":"i","job":"b"},"value":"1.234567e+06"}]},"#,
            r#""labels":{"time_stamp":"2023-11-14T22:13:21Z","type":"UNTYPED","metrics":[{"labels":{"instance":"i","job":"b"},"value":"-1"}]},"#,
            r#""last_push_successful":true,"#,
            r#""m":{"time_stamp":"2023-11-14T22:13:21Z","type":"GAUGE","metrics":[{"labels":{"instance":"i","job":"b"},"value":"42"}]},"#,
            r#""push_failure_time_seconds":{"time_stamp":"0001-01-01T00:00:00Z","type":"GAUGE","help":"Last Unix time when changing this group in the Pushgateway failed.","metrics":[{"labels":{"instance":"i","job":"b"},"value":"0"}]},"#,
            r#""push_time_seconds":{"time_stamp":"2023-11-14T22:13:21Z","type":"GAUGE","help":"Last Unix time when changing this group in the Pushgateway succeeded.","metrics":[{"labels":{"instance":"i","job":"b"},"value":"1.700000001e+09"}]}},"#,
            // Group {job="a"}: keys sorted, families and fixed keys mixed.
            r#"{"h":{"time_stamp":"2023-11-14T22:13:20.123Z","type":"HISTOGRAM","metrics":[{"buckets":{"+Inf":"3","0.5":"1","1":"2"},"count":"3","labels":{"instance":"","job":"a","x":"1"},"sum":"2.5"}]},"#,
            r#""labels":{"job":"a"},"last_push_successful":true,"#,
            r#""m":{"time_stamp":"2023-11-14T22:13:20.123Z","type":"GAUGE","help":"some \u003chelp\u003e \u0026 more","metrics":[{"labels":{"instance":"","job":"a","x":"1"},"value":"1e-07"}]},"#,
            r#""push_failure_time_seconds":{"time_stamp":"0001-01-01T00:00:00Z","type":"GAUGE","help":"Last Unix time when changing this group in the Pushgateway failed.","metrics":[{"labels":{"instance":"","job":"a"},"value":"0"}]},"#,
            r#""push_time_seconds":{"time_stamp":"2023-11-14T22:13:20.123Z","type":"GAUGE","help":"Last Unix time when changing this group in the Pushgateway succeeded.","metrics":[{"labels":{"instance":"","job":"a"},"value":"1.7000000001230001e+09"}]},"#,
            r#""s":{"time_stamp":"2023-11-14T22:13:20.123Z","type":"SUMMARY","metrics":[{"count":"7","labels":{"instance":"","job":"a","x":"1"},"quantiles":{"0.5":"-0","0.9":"4"},"sum":"8.5"}]}}"#,
            r#"]}"#
        );
        let got = json_of(&sample_store());
        assert_eq!(got, want);
        // And it is valid JSON.
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn json_details() {
        // Failed last push, empty family, duplicates in maps (last wins), float counts, an
        // unknown type, no type (COUNTER).
        let k = key(&[("job", "j<&>")]);
        let mut h = hist(&[], &[(1.0, 1), (1.0, 2)], 2, 1.0);
        if let Some(x) = h.histogram.as_mut() {
            x.sample_count_float = Some(2.5);
            x.bucket.push(Bucket {
                upper_bound: Some(2.0),
                cumulative_count_float: Some(0.5),
                ..Default::default()
            });
        }
        let mut dup = gauge(&[], 3.0);
        dup.label = vec![
            LabelPair {
                name: Some("b".into()),
                value: Some("1".into()),
            },
            LabelPair {
                name: Some("a".into()),
                value: Some("2".into()),
            },
            LabelPair {
                name: Some("b".into()),
                value: Some("3".into()),
            },
        ];
        let mut no_type = fam("nt", None, 0, vec![counter(&[], 1.0)]);
        no_type.r#type = None;
        let s = store(vec![
            (k.clone(), synthetic(crate::store::PUSH_TIME, &k, 5), 5),
            (
                k.clone(),
                synthetic(crate::store::PUSH_FAILURE_TIME, &k, 6),
                6,
            ),
            (k.clone(), fam("e", Some(""), GAUGE, vec![]), -1),
            (k.clone(), fam("h", None, HISTOGRAM, vec![h]), 1),
            (k.clone(), fam("g", None, GAUGE, vec![dup]), 1),
            (
                k.clone(),
                fam("u", None, 9, vec![untyped(&[], f64::INFINITY)]),
                1,
            ),
            (
                k.clone(),
                fam("gh", None, GAUGE_HISTOGRAM, vec![hist(&[], &[], 1, 1.0)]),
                1,
            ),
            (k.clone(), no_type, 1),
        ]);
        let got = json_of(&s);
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        let g = &v["data"][0];
        assert_eq!(g["last_push_successful"], false);
        assert_eq!(g["labels"]["job"], "j<&>");
        assert!(
            got.contains(r#""labels":{"job":"j\u003c\u0026\u003e"}"#),
            "{got}"
        );
        assert_eq!(
            g["e"].to_string(),
            r#"{"metrics":[],"time_stamp":"1969-12-31T23:59:59.999999999Z","type":"GAUGE"}"#
        );
        assert!(
            got.contains(
                r#""e":{"time_stamp":"1969-12-31T23:59:59.999999999Z","type":"GAUGE","metrics":[]}"#
            ),
            "{got}"
        );
        assert!(
            got.contains(r#"{"buckets":{"1":"2","2":"0.5"},"count":"2.5","labels":{},"sum":"1"}"#),
            "{got}"
        );
        assert!(
            got.contains(r#"{"labels":{"a":"2","b":"3"},"value":"3"}"#),
            "{got}"
        );
        assert!(got.contains(r#""u":{"time_stamp":"1970-01-01T00:00:00.000000001Z","type":"9","metrics":[{"labels":{},"value":"+Inf"}]}"#), "{got}");
        assert!(got.contains(r#""gh":{"time_stamp":"1970-01-01T00:00:00.000000001Z","type":"GAUGE_HISTOGRAM","metrics":[{"labels":{},"value":"0"}]}"#), "{got}");
        assert!(got.contains(r#""nt":{"time_stamp":"1970-01-01T00:00:00.000000001Z","type":"COUNTER","metrics":[{"labels":{},"value":"1"}]}"#), "{got}");
    }

    #[test]
    fn json_strings() {
        let mut out = Vec::new();
        write_json_str(
            &mut out,
            "a\"b\\c\nd\re\tf\u{1}\u{8}\u{c}\u{1f}<>&\u{2028}\u{2029}\u{7f}é😀\u{2027}",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#""a\"b\\c\nd\re\tf\u0001\u0008\u000c\u001f\u003c\u003e\u0026\u2028\u2029"#
                .to_string()
                + "\u{7f}é😀\u{2027}\""
        );
    }

    #[test]
    fn rfc3339() {
        let f = |ns: i64| {
            let mut o = Vec::new();
            write_rfc3339_nano(&mut o, ns);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(f(0), "0001-01-01T00:00:00Z");
        assert_eq!(f(1), "1970-01-01T00:00:00.000000001Z");
        assert_eq!(f(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(f(1_000_000_000), "1970-01-01T00:00:01Z");
        assert_eq!(f(1_700_000_000_123_000_000), "2023-11-14T22:13:20.123Z");
        assert_eq!(f(1_709_164_800_500_000_000), "2024-02-29T00:00:00.5Z");
        assert_eq!(f(951_782_400_000_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(f(4_107_542_399_000_000_000), "2100-02-28T23:59:59Z");
        assert_eq!(f(1_795_274_102_585_044_700), "2026-11-21T15:15:02.5850447Z");
        assert_eq!(f(i64::MAX), "2262-04-11T23:47:16.854775807Z");
        assert_eq!(f(i64::MIN), "1677-09-21T00:12:43.145224192Z");
        // Every day boundary agrees with a naive day-by-day walk.
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for day in 0..200_000i64 {
            assert_eq!(crate::civil::civil_from_days(day), (y, m, d));
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let dim = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ][m as usize - 1];
            d += 1;
            if d > dim {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn protobuf_matches_text_merge() {
        use prost::Message as _;
        let s = sample_store();
        let extra = [fam(
            "m",
            Some("own"),
            GAUGE,
            vec![gauge(&[("z", "1")], 5.0)],
        )];
        let mut out = Vec::new();
        protobuf(&s, &extra, &mut out);
        let mut buf = out.as_slice();
        let mut fams = Vec::new();
        while !buf.is_empty() {
            fams.push(MetricFamily::decode_length_delimited(&mut buf).unwrap());
        }
        let names: Vec<&str> = fams.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "c",
                "h",
                "labels",
                "m",
                "push_failure_time_seconds",
                "push_time_seconds",
                "s"
            ]
        );
        let m = &fams[3];
        assert_eq!(m.help(), "own");
        assert_eq!(m.r#type, Some(GAUGE));
        let vals: Vec<f64> = m
            .metric
            .iter()
            .map(|x| x.gauge.as_ref().unwrap().value())
            .collect();
        assert_eq!(vals, [5.0, 42.0, 1e-7]);
        assert_eq!(fams[0].help, None);
        assert_eq!(fams[4].help(), crate::store::PUSH_FAILURE_TIME_HELP);
        // The metrics are the stored ones, byte for byte.
        let stored = &s.get(&key(&[("job", "a")])).unwrap().families["h"]
            .family()
            .metric[0];
        assert_eq!(&fams[1].metric[0], stored);
        // A negative enum value round-trips.
        let t = store(vec![(
            key(&[("job", "j")]),
            fam("neg", None, -3, vec![untyped(&[], 1.0)]),
            0,
        )]);
        let mut out = Vec::new();
        protobuf(&t, &[], &mut out);
        let f = MetricFamily::decode_length_delimited(out.as_slice()).unwrap();
        assert_eq!(f.r#type, Some(-3));
        assert_eq!(f.metric.len(), 1);
    }

    #[test]
    fn deterministic() {
        let a = sample_store();
        // The same records restored in reverse order.
        let mut recs = Vec::new();
        for (k, g) in a.groups() {
            for (n, sf) in &g.families {
                recs.push((k.clone(), n.clone(), sf.clone()));
            }
        }
        recs.reverse();
        let b = GroupStore::restore(0, recs);
        let extra = [fam("pgw_x", Some("x"), GAUGE, vec![gauge(&[], 1.0)])];
        for (x, y) in [(&a, &a), (&a, &b)] {
            assert_eq!(text_of(x, &extra), text_of(y, &extra));
            assert_eq!(json_of(x), json_of(y));
            let (mut p, mut q) = (Vec::new(), Vec::new());
            protobuf(x, &extra, &mut p);
            protobuf(y, &extra, &mut q);
            assert_eq!(p, q);
        }
    }

    #[test]
    fn appends_to_out() {
        let s = sample_store();
        let mut out = b"prefix\n".to_vec();
        text(&s, &[], &mut out);
        assert!(out.starts_with(b"prefix\n# TYPE c counter\n"));
    }

    fn arb_value() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(1.0),
            Just(-1.0),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            any::<f64>().prop_filter("no NaN", |f| !f.is_nan()),
            -1e7..1e7f64,
        ]
    }

    fn arb_metric(ty: i32, nlabels: usize) -> impl Strategy<Value = Metric> {
        let lbls = proptest::collection::vec("[a-zA-Z0-9 ._-]{0,6}", nlabels);
        let v = arb_value();
        let buckets = proptest::collection::vec((arb_value(), 0u64..1000), 0..4);
        let qs = proptest::collection::vec((0.0..1.0f64, arb_value()), 0..3);
        (lbls, v, buckets, qs, 0u64..1_000_000).prop_map(move |(lv, v, b, q, c)| {
            let names = ["aa", "bb", "cc", "dd"];
            let l: Vec<(&str, &str)> = lv
                .iter()
                .enumerate()
                .map(|(i, v)| (names[i], v.as_str()))
                .collect();
            match ty {
                COUNTER => counter(&l, v),
                GAUGE => gauge(&l, v),
                UNTYPED => untyped(&l, v),
                SUMMARY => summary(&l, &q, c, v),
                _ => hist(&l, &b, c, v),
            }
        })
    }

    fn arb_family() -> impl Strategy<Value = (String, i32, Vec<Metric>)> {
        (
            "[a-z][a-z0-9_]{0,5}",
            prop_oneof![Just(0), Just(1), Just(2), Just(3), Just(4)],
            0usize..4,
        )
            .prop_flat_map(|(name, ty, nl)| {
                (
                    Just(name),
                    Just(ty),
                    proptest::collection::vec(arb_metric(ty, nl), 0..5),
                )
            })
    }

    /// What prometheus-parse makes of the samples of one metric.
    fn parsed_samples(ty: i32, m: &Metric) -> usize {
        match ty {
            // Buckets collapse into one sample; _sum and _count are untyped samples.
            HISTOGRAM => 3,
            SUMMARY => usize::from(!m.summary.as_ref().unwrap().quantile.is_empty()) + 2,
            _ => 1,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn output_parses(groups in proptest::collection::vec(proptest::collection::vec(arb_family(), 0..4), 1..4)) {
            // Families of one name share a type (as the consistency check ensures); label
            // sets are made distinct by a per-group label.
            let mut types = std::collections::BTreeMap::new();
            let mut recs = Vec::new();
            let mut expected = 0usize;
            let mut series = std::collections::BTreeSet::new();
            for (gi, fams) in groups.iter().enumerate() {
                let gname = format!("g{gi}");
                let k = key(&[("job", &gname)]);
                let mut seen = std::collections::BTreeSet::new();
                for (name, ty, metrics) in fams {
                    let ty = *types.entry(name.clone()).or_insert(*ty);
                    if !seen.insert(name.clone()) { continue; }
                    let mut ms = Vec::new();
                    for (mi, mut m) in metrics.iter().cloned().enumerate() {
                        // Rebuild with the family's type, then add distinguishing labels.
                        let v = scalar_value(&m, ty);
                        if matches!(ty, COUNTER | GAUGE | UNTYPED) {
                            m = match ty { COUNTER => counter(&[], v), GAUGE => gauge(&[], v), _ => untyped(&[], v) }
                                .clone();
                        }
                        if (ty == SUMMARY && m.summary.is_none()) || (ty == HISTOGRAM && m.histogram.is_none()) {
                            continue;
                        }
                        let old = std::mem::take(&mut m.label);
                        let mut l = labels(&[("job", &gname), ("zi", &mi.to_string())]);
                        l.extend(old);
                        l.sort_by(|a, b| a.name().cmp(b.name()));
                        expected += parsed_samples(ty, &m);
                        series.insert((name.clone(), format!("{l:?}")));
                        m.label = l;
                        ms.push(m);
                    }
                    recs.push((k.clone(), fam(name, Some("some help"), ty, ms), 0));
                }
            }
            let s = store(recs);
            let t = text_of(&s, &[]);
            let scrape = prometheus_parse::Scrape::parse(t.lines().map(|l| Ok(l.to_string()))).unwrap();
            prop_assert_eq!(scrape.samples.len(), expected, "{}", t);
            // Deterministic and line-oriented.
            prop_assert_eq!(&text_of(&s, &[]), &t);
            prop_assert!(t.is_empty() || t.ends_with('\n'));
        }

        #[test]
        fn never_panics_on_odd_input(fams in proptest::collection::vec(arb_family(), 0..6), tys in proptest::collection::vec(-2i32..8, 6)) {
            // Metrics whose fields do not match the family type, odd types.
            let mut recs = Vec::new();
            for (i, (name, _, metrics)) in fams.into_iter().enumerate() {
                let ty = tys[i % tys.len()];
                recs.push((key(&[("job", &format!("j{i}"))]), fam(&name, None, ty, metrics), i as i64));
            }
            let s = store(recs);
            let mut out = Vec::new();
            text(&s, &[], &mut out);
            protobuf(&s, &[], &mut out);
            let mut j = Vec::new();
            api_metrics_json(&s, &mut j);
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&j).is_ok());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The keyed sort gives exactly the order of a plain stable sort with `cmp_metrics`
        /// over (extra, groups in key order, stored order).
        #[test]
        fn sort_matches_reference(
            groups in proptest::collection::vec(
                proptest::collection::vec(
                    (proptest::collection::vec(("[ab]", "[a\\x00b]{0,3}"), 0..3), proptest::option::of(-2i64..2)),
                    0..6,
                ),
                1..5,
            )
        ) {
            let mut recs = Vec::new();
            let mut all: Vec<Metric> = Vec::new();
            for (gi, ms) in groups.iter().enumerate() {
                let mut metrics = Vec::new();
                for (li, (ls, ts)) in ms.iter().enumerate() {
                    let mut m = gauge(&[], (gi * 100 + li) as f64);
                    m.label = ls
                        .iter()
                        .map(|(n, v)| LabelPair { name: Some(n.clone()), value: Some(v.clone()) })
                        .collect();
                    m.timestamp_ms = *ts;
                    metrics.push(m);
                }
                all.extend(metrics.iter().cloned());
                recs.push((key(&[("job", &format!("g{gi}"))]), fam("m", None, GAUGE, metrics), 0));
            }
            let s = store(recs);
            let fams = holder_families(&s, "m");
            let parts: Vec<Part<'_>> = parts_of("m", &fams).collect();
            let mut sorter = Sorter::default();
            let mut got = Vec::new();
            for_each_merged(
                &parts,
                &mut sorter,
                |buf, _, _, m| write_text(buf, scalar_value(m, GAUGE)),
                |_, sorter| got.extend(sorter.payloads().map(|p| String::from_utf8(p.to_vec()).unwrap())),
            );
            // Groups are in key order g0 < g1 < ..., which is push order here.
            all.sort_by(cmp_metrics);
            let want: Vec<String> = all.iter().map(|m| {
                let mut v = Vec::new();
                write_text(&mut v, scalar_value(m, GAUGE));
                String::from_utf8(v).unwrap()
            }).collect();
            prop_assert_eq!(got, want);
        }
    }

    /// Every family rendered by the plain merge (decode every holder, sort all samples), no
    /// cache involved: what the run-based plans must reproduce byte for byte.
    fn full_render(s: &GroupStore, slot: RenderSlot) -> Vec<u8> {
        let mut out = Vec::new();
        for name in s.family_names() {
            let fams = holder_families(s, name);
            let parts: Vec<Part<'_>> = parts_of(name, &fams).collect();
            write_parts(&parts, slot, &mut Sorter::default(), &mut out);
        }
        out
    }

    /// The label pairs and timestamp of one generated sample.
    type SampleSpec = (Vec<(String, String)>, Option<i64>);

    /// The metrics of one group's family `m`: with `own_prefix` each carries a label `a`
    /// (sorting first) whose value is the group's, so the groups' samples do not interleave
    /// and the family is served from runs; otherwise they may interleave or tie.
    fn arb_group_metrics() -> impl Strategy<Value = (bool, i32, Vec<SampleSpec>)> {
        (
            any::<bool>(),
            prop_oneof![
                Just(GAUGE),
                Just(COUNTER),
                Just(UNTYPED),
                Just(HISTOGRAM),
                Just(9)
            ],
            proptest::collection::vec(
                (
                    proptest::collection::btree_map("[bcj]", "[a\\x00b\"\\\\\n]{0,2}", 0..3)
                        .prop_map(|m| m.into_iter().collect::<Vec<_>>()),
                    proptest::option::of(-2i64..2),
                ),
                0..5,
            ),
        )
    }

    fn group_family(gi: usize, own_prefix: bool, ty: i32, ms: &[SampleSpec]) -> MetricFamily {
        let metrics = ms
            .iter()
            .enumerate()
            .map(|(li, (ls, ts))| {
                let mut pairs: Vec<(&str, &str)> =
                    ls.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                let own = format!("{gi}");
                if own_prefix {
                    pairs.push(("a", &own));
                }
                let v = (gi * 100 + li) as f64;
                let mut m = match ty {
                    COUNTER => counter(&pairs, v),
                    UNTYPED => untyped(&pairs, v),
                    HISTOGRAM => hist(&pairs, &[(1.0, li as u64)], li as u64 + 1, v),
                    // An unknown type: the value comes from gauge, then counter, then untyped.
                    9 => Metric {
                        gauge: Some(Gauge {
                            value: Some(v + 0.5),
                        }),
                        ..counter(&pairs, v)
                    },
                    _ => gauge(&pairs, v),
                };
                m.timestamp_ms = *ts;
                if li % 3 == 1 && ty != GAUGE {
                    // A sample carrying a value field its family type does not use.
                    m.gauge = Some(Gauge { value: Some(-v) });
                }
                m
            })
            .collect();
        // No HELP, an empty one, then two different ones.
        let help = format!("help {}", gi % 2);
        let help = match gi {
            0 => None,
            1 => Some(""),
            _ => Some(help.as_str()),
        };
        fam("m", help, ty, metrics)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// A family merged from per-group runs renders exactly as the plain merge, in text and
        /// protobuf, when fresh and after pushes replaced some groups' families (their runs
        /// rendered again, the others' reused).
        #[test]
        fn runs_render_like_the_plain_merge(
            groups in proptest::collection::vec(arb_group_metrics(), 1..6),
            changes in proptest::collection::vec((0usize..8, arb_group_metrics()), 0..4),
        ) {
            let mut recs = Vec::new();
            for (gi, (own, ty, ms)) in groups.iter().enumerate() {
                let k = key(&[("job", &format!("g{gi}"))]);
                recs.push((k, group_family(gi, *own, *ty, ms), gi as i64));
            }
            let mut s = store(recs);
            for round in 0..=changes.len() {
                for slot in [RenderSlot::Text, RenderSlot::Protobuf] {
                    let want = full_render(&s, slot);
                    for _ in 0..2 {
                        // Fresh (filling the caches), then from the caches.
                        let mut got = Vec::new();
                        render_all(&s, &[], slot, &mut got);
                        prop_assert_eq!(&got, &want, "{:?} after {} changes", slot, round);
                    }
                }
                if let Some((gi, (own, ty, ms))) = changes.get(round) {
                    let k = key(&[("job", &format!("g{gi}"))]);
                    let f = group_family(*gi, *own, *ty, ms);
                    s.apply(&Command::Push(crate::command::Push::new(k, true, 7, false, &[f])));
                }
            }
        }
    }

    /// A store of 100 groups × 10 families × 100 gauges (4 labels) = 100k series, plus the
    /// synthetic ones. `shared`: every group uses the same 10 family names (merged across
    /// groups); otherwise each group has its own names.
    fn perf_store(shared: bool) -> GroupStore {
        let mut recs = Vec::new();
        for g in 0..100 {
            let gname = format!("job{g}");
            let k = key(&[("job", &gname)]);
            let t = 1_700_000_000_000_000_000 + g as i64 * 1_234_567_891;
            recs.push((k.clone(), synthetic(crate::store::PUSH_TIME, &k, t), t));
            recs.push((
                k.clone(),
                synthetic(crate::store::PUSH_FAILURE_TIME, &k, 0),
                0,
            ));
            for f in 0..10 {
                let mut ms: Vec<Metric> = (0..100)
                    .map(|i| {
                        let idx = format!("{}", (i * 7919) % 100);
                        gauge(
                            &[
                                ("instance", ""),
                                ("job", &gname),
                                ("path", "/api/v1/things"),
                                ("idx", &idx),
                            ],
                            i as f64 * 1.37 + 0.001,
                        )
                    })
                    .collect();
                if !shared {
                    // As a store that keeps series sorted would hold them.
                    ms.sort_by(cmp_metrics);
                }
                let name = if shared {
                    format!("metric_family_{f}")
                } else {
                    format!("metric_family_{g}_{f}")
                };
                recs.push((k.clone(), fam(&name, Some("Some help text."), GAUGE, ms), t));
            }
        }
        store(recs)
    }

    /// `cargo test --release -p pgw-core --lib render::tests::perf -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn perf_100k_series() {
        // On-CPU time of this thread (ns), so that other load on the machine counts less.
        let cpu_ns = || -> u64 {
            std::fs::read_to_string("/proc/thread-self/schedstat")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        // schedstat has tick resolution in some VMs: average the CPU time over many runs, and
        // report the best wall-clock time too.
        let min_of = |f: &mut dyn FnMut()| {
            let n = 30;
            let c0 = cpu_ns();
            let wall = (0..n)
                .map(|_| {
                    let t0 = std::time::Instant::now();
                    f();
                    t0.elapsed()
                })
                .min()
                .unwrap();
            let cpu = std::time::Duration::from_nanos((cpu_ns() - c0) / n);
            format!("cpu avg {cpu:.1?} / wall min {wall:.1?}")
        };
        for shared in [true, false] {
            let s = perf_store(shared);
            let mut out = Vec::new();
            let text_t = min_of(&mut || {
                out.clear();
                text(&s, &[], &mut out);
            });
            let mut p = Vec::new();
            let pb_t = min_of(&mut || {
                p.clear();
                protobuf(&s, &[], &mut p);
            });
            let mut j = Vec::new();
            let json_t = min_of(&mut || {
                j.clear();
                api_metrics_json(&s, &mut j);
            });
            println!(
                "100k series, shared names {shared} (30 runs): text {text_t} ({} bytes), protobuf {pb_t} ({} bytes), json {json_t} ({} bytes)",
                out.len(),
                p.len(),
                j.len()
            );
        }
        let vals: Vec<f64> = (0..100_000)
            .map(|i| (i % 100) as f64 * 1.37 + 0.001)
            .collect();
        let mut fb = Vec::with_capacity(2_000_000);
        let float_t = min_of(&mut || {
            fb.clear();
            for &v in &vals {
                write_text(&mut fb, v);
            }
        });
        println!("100k floats: {float_t}");
    }

    /// Profiling helper: `perf record` the test binary with this filter.
    #[test]
    #[ignore]
    fn perf_text_loop() {
        let shared = std::env::var("PGW_PERF_UNIQUE").is_err();
        let s = perf_store(shared);
        let mut out = Vec::new();
        for _ in 0..60 {
            out.clear();
            text(&s, &[], &mut out);
        }
        assert!(!out.is_empty());
    }
}
