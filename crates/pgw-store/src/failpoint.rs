//! Fail points for crash tests, compiled in only with the cargo feature `failpoints`.
//!
//! A fail point is a named place in the code where a test can make the process crash. The
//! production binary has none: without the feature [`crash_point!`](crate::crash_point)
//! expands to nothing. The chaos tests build a separate `pgw` with `--features
//! pgw-server/failpoints` and start it with the `FAILPOINTS` environment variable of the
//! [`fail`](https://docs.rs/fail/0.5) crate, e.g.
//! `FAILPOINTS='pgw-store::log::after-append=20*off->1*return'` (crash on the 21st append).
//!
//! Actions: `return` aborts the process at once (no destructors, no flushes: as `kill -9`
//! at exactly that point), after one line on stderr naming the fail point; `panic` panics (on
//! a tokio task that may not end the process); `off` does nothing. Delay actions (`sleep`,
//! `pause`, `delay`) block a tokio worker and must not be used (see the test strategy).
//!
//! | name | where |
//! |---|---|
//! | `pgw-store::log::after-append` | log entries appended and fsynced, before openraft is told |
//! | `pgw-store::sm::after-apply` | entries applied in memory and written to sled, before the responses are returned |
//! | `pgw-store::snapshot::before-rename` | a snapshot (built or received) written to `snapshot.bin.tmp` and fsynced, before the rename |
//! | `pgw-store::snapshot::install-before-tree` | a received snapshot made durable, before the state-machine tree is rewritten |
//! | `pgw-raft::forward::after-commit` | a forwarded write committed and applied on the leader, before the follower gets the answer |

#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub use fail as __fail;

/// Declares a fail point named `$name` (a string literal); see the [module docs](self).
/// Expands to nothing unless the *calling* crate's `failpoints` feature is on.
#[macro_export]
macro_rules! crash_point {
    ($name:expr) => {{
        #[cfg(feature = "failpoints")]
        {
            let _ = $crate::failpoint::__fail::eval($name, |_| $crate::failpoint::crash($name));
        }
    }};
}

/// Ends the process at a fail point: one line on stderr, then `abort`.
#[doc(hidden)]
pub fn crash(name: &str) {
    eprintln!("pgw: FAILPOINT {name} fired: aborting the process");
    std::process::abort();
}

/// Reads `FAILPOINTS` from the environment (a no-op without the feature). Call once at
/// process start; returns the configuration it applied, for the log.
pub fn setup_from_env() -> Option<String> {
    #[cfg(feature = "failpoints")]
    {
        let cfg = std::env::var("FAILPOINTS").ok();
        // The scenario lives as long as the process.
        std::mem::forget(fail::FailScenario::setup());
        return Some(cfg.unwrap_or_default());
    }
    #[allow(unreachable_code)]
    None
}
