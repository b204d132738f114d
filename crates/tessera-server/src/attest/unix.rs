//! The Unix-socket attestation listener: plaintext gRPC over a socket in a
//! directory we create, with the socket's mode `0600` or `0660`. Each
//! connection is attested once, at accept, from what the kernel says:
//!
//! 1. `SO_PEERCRED` (uid, gid, pid of the process that connected);
//! 2. `SO_PEERPIDFD`: a pidfd the kernel took of that very process when it
//!    connected, so it cannot name a later process that reuses the PID;
//!    a kernel without it (before Linux 6.5) attests nobody;
//! 3. the process must still be alive (by the pidfd): a dead peer's PID may
//!    already belong to someone else, whose `/proc` entry we would read;
//! 4. `/proc/<pid>/exe`: its path, and the SHA-256 of its contents;
//! 5. then the pidfd must still be alive: while the process lives its PID
//!    cannot be reused, so what we read in step 4 was its own.
//!
//! What is attested is the connecting process as it is when the broker
//! looks, right after accept, and for the whole connection: a process that
//! connects and then hands the socket to another (by fork or SCM_RIGHTS)
//! lends it its identity, as with any per-connection attestation; selectors
//! that pin the uid limit that to processes of the same user.
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
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(max_connections, "unix connection cap reached; closing new connection");
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let inspected = match (stream.peer_cred(), peer_pidfd(&stream)) {
                    (Ok(cred), Ok(pidfd)) => {
                        let (uid, gid) = (cred.uid(), cred.gid());
                        match cred.pid() {
                            Some(pid) => tokio::time::timeout(
                                INSPECT_TIMEOUT,
                                tokio::task::spawn_blocking(move || inspect(uid, gid, pid, &pidfd)),
                            )
                            .await
                            .map_err(|_| "inspecting the peer process timed out".to_owned())
                            .and_then(|r| r.map_err(|e| format!("inspecting the peer process failed: {e}")))
                            .and_then(|r| r),
                            None => Err("the kernel gave no peer pid".to_owned()),
                        }
                    }
                    (Err(e), _) => Err(format!("no peer credentials: {e}")),
                    (_, Err(reason)) => Err(reason),
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

/// The pidfd of the process that connected `stream` (`SO_PEERPIDFD`), or
/// why there is none.
fn peer_pidfd(stream: &UnixStream) -> Result<std::os::fd::OwnedFd, String> {
    use nix::errno::Errno;
    match nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerPidfd) {
        Ok(fd) => Ok(fd),
        Err(Errno::ENOPROTOOPT) => {
            Err("this kernel cannot pin the peer process (SO_PEERPIDFD needs Linux 6.5 or later); refusing".to_owned())
        }
        // Linux 6.5-6.15 answer EINVAL for a peer that has exited.
        Err(Errno::EINVAL) => {
            Err("no pidfd for the peer process (it has exited, or this kernel lacks SO_PEERPIDFD); refusing".to_owned())
        }
        Err(Errno::ESRCH) => Err("the peer process is gone; refusing".to_owned()),
        Err(e) => Err(format!("no pidfd for the peer process: {e}; refusing")),
    }
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
    let hex = tessera_core::hex::lower(ctx.finish().as_ref());
    Ok((path.to_string_lossy().into_owned(), format!("sha256:{hex}")))
}

/// Steps 3 to 5 of the module docs, for the peer the kernel named and
/// pinned with `pidfd`.
fn inspect(uid: u32, gid: u32, pid: i32, pidfd: &std::os::fd::OwnedFd) -> Result<UnixPeer, String> {
    if exited(pidfd).map_err(|e| format!("peer process {pid}: {e}"))? {
        return Err(format!(
            "peer process {pid} exited before it was attested (its pid may be someone else's now); refusing"
        ));
    }
    let (exe_path, exe_sha256) = exe_digest(pid).map_err(|e| format!("peer process {pid} executable: {e}"))?;
    if exited(pidfd).map_err(|e| format!("peer process {pid}: {e}"))? {
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

    #[tokio::test]
    async fn our_own_process_is_inspected_through_its_socket() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let pidfd = peer_pidfd(&ours).unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        let peer = inspect(1, 2, me, &pidfd).unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(peer.exe_path, exe.to_string_lossy());
        assert!(peer.exe_sha256.starts_with("sha256:") && peer.exe_sha256.len() == 71);
        assert_eq!((peer.uid, peer.gid, peer.pid), (1, 2, me));
    }

    /// A14: a pidfd whose process has exited attests nothing, whatever the
    /// PID now names.
    #[test]
    fn a_dead_peer_is_refused() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let raw = rustix::process::Pid::from_raw(pid).unwrap();
        let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).unwrap();
        assert!(inspect(0, 0, pid, &pidfd).is_ok(), "alive: attested");
        child.kill().unwrap();
        child.wait().unwrap();
        // Even if the pid named a live process again, this pidfd says the
        // peer is gone: ours (a live process) stands in for a reuse.
        let me = i32::try_from(std::process::id()).unwrap();
        let err = inspect(0, 0, me, &pidfd).unwrap_err();
        assert!(err.contains("exited before it was attested"), "{err}");
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
