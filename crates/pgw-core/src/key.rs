//! Grouping keys and the push URL grammar (spec §3).
//!
//! A grouping key is the set of labels that identifies a group; it always contains `job`.
//! Label names are unique and kept sorted by name, so two keys are equal exactly when the
//! reference Pushgateway would consider them the same group (label order in the URL is
//! irrelevant; a present-but-empty label is part of the key).

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
}

/// A malformed push or delete URL (spec §3). `Display` is the reference's message; the HTTP
/// layer answers 400 with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// `@base64` job that does not decode. The reference always prints an empty name here
    /// (quirk Q7); pgw prints the segment it got.
    #[error("invalid base64 encoding in job name {job:?}: {err}")]
    JobBase64 { job: String, err: String },
    /// An odd number of `/`-separated components after the job.
    #[error("odd number of components in label string {0:?}")]
    OddComponents(String),
    /// A label name that is not `[a-zA-Z_][a-zA-Z0-9_]*` or starts with `__`.
    #[error("improper label name {0:?}")]
    LabelName(String),
    /// An `@base64` label value that does not decode.
    #[error("invalid base64 encoding for label {name}={value:?}: {err}")]
    LabelBase64 { name: String, value: String, err: String },
    /// Empty job (only reachable through `job@base64/=`).
    #[error("job name is required")]
    JobRequired,
    /// A label value (or the job) that is not valid UTF-8 (fixes quirk Q3).
    #[error("invalid UTF-8 in value of label {0:?}")]
    NotUtf8(String),
}

/// Parses the grouping key of a push or delete URL, in the reference's order of checks.
///
/// `job` is the percent-decoded job segment, `job_base64` says whether the route was
/// `/metrics/job@base64/`, and `labels` is the percent-decoded rest of the path after the job
/// segment: empty, or starting with `/`.
pub fn parse(job: &[u8], job_base64: bool, labels: &[u8]) -> Result<GroupingKey, KeyError> {
    let _ = (job, job_base64, labels);
    todo!("key::parse")
}

impl GroupingKey {
    /// The URL path of this group's push endpoint, relative to the route prefix, e.g.
    /// `/metrics/job/j/instance/i`. Values that cannot travel as a plain path segment (empty,
    /// containing `/`, …) use the `@base64` form.
    pub fn url_path(&self) -> String {
        todo!("GroupingKey::url_path")
    }
}
