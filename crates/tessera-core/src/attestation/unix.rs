//! Unix-socket attestation selectors: what the kernel says about a peer
//! (uid, gid, pid) and what its executable is (path and SHA-256), matched
//! against the selectors registered for an identity, as a SPIFFE workload
//! attestor does. Gathering the facts safely (peer credentials, a pidfd
//! against PID reuse) is the server's; matching them is here.

use std::fmt;

/// What is known about a Unix-socket peer, gathered by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixPeer {
    /// Effective uid from the kernel.
    pub uid: u32,
    /// Effective gid from the kernel.
    pub gid: u32,
    /// Process id from the kernel (for logs; never matched).
    pub pid: i32,
    /// The executable's path (`/proc/<pid>/exe`).
    pub exe_path: String,
    /// `sha256:<hex>` of the executable's contents.
    pub exe_sha256: String,
}

impl UnixPeer {
    /// A one-line, secret-free description for logs and refusals.
    pub fn describe(&self) -> String {
        format!(
            "uid {} gid {} pid {} exe `{}` ({})",
            self.uid,
            self.gid,
            self.pid,
            self.exe_path.escape_debug(),
            self.exe_sha256
        )
    }

    /// The evidence digest for audit.
    pub fn evidence(&self) -> String {
        format!(
            "uid={},gid={},pid={},exe={}",
            self.uid, self.gid, self.pid, self.exe_sha256
        )
    }
}

/// Selectors a Unix peer must all match. `uid` is always required (config
/// validation refuses a selector without it): an executable hash alone does
/// not resist code injection by the same user (`LD_PRELOAD`, `ptrace`, a
/// process that connects and then `exec`s something else), so it may only
/// narrow a uid, never stand for an identity on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixSelector {
    /// Required uid.
    pub uid: Option<u32>,
    /// Required gid.
    pub gid: Option<u32>,
    /// Required executable path, exactly.
    pub exe_path: Option<String>,
    /// Required executable digest, `sha256:<lowercase hex>` (or the bare hex).
    pub exe_sha256: Option<String>,
}

impl UnixSelector {
    /// Whether the selector pins the peer enough to stand for an identity:
    /// it names a uid (whatever else it names).
    pub fn is_specific(&self) -> bool {
        self.uid.is_some()
    }

    /// Whether `peer` matches every selector set.
    pub fn matches(&self, peer: &UnixPeer) -> bool {
        self.is_specific()
            && self.uid.is_none_or(|u| u == peer.uid)
            && self.gid.is_none_or(|g| g == peer.gid)
            && self.exe_path.as_ref().is_none_or(|p| p == &peer.exe_path)
            && self.exe_sha256.as_ref().is_none_or(|h| {
                let want = h.strip_prefix("sha256:").unwrap_or(h);
                let have = peer.exe_sha256.strip_prefix("sha256:").unwrap_or(&peer.exe_sha256);
                !want.is_empty() && want.eq_ignore_ascii_case(have)
            })
    }
}

impl fmt::Display for UnixSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(u) = self.uid {
            parts.push(format!("uid={u}"));
        }
        if let Some(g) = self.gid {
            parts.push(format!("gid={g}"));
        }
        if let Some(p) = &self.exe_path {
            parts.push(format!("exe_path={p}"));
        }
        if let Some(h) = &self.exe_sha256 {
            parts.push(format!("exe_sha256={h}"));
        }
        f.write_str(&parts.join(","))
    }
}
