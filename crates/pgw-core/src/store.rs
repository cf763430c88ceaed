//! The group store: every group with its families, the family-name index behind the
//! incremental consistency check, and the deterministic [`GroupStore::apply`].
//!
//! Data model (spec §1): a map from [`GroupingKey`] to [`Group`]; a group maps family names to
//! [`StoredFamily`] (the family and the time of the write that stored it). Every group holds
//! the two synthetic gauges [`PUSH_TIME`] and [`PUSH_FAILURE_TIME`] as ordinary families.
//! Stored metrics are sanitised: grouping labels set from the key, `instance=""` added when
//! absent, label pairs sorted by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound;
use std::sync::{Arc, OnceLock};

use crate::command::{Command, CommandResponse, ItemResponse, Op, Payload, Push};
use crate::key::GroupingKey;
use crate::pb::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use crate::render::{Rendered, Run};
use crate::validate;

/// Name of the synthetic gauge holding the last successful push time.
pub const PUSH_TIME: &str = "push_time_seconds";
/// Name of the synthetic gauge holding the last failed push time.
pub const PUSH_FAILURE_TIME: &str = "push_failure_time_seconds";
/// HELP of [`PUSH_TIME`].
pub const PUSH_TIME_HELP: &str =
    "Last Unix time when changing this group in the Pushgateway succeeded.";
/// HELP of [`PUSH_FAILURE_TIME`].
pub const PUSH_FAILURE_TIME_HELP: &str =
    "Last Unix time when changing this group in the Pushgateway failed.";

/// A stored family and the time of the write that stored it.
///
/// The family is kept protobuf-encoded (the bytes that are also its persistent record), with
/// what the consistency check needs at hand: its type and the identities of its series.
/// Decoded, a series costs ~600 bytes of small allocations (a `Metric`, its label vector and
/// two strings per label); encoded it costs its ~50 protobuf bytes plus an 8-byte identity.
/// [`StoredFamily::family`] decodes it, which only a scrape of a changed family, the JSON API
/// and the whole-store check do.
#[derive(Clone)]
pub struct StoredFamily {
    /// Receive time of the write that stored this family, ns since the Unix epoch; 0 means
    /// "never" (the zero time, rendered `0001-01-01T00:00:00Z` by `/api/v1/metrics`).
    pub time_ns: i64,
    /// The family, sanitised, protobuf-encoded.
    encoded: Box<[u8]>,
    /// [`validate::series_hash`] of each metric's labels, in stored order.
    series: Box<[u64]>,
    /// [`validate::known_type`] of the family (`None`: unknown type value).
    ty: Option<MetricType>,
    /// This family rendered on its own, by [`RenderSlot`]: derived from `encoded`, filled by
    /// a scrape (see [`crate::render`]), dropped with the family when a write replaces it.
    runs: [OnceLock<Arc<Run>>; 2],
}

impl PartialEq for StoredFamily {
    /// Equal content; the render cache is derived and not compared.
    fn eq(&self, other: &Self) -> bool {
        self.time_ns == other.time_ns && self.encoded == other.encoded
    }
}

impl StoredFamily {
    /// Stores `family` (sanitised), written at `time_ns`.
    pub fn new(time_ns: i64, family: &MetricFamily) -> Self {
        use prost::Message;
        Self::with_encoded(time_ns, family, family.encode_to_vec().into())
    }

    /// Stores `family`, whose protobuf encoding is `encoded`.
    fn with_encoded(time_ns: i64, family: &MetricFamily, encoded: Box<[u8]>) -> Self {
        StoredFamily {
            time_ns,
            encoded,
            series: family
                .metric
                .iter()
                .map(|m| validate::series_hash(&m.label))
                .collect(),
            ty: validate::known_type(family).ok(),
            runs: Default::default(),
        }
    }

    /// Stores an already encoded family (a persisted record), checking that it decodes.
    fn from_encoded(time_ns: i64, encoded: &[u8]) -> Result<Self, RecordError> {
        use prost::Message;
        let family =
            MetricFamily::decode(encoded).map_err(|e| RecordError::Malformed(e.to_string()))?;
        // Keep the bytes as persisted: they are what this family encodes to.
        Ok(StoredFamily::with_encoded(time_ns, &family, encoded.into()))
    }

    /// The family, decoded.
    pub fn family(&self) -> MetricFamily {
        use prost::Message;
        // The bytes were produced by encoding a `MetricFamily` (or checked to decode as one).
        MetricFamily::decode(&*self.encoded).unwrap_or_default()
    }

    /// The family's protobuf encoding.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The family's type, when it is one of the known ones.
    pub(crate) fn known_type(&self) -> Option<MetricType> {
        self.ty
    }

    /// This family rendered on its own in the format of `slot`, if a scrape cached it.
    pub(crate) fn run(&self, slot: RenderSlot) -> Option<&Arc<Run>> {
        self.runs[slot as usize].get()
    }

    /// Caches `run`, this family rendered on its own in the format of `slot` (a no-op when
    /// one is cached already: both are renderings of the same bytes).
    pub(crate) fn set_run(&self, slot: RenderSlot, run: Arc<Run>) {
        let _ = self.runs[slot as usize].set(run);
    }
}

impl std::fmt::Debug for StoredFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredFamily")
            .field("time_ns", &self.time_ns)
            .field("family", &self.family())
            .finish()
    }
}

/// One group: its families by name, including the two synthetic ones.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    /// Families by name (byte order).
    pub families: BTreeMap<String, StoredFamily>,
}

impl Group {
    /// Value of the synthetic gauge `name`, in ns since the epoch (0 = never). A non-zero
    /// value was set by the write that stored the family, so its exact time is `time_ns`.
    fn synthetic_ns(&self, name: &str) -> i64 {
        let Some(sf) = self.families.get(name) else {
            return 0;
        };
        // Read in place: the family is one gauge, and this runs per group for the JSON API
        // and the web page.
        let value = crate::view::read_family(sf.encoded())
            .and_then(|v| v.metrics.first().and_then(|m| m.gauge))
            .unwrap_or(0.0);
        if value == 0.0 { 0 } else { sf.time_ns }
    }

    /// Value of `push_time_seconds` in ns (0 = never succeeded).
    pub fn push_time_ns(&self) -> i64 {
        self.synthetic_ns(PUSH_TIME)
    }

    /// Value of `push_failure_time_seconds` in ns (0 = never failed).
    pub fn push_failure_time_ns(&self) -> i64 {
        self.synthetic_ns(PUSH_FAILURE_TIME)
    }

    /// `last_push_successful` of `/api/v1/metrics`: failure time ≤ success time.
    pub fn last_push_successful(&self) -> bool {
        self.push_failure_time_ns() <= self.push_time_ns()
    }
}

/// What an applied command changed, so a persistent state machine can write just that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing changed.
    None,
    /// A group was created or changed: `families` lists every family name whose stored value
    /// changed (write the group's current value for it, or delete it when the group no longer
    /// holds that name).
    Group {
        /// The group.
        key: GroupingKey,
        /// Changed family names, sorted.
        families: Vec<String>,
    },
    /// A group was removed entirely.
    GroupRemoved(GroupingKey),
    /// Every group was removed.
    Wiped,
    /// The whole store was replaced ([`Command::Replace`]): rewrite every group.
    Replaced,
    /// The effects of the commands of a [`Command::Batch`], in order (none is
    /// [`Effect::None`]).
    Many(Vec<Effect>),
}

/// The whole store plus its family-name index. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct GroupStore {
    groups: BTreeMap<GroupingKey, Group>,
    index: FamilyIndex,
    /// Set when an unchecked push (`--push.disable-consistency-check`) was applied: the
    /// store may then be inconsistent and [`GroupStore::inconsistencies`] runs the full
    /// check. Derived state; not part of snapshots.
    maybe_inconsistent: bool,
    /// Monotone maximum of the push times applied so far (ns). `apply` stamps
    /// `max(clock, command time)`, so `push_time_seconds` never goes backwards whichever node
    /// took the push.
    clock_ns: i64,
    /// Identifies the current content within this process (see [`GroupStore::generation`]).
    /// Node-local; not part of snapshots.
    generation: u64,
}

/// Number of renderings `GroupStore::rendered` computed (cache misses).
static RENDER_MISSES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Source of [`GroupStore::generation`] values, unique within the process.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl GroupStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Groups in grouping-key order.
    pub fn groups(&self) -> impl Iterator<Item = (&GroupingKey, &Group)> {
        self.groups.iter()
    }

    /// The groups whose keys lie within `bounds`, in grouping-key order (either end may be
    /// walked first). Bounds need not be stored keys: a page that starts after a key removed
    /// since still starts in the right place.
    pub fn range<'a>(
        &'a self,
        bounds: (Bound<&GroupingKey>, Bound<&GroupingKey>),
    ) -> impl DoubleEndedIterator<Item = (&'a GroupingKey, &'a Group)> + 'a {
        self.groups.range::<GroupingKey, _>(bounds)
    }

    /// One group.
    pub fn get(&self, key: &GroupingKey) -> Option<&Group> {
        self.groups.get(key)
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether the store holds no group.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Every family name held by at least one group, in byte order.
    pub fn family_names(&self) -> impl Iterator<Item = &str> {
        self.index.names()
    }

    /// The groups holding family `name`, in grouping-key order, with their stored family.
    pub fn holders<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a GroupingKey, &'a StoredFamily)> + 'a {
        self.index.holders(name).filter_map(move |key| {
            let fam = self.groups.get(key)?.families.get(name)?;
            Some((key, fam))
        })
    }

    /// The monotone push clock (ns), see [`GroupStore::apply`].
    pub fn clock_ns(&self) -> i64 {
        self.clock_ns
    }

    /// Total number of stored series (samples), synthetic ones included.
    pub fn series_count(&self) -> usize {
        self.index.series_count()
    }

    /// A number that changes whenever the store may have changed: every [`GroupStore::apply`]
    /// and every restore draws a new one from a process-wide counter, so two stores of one
    /// process with equal generations hold the same groups (0 is the empty store). For caches
    /// of whole rendered bodies; never replicated.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The rendering of family `name` merged across every group holding it, in the format of
    /// `slot`: computed by `render` on the first call after the family last changed in any
    /// group, then served from memory until the next change (every write that adds, replaces
    /// or removes the family in some group drops it). `None` when no group holds `name`.
    ///
    /// A scrape of a store that did not change since the previous one copies bytes; after a
    /// push only the families it touched are rendered again. `render` must be a pure function
    /// of the store (so the cached bytes are those a fresh rendering would produce).
    pub(crate) fn rendered(
        &self,
        name: &str,
        slot: RenderSlot,
        render: impl FnOnce() -> Rendered,
    ) -> Option<&Rendered> {
        let entry = self.index.families.get(name)?;
        Some(entry.rendered[slot as usize].get_or_init(|| {
            RENDER_MISSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            render()
        }))
    }

    /// How many family renderings `GroupStore::rendered` computed in this process so far
    /// (cache misses). A caller can tell from two readings whether a rendering did any work.
    pub fn render_cache_misses() -> u64 {
        RENDER_MISSES.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Errors decoding persisted store records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Empty record.
    #[error("empty store record")]
    Empty,
    /// A format version this build does not know.
    #[error("unsupported store record format version {0}")]
    Version(u8),
    /// The record is corrupt.
    #[error("malformed store record: {0}")]
    Malformed(String),
}

/// Format version of persisted records ([`encode_family`], snapshots, keys).
pub const RECORD_FORMAT: u8 = 1;

/// Encodes a stored family as one persistent record: version byte, `time_ns`, protobuf.
pub fn encode_family(sf: &StoredFamily) -> Vec<u8> {
    // The family is kept encoded: no re-encoding here.
    let mut out = Vec::with_capacity(9 + sf.encoded.len());
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&sf.time_ns.to_be_bytes());
    out.extend_from_slice(&sf.encoded);
    out
}

/// Decodes what [`encode_family`] produced.
pub fn decode_family(bytes: &[u8]) -> Result<StoredFamily, RecordError> {
    let (&v, rest) = bytes.split_first().ok_or(RecordError::Empty)?;
    if v != RECORD_FORMAT {
        return Err(RecordError::Version(v));
    }
    let (ts, pb) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| RecordError::Malformed("truncated family record".into()))?;
    StoredFamily::from_encoded(i64::from_be_bytes(*ts), pb)
}

impl GroupingKey {
    /// A prefix-free byte encoding of the key (version byte + postcard), used as a storage key
    /// prefix. Deterministic; not order-preserving.
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![RECORD_FORMAT];
        match postcard::to_extend(self.pairs(), out) {
            Ok(v) => v,
            Err(_) => vec![RECORD_FORMAT],
        }
    }

    /// The key as an opaque, URL-safe token (base64url of [`GroupingKey::encode`], no
    /// padding), e.g. for a page cursor. [`GroupingKey::from_cursor`] reverses it.
    pub fn cursor(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.encode())
    }

    /// Decodes a [`GroupingKey::cursor`] token.
    ///
    /// # Errors
    /// [`RecordError`] when `token` is not base64url, not a key encoding, carries trailing
    /// bytes, or names no `job` (every stored key has one).
    pub fn from_cursor(token: &str) -> Result<GroupingKey, RecordError> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|e| RecordError::Malformed(format!("not base64url: {e}")))?;
        let (key, rest) = GroupingKey::decode_prefix(&bytes)?;
        if !rest.is_empty() {
            return Err(RecordError::Malformed(
                "trailing bytes after grouping key".into(),
            ));
        }
        if key.get("job").is_none() {
            return Err(RecordError::Malformed("grouping key without job".into()));
        }
        Ok(key)
    }

    /// Decodes the key at the start of `bytes`, returning it and the remaining bytes.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(GroupingKey, &[u8]), RecordError> {
        let (&v, rest) = bytes.split_first().ok_or(RecordError::Empty)?;
        if v != RECORD_FORMAT {
            return Err(RecordError::Version(v));
        }
        let (pairs, rest): (Vec<(String, String)>, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|e| RecordError::Malformed(e.to_string()))?;
        Ok((GroupingKey::from_pairs(pairs), rest))
    }
}

/// The message prefix of every rejected push (spec §5.1).
pub const REJECT_PREFIX: &str =
    "pushed metrics are invalid or inconsistent with existing metrics: ";

/// Self-metric reason of a push refused by `--push.max-groups`.
pub const MAX_GROUPS_REASON: &str = "max_groups";

/// The message of a push refused by `--push.max-groups`.
fn max_groups_message(max: u64, key: &GroupingKey) -> String {
    let labels: Vec<String> = key
        .pairs()
        .iter()
        .take(8)
        .map(|(k, v)| format!("{k}={:?}", crate::policy::clip(v, 64)))
        .collect();
    let more = if key.pairs().len() > 8 { ",..." } else { "" };
    format!(
        "the store already holds {max} groups, the limit set by --push.max-groups; this push \
         would create another group ({{{}{more}}}): delete groups that are no longer needed or \
         raise --push.max-groups",
        labels.join(",")
    )
}

const TIMESTAMP_ERROR: &str = "pushed metrics must not have timestamps";

impl GroupStore {
    /// Applies one command: the only way the store changes. Pure: reads no clock and no
    /// randomness, iterates only ordered maps. Returns the client-visible outcome and what
    /// changed (for persistence).
    ///
    /// A checked push is validated against the family-name index, so its cost grows with the
    /// size of the push (and of the families it replaces), not with the size of the store.
    pub fn apply(&mut self, cmd: &Command) -> (CommandResponse, Effect) {
        self.generation = next_generation();
        match cmd {
            // Flat by construction: a batch item is never a batch, so this does not recurse.
            Command::Batch(items) => {
                let mut responses = Vec::with_capacity(items.len());
                let mut effects = Vec::with_capacity(items.len());
                for item in items {
                    let (response, effect) = self.apply_op(item.op());
                    responses.push(response.into_item().unwrap_or_else(|| {
                        ItemResponse::Rejected("internal error: nested batch response".into())
                    }));
                    if effect != Effect::None {
                        effects.push(effect);
                    }
                }
                (CommandResponse::Batch(responses), Effect::Many(effects))
            }
            Command::Push(p) => self.apply_op(Op::Push(p, None)),
            Command::LimitedPush(l) => self.apply_op(Op::Push(&l.push, Some(l.max_groups))),
            Command::Delete { key } => self.apply_op(Op::Delete(key)),
            Command::Wipe => self.apply_op(Op::Wipe),
            Command::Replace { snapshot } => self.apply_op(Op::Replace(snapshot)),
        }
    }

    /// Applies one command that is not a batch; never answers with a batch response.
    fn apply_op(&mut self, op: Op<'_>) -> (CommandResponse, Effect) {
        match op {
            Op::Delete(key) => match self.groups.remove(key) {
                Some(group) => {
                    for (name, sf) in &group.families {
                        self.index.remove(key, name, sf);
                    }
                    (CommandResponse::Applied, Effect::GroupRemoved(key.clone()))
                }
                None => (CommandResponse::Applied, Effect::None),
            },
            Op::Wipe => {
                self.groups.clear();
                self.index = FamilyIndex::default();
                self.maybe_inconsistent = false;
                (CommandResponse::Applied, Effect::Wiped)
            }
            Op::Push(push, max_groups) => {
                if let Some(max) = max_groups
                    && !self.groups.contains_key(&push.key)
                    && self.groups.len() as u64 >= max
                {
                    // Decided from the command and the store only: every replica alike.
                    return (
                        CommandResponse::Refused {
                            reason: MAX_GROUPS_REASON.into(),
                            message: max_groups_message(max, &push.key),
                        },
                        Effect::None,
                    );
                }
                self.apply_push(push)
            }
            Op::Replace(snapshot) => match GroupStore::decode_snapshot(snapshot) {
                Ok(mut restored) => {
                    // The push clock stays monotone across a restore.
                    restored.clock_ns = restored.clock_ns.max(self.clock_ns);
                    *self = restored;
                    (CommandResponse::Applied, Effect::Replaced)
                }
                Err(e) => (
                    CommandResponse::Rejected(format!("the restore data is invalid: {e}")),
                    Effect::None,
                ),
            },
        }
    }

    fn apply_push(&mut self, push: &Push) -> (CommandResponse, Effect) {
        let t = self.clock_ns.max(push.time_ns);
        self.clock_ns = t;
        let key = &push.key;
        let mut families = match &push.payload {
            Payload::Invalid(msg) => return self.fail(key, t, msg),
            Payload::Families(bytes) => match crate::delimited::decode(bytes) {
                Ok(f) => f,
                Err(e) => return self.fail(key, t, &format!("undecodable command payload: {e}")),
            },
        };
        if families
            .iter()
            .any(|f| f.metric.iter().any(|m| m.timestamp_ms.is_some()))
        {
            return self.fail(key, t, TIMESTAMP_ERROR);
        }
        // The synthetic families always win over pushed ones of the same name.
        families.retain(|f| f.name() != PUSH_TIME && f.name() != PUSH_FAILURE_TIME);
        let mut sanitizer = validate::Sanitizer::new(key);
        for f in &mut families {
            sanitizer.sanitize(f);
        }
        if push.check {
            if let Err(msg) = self.check_push(key, push.replace, &families) {
                return self.fail(key, t, &msg);
            }
        } else {
            self.maybe_inconsistent = true;
        }
        self.commit_push(key, push.replace, families, t)
    }

    /// Records a failed push: the failure time is set (creating the group when missing, with
    /// `push_time_seconds` 0), nothing else changes. Fixes quirk Q2: a missing group is only
    /// created when its synthetic series do not collide with another group's.
    fn fail(&mut self, key: &GroupingKey, t: i64, msg: &str) -> (CommandResponse, Effect) {
        let response = CommandResponse::Rejected(format!("{REJECT_PREFIX}{msg}"));
        let mut names = vec![PUSH_FAILURE_TIME.to_string()];
        if !self.groups.contains_key(key) {
            let probe = synthetic(PUSH_TIME, key, 0);
            let collides = probe.metric.first().is_some_and(|m| {
                let h = validate::series_hash(&m.label);
                self.index.series_count_of(PUSH_TIME, h) > 0
                    || self.index.series_count_of(PUSH_FAILURE_TIME, h) > 0
            });
            if collides {
                return (response, Effect::None);
            }
            // As upstream: value 0 ("never"), stored by this write (its time_stamp).
            self.set_family(key, PUSH_TIME, t, probe);
            names.insert(0, PUSH_TIME.to_string());
        }
        self.set_family(
            key,
            PUSH_FAILURE_TIME,
            t,
            synthetic(PUSH_FAILURE_TIME, key, t),
        );
        (
            response,
            Effect::Group {
                key: key.clone(),
                families: names,
            },
        )
    }

    /// Inserts or replaces one family of a group (creating the group), keeping the index
    /// in step.
    fn set_family(&mut self, key: &GroupingKey, name: &str, time_ns: i64, family: MetricFamily) {
        let sf = StoredFamily::new(time_ns, &family);
        drop(family);
        let group = self.groups.entry(key.clone()).or_default();
        // The old family leaves the index before the new one enters it: removing it after
        // would also drop this group from the name's holders.
        if let Some(old) = group.families.remove(name) {
            self.index.remove(key, name, &old);
        }
        self.index.add(key, name, &sf);
        group.families.insert(name.to_string(), sf);
    }

    fn commit_push(
        &mut self,
        key: &GroupingKey,
        replace: bool,
        families: Vec<MetricFamily>,
        t: i64,
    ) -> (CommandResponse, Effect) {
        let mut changed: Vec<String> = Vec::new();
        if replace && let Some(group) = self.groups.get_mut(key) {
            {
                let names: Vec<String> = group
                    .families
                    .keys()
                    .filter(|n| !is_synthetic(n))
                    .cloned()
                    .collect();
                for name in names {
                    if let Some(old) = group.families.remove(&name) {
                        self.index.remove(key, &name, &old);
                    }
                    changed.push(name);
                }
            }
        }
        for family in families {
            let name = family.name().to_string();
            self.set_family(key, &name, t, family);
            changed.push(name);
        }
        self.set_family(key, PUSH_TIME, t, synthetic(PUSH_TIME, key, t));
        changed.push(PUSH_TIME.to_string());
        let has_failure = self
            .groups
            .get(key)
            .is_some_and(|g| g.families.contains_key(PUSH_FAILURE_TIME));
        if !has_failure {
            // Value 0 ("never failed"), stored by this write (its time_stamp), as upstream.
            self.set_family(
                key,
                PUSH_FAILURE_TIME,
                t,
                synthetic(PUSH_FAILURE_TIME, key, 0),
            );
            changed.push(PUSH_FAILURE_TIME.to_string());
        }
        changed.sort();
        changed.dedup();
        (
            CommandResponse::Applied,
            Effect::Group {
                key: key.clone(),
                families: changed,
            },
        )
    }

    /// The incremental consistency check (spec §6): would the store stay consistent with
    /// this push applied? Looks only at the pushed families, the families of this group they
    /// replace, and index entries of the names involved.
    fn check_push(
        &self,
        key: &GroupingKey,
        replace: bool,
        families: &[MetricFamily],
    ) -> Result<(), String> {
        let group = self.groups.get(key);
        let mut pushed: BTreeMap<&str, MetricType> = BTreeMap::new();
        let mut types = Vec::with_capacity(families.len());
        for f in families {
            let t = validate::check_family(f)?;
            validate::check_reserved(f, t)?;
            types.push(t);
        }
        for (f, t) in families.iter().zip(&types) {
            pushed.insert(f.name(), *t);
        }
        // Does this group keep family `name` after the write?
        let kept_here = |name: &str| -> Option<&StoredFamily> {
            let sf = group?.families.get(name)?;
            if pushed.contains_key(name) || (replace && !is_synthetic(name)) {
                None
            } else {
                Some(sf)
            }
        };
        // Type of family `name` after the write, if any group holds it.
        let type_after = |name: &str| -> Option<MetricType> {
            if let Some(t) = pushed.get(name) {
                return Some(*t);
            }
            if let Some(sf) = kept_here(name) {
                return sf.ty;
            }
            let mine = group.and_then(|g| g.families.get(name));
            self.index
                .type_of_others(name, mine)
                // The node's own families count as present (spec §6 item 4 against own
                // metrics), from the fixed table so every replica decides alike.
                .or_else(|| validate::reserved(name).map(|r| r.r#type))
        };
        if group.is_none() {
            let probe = synthetic(PUSH_TIME, key, 0);
            for m in &probe.metric {
                let h = validate::series_hash(&m.label);
                if self.index.series_count_of(PUSH_TIME, h) > 0 {
                    return Err(validate::duplicate_message(PUSH_TIME, &m.label));
                }
            }
        }
        for (f, &t) in families.iter().zip(&types) {
            let name = f.name();
            let mine = group.and_then(|g| g.families.get(name));
            // Type agreement with other groups.
            if let Some(other) = self.index.type_of_others(name, mine)
                && other != t
            {
                let labels = f.metric.first().map(|m| validate::fmt_labels(&m.label));
                return Err(format!(
                    "collected metric {name:?} {} is not a {} (other groups hold {name} as {})",
                    labels.unwrap_or_default(),
                    validate::type_name(other),
                    validate::type_name(other)
                ));
            }
            // Series unique across groups.
            if self.index.contains(name) {
                let replaced: SeriesSet = mine
                    .map(|sf| sf.series.iter().copied().collect())
                    .unwrap_or_default();
                for m in &f.metric {
                    let h = validate::series_hash(&m.label);
                    let count = self.index.series_count_of(name, h);
                    if count > usize::from(replaced.contains(&h)) {
                        return Err(validate::duplicate_message(name, &m.label));
                    }
                }
            }
            // Suffix collisions (client_golang checkSuffixCollisions).
            if let Some((base, suffix)) = validate::split_suffix(name) {
                match type_after(base) {
                    Some(MetricType::Summary) if suffix != "_bucket" => {
                        return Err(format!(
                            "collected metric named {name:?} collides with previously collected summary named {base:?}"
                        ));
                    }
                    Some(MetricType::Histogram) => {
                        return Err(format!(
                            "collected metric named {name:?} collides with previously collected histogram named {base:?}"
                        ));
                    }
                    _ => {}
                }
            }
            if matches!(t, MetricType::Summary | MetricType::Histogram) {
                let mut suffixes = vec!["_count", "_sum"];
                if t == MetricType::Histogram {
                    suffixes.push("_bucket");
                }
                for suffix in suffixes {
                    let other = format!("{name}{suffix}");
                    if type_after(&other).is_some() {
                        return Err(format!(
                            "collected histogram or summary named {name:?} collides with previously collected metric named {other:?}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Everything that makes the store inconsistent, as the reference's gather reports it
    /// (spec §8.5); empty when consistent. Only an unchecked push can make a store
    /// inconsistent; without one this returns at once, otherwise it checks the whole store.
    pub fn inconsistencies(&self) -> Vec<String> {
        if !self.maybe_inconsistent {
            return Vec::new();
        }
        self.full_check()
    }

    /// The whole-store check, independent of history.
    fn full_check(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for (name, entry) in &self.index.families {
            let mut family_type: Option<MetricType> = None;
            let mut seen = std::collections::HashSet::new();
            for key in &entry.holders {
                let Some(sf) = self.groups.get(key).and_then(|g| g.families.get(name)) else {
                    continue;
                };
                let family = sf.family();
                let t = match validate::check_family(&family) {
                    Ok(t) => t,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                if let Err(e) = validate::check_reserved(&family, t) {
                    errors.push(e);
                }
                let ft = *family_type.get_or_insert(t);
                for m in &family.metric {
                    if t != ft {
                        errors.push(format!(
                            "collected metric {name:?} {} is not a {}",
                            validate::fmt_labels(&m.label),
                            validate::type_name(ft)
                        ));
                    } else if !seen.insert(validate::series_hash(&m.label)) {
                        errors.push(validate::duplicate_message(name, &m.label));
                    }
                }
            }
            if family_type.is_none() {
                continue;
            }
            if let Some((base, suffix)) = validate::split_suffix(name) {
                match self.index.any_type(base).or_else(|| validate::reserved(base).map(|r| r.r#type)) {
                    Some(MetricType::Summary) if suffix != "_bucket" => errors.push(format!(
                        "collected metric named {name:?} collides with previously collected summary named {base:?}"
                    )),
                    Some(MetricType::Histogram) => errors.push(format!(
                        "collected metric named {name:?} collides with previously collected histogram named {base:?}"
                    )),
                    _ => {}
                }
            }
        }
        errors
    }

    /// Rebuilds a store from persisted records: the push clock and every stored family with
    /// its group key. Records may come in any order.
    pub fn restore(
        clock_ns: i64,
        families: impl IntoIterator<Item = (GroupingKey, String, StoredFamily)>,
    ) -> Self {
        let mut store = GroupStore {
            clock_ns,
            generation: next_generation(),
            ..Default::default()
        };
        for (key, name, sf) in families {
            let group = store.groups.entry(key.clone()).or_default();
            if let Some(old) = group.families.remove(&name) {
                store.index.remove(&key, &name, &old);
            }
            store.index.add(&key, &name, &sf);
            group.families.insert(name, sf);
        }
        store.maybe_inconsistent = true;
        store.maybe_inconsistent = !store.full_check().is_empty();
        store
    }

    /// The whole store as one snapshot blob: version byte, clock, then one record per stored
    /// family in grouping-key and family-name order (length-prefixed key, name and
    /// [`encode_family`] record). Same store, same bytes.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut out = vec![RECORD_FORMAT];
        out.extend_from_slice(&self.clock_ns.to_be_bytes());
        for (key, group) in &self.groups {
            let k = key.encode();
            for (name, sf) in &group.families {
                let rec = encode_family(sf);
                for part in [k.as_slice(), name.as_bytes(), rec.as_slice()] {
                    out.extend_from_slice(&(part.len() as u64).to_be_bytes());
                    out.extend_from_slice(part);
                }
            }
        }
        out
    }

    /// Decodes what [`GroupStore::encode_snapshot`] produced.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<GroupStore, RecordError> {
        let (&v, rest) = bytes.split_first().ok_or(RecordError::Empty)?;
        if v != RECORD_FORMAT {
            return Err(RecordError::Version(v));
        }
        let (clock, mut rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| RecordError::Malformed("truncated snapshot header".into()))?;
        let take = |rest: &mut &[u8]| -> Result<Vec<u8>, RecordError> {
            let (len, tail) = rest
                .split_first_chunk::<8>()
                .ok_or_else(|| RecordError::Malformed("truncated snapshot record".into()))?;
            let len = usize::try_from(u64::from_be_bytes(*len))
                .map_err(|_| RecordError::Malformed("snapshot record too long".into()))?;
            if tail.len() < len {
                return Err(RecordError::Malformed("truncated snapshot record".into()));
            }
            let (part, tail) = tail.split_at(len);
            *rest = tail;
            Ok(part.to_vec())
        };
        let mut records = Vec::new();
        while !rest.is_empty() {
            let k = take(&mut rest)?;
            let name = String::from_utf8(take(&mut rest)?)
                .map_err(|_| RecordError::Malformed("family name is not UTF-8".into()))?;
            let sf = decode_family(&take(&mut rest)?)?;
            let (key, tail) = GroupingKey::decode_prefix(&k)?;
            if !tail.is_empty() {
                return Err(RecordError::Malformed(
                    "trailing bytes after grouping key".into(),
                ));
            }
            records.push((key, name, sf));
        }
        Ok(GroupStore::restore(i64::from_be_bytes(*clock), records))
    }
}

fn is_synthetic(name: &str) -> bool {
    name == PUSH_TIME || name == PUSH_FAILURE_TIME
}

/// A synthetic gauge of a group: labels = the grouping key plus `instance=""` when the key
/// has no instance; value = `time_ns / 1e9` (0 for never).
pub fn synthetic(name: &str, key: &GroupingKey, time_ns: i64) -> MetricFamily {
    let help = if name == PUSH_TIME {
        PUSH_TIME_HELP
    } else {
        PUSH_FAILURE_TIME_HELP
    };
    let mut label: Vec<LabelPair> = key
        .pairs()
        .iter()
        .map(|(k, v)| LabelPair {
            name: Some(k.clone()),
            value: Some(v.clone()),
        })
        .collect();
    if key.get("instance").is_none() {
        label.push(LabelPair {
            name: Some("instance".into()),
            value: Some(String::new()),
        });
        label.sort_by(|a, b| a.name().cmp(b.name()));
    }
    MetricFamily {
        name: Some(name.to_string()),
        help: Some(help.to_string()),
        r#type: Some(MetricType::Gauge as i32),
        metric: vec![Metric {
            label,
            gauge: Some(Gauge {
                value: Some(time_ns as f64 / 1e9),
            }),
            ..Default::default()
        }],
        unit: None,
    }
}

/// Hash map keyed by an already-mixed `u64` (series hashes): no second hashing, and no
/// random state. Used for lookups only, never iterated into output.
type SeriesMap = HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>;
/// A set of series hashes, hashed like [`SeriesMap`].
type SeriesSet = std::collections::HashSet<u64, BuildHasherDefault<IdentityHasher>>;

#[derive(Default, Clone, Copy)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The index behind the incremental consistency check: for each family name, which groups
/// hold it, how many of them with each type, and a multiset of its series identities.
#[derive(Clone, Debug, Default)]
struct FamilyIndex {
    families: BTreeMap<String, IndexEntry>,
    series_total: usize,
}

#[derive(Clone, Debug, Default)]
struct IndexEntry {
    holders: BTreeSet<GroupingKey>,
    /// Number of holders by [`MetricType`] value (0..=5); unknown types are not counted.
    types: [u32; 6],
    series: SeriesMap,
    /// The family rendered across all its holders, by [`RenderSlot`], filled by the first
    /// scrape after the family last changed and dropped by every change (see
    /// `GroupStore::rendered`).
    rendered: [OnceLock<Rendered>; 2],
}

/// Which rendering of a family `GroupStore::rendered` caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderSlot {
    /// Text format 0.0.4.
    Text = 0,
    /// Delimited protobuf.
    Protobuf = 1,
}

fn type_slot(family: &StoredFamily) -> Option<usize> {
    family.ty.map(|t| t as usize)
}

impl FamilyIndex {
    fn names(&self) -> impl Iterator<Item = &str> {
        self.families.keys().map(String::as_str)
    }

    fn holders<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a GroupingKey> {
        self.families
            .get(name)
            .into_iter()
            .flat_map(|e| e.holders.iter())
    }

    fn series_count(&self) -> usize {
        self.series_total
    }

    fn contains(&self, name: &str) -> bool {
        self.families.contains_key(name)
    }

    fn series_count_of(&self, name: &str, hash: u64) -> usize {
        self.families
            .get(name)
            .and_then(|e| e.series.get(&hash))
            .map_or(0, |&c| c as usize)
    }

    /// The type of family `name` in groups other than the one holding `mine` (pass that
    /// group's current family, if it holds one, to exclude it).
    fn type_of_others(&self, name: &str, mine: Option<&StoredFamily>) -> Option<MetricType> {
        let entry = self.families.get(name)?;
        let mut types = entry.types;
        if let Some(slot) = mine.and_then(type_slot) {
            types[slot] = types[slot].saturating_sub(1);
        }
        types
            .iter()
            .position(|&c| c > 0)
            .and_then(|i| MetricType::try_from(i as i32).ok())
    }

    fn any_type(&self, name: &str) -> Option<MetricType> {
        self.type_of_others(name, None)
    }

    fn add(&mut self, key: &GroupingKey, name: &str, family: &StoredFamily) {
        let entry = self.families.entry(name.to_string()).or_default();
        entry.rendered = Default::default();
        entry.holders.insert(key.clone());
        if let Some(slot) = type_slot(family) {
            entry.types[slot] += 1;
        }
        for &h in family.series.iter() {
            *entry.series.entry(h).or_insert(0) += 1;
        }
        self.series_total += family.series.len();
    }

    fn remove(&mut self, key: &GroupingKey, name: &str, family: &StoredFamily) {
        let Some(entry) = self.families.get_mut(name) else {
            return;
        };
        entry.rendered = Default::default();
        entry.holders.remove(key);
        if let Some(slot) = type_slot(family) {
            entry.types[slot] = entry.types[slot].saturating_sub(1);
        }
        for h in family.series.iter() {
            if let Some(c) = entry.series.get_mut(h) {
                *c -= 1;
                if *c == 0 {
                    entry.series.remove(h);
                }
            }
        }
        self.series_total = self.series_total.saturating_sub(family.series.len());
        if entry.holders.is_empty() {
            self.families.remove(name);
        }
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
