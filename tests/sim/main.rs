//! Deterministic simulation of a pgw cluster (turmoil): whole nodes — HTTP API, gRPC, Raft,
//! an in-memory store with an explicit crash model — on a simulated network with seeded
//! partitions (symmetric and one-way), message loss and delay, crashes and restarts, and
//! membership changes under load. After the faults stop and the cluster heals, the shared
//! checker (`pgw_testkit`) checks the clients' history against every replica.
//!
//! One `u64` seed decides everything (cluster timing, faults, load, turmoil's network
//! randomness); a failure prints its seed and the command that reproduces it. See
//! `tests/sim/README.md` for what is and is not covered.
//!
//! - `cargo test -p pgw-tests --test sim`: the PR seed set, the regression seeds and the
//!   determinism self-check.
//! - `SIM_SEED=n`: only seed `n` (with `SIM_SCENARIO=<name>` to force a scenario).
//! - `SIM_SEEDS=N` (and `SIM_SEED_BASE=b`, default 1000): seeds `b..b+N`.
//! - `SIM_LOG=info|debug|...`: node logs with simulated timestamps.

mod checks;
mod clients;
mod cluster;
mod driver;
mod net;
mod panics;
mod plan;

use std::time::Instant;

use pgw_testkit::ScenarioReport;
use plan::{Kind, Plan};

/// The seeds every PR runs: one of each scenario family (`seed % 7`), in `Kind::ALL` order.
const PR_SEEDS: &[u64] = &[0, 1, 2, 3, 4, 5, 6];
/// The seed the determinism self-check runs twice (a crash-restart scenario).
const DETERMINISM_SEED: u64 = 10;
/// Default start of `SIM_SEEDS` sweeps (kept apart from the PR seeds).
const DEFAULT_SWEEP_BASE: u64 = 1000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Whether the run was narrowed to some seeds by the environment (or this process is a
/// child running one seed): the other tests then do nothing.
fn seeds_from_env() -> bool {
    env_u64("SIM_SEED").is_some() || env_u64("SIM_SEEDS").is_some() || is_child()
}

/// Whether this process is a child started by [`run_seed`].
fn is_child() -> bool {
    std::env::var_os("SIM_CHILD").is_some()
}

fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(filter) = std::env::var("SIM_LOG") else {
            return;
        };
        struct SimTime;
        impl tracing_subscriber::fmt::time::FormatTime for SimTime {
            fn format_time(
                &self,
                w: &mut tracing_subscriber::fmt::format::Writer<'_>,
            ) -> std::fmt::Result {
                write!(w, "[{:?}]", turmoil::sim_elapsed().unwrap_or_default())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_timer(SimTime)
            .with_test_writer()
            .try_init();
    });
}

/// The scenario `seed` runs: `SIM_SCENARIO` if set, else the seed's own.
fn kind_for(seed: u64, forced: Option<Kind>) -> Kind {
    if let Some(k) = forced {
        return k;
    }
    match std::env::var("SIM_SCENARIO") {
        Ok(name) => Kind::from_name(name.trim()).unwrap_or_else(|| {
            panic!(
                "SIM_SCENARIO={name} is not one of {:?}",
                Kind::ALL.map(Kind::name)
            )
        }),
        Err(_) => Kind::of_seed(seed),
    }
}

fn reproduce(seed: u64, kind: Kind) -> String {
    let scenario = if kind == Kind::of_seed(seed) {
        String::new()
    } else {
        format!("SIM_SCENARIO={} ", kind.name())
    };
    if std::env::var_os("SIM_RELEASE").is_some() {
        // Found by an optimised soak: the same build reproduces it.
        return format!("REPRODUCE: SIM_RELEASE=1 SIM_SEED={seed} {scenario}tests/sim/run");
    }
    format!(
        "REPRODUCE: SIM_SEED={seed} {scenario}RUSTFLAGS=\"--cfg tokio_unstable\" \
         CARGO_TARGET_DIR=target/sim cargo test -p pgw-tests --test sim -- --nocapture \
         (or: SIM_SEED={seed} {scenario}tests/sim/run)"
    )
}

/// What a seed's run printed, as the parent process sees it.
struct SeedRun {
    /// Whether it found no violation.
    ok: bool,
    /// Its `SIM-DIGEST` line's digest, event count and simulated time.
    digest: Option<String>,
}

/// Runs one seed in this process (the child side), prints its `SIM-REPORT` and `SIM-DIGEST`
/// lines and, on failure, the details. `true` when it found no violation.
fn run_seed_here(seed: u64, kind: Kind) -> bool {
    init_logging();
    let plan = Plan::new(seed, kind);
    let r = driver::run(&plan);
    let report = ScenarioReport {
        scenario: format!("{} seed={seed}", kind.name()),
        duration: r.sim_time,
        summary: r.summary.clone(),
        fault_to_first_ack: r.fault_to_first_ack,
        converge: r.converge,
        violations: r.violations.len(),
    };
    let line = report
        .to_string()
        .replacen(pgw_testkit::PREFIX, "SIM-REPORT", 1);
    println!("{line} wall={:.1}s", r.wall.as_secs_f64());
    println!(
        "SIM-DIGEST seed={seed} scenario={} digest={:016x} events={} sim={:.3}s",
        kind.name(),
        r.digest,
        r.events,
        r.sim_time.as_secs_f64()
    );
    if r.violations.is_empty() {
        return true;
    }
    let path = std::env::temp_dir().join(format!("pgw-sim-{seed}-{}.jsonl", kind.name()));
    let saved = match std::fs::write(&path, &r.history) {
        Ok(()) => format!("history: {}", path.display()),
        Err(e) => format!("history not saved: {e}"),
    };
    println!(
        "seed {seed} ({}) found {} violation(s):",
        kind.name(),
        r.violations.len()
    );
    for v in r.violations.iter().take(30) {
        println!("  - {v}");
    }
    println!("faults and membership steps:");
    for l in &r.log {
        println!("  {l}");
    }
    println!("{saved}\n{}", reproduce(seed, kind));
    false
}

/// Runs one seed in a fresh process (this test binary, test [`child`]) and relays its
/// output. A fresh process per seed is what makes a seed reproducible on its own: tokio
/// numbers tasks with a process-wide counter and drops a crashed host's tasks in an order
/// that depends on those numbers, so a seed run after another one in the same process can
/// take a different (still valid) path.
fn run_seed(seed: u64, kind: Kind) -> SeedRun {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no test executable: {e}"));
    let out = std::process::Command::new(exe)
        .args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env("SIM_CHILD", "1")
        .env("SIM_SEED", seed.to_string())
        .env("SIM_SCENARIO", kind.name())
        .output()
        .unwrap_or_else(|e| panic!("cannot start the child process for seed {seed}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut digest = None;
    let mut reported = false;
    for line in stdout.lines() {
        // libtest's own lines are noise here; it prints the test's first line after its
        // `test child ... ` header.
        let line = line.strip_prefix("test child ... ").unwrap_or(line);
        let noise = ["running ", "test ", "successes:", "failures:", "---- child"];
        if line.trim().is_empty() || line == "ok" || noise.iter().any(|n| line.starts_with(n)) {
            continue;
        }
        if let Some(rest) = line.strip_prefix("SIM-DIGEST ") {
            digest = Some(rest.to_string());
        }
        reported |= line.starts_with("SIM-REPORT");
        println!("{line}");
    }
    let ok = out.status.success() && reported;
    if !ok {
        let stderr = String::from_utf8_lossy(&out.stderr);
        for line in stderr
            .lines()
            .filter(|l| !l.trim_start().starts_with("at "))
        {
            println!("{line}");
        }
        if !reported {
            println!(
                "seed {seed}: the child process ended without a report ({})",
                out.status
            );
            println!("{}", reproduce(seed, kind));
        }
    }
    SeedRun { ok, digest }
}

fn run_all(seeds: &[(u64, Option<Kind>)]) {
    let start = Instant::now();
    let mut failed = Vec::new();
    for &(seed, forced) in seeds {
        let kind = kind_for(seed, forced);
        if !run_seed(seed, kind).ok {
            failed.push(reproduce(seed, kind));
        }
    }
    println!(
        "SIM: {} seed(s) in {:.1}s wall, {} failed",
        seeds.len(),
        start.elapsed().as_secs_f64(),
        failed.len()
    );
    assert!(failed.is_empty(), "failing seeds:\n{}", failed.join("\n"));
}

/// Why the simulation tests are skipped in a build without `--cfg tokio_unstable`.
#[allow(unused_macros)]
macro_rules! needs_unstable {
    () => {
        "the simulation is deterministic only with --cfg tokio_unstable (seeded tokio runtimes): \
         run tests/sim/run"
    };
}

/// The seeds `SIM_SEED` or `SIM_SEEDS` ask for (nothing else runs then).
#[test]
#[cfg_attr(not(tokio_unstable), ignore = needs_unstable!())]
fn sweep() {
    if is_child() {
        return;
    }
    let seeds: Vec<u64> = if let Some(seed) = env_u64("SIM_SEED") {
        vec![seed]
    } else if let Some(n) = env_u64("SIM_SEEDS") {
        let base = env_u64("SIM_SEED_BASE").unwrap_or(DEFAULT_SWEEP_BASE);
        (base..base + n).collect()
    } else {
        return;
    };
    let seeds: Vec<(u64, Option<Kind>)> = seeds.into_iter().map(|s| (s, None)).collect();
    run_all(&seeds);
}

/// One PR seed per scenario family, each its own test so they run in parallel.
macro_rules! pr_seed {
    ($name:ident, $seed:expr) => {
        #[test]
        #[cfg_attr(not(tokio_unstable), ignore = needs_unstable!())]
        fn $name() {
            if !seeds_from_env() {
                run_all(&[($seed, None)]);
            }
        }
    };
}

pr_seed!(pr_partition_leader, PR_SEEDS[0]);
pr_seed!(pr_one_way, PR_SEEDS[1]);
pr_seed!(pr_loss_latency, PR_SEEDS[2]);
pr_seed!(pr_crash_restart, PR_SEEDS[3]);
pr_seed!(pr_membership, PR_SEEDS[4]);
pr_seed!(pr_swarm, PR_SEEDS[5]);
pr_seed!(pr_stale_forward, PR_SEEDS[6]);

/// Seeds that once found a bug (`tests/sim/regressions.txt`), each pinned to its scenario;
/// those already among the PR seeds run there.
#[test]
#[cfg_attr(not(tokio_unstable), ignore = needs_unstable!())]
fn regressions() {
    if seeds_from_env() {
        return;
    }
    let text = include_str!("regressions.txt");
    let mut seeds = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let seed: u64 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad seed in regressions.txt: {line:?}"));
        let kind = parts.next().map(|k| {
            Kind::from_name(k).unwrap_or_else(|| panic!("bad scenario in regressions.txt: {k}"))
        });
        let covered = PR_SEEDS.contains(&seed) && kind.is_none_or(|k| k == Kind::of_seed(seed));
        if !covered {
            seeds.push((seed, kind));
        }
    }
    run_all(&seeds);
}

/// The child side of [`run_seed`]: runs `SIM_SEED` in this fresh process.
#[test]
#[cfg_attr(not(tokio_unstable), ignore = needs_unstable!())]
fn child() {
    if !is_child() {
        return;
    }
    let seed = env_u64("SIM_SEED").unwrap_or_else(|| panic!("SIM_CHILD without SIM_SEED"));
    let kind = kind_for(seed, None);
    if !run_seed_here(seed, kind) {
        // The details are printed; a panic would only add a backtrace of the harness.
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    }
}

/// The determinism self-check: one seed twice, each in a fresh process, must give the same
/// digest of the final state and history and the same event count. Fails if wall-clock
/// reads, unseeded randomness or `HashMap` iteration order leak into the simulated path.
#[test]
#[cfg_attr(not(tokio_unstable), ignore = needs_unstable!())]
fn determinism() {
    if seeds_from_env() {
        return;
    }
    let kind = Kind::of_seed(DETERMINISM_SEED);
    let a = run_seed(DETERMINISM_SEED, kind);
    let b = run_seed(DETERMINISM_SEED, kind);
    assert!(a.ok && b.ok, "seed {DETERMINISM_SEED} found violations");
    let same = a.digest.is_some() && a.digest == b.digest;
    println!(
        "SIM-DETERMINISM seed={DETERMINISM_SEED} scenario={} {}: first run [{}], second run [{}]",
        kind.name(),
        if same { "identical" } else { "DIFFERENT" },
        a.digest.as_deref().unwrap_or("-"),
        b.digest.as_deref().unwrap_or("-"),
    );
    assert!(
        same,
        "seed {DETERMINISM_SEED} ran differently twice: the simulation is not deterministic"
    );
}
