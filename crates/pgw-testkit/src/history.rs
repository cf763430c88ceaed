//! The history model: every write a client attempted, with its outcome and its real-time
//! interval on an abstract millisecond clock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// The kind of a write, with Pushgateway semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OpKind {
    /// `PUT`: replaces the whole group with the pushed families.
    Put,
    /// `POST`: replaces only the pushed families of the group (creating the group if
    /// needed); other families stay.
    Post,
    /// `DELETE`: removes the whole group.
    Delete,
}

impl OpKind {
    /// The HTTP method.
    pub fn method(self) -> &'static str {
        match self {
            OpKind::Put => "PUT",
            OpKind::Post => "POST",
            OpKind::Delete => "DELETE",
        }
    }
}

/// What the client learnt about its write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Answered 2xx: the write is committed and must never be lost.
    Acked,
    /// Certainly not applied: refused before it was sent (connection refused), or answered
    /// 4xx. Its values must never become visible.
    Failed,
    /// Sent, but the answer never came or said nothing definite (timeout, reset, 5xx). It may
    /// take effect at any time after it started — even after the client gave up, because an
    /// entry in a leader's log can be committed later — or never; but all or nothing.
    Unknown,
    /// Still in flight (the checker treats it as [`Outcome::Unknown`]).
    Pending,
}

impl Outcome {
    /// Classifies an HTTP exchange. `status`: the response status, if one was read.
    /// `sent`: whether any byte of the request may have reached the server (false only for
    /// a refused or failed connect).
    pub fn from_http(status: Option<u16>, sent: bool) -> Outcome {
        match status {
            Some(s) if (200..300).contains(&s) => Outcome::Acked,
            Some(s) if (400..500).contains(&s) => Outcome::Failed,
            Some(_) => Outcome::Unknown,
            None if !sent => Outcome::Failed,
            None => Outcome::Unknown,
        }
    }

    /// Whether the write may have taken effect.
    pub fn may_have_applied(self) -> bool {
        !matches!(self, Outcome::Failed)
    }
}

/// One attempted write.
///
/// `value` is unique in the whole history (a global counter works; the checker refuses
/// duplicates), so a value seen in a replica names the one write that produced it. Every
/// series of every pushed family carries it as its sample value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Index in the history (set by [`History::begin`]).
    pub id: usize,
    /// The client (a sequential actor) that sent it.
    pub client: u64,
    /// The group, in the workload's naming (see [`crate::Workload`]).
    pub group: String,
    /// PUT, POST or DELETE.
    pub kind: OpKind,
    /// The families pushed (empty for DELETE). Each family's series all carry `value`.
    pub families: Vec<String>,
    /// The unique value of this write.
    pub value: u64,
    /// Which node the client sent it to (for reports only).
    pub node: String,
    /// When the client sent it (abstract ms clock).
    pub start_ms: u64,
    /// When the client learnt the outcome. For [`Outcome::Unknown`] it is ignored by the
    /// oracle (the write may take effect later).
    pub end_ms: u64,
    /// What the client learnt.
    pub outcome: Outcome,
    /// Free text for reports (the status or error).
    pub note: String,
}

impl Op {
    /// The end of the op's real-time interval for the oracle: `end_ms` if acknowledged,
    /// never (`u64::MAX`) if its effect may still come.
    pub fn effective_end(&self) -> u64 {
        match self.outcome {
            Outcome::Acked => self.end_ms,
            Outcome::Failed => self.end_ms,
            Outcome::Unknown | Outcome::Pending => u64::MAX,
        }
    }

    /// Whether this op certainly took effect before `other` (real-time order: it was
    /// acknowledged before `other` was sent).
    pub fn precedes(&self, other: &Op) -> bool {
        self.outcome == Outcome::Acked && self.end_ms < other.start_ms
    }
}

/// A whole history; cheap to clone and safe to share between client tasks and threads.
#[derive(Clone, Debug, Default)]
pub struct History {
    inner: Arc<Mutex<Vec<Op>>>,
}

/// Counts of outcomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Ops answered 2xx.
    pub acked: usize,
    /// Ops certainly not applied.
    pub failed: usize,
    /// Ops with an unknown (or still pending) outcome.
    pub unknown: usize,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Op>> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Records a write about to be sent and returns its id; finish it with
    /// [`History::finish`]. The op is [`Outcome::Pending`] until then.
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        &self,
        client: u64,
        group: &str,
        kind: OpKind,
        families: &[String],
        value: u64,
        node: &str,
        start_ms: u64,
    ) -> usize {
        let mut ops = self.lock();
        let id = ops.len();
        ops.push(Op {
            id,
            client,
            group: group.to_string(),
            kind,
            families: if kind == OpKind::Delete {
                Vec::new()
            } else {
                families.to_vec()
            },
            value,
            node: node.to_string(),
            start_ms,
            end_ms: start_ms,
            outcome: Outcome::Pending,
            note: String::new(),
        });
        id
    }

    /// Records the outcome of op `id`.
    pub fn finish(&self, id: usize, outcome: Outcome, end_ms: u64, note: &str) {
        let mut ops = self.lock();
        if let Some(op) = ops.get_mut(id) {
            op.outcome = outcome;
            op.end_ms = end_ms.max(op.start_ms);
            op.note = note.to_string();
        }
    }

    /// Adds a complete op (for synthetic histories); its `id` is overwritten.
    pub fn push(&self, mut op: Op) -> usize {
        let mut ops = self.lock();
        op.id = ops.len();
        ops.push(op);
        op_id(&ops)
    }

    /// A copy of op `id`.
    pub fn get(&self, id: usize) -> Option<Op> {
        self.lock().get(id).cloned()
    }

    /// A copy of every op so far.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().clone()
    }

    /// Outcome counts (pending ops count as unknown).
    pub fn counts(&self) -> Counts {
        counts(&self.lock())
    }

    /// The earliest acknowledgement of a write *sent* at or after `t_ms`, as the delay from
    /// `t_ms`: the time from a fault to the first acknowledged write after it.
    pub fn first_ack_after(&self, t_ms: u64) -> Option<u64> {
        self.lock()
            .iter()
            .filter(|o| o.outcome == Outcome::Acked && o.start_ms >= t_ms)
            .map(|o| o.end_ms.saturating_sub(t_ms))
            .min()
    }

    /// The number of acknowledged writes so far.
    pub fn acked(&self) -> usize {
        self.lock()
            .iter()
            .filter(|o| o.outcome == Outcome::Acked)
            .count()
    }

    /// The history as JSON lines (one op a line), for a file next to a failing test's logs.
    pub fn to_json_lines(&self) -> String {
        let mut s = String::new();
        for op in self.lock().iter() {
            if let Ok(line) = serde_json::to_string(op) {
                s.push_str(&line);
                s.push('\n');
            }
        }
        s
    }

    /// Parses [`History::to_json_lines`] output (to replay a check offline).
    pub fn from_json_lines(text: &str) -> Result<History, String> {
        let h = History::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let op: Op = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            h.lock().push(op);
        }
        Ok(h)
    }
}

fn op_id(ops: &[Op]) -> usize {
    ops.len() - 1
}

pub(crate) fn counts(ops: &[Op]) -> Counts {
    let mut c = Counts::default();
    for o in ops {
        match o.outcome {
            Outcome::Acked => c.acked += 1,
            Outcome::Failed => c.failed += 1,
            Outcome::Unknown | Outcome::Pending => c.unknown += 1,
        }
    }
    c
}

/// Ops indexed by group, each list in history order.
pub(crate) fn by_group(ops: &[Op]) -> BTreeMap<&str, Vec<&Op>> {
    let mut m: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for o in ops {
        m.entry(o.group.as_str()).or_default().push(o);
    }
    m
}
