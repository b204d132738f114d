//! The Unix-socket attestation listener: plaintext gRPC over a socket in a
//! directory we create, with the socket's mode `0600` or `0660`. Each
//! connection is attested once, at accept, from what the kernel says:
//!
//! 1. `SO_PEERCRED` (uid, gid, pid of the process that connected);
//! 2. a pidfd for that pid, so the process we inspect stays the one we hold
//!    (`pidfd_open`; refused if the process is already gone);
//! 3. the process's start time from `/proc/<pid>/stat` must not be later
//!    than the connection's accept: a process started after it cannot be
//!    the one that connected, so a recycled PID is refused;
//! 4. `/proc/<pid>/exe`: its path, and the SHA-256 of its contents;
//! 5. then the pidfd must still be alive and the start time unchanged:
//!    if the process exited while we read (its PID free for reuse), the
//!    facts may be someone else's, and the connection is refused.
//!
//! Any failure attests nothing (fail closed); the gRPC edge then refuses
//! every call of the connection with UNAUTHENTICATED and an audit record.
//! The facts are matched against `unix` selectors in the identity registry.

use std::io;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tessera_core::attestation::UnixPeer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::transport::server::Connected;

use super::config::UnixConfig;

/// Largest executable hashed, in bytes.
const MAX_EXE_BYTES: u64 = 1024 * 1024 * 1024;
/// How long attesting one connection may take.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the listener learned about a connection's peer, or why it could
/// not; the gRPC edge reads it from each request's extensions.
#[derive(Debug, Clone)]
pub struct UnixPeerInfo(pub Arc<Result<UnixPeer, String>>);

/// Creates the socket's directory if missing (0700 for mode 0600, 0750 for
/// 0660), removes a stale socket (never another kind of file), binds, and
/// sets the socket's mode.
pub fn bind(config: &UnixConfig) -> io::Result<UnixListener> {
    let path = &config.socket;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        let dir_mode = if config.mode == 0o600 { 0o700 } else { 0o750 };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("`{}` exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.mode))?;
    Ok(listener)
}

/// One accepted, attested (or refused) Unix connection.
pub struct UnixConn {
    stream: UnixStream,
    peer: UnixPeerInfo,
    _permit: OwnedSemaphorePermit,
}

impl Connected for UnixConn {
    type ConnectInfo = UnixPeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for UnixConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for UnixConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts connections, attests each peer, and yields at most
/// `max_connections` open connections at once.
pub fn accept_loop(listener: UnixListener, max_connections: usize) -> mpsc::Receiver<Result<UnixConn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "unix accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Taken right at accept: the peer process must be older than this.
            let accepted_at = uptime_ticks();
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(max_connections, "unix connection cap reached; closing new connection");
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let cred = stream.peer_cred();
                let inspected = match (cred, accepted_at) {
                    (Ok(cred), Ok(accepted_at)) => {
                        let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
                        match pid {
                            Some(pid) => tokio::time::timeout(
                                INSPECT_TIMEOUT,
                                tokio::task::spawn_blocking(move || inspect(uid, gid, pid, accepted_at)),
                            )
                            .await
                            .map_err(|_| "inspecting the peer process timed out".to_owned())
                            .and_then(|r| r.map_err(|e| format!("inspecting the peer process failed: {e}")))
                            .and_then(|r| r),
                            None => Err("the kernel gave no peer pid".to_owned()),
                        }
                    }
                    (Err(e), _) => Err(format!("no peer credentials: {e}")),
                    (_, Err(e)) => Err(format!("cannot read /proc/uptime: {e}")),
                };
                if let Err(reason) = &inspected {
                    tracing::info!(reason = %reason, "unix peer not attested");
                }
                let _ = tx
                    .send(Ok(UnixConn {
                        stream,
                        peer: UnixPeerInfo(Arc::new(inspected)),
                        _permit: permit,
                    }))
                    .await;
            });
        }
    });
    rx
}

/// Clock ticks since boot (the unit of a process's start time in `/proc/<pid>/stat`).
fn uptime_ticks() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/uptime")?;
    let secs: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("malformed /proc/uptime"))?;
    let ticks = rustix::param::clock_ticks_per_second();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "uptime in ticks fits easily; rounding up only makes the check stricter by a tick"
    )]
    Ok((secs * ticks as f64).ceil() as u64)
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: i32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain anything;
    // the fields after the last `)` start at field 3.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))?;
    after
        .split_whitespace()
        .nth(22 - 3)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))
}

/// Whether the process behind `pidfd` has exited.
fn exited(pidfd: &std::os::fd::OwnedFd) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
    let ready = rustix::event::poll(&mut fds, Some(&zero))?;
    Ok(ready > 0)
}

fn exe_digest(pid: i32) -> io::Result<(String, String)> {
    use std::io::Read as _;
    let link = PathBuf::from(format!("/proc/{pid}/exe"));
    let path = std::fs::read_link(&link)?;
    let mut file = std::fs::File::open(&link)?;
    let len = file.metadata()?.len();
    if len > MAX_EXE_BYTES {
        return Err(io::Error::other("executable larger than 1 GiB"));
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(buf.get(..n).unwrap_or_default());
    }
    let hex: String = ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok((path.to_string_lossy().into_owned(), format!("sha256:{hex}")))
}

/// Steps 2 to 5 of the module docs, for a peer the kernel named.
fn inspect(uid: u32, gid: u32, pid: i32, accepted_at: u64) -> Result<UnixPeer, String> {
    let raw = rustix::process::Pid::from_raw(pid).ok_or("the kernel gave an invalid peer pid")?;
    let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
        .map_err(|e| format!("peer process {pid} is gone ({e}); refusing"))?;
    let started = start_time(pid).map_err(|e| format!("peer process {pid}: {e}"))?;
    if started > accepted_at {
        return Err(format!(
            "peer pid {pid} belongs to a process started after the connection (pid reused); refusing"
        ));
    }
    let (exe_path, exe_sha256) = exe_digest(pid).map_err(|e| format!("peer process {pid} executable: {e}"))?;
    let gone = exited(&pidfd).map_err(|e| format!("peer process {pid}: {e}"))?;
    if gone || start_time(pid).ok() != Some(started) {
        return Err(format!("peer process {pid} exited while being attested; refusing"));
    }
    Ok(UnixPeer {
        uid,
        gid,
        pid,
        exe_path,
        exe_sha256,
    })
}

/// Removes the socket file at shutdown (best effort).
pub fn cleanup(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn our_own_process_is_inspected() {
        let me = i32::try_from(std::process::id()).unwrap();
        let peer = inspect(1, 2, me, uptime_ticks().unwrap()).unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(peer.exe_path, exe.to_string_lossy());
        assert!(peer.exe_sha256.starts_with("sha256:") && peer.exe_sha256.len() == 71);
        assert_eq!((peer.uid, peer.gid, peer.pid), (1, 2, me));
    }

    /// A process that started after the accept cannot be the peer (A14).
    #[test]
    fn a_process_younger_than_the_connection_is_refused() {
        let before = uptime_ticks().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let err = inspect(0, 0, pid, before.saturating_sub(1)).unwrap_err();
        assert!(err.contains("pid reused"), "{err}");
        child.kill().unwrap();
        child.wait().unwrap();
        // Once it is gone, nothing is attested either.
        let err = inspect(0, 0, pid, uptime_ticks().unwrap()).unwrap_err();
        assert!(err.contains("gone") || err.contains("refusing"), "{err}");
    }

    #[test]
    fn bind_creates_a_private_directory_and_socket() {
        let dir = std::env::temp_dir().join(format!("tessera-unix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let socket = dir.join("sub").join("agent.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = UnixConfig {
                socket: socket.clone(),
                mode: 0o600,
            };
            let listener = bind(&config).unwrap();
            let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let dir_mode = std::fs::metadata(socket.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(dir_mode, 0o700);
            drop(listener);
            // A stale socket is replaced; a regular file is not.
            bind(&config).unwrap();
            cleanup(&socket);
            std::fs::write(&socket, "x").unwrap();
            assert!(bind(&config).is_err());
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
