//! Records the version of the Rust compiler for `pushgateway_build_info{goversion}` and
//! `/api/v1/status` (`PGW_RUSTC_VERSION`). Never fails the build: without it the value is
//! `rust`.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RUSTC");
    for v in [
        "PGW_REVISION",
        "PGW_BRANCH",
        "PGW_BUILD_USER",
        "PGW_BUILD_DATE",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rust".into());
    println!("cargo:rustc-env=PGW_RUSTC_VERSION={version}");
}
