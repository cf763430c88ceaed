//! The deployment files under `deploy/` (issue 12): the systemd unit and its readiness
//! notification, the container image, the Kubernetes manifests, the Prometheus alert rules
//! and the Grafana dashboard. Every check runs the real tool an operator would run
//! (`systemd-analyze`, `podman`, `kubernetes-validate`, `promtool`, Prometheus) against the
//! files as shipped, and the real `pgw` binary where the file is about its behaviour.

#[path = "../support/mod.rs"]
mod support;

mod container;
mod dashboard;
mod kubernetes;
mod rules;
mod systemd;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (the tests crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A file under `deploy/`.
pub fn deploy_file(rel: &str) -> PathBuf {
    repo_root().join("deploy").join(rel)
}

/// Reads a file under `deploy/`, with a message naming it when it is missing.
pub fn read_deploy(rel: &str) -> String {
    let p = deploy_file(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A tool that CI installs: its absolute path, or a failure that says how to install it.
pub fn tool(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: apt-get install {package} (tests/run installs it)"
    );
    p
}

/// Runs a command to completion and fails the test with its output unless it succeeded.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Python interpreter with tests/requirements.txt (see [`support::test_python`]).
pub fn python() -> PathBuf {
    support::test_python()
}
