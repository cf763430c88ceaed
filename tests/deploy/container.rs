//! deploy/container/Containerfile: `deploy/container/build.sh` builds the image with podman
//! from the binaries of this build (FROM scratch: no registry), and the image holds what it
//! promises: `pgw` and `pgwctl`, the libraries they load, a non-root user, the
//! `/var/lib/pgw` volume owned by that user, ports 9091 and 9095. The exported image
//! filesystem is then run as that user (chroot; `podman run` cannot run in every sandbox):
//! `pgw --version`, `pgwctl --version`, and a node that serves `/-/ready` from the volume.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{free_port, pgw_binary, wait_ready};
use crate::{deploy_file, run_ok};

/// podman, or None (with the reason printed) when it is not installed: the test then skips.
/// tests/run installs it, so CI always runs the test.
fn podman() -> Option<PathBuf> {
    for p in ["/usr/bin/podman", "/usr/local/bin/podman"] {
        if Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("podman is missing in CI: tests/run installs it (apt-get install podman)");
    }
    eprintln!(
        "SKIPPED: podman is not installed (apt-get install podman, or run tests/run as root); \
         the container image is not checked"
    );
    None
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `chroot ROOT args...` as the image's user when we are root, else as the mapped root of
/// an unprivileged user namespace.
fn chroot(root: &Path, user: &str, args: &[&str]) -> Command {
    let mut cmd = if is_root() {
        let mut c = Command::new("chroot");
        c.arg(format!("--userspec={user}"));
        c
    } else {
        let mut c = Command::new("unshare");
        c.args(["--map-root-user", "chroot"]);
        c
    };
    cmd.arg(root).args(args);
    cmd
}

/// Removes the test's image (by its unique tag) when the test ends.
struct Image {
    podman: PathBuf,
    tag: String,
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new(&self.podman)
            .args(["rmi", "--force", &self.tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Ends the chrooted pgw (by its PID) when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn inspect(podman: &Path, tag: &str, format: &str) -> String {
    let out = run_ok(Command::new(podman).args(["image", "inspect", "--format", format, tag]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_from_host_binaries_and_runs_as_non_root() {
    let Some(podman) = podman() else {
        return;
    };
    let bin_dir = pgw_binary().parent().unwrap().to_path_buf();
    assert!(
        bin_dir.join("pgwctl").is_file(),
        "pgwctl is missing in {}: cargo build --bin pgwctl",
        bin_dir.display()
    );
    let tag = format!(
        "localhost/pgw-deploy-test:{}-{}",
        std::process::id(),
        free_port()
    );
    let image = Image {
        podman: podman.clone(),
        tag: tag.clone(),
    };
    run_ok(
        Command::new(deploy_file("container/build.sh"))
            .arg("--bin-dir")
            .arg(&bin_dir)
            .args(["--tag", &tag, "--engine"])
            .arg(&podman),
    );

    // The image's configuration.
    assert_eq!(inspect(&podman, &tag, "{{.Config.User}}"), "65532:65532");
    let ports = inspect(&podman, &tag, "{{.Config.ExposedPorts}}");
    assert!(
        ports.contains("9091/tcp") && ports.contains("9095/tcp"),
        "{ports}"
    );
    let volumes = inspect(&podman, &tag, "{{.Config.Volumes}}");
    assert!(volumes.contains("/var/lib/pgw"), "{volumes}");
    let entry = inspect(&podman, &tag, "{{.Config.Entrypoint}} {{.Config.Cmd}}");
    assert!(
        entry.contains("/usr/local/bin/pgw") && entry.contains("--storage.path=/var/lib/pgw"),
        "{entry}"
    );

    // Its filesystem, exported from a created (never started) container.
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(Command::new(&podman).args(["create", &tag]));
    let container = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let tar = dir.path().join("image.tar");
    let exported = Command::new(&podman)
        .args(["export", "-o"])
        .arg(&tar)
        .arg(&container)
        .output()
        .expect("podman export");
    let _ = Command::new(&podman)
        .args(["rm", "--force", &container])
        .output();
    assert!(exported.status.success(), "podman export: {exported:?}");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    // `tar -tv` lists owners; extract with them (as root) so the volume keeps its owner.
    let listing = run_ok(Command::new("tar").arg("-tvf").arg(&tar));
    let listing = String::from_utf8_lossy(&listing.stdout);
    let line = |path: &str| {
        listing
            .lines()
            .find(|l| l.trim_end().trim_end_matches('/').ends_with(path))
            .unwrap_or_else(|| panic!("the image has no {path}:\n{listing}"))
            .to_string()
    };
    for p in ["usr/local/bin/pgw", "usr/local/bin/pgwctl", "etc/passwd"] {
        line(p);
    }
    let volume = line("var/lib/pgw");
    assert!(
        volume.starts_with('d') && volume.contains("pgw/pgw"),
        "/var/lib/pgw belongs to the pgw user: {volume}"
    );
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&root)
            .arg("--numeric-owner"),
    );
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("pgw:x:65532:65532:"), "{passwd}");

    // The binaries run from the image's filesystem alone (its loader and libraries).
    for (bin, name) in [
        ("/usr/local/bin/pgw", "pgw "),
        ("/usr/local/bin/pgwctl", "pgwctl "),
    ] {
        let out = run_ok(&mut chroot(&root, "65532:65532", &[bin, "--version"]));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with(name), "{bin} --version: {text}");
    }

    // A node on the image's volume directory, as the image's user, serves /-/ready.
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let listen = format!("--web.listen-address={addr}");
    let log_path = dir.path().join("pgw.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = chroot(
        &root,
        "65532:65532",
        &["/usr/local/bin/pgw", "--storage.path=/var/lib/pgw", &listen],
    )
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .expect("spawn the image's pgw");
    let mut node = Running(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = node.0.try_wait() {
            panic!(
                "the image's pgw exited ({status}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        if crate::support::get(addr, "/-/ready", Duration::from_secs(2))
            .await
            .is_ok_and(|r| r.status == 200)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the image's pgw is not ready:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_ready(addr, Instant::now() + Duration::from_secs(5)).await;
    assert!(
        root.join("var/lib/pgw/db").exists(),
        "the store is in the volume directory"
    );
    drop(node);
    drop(image);
}
