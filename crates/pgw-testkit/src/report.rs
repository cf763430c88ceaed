//! The one-line scenario report both layers print.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::Summary;

/// The fixed prefix of a report line, so CI output can be grepped for it.
pub const PREFIX: &str = "CHAOS-REPORT";

/// One scenario's result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub scenario: String,
    /// Wall (or simulated) time the scenario took.
    pub duration: Duration,
    /// What the checker covered (outcome counts, lost acknowledged writes).
    pub summary: Summary,
    /// Time from the (last) fault to the first acknowledged write sent after it.
    pub fault_to_first_ack: Option<Duration>,
    /// Time from heal to converged, byte-identical replicas.
    pub converge: Option<Duration>,
    /// Violations found (0 on success).
    pub violations: usize,
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_string(), |d| format!("{:.2}s", d.as_secs_f64()))
}

impl fmt::Display for ScenarioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX} scenario={} duration={:.1}s acked/failed/unknown={} lost_acked={} \
             unknown_visible={} fault_to_first_ack={} converge={} violations={}",
            self.scenario,
            self.duration.as_secs_f64(),
            self.summary.outcomes(),
            self.summary.lost_acked,
            self.summary.unknown_visible,
            secs(self.fault_to_first_ack),
            secs(self.converge),
            self.violations
        )
    }
}
