//! **Durability**: every acknowledged write is visible unless a write that may have come
//! after it replaced it; no acknowledged DELETE is undone.
//!
//! This is the pairwise check that yields the "acknowledged writes lost" count of the
//! report. For an acknowledged write `o` to a group, "may come after `o`" means: any write
//! to the group that may have applied, other than `o`, that was not acknowledged before `o`
//! was sent.
//!
//! - PUT/POST `o`, family `f` it pushed: `f` shows `o`'s value, or a value of a write that
//!   may come after `o`; or `f` (or the group) is absent and a write that may come after `o`
//!   removes it (a DELETE, or a PUT without `f`).
//! - PUT `o`, family `g` it did not push: if `g` is visible, its writer may come after `o`
//!   (else the PUT's replacement was undone).
//! - DELETE `o`: if the group is visible, every visible family's writer may come after `o`
//!   (else the DELETE was undone).

use crate::history::{Op, OpKind, Outcome};
use crate::invariants::linearizable::Observed;

/// Why acknowledged write `o` is lost in `observed`, if it is. `ops`: the writes to the
/// group that may have applied; `writer`: the write whose value a family shows.
pub(crate) fn lost(
    o: &Op,
    ops: &[&Op],
    observed: &Observed,
    writer: &dyn Fn(&str) -> Option<usize>,
) -> Option<String> {
    if o.outcome != Outcome::Acked {
        return None;
    }
    let may_follow =
        |id: usize| -> bool { id != o.id && ops.iter().any(|x| x.id == id && !x.precedes(o)) };
    let removes_later = |f: &str| -> bool {
        ops.iter().any(|x| {
            x.id != o.id
                && !x.precedes(o)
                && match x.kind {
                    OpKind::Delete => true,
                    OpKind::Put => !x.families.iter().any(|g| g == f),
                    OpKind::Post => false,
                }
        })
    };
    match o.kind {
        OpKind::Put | OpKind::Post => {
            for f in &o.families {
                let shown = observed.as_ref().and_then(|m| m.get(f));
                match shown {
                    Some(v) if *v == o.value => {}
                    Some(v) => {
                        let w = writer(f);
                        if !w.is_some_and(may_follow) {
                            return Some(format!(
                                "family {f} shows value {v}, written by a write acknowledged \
                                 before this one was sent"
                            ));
                        }
                    }
                    None => {
                        if !removes_later(f) {
                            return Some(format!(
                                "family {f} is gone{}, and no DELETE or PUT that may follow \
                                 removes it",
                                if observed.is_none() {
                                    " (the whole group is absent)"
                                } else {
                                    ""
                                }
                            ));
                        }
                    }
                }
            }
            if o.kind == OpKind::Put
                && let Some(m) = observed
            {
                for (g, v) in m {
                    if o.families.iter().any(|f| f == g) {
                        continue;
                    }
                    if !writer(g).is_some_and(may_follow) {
                        return Some(format!(
                            "family {g} (value {v}) survived this PUT, which replaced the group"
                        ));
                    }
                }
            }
            None
        }
        OpKind::Delete => {
            let m = observed.as_ref()?;
            for (g, v) in m {
                if !writer(g).is_some_and(may_follow) {
                    return Some(format!(
                        "the DELETE was undone: family {g} shows value {v}, written before \
                         the DELETE was sent"
                    ));
                }
            }
            None
        }
    }
}
