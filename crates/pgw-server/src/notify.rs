//! The systemd readiness protocol (`sd_notify(3)`), for units with `Type=notify`
//! (deploy/systemd/pgw.service).
//!
//! When systemd starts pgw it sets `NOTIFY_SOCKET` to a unix datagram socket (a path, or an
//! abstract name written with a leading `@`). pgw sends `READY=1` once its HTTP listener is
//! bound and the node has started (so `systemctl start` returns only when the node serves
//! HTTP), and `STOPPING=1` when a shutdown begins. Without `NOTIFY_SOCKET` (not under
//! systemd, or `Type=simple`) every call does nothing.
//!
//! A failed send is logged and otherwise ignored: systemd then times the start out
//! (`TimeoutStartSec`) and says so, which is the clearer place for the error.

use std::future::Future;

/// Sends `READY=1` now (the caller has bound the HTTP listener and started the node), and
/// returns `shutdown` wrapped so that `STOPPING=1` is sent as soon as it completes, before
/// the server starts draining.
pub fn serving(
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    send("READY=1");
    async move {
        shutdown.await;
        send("STOPPING=1");
    }
}

/// Sends one notification to `$NOTIFY_SOCKET`, if it is set.
fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = try_send(&path, state) {
        tracing::warn!(
            NOTIFY_SOCKET = %path.to_string_lossy(),
            err = %e,
            "cannot notify systemd ({state}); with Type=notify the unit's start will time out: \
             check that the service may write to the notify socket (NotifyAccess=main)"
        );
    }
}

#[cfg(unix)]
fn try_send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::net::UnixDatagram;
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = path.as_bytes().strip_prefix(b"@") {
        // An abstract socket (Linux): `@name` stands for a name that starts with a NUL byte.
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "abstract unix sockets exist only on Linux",
            ));
        }
    }
    socket.send_to(state.as_bytes(), path)?;
    Ok(())
}

#[cfg(not(unix))]
fn try_send(_path: &std::ffi::OsStr, _state: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "NOTIFY_SOCKET is a unix socket",
    ))
}
