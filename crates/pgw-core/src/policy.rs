//! What a node admits as a write: the checks that run **before** a command is proposed,
//! written once and shared by the HTTP API and the cluster port's `ForwardWrite`.
//!
//! The HTTP layer builds a command from a request it parsed itself, then calls
//! [`check_push`] on it (the optional limits and the payload bound). The leader, taking a
//! command another node forwarded, trusts nothing it decoded and calls [`check_command`]: the
//! same checks plus what the HTTP layer guarantees by construction (a canonical grouping key,
//! a payload that decodes, a wipe only with the admin API, no unchecked push unless the node
//! allows them, no restore, a bounded batch). Everything that depends on the store (the
//! consistency check, `--push.max-groups`) runs in [`crate::store::GroupStore::apply`], so every
//! replica decides alike.
//!
//! A refused command changes nothing and is answered with a [`Refusal`]: a reason (the
//! self-metric label) and a message that names the rule and, for a limit, its flag.

use crate::command::{Command, Op, Payload, Push};
use crate::key::GroupingKey;
use crate::pb::MetricFamily;

/// Most commands in one [`Command::Batch`] (the HTTP layer's group commit never builds more).
pub const MAX_BATCH: usize = 512;

/// Longest [`Payload::Invalid`] message accepted in a forwarded command.
pub const MAX_INVALID_MESSAGE: usize = 64 * 1024;

/// How much larger than the body it was parsed from a push's payload (its families
/// re-encoded as delimited protobuf) may be. The text format's densest sample (`a 1\n`, 4
/// bytes) encodes to at most 19 bytes; a unit test checks the bound on such bodies.
pub const PAYLOAD_EXPANSION: usize = 8;

/// The optional limits on pushes (`0`/`None`: unlimited, the default, as upstream).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// `--push.max-series`: samples in one push.
    pub max_series: Option<u64>,
    /// `--push.max-labels-per-series`: labels of one sample once stored (its own, the
    /// grouping labels and `instance`).
    pub max_labels_per_series: Option<u64>,
    /// `--push.max-label-value-bytes`: bytes of one label value (grouping labels included).
    pub max_label_value_bytes: Option<u64>,
    /// `--push.max-groups`: groups in the store (checked in `apply`; see
    /// [`Command::LimitedPush`]).
    pub max_groups: Option<u64>,
}

/// What a node admits: its flags that bear on writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `--web.enable-admin-api`: a wipe is admitted only with it.
    pub admin_api: bool,
    /// `!--push.disable-consistency-check`: when set, a push with `check=false` is refused.
    pub check_consistency: bool,
    /// `--push.max-body-bytes`.
    pub max_body_bytes: usize,
    /// The optional limits.
    pub limits: Limits,
}

impl Default for Policy {
    /// Upstream's defaults: no admin API, checked pushes, 64 MiB bodies, no limits.
    fn default() -> Self {
        Policy {
            admin_api: false,
            check_consistency: true,
            max_body_bytes: 64 << 20,
            limits: Limits::default(),
        }
    }
}

impl Policy {
    /// Largest payload of one push: [`PAYLOAD_EXPANSION`] × `--push.max-body-bytes`.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_body_bytes.saturating_mul(PAYLOAD_EXPANSION)
    }

    /// Largest encoded command another node may forward: a batch of small writes closed at
    /// the group-commit budget (4 MiB) plus one push of the largest payload, and headroom
    /// for keys and the envelope. The cluster port's message limit derives from it.
    pub fn max_command_bytes(&self) -> usize {
        self.max_payload_bytes()
            .saturating_add(BATCH_BUDGET)
            .saturating_add(1 << 20)
    }
}

/// The group-commit budget of one batch: the HTTP layer closes a batch once the encoded
/// sizes of its commands reach this.
pub const BATCH_BUDGET: usize = 4 << 20;

/// Why a command was refused before it was proposed (or, for `max_groups`, by `apply`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A grouping key that the URL grammar cannot produce.
    InvalidKey,
    /// A wipe at a node without `--web.enable-admin-api`.
    AdminApiDisabled,
    /// A restore sent as a forwarded write (restores go through the admin service).
    RestoreNotForwardable,
    /// A push with `check=false` at a node that checks consistency.
    UncheckedPush,
    /// A payload larger than the body limit allows.
    PayloadTooLarge,
    /// A payload that does not decode.
    UndecodablePayload,
    /// A batch of more than [`MAX_BATCH`] commands.
    BatchTooLarge,
    /// `--push.max-series`.
    MaxSeries,
    /// `--push.max-labels-per-series`.
    MaxLabelsPerSeries,
    /// `--push.max-label-value-bytes`.
    MaxLabelValueBytes,
    /// `--push.max-groups`.
    MaxGroups,
}

impl Reason {
    /// Every reason, for self-metrics that show them all from the start.
    pub const ALL: [Reason; 11] = [
        Reason::InvalidKey,
        Reason::AdminApiDisabled,
        Reason::RestoreNotForwardable,
        Reason::UncheckedPush,
        Reason::PayloadTooLarge,
        Reason::UndecodablePayload,
        Reason::BatchTooLarge,
        Reason::MaxSeries,
        Reason::MaxLabelsPerSeries,
        Reason::MaxLabelValueBytes,
        Reason::MaxGroups,
    ];

    /// The self-metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidKey => "invalid_key",
            Reason::AdminApiDisabled => "admin_api_disabled",
            Reason::RestoreNotForwardable => "restore_not_forwardable",
            Reason::UncheckedPush => "unchecked_push",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::UndecodablePayload => "undecodable_payload",
            Reason::BatchTooLarge => "batch_too_large",
            Reason::MaxSeries => "max_series",
            Reason::MaxLabelsPerSeries => "max_labels_per_series",
            Reason::MaxLabelValueBytes => "max_label_value_bytes",
            Reason::MaxGroups => crate::store::MAX_GROUPS_REASON,
        }
    }

    /// The reason of a label value [`Reason::as_str`] produced.
    pub fn from_label(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this is one of the optional limits (counted by `pgw_push_rejected_total`).
    pub fn is_limit(self) -> bool {
        matches!(
            self,
            Reason::MaxSeries
                | Reason::MaxLabelsPerSeries
                | Reason::MaxLabelValueBytes
                | Reason::MaxGroups
        )
    }

    /// The HTTP status of a request refused for this reason: 413 for a push too large (body,
    /// samples, labels, value length), 403 for what this node does not allow (wipe without
    /// the admin API, a full store), 400 otherwise.
    pub fn http_status(self) -> u16 {
        match self {
            Reason::PayloadTooLarge
            | Reason::BatchTooLarge
            | Reason::MaxSeries
            | Reason::MaxLabelsPerSeries
            | Reason::MaxLabelValueBytes => 413,
            Reason::AdminApiDisabled | Reason::RestoreNotForwardable | Reason::MaxGroups => 403,
            Reason::InvalidKey | Reason::UncheckedPush | Reason::UndecodablePayload => 400,
        }
    }
}

/// A refused command: why, and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// What to tell the client.
    pub message: String,
}

impl Refusal {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

/// `s`, cut to at most `max` bytes (on a character boundary) with `...` when cut: for
/// messages that quote client input.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The checks of a push that need no store, on its decoded `families`: the payload bound
/// and the optional limits (samples per push, labels per sample once stored, label value
/// length). Cost linear in the push: O(samples × labels × log grouping labels).
///
/// # Errors
/// The first rule the push breaks.
pub fn check_push(push: &Push, families: &[MetricFamily], policy: &Policy) -> Result<(), Refusal> {
    match &push.payload {
        Payload::Families(bytes) if bytes.len() > policy.max_payload_bytes() => {
            return Err(Refusal::new(
                Reason::PayloadTooLarge,
                format!(
                    "the push's payload has {} bytes, more than {} (8 × --push.max-body-bytes)",
                    bytes.len(),
                    policy.max_payload_bytes()
                ),
            ));
        }
        Payload::Invalid(msg) if msg.len() > MAX_INVALID_MESSAGE => {
            return Err(Refusal::new(
                Reason::PayloadTooLarge,
                format!(
                    "the push's failure message has {} bytes, more than {MAX_INVALID_MESSAGE}",
                    msg.len()
                ),
            ));
        }
        _ => {}
    }
    check_families(&push.key, families, &policy.limits)
}

/// The optional limits on a push of `families` to `key` (see [`check_push`]).
///
/// # Errors
/// The first limit the push exceeds.
pub fn check_families(
    key: &GroupingKey,
    families: &[MetricFamily],
    limits: &Limits,
) -> Result<(), Refusal> {
    if let Some(max) = limits.max_label_value_bytes {
        for (name, value) in key.pairs() {
            if value.len() as u64 > max {
                return Err(value_too_long(name, value.len(), max));
            }
        }
    }
    if let Some(max) = limits.max_series {
        let n: usize = families.iter().map(|f| f.metric.len()).sum();
        if n as u64 > max {
            return Err(Refusal::new(
                Reason::MaxSeries,
                format!(
                    "the push has {n} series, more than {max}, the limit set by --push.max-series"
                ),
            ));
        }
    }
    if limits.max_labels_per_series.is_none() && limits.max_label_value_bytes.is_none() {
        return Ok(());
    }
    let pairs = key.pairs();
    let key_has_instance = key.get("instance").is_some();
    for f in families {
        for m in &f.metric {
            let mut own = 0u64;
            let mut has_instance = key_has_instance;
            for lp in &m.label {
                if let Some(max) = limits.max_label_value_bytes
                    && lp.value().len() as u64 > max
                {
                    return Err(value_too_long(lp.name(), lp.value().len(), max));
                }
                if lp.name() == "instance" {
                    has_instance = true;
                }
                if pairs
                    .binary_search_by(|(k, _)| k.as_str().cmp(lp.name()))
                    .is_err()
                {
                    own += 1;
                }
            }
            let total = own + pairs.len() as u64 + u64::from(!has_instance);
            if let Some(max) = limits.max_labels_per_series
                && total > max
            {
                return Err(Refusal::new(
                    Reason::MaxLabelsPerSeries,
                    format!(
                        "a series of metric {:?} has {total} labels once the grouping labels are \
                         added, more than {max}, the limit set by --push.max-labels-per-series",
                        clip(f.name(), 200)
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn value_too_long(name: &str, len: usize, max: u64) -> Refusal {
    Refusal::new(
        Reason::MaxLabelValueBytes,
        format!(
            "the value of label {:?} has {len} bytes, more than {max}, the limit set by \
             --push.max-label-value-bytes",
            clip(name, 200)
        ),
    )
}

/// Admits a command that another node forwarded, as if it had come through this node's HTTP
/// API: every rule of [`check_push`], plus a canonical grouping key, a payload that decodes,
/// a wipe only with `--web.enable-admin-api`, a push with `check=false` only with
/// `--push.disable-consistency-check`, no restore (an admin act, for the admin service), and
/// at most [`MAX_BATCH`] commands in a batch. Bounded: no recursion (a batch is flat by type),
/// and each payload is decoded once.
///
/// # Errors
/// The first rule the command (or, in a batch, the first command that breaks one) breaks;
/// for a batch the message names the command's position.
pub fn check_command(cmd: &Command, policy: &Policy) -> Result<(), Refusal> {
    match cmd {
        Command::Batch(items) => {
            if items.len() > MAX_BATCH {
                return Err(Refusal::new(
                    Reason::BatchTooLarge,
                    format!(
                        "the batch has {} commands, more than {MAX_BATCH}",
                        items.len()
                    ),
                ));
            }
            for (i, item) in items.iter().enumerate() {
                check_op(item.op(), policy).map_err(|r| Refusal {
                    message: format!("command {} of the batch: {}", i + 1, r.message),
                    ..r
                })?;
            }
            Ok(())
        }
        other => match other.op() {
            Some(op) => check_op(op, policy),
            None => Ok(()),
        },
    }
}

fn check_op(op: Op<'_>, policy: &Policy) -> Result<(), Refusal> {
    match op {
        Op::Wipe if !policy.admin_api => Err(Refusal::new(
            Reason::AdminApiDisabled,
            "a wipe needs the admin API, and this node runs without --web.enable-admin-api",
        )),
        Op::Wipe => Ok(()),
        Op::Replace(_) => Err(Refusal::new(
            Reason::RestoreNotForwardable,
            "a restore is an admin act: send it to the admin service (pgwctl restore), not as \
             a forwarded write",
        )),
        Op::Delete(key) => check_key(key),
        Op::Push(push, _) => {
            check_key(&push.key)?;
            if !push.check && policy.check_consistency {
                return Err(Refusal::new(
                    Reason::UncheckedPush,
                    "a push without the consistency check needs \
                     --push.disable-consistency-check, and this node checks consistency",
                ));
            }
            let families = match &push.payload {
                Payload::Families(bytes) => {
                    if bytes.len() > policy.max_payload_bytes() {
                        // Refuse before decoding.
                        return check_push(push, &[], policy);
                    }
                    crate::delimited::decode(bytes).map_err(|e| {
                        Refusal::new(
                            Reason::UndecodablePayload,
                            format!("the push's payload does not decode: {e}"),
                        )
                    })?
                }
                Payload::Invalid(_) => Vec::new(),
            };
            check_push(push, &families, policy)
        }
    }
}

fn check_key(key: &GroupingKey) -> Result<(), Refusal> {
    key.check().map_err(|e| {
        Refusal::new(
            Reason::InvalidKey,
            format!("the grouping key is invalid: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::BatchItem;
    use crate::pb::{LabelPair, Metric, Untyped};

    fn fam(name: &str, series: &[&[(&str, &str)]]) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            help: None,
            r#type: Some(crate::pb::MetricType::Untyped as i32),
            metric: series
                .iter()
                .map(|labels| Metric {
                    label: labels
                        .iter()
                        .map(|(k, v)| LabelPair {
                            name: Some((*k).into()),
                            value: Some((*v).into()),
                        })
                        .collect(),
                    untyped: Some(Untyped { value: Some(1.0) }),
                    ..Default::default()
                })
                .collect(),
            unit: None,
        }
    }

    fn key(pairs: &[(&str, &str)]) -> GroupingKey {
        GroupingKey::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn limits_name_their_flag() {
        let k = key(&[("job", "j"), ("a", "1")]);
        let f = [fam("m", &[&[("x", "1")], &[("x", "2")]])];
        let ok = Limits::default();
        assert!(check_families(&k, &f, &ok).is_ok());
        let e = check_families(
            &k,
            &f,
            &Limits {
                max_series: Some(1),
                ..ok
            },
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::MaxSeries);
        assert!(e.message.contains("--push.max-series"), "{e}");
        // x + a + job + instance = 4 labels.
        assert!(
            check_families(
                &k,
                &f,
                &Limits {
                    max_labels_per_series: Some(4),
                    ..ok
                }
            )
            .is_ok()
        );
        let e = check_families(
            &k,
            &f,
            &Limits {
                max_labels_per_series: Some(3),
                ..ok
            },
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::MaxLabelsPerSeries);
        assert!(e.message.contains("--push.max-labels-per-series"), "{e}");
        // A pushed label that is also a grouping label is counted once.
        let g = [fam("m", &[&[("a", "zzz"), ("instance", "i")]])];
        assert!(
            check_families(
                &k,
                &g,
                &Limits {
                    max_labels_per_series: Some(3),
                    ..ok
                }
            )
            .is_ok()
        );
        let e = check_families(
            &key(&[("job", "long-job")]),
            &[],
            &Limits {
                max_label_value_bytes: Some(3),
                ..ok
            },
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::MaxLabelValueBytes);
        assert!(e.message.contains("--push.max-label-value-bytes"), "{e}");
        let e = check_families(
            &k,
            &g,
            &Limits {
                max_label_value_bytes: Some(2),
                ..ok
            },
        )
        .unwrap_err();
        assert!(e.message.contains("\"a\""), "{e}");
    }

    #[test]
    fn forwarded_commands_are_admitted_as_http_would() {
        let policy = Policy::default();
        let push = Push::new(key(&[("job", "j")]), true, 1, true, &[fam("m", &[&[]])]);
        assert!(check_command(&Command::Push(push.clone()), &policy).is_ok());
        assert_eq!(
            check_command(&Command::Wipe, &policy).unwrap_err().reason,
            Reason::AdminApiDisabled
        );
        assert!(
            check_command(
                &Command::Wipe,
                &Policy {
                    admin_api: true,
                    ..policy
                }
            )
            .is_ok()
        );
        assert_eq!(
            check_command(&Command::Replace { snapshot: vec![] }, &policy)
                .unwrap_err()
                .reason,
            Reason::RestoreNotForwardable
        );
        let mut unchecked = push.clone();
        unchecked.check = false;
        assert_eq!(
            check_command(&Command::Push(unchecked.clone()), &policy)
                .unwrap_err()
                .reason,
            Reason::UncheckedPush
        );
        assert!(
            check_command(
                &Command::Push(unchecked),
                &Policy {
                    check_consistency: false,
                    ..policy
                }
            )
            .is_ok()
        );
        let mut bad = push.clone();
        bad.payload = Payload::Families(vec![5, 1, 2]);
        assert_eq!(
            check_command(&Command::Push(bad), &policy)
                .unwrap_err()
                .reason,
            Reason::UndecodablePayload
        );
        let mut big = push.clone();
        big.payload = Payload::Families(vec![0; 100]);
        let tiny = Policy {
            max_body_bytes: 10,
            ..policy
        };
        assert_eq!(
            check_command(&Command::Push(big), &tiny)
                .unwrap_err()
                .reason,
            Reason::PayloadTooLarge
        );
        let forged = GroupingKey::forged_for_tests(vec![("b".into(), "1".into())]);
        assert_eq!(
            check_command(
                &Command::Delete {
                    key: forged.clone()
                },
                &policy
            )
            .unwrap_err()
            .reason,
            Reason::InvalidKey
        );
        let batch = Command::Batch(vec![
            BatchItem::Push(push.clone()),
            BatchItem::Delete { key: forged },
        ]);
        let e = check_command(&batch, &policy).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidKey);
        assert!(e.message.starts_with("command 2 of the batch"), "{e}");
        let many = Command::Batch(vec![BatchItem::Push(push); MAX_BATCH + 1]);
        assert_eq!(
            check_command(&many, &policy).unwrap_err().reason,
            Reason::BatchTooLarge
        );
    }

    #[test]
    fn text_payload_stays_within_the_expansion_bound() {
        // The densest text bodies: one-letter families, one sample each; many samples of one
        // family; histogram buckets.
        let mut dense = String::new();
        for c in b'a'..=b'z' {
            for d in b'a'..=b'z' {
                dense.push_str(&format!("{}{} 1\n", c as char, d as char));
            }
        }
        let mut one = String::new();
        for i in 0..500 {
            one.push_str(&format!("a{{b=\"{i}\"}} 1\n"));
        }
        let mut hist = String::from("# TYPE h histogram\n");
        for i in 0..300 {
            hist.push_str(&format!("h_bucket{{le=\"{i}\"}} 1\n"));
        }
        hist.push_str("h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n");
        let mut summ = String::from("# TYPE s summary\n");
        for i in 0..300 {
            summ.push_str(&format!("s{{quantile=\"0.{i}\"}} 1\n"));
        }
        for body in [dense, one, hist, summ] {
            let families = crate::text::parse(body.as_bytes()).unwrap();
            let payload = crate::delimited::encode(&families);
            assert!(
                payload.len() <= PAYLOAD_EXPANSION * body.len(),
                "{} bytes of text became {} bytes of payload",
                body.len(),
                payload.len()
            );
        }
    }
}
