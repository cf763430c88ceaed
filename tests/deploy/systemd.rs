//! deploy/systemd/pgw.service: `systemd-analyze verify` accepts it as shipped, it has the
//! settings issue 12 asks for, and pgw speaks the `Type=notify` protocol: `READY=1` once
//! the HTTP port serves, `STOPPING=1` on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{free_port, get, pgw_binary};
use crate::{read_deploy, run_ok, tool};

/// The unit's settings, `Key=value` lines outside comments.
fn settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting<'a>(all: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    all.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn the_unit_has_what_an_operator_needs() {
    let unit = read_deploy("systemd/pgw.service");
    let s = settings(&unit);
    let one = |key: &str| -> String {
        let v = setting(&s, key);
        assert_eq!(
            v.len(),
            1,
            "{key}= should appear once in pgw.service: {v:?}"
        );
        v[0].to_string()
    };
    assert_eq!(one("Type"), "notify");
    let user = one("User");
    assert!(
        !user.is_empty() && user != "root" && user != "0",
        "User={user}"
    );
    assert_eq!(one("StateDirectory"), "pgw");
    let exec = one("ExecStart");
    assert!(
        exec.starts_with("/usr/local/bin/pgw ") && exec.contains("--storage.path=/var/lib/pgw"),
        "ExecStart={exec}"
    );
    let reload = one("ExecReload");
    assert!(
        reload.ends_with("kill -HUP $MAINPID"),
        "ExecReload sends SIGHUP to pgw: {reload}"
    );
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("Restart"), "on-failure");
    let nofile: u64 = one("LimitNOFILE").parse().expect("LimitNOFILE is a number");
    assert!(nofile >= 8192, "LimitNOFILE={nofile}");
    let env_file = one("EnvironmentFile");
    assert_eq!(env_file, "-/etc/default/pgw");

    // The environment file sets ARGS, and pgw accepts every flag in it.
    let env = read_deploy("systemd/pgw.env");
    let args_line = env
        .lines()
        .find(|l| l.starts_with("ARGS="))
        .expect("pgw.env sets ARGS");
    let args = args_line["ARGS=".len()..].trim_matches('"');
    let dir = tempfile::tempdir().unwrap();
    // Parse-only check: the flags plus --version, which clap handles after parsing them all.
    let mut cmd = Command::new(pgw_binary());
    cmd.arg(format!("--storage.path={}", dir.path().display()))
        .args(args.split_whitespace())
        .arg("--version");
    let out = run_ok(&mut cmd);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("pgw "),
        "{out:?}"
    );
}

/// `systemd-analyze verify` on the unit as shipped. It checks that ExecStart's binary
/// exists, so the check runs in a private mount namespace in which a directory holding the
/// freshly built `pgw` is mounted over `/usr/local/bin` (nothing is installed on the host).
#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let analyze = tool("/usr/bin/systemd-analyze", "systemd");
    let unit = crate::deploy_file("systemd/pgw.service");
    let bin = tempfile::tempdir().unwrap();
    std::fs::copy(pgw_binary(), bin.path().join("pgw")).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = Command::new(tool("/usr/bin/unshare", "util-linux"));
    if !root {
        // An unprivileged user namespace in which we are root, to mount.
        cmd.arg("--map-root-user");
    }
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" /usr/local/bin && exec "$2" verify "$3""#)
        .arg("sh")
        .arg(bin.path())
        .arg(&analyze)
        .arg(&unit);
    let out = cmd.output().expect("run unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("pgw.service"),
        "systemd-analyze verify {} ({}):\n{}{stderr}",
        unit.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Ends the child by its PID when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn recv(sock: &UnixDatagram, what: &str, deadline: Instant, child: &mut Child) -> String {
    let mut buf = [0u8; 4096];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv on the notify socket: {e}"),
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("pgw exited ({status}) before it sent {what}");
        }
        assert!(Instant::now() < deadline, "no {what} on NOTIFY_SOCKET");
    }
}

async fn notify_protocol(notify_socket: &str, sock: &UnixDatagram) {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let log = std::fs::File::create(data.path().join("pgw.log")).unwrap();
    let child = Command::new(pgw_binary())
        .arg(format!("--web.listen-address={addr}"))
        .arg(format!(
            "--storage.path={}",
            data.path().join("store").display()
        ))
        .env("NOTIFY_SOCKET", notify_socket)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn pgw");
    let mut child = Running(child);
    let log_path = data.path().join("pgw.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    let msg = recv(sock, "READY=1", deadline, &mut child.0);
    assert_eq!(
        msg.trim_end(),
        "READY=1",
        "log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    // READY=1 means the HTTP port serves: the very first request is answered.
    let r = get(addr, "/-/healthy", Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("/-/healthy right after READY=1: {e}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(addr, "/-/ready", Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("/-/ready right after READY=1: {e}"));
    assert!(
        r.status == 200 || r.status == 503,
        "/-/ready: {} {}",
        r.status,
        r.text()
    );
    crate::support::wait_ready(addr, Instant::now() + Duration::from_secs(30)).await;
    // No second READY=1, and nothing else before the shutdown.
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    assert!(
        sock.recv(&mut buf).is_err(),
        "unexpected extra notification"
    );
    sock.set_nonblocking(false).unwrap();

    // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let msg = recv(
        sock,
        "STOPPING=1",
        Instant::now() + Duration::from_secs(30),
        &mut child.0,
    );
    assert_eq!(msg.trim_end(), "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "pgw did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "pgw exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgw_notifies_ready_and_stopping_on_a_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    notify_protocol(path.to_str().unwrap(), &sock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgw_notifies_on_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt as _;
    let name = format!("pgw-test-notify-{}-{}", std::process::id(), free_port());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    notify_protocol(&format!("@{name}"), &sock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgw_without_notify_socket_starts_as_before() {
    // NOTIFY_SOCKET pointing nowhere: pgw logs a warning and serves anyway.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let log_path = dir.path().join("pgw.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(pgw_binary())
        .arg(format!("--web.listen-address={addr}"))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("store").display()
        ))
        .env("NOTIFY_SOCKET", dir.path().join("nobody-listens.sock"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn pgw");
    let _child = Running(child);
    crate::support::wait_ready(addr, Instant::now() + Duration::from_secs(60)).await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("cannot notify systemd (READY=1)"),
        "the failed notification is logged:\n{text}"
    );
}
