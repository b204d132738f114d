//! A fault-injecting TCP proxy for end-to-end tests: put it between a broker
//! and Redis (or a client and a broker) and switch, at run time, between
//! passing bytes, adding latency, a black hole (nothing forwarded either
//! way: a silent network), cutting one direction only (requests arrive,
//! answers never do), and resets (every connection, open or new, gets a
//! TCP RST).
//!
//! The proxy runs on its own thread with its own tokio runtime, so it works
//! the same from a sync test and from a `#[tokio::test]`, and a busy test
//! runtime cannot starve it. It stops (every connection closed) on drop.
//!
//! ```ignore
//! let proxy = FaultProxy::start(redis.addr());
//! let broker = Broker::start_with(&[("TESSERA_STORE__URLS", &format!("[\"{}\"]", proxy.redis_url()))]);
//! proxy.set(Fault::Blackhole);   // Redis goes silent
//! proxy.set(Fault::Pass);        // and comes back
//! ```
//!
//! A black hole holds bytes rather than dropping them: TCP retransmits
//! across a real partition, so when it heals the peer receives what was
//! sent, late. A client must cope with answers to requests it gave up on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test harness")]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the bytes it carries, from the moment it is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything at once.
    Pass,
    /// Forward everything, each chunk delayed by this much (both directions).
    Latency(Duration),
    /// Forward nothing either way: connections stay open and silent (new
    /// ones are accepted, then silent too).
    Blackhole,
    /// Hold client → server bytes; server → client still flows.
    CutToServer,
    /// Hold server → client bytes (requests arrive, answers do not).
    CutToClient,
    /// RST every open connection now and every new one at accept.
    Reset,
}

impl Fault {
    /// Whether bytes going `to_server` (else to the client) are held.
    fn holds(&self, to_server: bool) -> bool {
        match self {
            Self::Blackhole => true,
            Self::CutToServer => to_server,
            Self::CutToClient => !to_server,
            Self::Pass | Self::Latency(_) | Self::Reset => false,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicUsize,
    open: AtomicUsize,
    reset: AtomicUsize,
}

/// A running proxy on `127.0.0.1:<free port>` to one upstream address.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts forwarding a fresh loopback port to `upstream`, with
    /// [`Fault::Pass`].
    pub fn start(upstream: SocketAddr) -> Self {
        let (fault, _) = watch::channel(Fault::Pass);
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let faults = fault.clone();
        let shared = counters.clone();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
                    addr_tx.send(listener.local_addr().unwrap()).unwrap();
                    tokio::select! {
                        () = accept_loop(listener, upstream, faults, shared) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels every connection task, which
                // closes its sockets.
            })
            .unwrap();
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            addr,
            fault,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT/`, for a proxy in front of a Redis.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Switches to `fault`; open connections follow at once.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.fault.borrow().clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now (accepted and not yet closed by either side).
    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Connections ended with a RST by [`Fault::Reset`].
    pub fn resets(&self) -> usize {
        self.counters.reset.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        let rx = fault.subscribe();
        let counters = counters.clone();
        tokio::spawn(async move {
            counters.open.fetch_add(1, Ordering::SeqCst);
            let reset = serve(client, upstream, rx).await;
            if reset {
                counters.reset.fetch_add(1, Ordering::SeqCst);
            }
            counters.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Carries one connection until both sides closed (false) or a reset (true).
async fn serve(mut client: TcpStream, upstream: SocketAddr, mut rx: watch::Receiver<Fault>) -> bool {
    if *rx.borrow_and_update() == Fault::Reset {
        rst(&client);
        return true;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        // Upstream down: the client sees its connection reset, as a
        // refused connect would look through a real load balancer.
        rst(&client);
        return true;
    };
    let reset = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let mut watch_reset = rx.clone();
        tokio::select! {
            () = async {
                tokio::join!(pump(cr, sw, true, rx.clone()), pump(sr, cw, false, rx.clone()));
            } => false,
            _ = watch_reset.wait_for(|f| *f == Fault::Reset) => true,
        }
    };
    if reset {
        rst(&client);
        rst(&server);
    }
    reset
}

/// Makes the coming drop of `stream` send a RST instead of a FIN.
fn rst(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Copies `from` to `to` chunk by chunk under the fault in force; on EOF or
/// an error, shuts `to` down for writing (a half close passes through).
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    to_server: bool,
    mut rx: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Held bytes wait here (and the kernel buffers the rest): a healed
        // network delivers them late, as TCP would.
        let fault = match rx.wait_for(|f| !f.holds(to_server)).await {
            Ok(f) => f.clone(),
            Err(_) => break,
        };
        if let Fault::Latency(d) = fault {
            tokio::time::sleep(d).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream as StdStream;
    use std::time::Instant;

    use super::*;

    /// An echo server on loopback: every byte read is written back.
    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(proxy: &FaultProxy) -> StdStream {
        let s = StdStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        s
    }

    /// Sends `msg` and reads it back; `Err` with the read error's kind.
    fn round_trip(s: &mut StdStream, msg: &[u8]) -> Result<Vec<u8>, std::io::ErrorKind> {
        s.write_all(msg).map_err(|e| e.kind())?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).map_err(|e| e.kind())?;
        Ok(got)
    }

    fn is_timeout(kind: std::io::ErrorKind) -> bool {
        matches!(kind, std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    }

    /// Polls `check` (≤ 5 s): the proxy's counters move on its own thread.
    fn until(what: &str, check: impl Fn() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn passes_bytes_and_counts_connections() {
        let proxy = FaultProxy::start(echo_server());
        let mut a = connect(&proxy);
        assert_eq!(round_trip(&mut a, b"hello").unwrap(), b"hello");
        let b = connect(&proxy);
        until("two connections open", || proxy.open() == 2);
        assert_eq!(proxy.accepted(), 2);
        drop(a);
        drop(b);
        until("both connections closed", || proxy.open() == 0);
    }

    #[test]
    fn latency_delays_every_answer() {
        let proxy = FaultProxy::start(echo_server());
        let mut s = connect(&proxy);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        proxy.set(Fault::Latency(Duration::from_millis(150)));
        let start = Instant::now();
        assert_eq!(round_trip(&mut s, b"slow").unwrap(), b"slow");
        // One delay each way.
        assert!(start.elapsed() >= Duration::from_millis(300), "{:?}", start.elapsed());
    }

    #[test]
    fn a_blackhole_is_silent_and_delivers_late_when_healed() {
        let proxy = FaultProxy::start(echo_server());
        let mut s = connect(&proxy);
        proxy.set(Fault::Blackhole);
        let kind = round_trip(&mut s, b"lost?").unwrap_err();
        assert!(is_timeout(kind), "{kind:?}");
        // A new connection is accepted, and silent too.
        let mut fresh = connect(&proxy);
        assert!(is_timeout(round_trip(&mut fresh, b"x").unwrap_err()));
        proxy.set(Fault::Pass);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut late = [0u8; 5];
        s.read_exact(&mut late).unwrap();
        assert_eq!(&late, b"lost?");
        assert_eq!(proxy.fault(), Fault::Pass);
    }

    #[test]
    fn a_cut_direction_holds_only_that_direction() {
        let proxy = FaultProxy::start(echo_server());
        let mut s = connect(&proxy);
        proxy.set(Fault::CutToClient);
        assert!(is_timeout(round_trip(&mut s, b"req").unwrap_err()));
        // The request reached the server: its echo is held, not lost, and
        // arrives first once the direction is healed.
        proxy.set(Fault::CutToServer);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut echoed = [0u8; 3];
        s.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"req");
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        assert!(is_timeout(round_trip(&mut s, b"more").unwrap_err()));
    }

    #[test]
    fn reset_kills_open_connections_and_refuses_new_ones() {
        let proxy = FaultProxy::start(echo_server());
        let mut s = connect(&proxy);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(round_trip(&mut s, b"ok").unwrap(), b"ok");
        proxy.set(Fault::Reset);
        until("the open connection reset", || proxy.resets() == 1);
        let mut buf = [0u8; 1];
        let err = s.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err:?}");
        let mut fresh = connect(&proxy);
        fresh.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let err = fresh.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err:?}");
        proxy.set(Fault::Pass);
        let mut healed = connect(&proxy);
        healed.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(round_trip(&mut healed, b"back").unwrap(), b"back");
        until("only the healed connection open", || proxy.open() == 1);
    }
}
