//! The group store: every group with its families, the family-name index behind the
//! incremental consistency check, and the deterministic [`GroupStore::apply`].
//!
//! Data model (spec §1): a map from [`GroupingKey`] to [`Group`]; a group maps family names to
//! [`StoredFamily`] (the family and the time of the write that stored it). Every group holds
//! the two synthetic gauges [`PUSH_TIME`] and [`PUSH_FAILURE_TIME`] as ordinary families.
//! Stored metrics are sanitised: grouping labels set from the key, `instance=""` added when
//! absent, label pairs sorted by name.

use std::collections::BTreeMap;

use crate::key::GroupingKey;
use crate::pb::MetricFamily;

/// Name of the synthetic gauge holding the last successful push time.
pub const PUSH_TIME: &str = "push_time_seconds";
/// Name of the synthetic gauge holding the last failed push time.
pub const PUSH_FAILURE_TIME: &str = "push_failure_time_seconds";
/// HELP of [`PUSH_TIME`].
pub const PUSH_TIME_HELP: &str = "Last Unix time when changing this group in the Pushgateway succeeded.";
/// HELP of [`PUSH_FAILURE_TIME`].
pub const PUSH_FAILURE_TIME_HELP: &str =
    "Last Unix time when changing this group in the Pushgateway failed.";

/// A stored family and the time of the write that stored it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredFamily {
    /// Receive time of the write that stored this family, ns since the Unix epoch; 0 means
    /// "never" (the zero time, rendered `0001-01-01T00:00:00Z` by `/api/v1/metrics`).
    pub time_ns: i64,
    /// The family, sanitised.
    pub family: MetricFamily,
}

/// One group: its families by name, including the two synthetic ones.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    /// Families by name (byte order).
    pub families: BTreeMap<String, StoredFamily>,
}

impl Group {
    /// Value of `push_time_seconds` in ns (0 = never succeeded).
    pub fn push_time_ns(&self) -> i64 {
        self.families.get(PUSH_TIME).map_or(0, |f| f.time_ns)
    }
    /// Value of `push_failure_time_seconds` in ns (0 = never failed).
    pub fn push_failure_time_ns(&self) -> i64 {
        self.families.get(PUSH_FAILURE_TIME).map_or(0, |f| f.time_ns)
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
}

/// The whole store plus its family-name index. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct GroupStore {
    groups: BTreeMap<GroupingKey, Group>,
    index: index::FamilyIndex,
    /// Monotone maximum of the push times applied so far (ns). `apply` stamps
    /// `max(clock, command time)`, so `push_time_seconds` never goes backwards whichever node
    /// took the push.
    clock_ns: i64,
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
}

mod index {
    //! The family-name index (filled in by the store implementation).
    use std::collections::{BTreeMap, BTreeSet};

    use crate::key::GroupingKey;

    #[derive(Clone, Debug, Default)]
    pub(super) struct FamilyIndex {
        pub(super) families: BTreeMap<String, Entry>,
    }

    #[derive(Clone, Debug, Default)]
    pub(super) struct Entry {
        pub(super) holders: BTreeSet<GroupingKey>,
    }

    impl FamilyIndex {
        pub(super) fn names(&self) -> impl Iterator<Item = &str> {
            self.families.keys().map(String::as_str)
        }
        pub(super) fn holders<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a GroupingKey> {
            self.families.get(name).into_iter().flat_map(|e| e.holders.iter())
        }
        pub(super) fn series_count(&self) -> usize {
            0
        }
    }
}
