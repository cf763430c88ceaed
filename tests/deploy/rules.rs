//! deploy/prometheus/alerts.yml: valid (`promtool check rules`), its unit tests pass
//! (`promtool test rules alerts_test.yml`), each alert has a firing and a silent case, and
//! every job the rules read is scraped by deploy/prometheus/prometheus.yml.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use crate::{deploy_file, read_deploy, run_ok, tool};

fn promtool() -> std::path::PathBuf {
    tool("/usr/bin/promtool", "prometheus")
}

/// The values of `key: value` lines (YAML scalars, quotes stripped), in file order.
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start().trim_start_matches("- ");
            l.strip_prefix(key)?
                .strip_prefix(':')
                .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
        })
        .collect()
}

/// Every `job="..."` and `job=~"a|b"` value in `text`.
fn jobs_selected(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("job=") {
        let rest = &text[i + "job=".len()..];
        let rest = rest.strip_prefix('~').unwrap_or(rest);
        let Some(rest) = rest.strip_prefix('"') else {
            continue;
        };
        let value = &rest[..rest.find('"').expect("closing quote")];
        out.extend(value.split('|').map(str::to_string));
    }
    out
}

#[test]
fn promtool_checks_the_rules() {
    let out = run_ok(
        Command::new(promtool())
            .args(["check", "rules"])
            .arg(deploy_file("prometheus/alerts.yml")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn promtool_unit_tests_of_every_alert_pass() {
    let out = run_ok(
        Command::new(promtool())
            .args(["test", "rules", "alerts_test.yml"])
            .current_dir(deploy_file("prometheus")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_has_a_firing_and_a_silent_case() {
    let alerts: BTreeSet<String> = yaml_values(&read_deploy("prometheus/alerts.yml"), "alert")
        .into_iter()
        .collect();
    assert!(alerts.len() >= 9, "{alerts:?}");
    for needed in [
        "PgwNodeDown",
        "PgwNoLeader",
        "PgwQuorumLost",
        "PgwLeaderFlapping",
        "PgwFollowerLagging",
        "PgwSnapshotWriteFailures",
        "PgwPushesFailing",
        "PgwBackpressure",
        "PgwDiskFillingUp",
    ] {
        assert!(alerts.contains(needed), "alerts.yml lacks {needed}");
    }
    // alertname: X, then either `exp_alerts: []` (silent) or `exp_alerts:` with entries.
    let tests = read_deploy("prometheus/alerts_test.yml");
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("exp_alerts:") {
            let name = current.take().expect("exp_alerts follows an alertname");
            let e = cases.entry(name).or_default();
            if rest.trim() == "[]" {
                e.1 = true;
            } else {
                e.0 = true;
            }
        }
    }
    for a in &alerts {
        let (fires, silent) = cases.get(a).copied().unwrap_or_default();
        assert!(fires, "alerts_test.yml has no case in which {a} fires");
        assert!(
            silent,
            "alerts_test.yml has no case in which {a} stays silent"
        );
    }
}

#[test]
fn the_rules_read_jobs_that_the_scrape_config_defines() {
    let config = read_deploy("prometheus/prometheus.yml");
    let jobs: BTreeSet<String> = yaml_values(&config, "job_name").into_iter().collect();
    let used = jobs_selected(&read_deploy("prometheus/alerts.yml"));
    assert!(used.contains("pushgateway-self"), "{used:?}");
    for j in &used {
        assert!(
            jobs.contains(j),
            "alerts.yml reads job {j:?}, which prometheus.yml does not scrape (jobs: {jobs:?})"
        );
    }
    // The scrape config loads the rules, and promtool accepts both together.
    assert!(
        config.contains("- alerts.yml"),
        "prometheus.yml loads alerts.yml"
    );
    run_ok(
        Command::new(promtool())
            .args(["check", "config"])
            .arg(deploy_file("prometheus/prometheus.yml")),
    );
}
