//! Reloading on SIGHUP (`systemctl reload`): what can be re-read while the node runs is
//! re-read, nothing else changes, and the process never exits because of it.
//!
//! Each reloadable part registers a [`Reloader`]. A reload runs them all; a part whose new
//! configuration is bad keeps its old one and reports the error, which is logged and shown in
//! the self-metrics `pgw_config_last_reload_successful` and
//! `pgw_config_last_reload_success_timestamp_seconds` (as Prometheus names them).

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A part of the node that can re-read its configuration. Returns a description of what it
/// reloaded, or why it kept its old configuration.
pub type Reloader = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

/// The reloadable parts of a node and the outcome of the last reload.
pub struct Reloads {
    parts: Mutex<Vec<(&'static str, Reloader)>>,
    state: Mutex<State>,
}

#[derive(Clone, Copy)]
struct State {
    ok: bool,
    /// When the configuration was last loaded successfully (start or reload), seconds since
    /// the Unix epoch.
    success_at: f64,
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Default for Reloads {
    fn default() -> Self {
        Reloads {
            parts: Mutex::new(Vec::new()),
            state: Mutex::new(State {
                ok: true,
                success_at: unix_seconds(SystemTime::now()),
            }),
        }
    }
}

impl Reloads {
    /// Registers a reloadable part under `name` (used in log lines).
    pub fn register(&self, name: &'static str, reloader: Reloader) {
        self.parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, reloader));
    }

    /// Runs every reloader; logs each outcome; returns whether all succeeded.
    pub fn reload(&self) -> bool {
        let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        if parts.is_empty() {
            tracing::info!(
                "reload requested (SIGHUP): nothing in this configuration is reloadable \
                 (flags take effect on restart); still running"
            );
        }
        let mut ok = true;
        for (name, reloader) in parts.iter() {
            match reloader() {
                Ok(what) => tracing::info!(part = name, "reloaded: {what}"),
                Err(why) => {
                    ok = false;
                    tracing::error!(
                        part = name,
                        error = %why,
                        "reload failed; the previous configuration stays in force. Fix the \
                         file and send SIGHUP again"
                    );
                }
            }
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.ok = ok;
        if ok {
            st.success_at = unix_seconds(SystemTime::now());
        }
        ok
    }

    /// Whether the last reload succeeded (true before any) and when the configuration was last
    /// loaded successfully.
    pub fn last(&self) -> (bool, f64) {
        let st = *self.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.ok, st.success_at)
    }
}

/// Runs a reload each time `requests` yields, until it ends.
pub(crate) async fn serve(reloads: Arc<Reloads>, mut requests: tokio::sync::mpsc::Receiver<()>) {
    while requests.recv().await.is_some() {
        let r = reloads.clone();
        // Reloaders read files: off the async threads.
        let _ = tokio::task::spawn_blocking(move || r.reload()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_part_marks_the_reload_failed_until_one_succeeds() {
        let r = Reloads::default();
        assert!(r.reload(), "nothing to reload is a success");
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flag.clone();
        r.register(
            "test",
            Box::new(move || {
                if f.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok("fine".into())
                } else {
                    Err("bad file".into())
                }
            }),
        );
        let (_, before) = r.last();
        assert!(!r.reload());
        assert_eq!(r.last(), (false, before));
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(r.reload());
        assert!(r.last().0);
    }
}
