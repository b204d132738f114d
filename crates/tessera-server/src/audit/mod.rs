//! The audit trail's sinks — a JSON-lines file and, optionally, a Redis
//! Stream — failing closed. [`trail::AuditTrail`] fans records out to them.
//!
//! One writer task owns the file and the [`Chain`]: callers send it events
//! and wait for its answer, so records are totally ordered. Each call is
//! bounded by [`AuditConfig::timeout`]; a sink that errors (a full disk) or
//! hangs (a pipe nobody reads) makes the call fail with an error of kind
//! [`ErrorKind::Unavailable`], and the operation it records must fail too.
//!
//! The writer commits in groups: it takes every record already queued (up
//! to [`BATCH_RECORDS`], or until [`BATCH_BYTES`] are sealed), seals them in
//! order, appends them with one write and one sync, then answers all their
//! callers. Under concurrency a sync covers many records, so throughput is
//! not bounded by the sync latency; a lone record is still written at once.
//! A batch stands or falls as a whole: if its write or sync fails, every
//! caller in it gets the error.
//!
//! The chain only moves past a record once the record is in the file: a
//! record that failed is not counted, and a part of it left in a regular file
//! is cut off before the next one, so `tessera audit verify` never sees a
//! gap. A write that completes after its caller gave up stays in the file:
//! the trail may show an attempt that then failed closed, never miss an
//! operation that went through.
//!
//! The file is opened append-only and created `0600`. When it already holds
//! records, the chain continues from its last line, whose own hash is
//! checked; a corrupt last line stops the broker from starting.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tessera_core::ErrorKind;
use tessera_core::audit::{AuditEvent, AuditRecord, Chain, RecordError};
use tokio::sync::{mpsc, oneshot};

pub mod trail;

pub use self::trail::{AuditTrail, Require};

/// Events waiting for the writer. Bounded: behind a hung sink, callers wait
/// here (and time out) instead of piling up memory.
const QUEUE: usize = 256;

/// The most queued jobs one batch (one write, one sync) takes.
const BATCH_RECORDS: usize = 256;

/// A batch takes no more jobs once its sealed lines reach this many bytes
/// (so it may pass it by one record).
const BATCH_BYTES: usize = 1024 * 1024;

/// The first read size when looking for the last line of an existing file.
const TAIL_CHUNK: u64 = 64 * 1024;

/// When records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every write, before any caller whose record it carries hears
    /// it is written: a crash loses no record of an operation that went
    /// through. Records queued together share one write and one sync.
    #[default]
    Always,
    /// Never: the OS writes back when it likes. Faster, but a crash of the
    /// machine may lose the last records.
    Never,
}

/// Where and how the audit file is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The JSON-lines file (or a pipe or device; those are not synced).
    pub file: PathBuf,
    /// When records are forced to disk.
    pub fsync: FsyncPolicy,
    /// The most a record (or opening the file) may take, queueing included.
    pub timeout: Duration,
    /// Also write every record to the store's Redis Stream for this replica.
    pub redis_stream: bool,
    /// How many sinks must accept a record for its operation to go ahead.
    pub require: Require,
}

/// Why a record was not written, or the file could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The sink could not be opened, read or written.
    #[error("{sink}: cannot {op}: {source}")]
    Io {
        /// The sink.
        sink: Sink,
        /// What failed (`open`, `read`, `append to`).
        op: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file's last line is not a sealed record, so the chain cannot
    /// continue from it.
    #[error(
        "{sink}: its last record: {source}; repair it or move it aside \
         (`tessera audit verify` says where it breaks)"
    )]
    Corrupt {
        /// The sink.
        sink: Sink,
        /// What is wrong with the last line.
        #[source]
        source: RecordError,
    },
    /// Another process (a second broker on a copied configuration) holds
    /// the file: two writers would interleave two chains.
    #[error(
        "{sink} in use by {}: two brokers must not write one audit file \
         (give each its own `audit.file`)",
        holder.map_or_else(|| "another process".to_owned(), |pid| format!("pid {pid}"))
    )]
    InUse {
        /// The sink.
        sink: Sink,
        /// The process holding the lock, when `/proc/locks` names it.
        holder: Option<u32>,
    },
    /// The file's last records do not form one chain: two writers
    /// interleaved, or a record was removed or inserted.
    #[error(
        "{sink}: its last records do not form one chain: record {seq} does not follow the record \
         before it (two brokers wrote the file, or it was edited); move it aside and keep it as \
         evidence (`tessera audit verify` says where it breaks)"
    )]
    Broken {
        /// The sink.
        sink: Sink,
        /// The `seq` of the first record that does not follow.
        seq: u64,
    },
    /// The file did not answer within the configured timeout.
    #[error("{sink} did not answer within {}", humantime::format_duration(*timeout))]
    Timeout {
        /// The sink.
        sink: Sink,
        /// The bound that passed.
        timeout: Duration,
    },
    /// The writer task is gone (the log is shutting down).
    #[error("audit writer for {sink} stopped")]
    Stopped {
        /// The sink.
        sink: Sink,
    },
}

impl AuditError {
    /// What kind of failure this is: always [`ErrorKind::Unavailable`].
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Unavailable
    }
}

/// Which sink a record went to, for errors and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// The JSON-lines file.
    File(PathBuf),
    /// A Redis Stream, by key.
    Stream(String),
}

impl std::fmt::Display for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "audit file `{}`", path.display()),
            Self::Stream(key) => write!(f, "audit stream `{key}`"),
        }
    }
}

/// An audit trail in one sink (a JSON-lines file or a Redis Stream),
/// hash-chained.
#[derive(Debug)]
pub struct AuditLog {
    sink: Sink,
    timeout: Duration,
    jobs: mpsc::Sender<Job>,
    failures: AtomicU64,
    /// Syncs the writer asked for; shared with it.
    syncs: Arc<AtomicU64>,
    /// The running writer, which holds the sink (and the file's lock) until
    /// it sees the queue closed.
    writer: Option<tokio::task::JoinHandle<()>>,
}

/// One event for the writer, and where to send its outcome.
#[derive(Debug)]
struct Job {
    event: AuditEvent,
    reply: oneshot::Sender<Result<(), AuditError>>,
}

impl AuditLog {
    /// Opens (or creates, `0600`) the file for appending and starts the
    /// writer. An existing file's chain continues from its last line.
    ///
    /// Bounded by `config.timeout` too: opening a pipe nobody reads hangs.
    pub async fn open(config: AuditConfig) -> Result<Self, AuditError> {
        let AuditConfig {
            file, fsync, timeout, ..
        } = config;
        let sink = Sink::File(file.clone());
        let path = file.clone();
        let opening = tokio::task::spawn_blocking(move || open_file(&path));
        let opened = match tokio::time::timeout(timeout, opening).await {
            Err(_) => return Err(AuditError::Timeout { sink, timeout }),
            Ok(Err(join)) => {
                return Err(AuditError::Io {
                    sink,
                    op: "open",
                    source: io::Error::other(join.to_string()),
                });
            }
            Ok(Ok(opened)) => opened?,
        };
        tracing::info!(
            file = %file.display(),
            next_seq = opened.chain.next_seq(),
            "audit trail open"
        );
        let (mut log, writer, queue) = Self::start(file, timeout, opened, fsync).map_err(|source| AuditError::Io {
            sink: sink.clone(),
            op: "start the writer thread of",
            source,
        })?;
        log.writer = Some(tokio::spawn(writer.run(queue)));
        Ok(log)
    }

    /// Continues the chain of a Redis Stream from its last record and starts
    /// the writer. A stream whose last entry is not a sealed record is
    /// refused, like a corrupt file.
    pub async fn open_stream(stream: tessera_store::AuditStream, timeout: Duration) -> Result<Self, AuditError> {
        let sink = Sink::Stream(stream.key().to_owned());
        let last = match tokio::time::timeout(timeout, stream.last()).await {
            Err(_) => return Err(AuditError::Timeout { sink, timeout }),
            Ok(Err(e)) => {
                return Err(AuditError::Io {
                    sink,
                    op: "read",
                    source: io::Error::other(e.to_string()),
                });
            }
            Ok(Ok(last)) => last,
        };
        let chain = match last {
            None => Chain::genesis(),
            Some(line) => {
                let record = AuditRecord::from_line(&line).map_err(|source| AuditError::Corrupt {
                    sink: sink.clone(),
                    source,
                })?;
                Chain::resume(&record)
            }
        };
        tracing::info!(stream = %stream.key(), next_seq = chain.next_seq(), "audit stream open");
        let target = Box::new(StreamTarget { stream });
        let (mut log, writer, queue) = Self::start_with(sink, timeout, chain, target, Arc::new(AtomicU64::new(0)));
        log.writer = Some(tokio::spawn(writer.run(queue)));
        Ok(log)
    }

    /// The log over an opened file, and its writer, not yet running.
    fn start(
        file: PathBuf,
        timeout: Duration,
        opened: Opened,
        fsync: FsyncPolicy,
    ) -> io::Result<(Self, Writer, mpsc::Receiver<Job>)> {
        let syncs = Arc::new(AtomicU64::new(0));
        let target = Box::new(FileTarget {
            file: Arc::new(opened.file),
            end: opened.end,
            fsync,
            syncs: Arc::clone(&syncs),
            thread: FileThread::spawn()?,
        });
        Ok(Self::start_with(Sink::File(file), timeout, opened.chain, target, syncs))
    }

    fn start_with(
        sink: Sink,
        timeout: Duration,
        chain: Chain,
        target: Box<dyn Target>,
        syncs: Arc<AtomicU64>,
    ) -> (Self, Writer, mpsc::Receiver<Job>) {
        let (jobs, queue) = mpsc::channel(QUEUE);
        let writer = Writer {
            sink: sink.clone(),
            chain,
            target,
        };
        let log = Self {
            sink,
            timeout,
            jobs,
            failures: AtomicU64::new(0),
            syncs,
            writer: None,
        };
        (log, writer, queue)
    }

    /// Stops taking records and waits for the writer to finish what it
    /// holds and let go of the sink: once this returns, the file's lock is
    /// released and another log may open it.
    pub async fn close(self) {
        let Self { jobs, writer, .. } = self;
        drop(jobs);
        if let Some(writer) = writer
            && let Err(e) = writer.await
        {
            tracing::warn!(error = %e, "audit writer ended abnormally");
        }
    }

    /// Seals `event` into the chain and appends it, synced per the policy
    /// (with whatever other records were queued alongside it).
    /// `Ok` means the record is in the sink; on any error the operation it
    /// records must fail (fail closed).
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let (reply, answer) = oneshot::channel();
        let written = tokio::time::timeout(self.timeout, async {
            self.jobs.send(Job { event, reply }).await.map_err(|_| self.stopped())?;
            answer.await.map_err(|_| self.stopped())?
        })
        .await
        .unwrap_or_else(|_| {
            Err(AuditError::Timeout {
                sink: self.sink.clone(),
                timeout: self.timeout,
            })
        });
        if let Err(e) = &written {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "audit record not written");
        }
        written
    }

    /// How many records failed (errors and timeouts) since the log opened.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// How many times the file was synced (`fsync` calls, failed ones
    /// included) since the log opened: one per batch of records under
    /// [`FsyncPolicy::Always`], none under [`FsyncPolicy::Never`], for a
    /// pipe or device, or for a stream.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Where the records go.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    fn stopped(&self) -> AuditError {
        AuditError::Stopped {
            sink: self.sink.clone(),
        }
    }
}

#[async_trait::async_trait]
impl crate::broker::AuditSink for AuditLog {
    async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        Self::record(self, event).await
    }
}

/// Where our last record ends in a regular file, so that a failed write can
/// be cut back off. Pipes and devices have no end.
#[derive(Debug, Clone, Copy)]
struct End {
    len: u64,
    /// A failed write may have left part of a line after `len`.
    dirty: bool,
}

/// An opened file and where its chain stands.
struct Opened {
    file: File,
    chain: Chain,
    end: Option<End>,
}

/// Opens the audit file as the broker will (append, created `0600`) and
/// checks its chain's tail, without taking the lock or writing to it: for
/// `tesserad --check`, which may run beside the broker that holds it. A
/// pipe or device is left alone (opening a pipe nobody reads blocks).
pub fn check_file(path: &Path) -> Result<(), AuditError> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return Ok(());
    }
    open_file_as(path, Opening::Check).map(drop)
}

/// Why the file is opened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// To write: locked, and a missing last newline is added.
    Serve,
    /// To see that it could be: no lock, no write.
    Check,
}

fn open_file(path: &Path) -> Result<Opened, AuditError> {
    open_file_as(path, Opening::Serve)
}

fn open_file_as(path: &Path, opening: Opening) -> Result<Opened, AuditError> {
    let io = |op| {
        move |source| AuditError::Io {
            sink: Sink::File(path.to_owned()),
            op,
            source,
        }
    };
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io("open"))?;
    let meta = file.metadata().map_err(io("open"))?;
    if !meta.is_file() {
        return Ok(Opened {
            file,
            chain: Chain::genesis(),
            end: None,
        });
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "audit file is open to others than its owner; 0600 is expected"
        );
    }
    if opening == Opening::Serve {
        lock(&file, &meta, path)?;
    }
    let mut len = meta.len();
    check_tail(path, len)?;
    let (last, ends_with_newline) = last_line(path, len).map_err(io("read"))?;
    let chain = match last {
        None => Chain::genesis(),
        Some(line) => {
            let record = String::from_utf8(line)
                .map_err(|_| RecordError::Malformed)
                .and_then(|line| AuditRecord::from_line(&line))
                .map_err(|source| AuditError::Corrupt {
                    sink: Sink::File(path.to_owned()),
                    source,
                })?;
            Chain::resume(&record)
        }
    };
    if !ends_with_newline && opening == Opening::Serve {
        // The last record is whole but its newline never made it: end the
        // line so the next record starts on its own.
        (&file).write_all(b"\n").map_err(io("append to"))?;
        len = len.saturating_add(1);
    }
    Ok(Opened {
        file,
        chain,
        end: Some(End { len, dirty: false }),
    })
}

/// Takes an exclusive advisory lock (`flock`) on the file for as long as
/// it is open, so a second broker on the same file stops at start instead
/// of interleaving its chain with ours. The lock goes with the process.
fn lock(file: &File, meta: &std::fs::Metadata, path: &Path) -> Result<(), AuditError> {
    // rustix's flock, not std's File::try_lock: that needs Rust 1.89, above
    // the workspace's rust-version.
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(AuditError::InUse {
            sink: Sink::File(path.to_owned()),
            holder: lock_holder(meta),
        }),
        Err(errno) => Err(AuditError::Io {
            sink: Sink::File(path.to_owned()),
            op: "lock",
            source: errno.into(),
        }),
    }
}

/// The pid holding a `flock` on the file, from `/proc/locks` (Linux), whose
/// lines read `1: FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF`
/// with the device numbers in hex.
fn lock_holder(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let dev = meta.dev();
    // Linux's dev_t encoding (glibc's gnu_dev_major/minor).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let id = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, file, ..] if *file == id => pid.parse().ok(),
            _ => None,
        }
    })
}

/// Checks that the records in the file's last [`TAIL_CHUNK`] bytes form one
/// chain: each is sealed, follows the one before (`seq` and `prev`), and a
/// file read from its start begins at the genesis. The last line alone can
/// be whole and sealed after two writers interleaved; the links show it.
/// The last line itself is checked by the caller (it may lack its newline).
fn check_tail(path: &Path, len: u64) -> Result<(), AuditError> {
    let sink = || Sink::File(path.to_owned());
    let start = len.saturating_sub(TAIL_CHUNK);
    let size = usize::try_from(len.saturating_sub(start)).map_err(|e| AuditError::Io {
        sink: sink(),
        op: "read",
        source: io::Error::other(e),
    })?;
    let mut buf = vec![0; size];
    File::open(path)
        .and_then(|file| file.read_exact_at(&mut buf, start))
        .map_err(|source| AuditError::Io {
            sink: sink(),
            op: "read",
            source,
        })?;
    let mut lines = buf.split(|&b| b == b'\n');
    if start > 0 {
        // Most likely the end of a line that began before the window.
        lines.next();
    }
    // (seq, hash) of the record before; from the genesis when the window
    // holds the whole file, unknown (any first record) otherwise.
    let mut previous: Option<(u64, String)> = (start == 0).then(|| (0, tessera_core::audit::GENESIS.to_owned()));
    for line in lines.filter(|l| !l.is_empty()) {
        // The caller reports an unreadable last line with its own error.
        let Some(record) = std::str::from_utf8(line)
            .ok()
            .and_then(|l| AuditRecord::from_line(l).ok())
        else {
            continue;
        };
        let follows = previous
            .as_ref()
            .is_none_or(|(seq, hash)| record.seq == seq.saturating_add(1) && record.prev == *hash);
        if !follows {
            tracing::error!(
                file = %path.display(),
                seq = record.seq,
                "audit file's chain is broken near its end; refusing to append to it"
            );
            return Err(AuditError::Broken {
                sink: sink(),
                seq: record.seq,
            });
        }
        previous = Some((record.seq, record.hash));
    }
    Ok(())
}

/// The last line of a regular file of `len` bytes (`None` when empty), and
/// whether the file ends with a newline. Reads from the end only.
fn last_line(path: &Path, len: u64) -> io::Result<(Option<Vec<u8>>, bool)> {
    if len == 0 {
        return Ok((None, true));
    }
    let file = File::open(path)?;
    let mut chunk = TAIL_CHUNK;
    loop {
        let start = len.saturating_sub(chunk);
        let size = usize::try_from(len.saturating_sub(start)).map_err(io::Error::other)?;
        let mut buf = vec![0; size];
        file.read_exact_at(&mut buf, start)?;
        let ends_with_newline = buf.last() == Some(&b'\n');
        if ends_with_newline {
            buf.pop();
        }
        if let Some(cut) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok((Some(buf.split_off(cut.saturating_add(1))), ends_with_newline));
        }
        if start == 0 {
            return Ok((Some(buf), ends_with_newline));
        }
        chunk = chunk.saturating_mul(2);
    }
}

/// Where a writer appends a batch of sealed lines.
#[async_trait::async_trait]
trait Target: Send + 'static {
    /// Appends `lines` (whole records, each ending with a newline), all or
    /// none as far as the sink allows; `Ok` once they are durable per its
    /// policy.
    async fn append(&mut self, lines: Vec<u8>) -> io::Result<()>;
}

/// The one task that writes: it owns the chain.
struct Writer {
    sink: Sink,
    chain: Chain,
    target: Box<dyn Target>,
}

/// Records sealed for one write, on a copy of the chain, and their callers.
struct Batch {
    /// The chain past the batch's last record; kept only once it is written.
    chain: Chain,
    /// The batch's lines, in chain order, each ending with a newline.
    lines: Vec<u8>,
    replies: Vec<oneshot::Sender<Result<(), AuditError>>>,
}

impl Writer {
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.recv().await {
            let batch = self.collect(first, &mut jobs);
            if batch.replies.is_empty() {
                continue;
            }
            let written = self.write(batch.lines, batch.chain).await;
            match written {
                Ok(()) => {
                    for reply in batch.replies {
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(source) => {
                    for reply in batch.replies {
                        let _ = reply.send(Err(AuditError::Io {
                            sink: self.sink.clone(),
                            op: "append to",
                            source: duplicate(&source),
                        }));
                    }
                }
            }
        }
    }

    /// Seals `first` and whatever else is already queued, up to the batch
    /// bounds, in queue order on a copy of the chain.
    fn collect(&self, first: Job, jobs: &mut mpsc::Receiver<Job>) -> Batch {
        let mut batch = Batch {
            chain: self.chain.clone(),
            lines: Vec::new(),
            replies: Vec::new(),
        };
        let mut next = Some(first);
        let mut taken = 0_usize;
        while let Some(Job { event, reply }) = next.take() {
            taken = taken.saturating_add(1);
            // A caller that timed out while this waited is skipped: its
            // operation failed, so there is nothing to record.
            if !reply.is_closed() {
                batch
                    .lines
                    .extend_from_slice(batch.chain.seal(event).to_line().as_bytes());
                batch.lines.push(b'\n');
                batch.replies.push(reply);
            }
            if taken < BATCH_RECORDS && batch.lines.len() < BATCH_BYTES {
                next = jobs.try_recv().ok();
            }
        }
        batch
    }

    /// Appends a batch's `lines`; once they are in the sink the chain
    /// moves to `next`, past them.
    async fn write(&mut self, lines: Vec<u8>, next: Chain) -> io::Result<()> {
        self.target.append(lines).await?;
        self.chain = next;
        Ok(())
    }
}

/// Name of the thread that writes and syncs the audit file (`make bench`
/// reads its CPU time apart: the fsync share of an operation).
pub const AUDIT_THREAD: &str = "tessera-audit";

/// The one thread the file's writes and syncs run on: blocking I/O off the
/// runtime, under a name of its own. A hung file holds this thread, and
/// callers still time out.
struct FileThread {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl FileThread {
    fn spawn() -> io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new().name(AUDIT_THREAD.into()).spawn(move || {
            for job in queue {
                job();
            }
        })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the thread; `None` if the thread is gone (it panicked).
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = reply.send(f());
        });
        self.jobs.send(job).ok()?;
        answer.await.ok()
    }
}

/// The JSON-lines file.
struct FileTarget {
    file: Arc<File>,
    end: Option<End>,
    fsync: FsyncPolicy,
    syncs: Arc<AtomicU64>,
    thread: FileThread,
}

#[async_trait::async_trait]
impl Target for FileTarget {
    async fn append(&mut self, lines: Vec<u8>) -> io::Result<()> {
        let file = Arc::clone(&self.file);
        let syncs = Arc::clone(&self.syncs);
        let (end, fsync) = (self.end, self.fsync);
        let appended = self.thread.run(move || append(&file, &lines, end, fsync, &syncs)).await;
        match appended {
            Some((end, written)) => {
                self.end = end;
                written
            }
            None => {
                if let Some(end) = &mut self.end {
                    end.dirty = true;
                }
                Err(io::Error::other("the audit writer thread stopped"))
            }
        }
    }
}

/// A Redis Stream: a batch is one atomic script, so a failed batch leaves
/// nothing behind to cut back.
struct StreamTarget {
    stream: tessera_store::AuditStream,
}

#[async_trait::async_trait]
impl Target for StreamTarget {
    async fn append(&mut self, lines: Vec<u8>) -> io::Result<()> {
        let text = String::from_utf8(lines).map_err(io::Error::other)?;
        let records: Vec<String> = text.lines().map(str::to_owned).collect();
        self.stream.append(&records).await.map_err(io::Error::other)
    }
}

/// The same error again, for another caller of a failed batch.
fn duplicate(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Appends whole lines (one record or a batch) with one write, synced per
/// `fsync` with one sync (counted in `syncs`); returns where the file now
/// ends.
fn append(
    file: &File,
    lines: &[u8],
    end: Option<End>,
    fsync: FsyncPolicy,
    syncs: &AtomicU64,
) -> (Option<End>, io::Result<()>) {
    let mut out = file;
    let Some(mut end) = end else {
        // A pipe or a device: nothing to cut back, nothing to sync.
        return (None, out.write_all(lines));
    };
    if let Err(e) = settle(file, &mut end) {
        return (Some(end), Err(e));
    }
    let written = out.write_all(lines).and_then(|()| match fsync {
        FsyncPolicy::Always => {
            syncs.fetch_add(1, Ordering::Relaxed);
            file.sync_data()
        }
        FsyncPolicy::Never => Ok(()),
    });
    match written {
        Ok(()) => {
            end.len = end.len.saturating_add(lines.len() as u64);
            (Some(end), Ok(()))
        }
        Err(e) => {
            // Cut off what part of the batch made it (or the whole unsynced
            // batch), so the file ends with our last whole record.
            end.dirty = file.set_len(end.len).is_err();
            (Some(end), Err(e))
        }
    }
}

/// Brings the file back to our last record's end before writing.
fn settle(file: &File, end: &mut End) -> io::Result<()> {
    if end.dirty {
        file.set_len(end.len)?;
        end.dirty = false;
        return Ok(());
    }
    let len = file.metadata()?.len();
    if len != end.len {
        // Not ours to cut: keep it, and let `audit verify` show where.
        tracing::warn!(
            expected = end.len,
            found = len,
            "audit file changed size under its writer (another writer or an edit)"
        );
        end.len = len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;

    use chrono::DateTime;
    use tessera_core::audit::{AuditKind, Outcome, VerifyReport, verify};
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "tessera-audit-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn config(file: &Path, fsync: FsyncPolicy, timeout: Duration) -> AuditConfig {
        AuditConfig {
            file: file.to_owned(),
            fsync,
            timeout,
            redis_stream: false,
            require: Require::Any,
        }
    }

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            task_id: Some(format!("task-{i}")),
            count: Some(i),
            ..AuditEvent::new(
                AuditKind::TaskStarted,
                DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
                Outcome::Allow,
                "broker-1",
            )
        }
    }

    fn verify_file(path: &Path) -> VerifyReport {
        let text = std::fs::read_to_string(path).unwrap();
        verify(text.lines()).unwrap()
    }

    async fn open(path: &Path) -> AuditLog {
        AuditLog::open(config(path, FsyncPolicy::Always, Duration::from_secs(5)))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn records_verify_and_the_file_is_private() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        let log = open(&path).await;
        for i in 1..=3 {
            log.record(event(i)).await.unwrap();
        }
        assert_eq!(verify_file(&path).records, 3);
        assert_eq!(log.failures(), 0);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_records_form_one_chain() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        let log = Arc::new(open(&path).await);
        let callers: Vec<_> = (0..64)
            .map(|i| {
                let log = Arc::clone(&log);
                tokio::spawn(async move { log.record(event(i)).await })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap().unwrap();
        }
        assert_eq!(verify_file(&path).records, 64);
    }

    /// A log over `path` whose writer has not started, so records queue up.
    fn stopped_writer(path: &Path, fsync: FsyncPolicy) -> (AuditLog, Writer, mpsc::Receiver<Job>) {
        AuditLog::start(
            path.to_owned(),
            Duration::from_secs(30),
            open_file(path).unwrap(),
            fsync,
        )
        .unwrap()
    }

    /// Waits until `n` jobs are queued for the writer.
    async fn queued(log: &AuditLog, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while log.jobs.capacity() > QUEUE - n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_records_share_one_write_and_one_sync() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        let (log, writer, queue) = stopped_writer(&path, FsyncPolicy::Always);
        let log = Arc::new(log);
        let callers: Vec<_> = (0..200)
            .map(|i| {
                let log = Arc::clone(&log);
                tokio::spawn(async move { log.record(event(i)).await })
            })
            .collect();
        // All 200 wait in the queue before the writer starts, so how they
        // are batched does not depend on timing: one batch takes them all.
        queued(&log, 200).await;
        assert_eq!(log.syncs(), 0);
        tokio::spawn(writer.run(queue));
        for caller in callers {
            caller.await.unwrap().unwrap();
        }
        assert_eq!(verify_file(&path).records, 200);
        assert_eq!(log.failures(), 0);
        assert_eq!(log.syncs(), 1);
        // A lone record afterwards gets its own sync.
        log.record(event(200)).await.unwrap();
        assert_eq!(log.syncs(), 2);
        assert_eq!(verify_file(&path).records, 201);
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_byte_bound() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        let (log, writer, queue) = stopped_writer(&path, FsyncPolicy::Always);
        let log = Arc::new(log);
        let callers: Vec<_> = (0..20)
            .map(|i| {
                let log = Arc::clone(&log);
                let mut big = event(i);
                big.reason = Some("x".repeat(100_000));
                tokio::spawn(async move { log.record(big).await })
            })
            .collect();
        queued(&log, 20).await;
        tokio::spawn(writer.run(queue));
        for caller in callers {
            caller.await.unwrap().unwrap();
        }
        assert_eq!(verify_file(&path).records, 20);
        // 11 lines of ~100 kB pass 1 MiB; the other 9 make a second batch.
        assert_eq!(log.syncs(), 2);
    }

    #[tokio::test]
    async fn a_caller_that_gave_up_is_skipped_within_a_batch() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        let (log, writer, queue) = stopped_writer(&path, FsyncPolicy::Always);
        let mut answers = Vec::new();
        for i in 1..=3 {
            let (reply, answer) = oneshot::channel();
            log.jobs.send(Job { event: event(i), reply }).await.unwrap();
            answers.push(answer);
        }
        // The second caller's deadline passed while its record waited.
        drop(answers.remove(1));
        tokio::spawn(writer.run(queue));
        for answer in answers {
            answer.await.unwrap().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(verify(text.lines()).unwrap().records, 2);
        assert!(!text.contains("task-2"), "{text}");
        assert_eq!(log.syncs(), 1);
    }

    #[tokio::test]
    async fn reopening_continues_the_chain() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        for run in 0..3 {
            let log = open(&path).await;
            for i in 0..2 {
                log.record(event(run * 10 + i)).await.unwrap();
            }
            log.close().await;
        }
        let report = verify_file(&path);
        assert_eq!(report.records, 6);
    }

    #[tokio::test]
    async fn a_missing_last_newline_is_added() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        let mut chain = Chain::genesis();
        std::fs::write(&path, chain.seal(event(1)).to_line()).unwrap();
        open(&path).await.record(event(2)).await.unwrap();
        assert_eq!(verify_file(&path).records, 2);
    }

    #[tokio::test]
    async fn a_corrupt_last_line_is_refused_naming_the_file() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        let mut chain = Chain::genesis();
        let good = chain.seal(event(1)).to_line();
        let edited = chain.seal(event(2)).to_line().replace("task-2", "task-9");
        for (content, expected) in [
            (format!("{good}\n{{\"seq\":2,\"pr\n"), "not an audit record"),
            (format!("{good}\n{edited}\n"), "record 2 was edited"),
            (format!("{good}\n\n"), "not an audit record"),
        ] {
            std::fs::write(&path, content).unwrap();
            let err = AuditLog::open(config(&path, FsyncPolicy::Always, Duration::from_secs(5)))
                .await
                .unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, AuditError::Corrupt { .. }), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(expected), "{message}");
            assert_eq!(err.kind(), ErrorKind::Unavailable);
        }
    }

    #[tokio::test]
    async fn a_second_writer_on_one_file_is_refused_naming_the_holder() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        let first = open(&path).await;
        let err = AuditLog::open(config(&path, FsyncPolicy::Always, Duration::from_secs(5)))
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, AuditError::InUse { .. }), "{message}");
        assert!(
            message.contains(&format!("in use by pid {}", std::process::id())),
            "{message}"
        );
        // The first keeps writing; once it is gone the file opens again.
        first.record(event(1)).await.unwrap();
        first.close().await;
        let again = open(&path).await;
        again.record(event(2)).await.unwrap();
        assert_eq!(verify_file(&path).records, 2);
    }

    #[tokio::test]
    async fn interleaved_chains_are_refused_at_open() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        // Two writers that each continued the same file's chain after record 1.
        let mut a = Chain::genesis();
        let shared = a.seal(event(1));
        let mut b = Chain::resume(&shared);
        let mut text = String::new();
        for line in [shared, a.seal(event(2)), b.seal(event(3)), a.seal(event(4))] {
            text.push_str(&line.to_line());
            text.push('\n');
        }
        std::fs::write(&path, &text).unwrap();
        let err = AuditLog::open(config(&path, FsyncPolicy::Always, Duration::from_secs(5)))
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, AuditError::Broken { seq: 2, .. }), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("do not form one chain"), "{message}");

        // A file whose first record is not the genesis lost its head.
        let mut chain = Chain::genesis();
        let _ = chain.seal(event(1));
        std::fs::write(&path, format!("{}\n", chain.seal(event(2)).to_line())).unwrap();
        let err = AuditLog::open(config(&path, FsyncPolicy::Always, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Broken { seq: 2, .. }), "{err}");
    }

    #[tokio::test]
    async fn a_chain_longer_than_the_window_is_checked_from_its_first_whole_line() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        let mut chain = Chain::genesis();
        let mut text = String::new();
        for i in 0..3 {
            let mut big = event(i);
            big.reason = Some("x".repeat(30_000));
            text.push_str(&chain.seal(big).to_line());
            text.push('\n');
        }
        std::fs::write(&path, &text).unwrap();
        open(&path).await.record(event(9)).await.unwrap();
        assert_eq!(verify_file(&path).records, 4);
    }

    #[tokio::test]
    async fn the_last_line_is_found_past_the_first_read() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        let mut chain = Chain::genesis();
        let mut text = String::new();
        for i in 0..3 {
            let mut big = event(i);
            big.reason = Some("x".repeat(50_000));
            text.push_str(&chain.seal(big).to_line());
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        open(&path).await.record(event(9)).await.unwrap();
        assert_eq!(verify_file(&path).records, 4);
    }

    #[tokio::test]
    async fn a_full_disk_fails_every_record() {
        let log = AuditLog::open(config(
            Path::new("/dev/full"),
            FsyncPolicy::Always,
            Duration::from_secs(2),
        ))
        .await
        .unwrap();
        for i in 1..=3 {
            let started = Instant::now();
            let err = log.record(event(i)).await.unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(2));
            assert!(matches!(err, AuditError::Io { .. }), "{err}");
            assert!(err.to_string().contains("/dev/full"), "{err}");
            assert_eq!(err.kind(), ErrorKind::Unavailable);
        }
        assert_eq!(log.failures(), 3);
    }

    #[test]
    fn a_part_line_left_by_a_failed_write_is_cut_before_the_next() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        let mut chain = Chain::genesis();
        let first = format!("{}\n", chain.seal(event(1)).to_line());
        let len = first.len() as u64;
        // What a write cut short (a full disk) leaves behind.
        std::fs::write(&path, format!("{first}{{\"seq\":2,\"pr")).unwrap();
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        let second = format!("{}\n", chain.seal(event(2)).to_line());
        let (end, written) = append(
            &file,
            second.as_bytes(),
            Some(End { len, dirty: true }),
            FsyncPolicy::Always,
            &AtomicU64::new(0),
        );
        written.unwrap();
        let end = end.unwrap();
        assert!(!end.dirty);
        assert_eq!(end.len, std::fs::metadata(&path).unwrap().len());
        assert_eq!(verify_file(&path).records, 2);
    }

    #[test]
    fn a_part_line_left_by_a_failed_write_is_cut_before_the_next_batch() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        let mut chain = Chain::genesis();
        let first = format!("{}\n", chain.seal(event(1)).to_line());
        let len = first.len() as u64;
        // A failed batch may leave whole lines and then a part of one.
        let mut failed = chain.clone();
        let left = format!("{}\n{{\"seq\":3,\"pr", failed.seal(event(2)).to_line());
        std::fs::write(&path, format!("{first}{left}")).unwrap();
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        let batch: String = (2..=4)
            .map(|i| format!("{}\n", chain.seal(event(i * 10)).to_line()))
            .collect();
        let syncs = AtomicU64::new(0);
        let (end, written) = append(
            &file,
            batch.as_bytes(),
            Some(End { len, dirty: true }),
            FsyncPolicy::Always,
            &syncs,
        );
        written.unwrap();
        let end = end.unwrap();
        assert!(!end.dirty);
        assert_eq!(end.len, std::fs::metadata(&path).unwrap().len());
        assert_eq!(verify_file(&path).records, 4);
        assert_eq!(syncs.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_failed_batch_leaves_the_file_to_be_cut_back() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        let mut chain = Chain::genesis();
        let first = format!("{}\n", chain.seal(event(1)).to_line());
        std::fs::write(&path, &first).unwrap();
        let end = Some(End {
            len: first.len() as u64,
            dirty: false,
        });
        let batch: String = (2..=3)
            .map(|i| format!("{}\n", chain.seal(event(i)).to_line()))
            .collect();
        // Read-only: the write fails, and so does cutting back.
        let read_only = File::open(&path).unwrap();
        let (end, written) = append(
            &read_only,
            batch.as_bytes(),
            end,
            FsyncPolicy::Always,
            &AtomicU64::new(0),
        );
        written.unwrap_err();
        let end = end.unwrap();
        assert!(end.dirty);
        // Were anything left after our last record, the next write cuts it.
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        (&file).write_all(b"{\"seq\":2,\"pr").unwrap();
        let (end, written) = append(
            &file,
            batch.as_bytes(),
            Some(end),
            FsyncPolicy::Always,
            &AtomicU64::new(0),
        );
        written.unwrap();
        assert!(!end.unwrap().dirty);
        assert_eq!(verify_file(&path).records, 3);
    }

    #[test]
    fn bytes_another_writer_appended_are_kept() {
        let dir = TempDir::new();
        let path = dir.join("audit.jsonl");
        std::fs::write(&path, "not ours\n").unwrap();
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        let syncs = AtomicU64::new(0);
        let (end, written) = append(
            &file,
            b"ours\n",
            Some(End { len: 0, dirty: false }),
            FsyncPolicy::Never,
            &syncs,
        );
        assert_eq!(syncs.load(Ordering::Relaxed), 0);
        written.unwrap();
        assert_eq!(end.unwrap().len, 14);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not ours\nours\n");
    }

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success());
    }

    #[tokio::test]
    async fn a_hung_sink_times_out_then_recovers_without_a_gap() {
        let dir = TempDir::new();
        let fifo = dir.join("audit.fifo");
        mkfifo(&fifo);
        // Opened for reading (so the writer's open does not wait) but not
        // read: once the pipe buffer is full, writes hang.
        let receiver = tokio::net::unix::pipe::OpenOptions::new().open_receiver(&fifo).unwrap();
        let timeout = Duration::from_millis(200);
        let bound = timeout + Duration::from_secs(1);
        let log = AuditLog::open(config(&fifo, FsyncPolicy::Never, timeout))
            .await
            .unwrap();

        let mut written = 0;
        let mut timed_out = false;
        for i in 0..1000 {
            let mut big = event(i);
            big.reason = Some("x".repeat(4096));
            let started = Instant::now();
            match log.record(big).await {
                Ok(()) => written += 1,
                Err(err) => {
                    assert!(matches!(err, AuditError::Timeout { .. }), "{err}");
                    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
                    timed_out = true;
                    break;
                }
            }
        }
        assert!(timed_out, "the pipe never filled");
        assert!(written > 0);
        // Behind the stuck write, the next record fails within the bound too.
        let started = Instant::now();
        let err = log.record(event(1000)).await.unwrap_err();
        assert!(matches!(err, AuditError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < bound);
        assert_eq!(log.failures(), 2);

        // The reader wakes up: the stuck write completes and records flow.
        let reader = tokio::spawn(async move {
            let mut receiver = receiver;
            let mut out = Vec::new();
            receiver.read_to_end(&mut out).await.map(|_| out)
        });
        let mut recovered = false;
        for i in 0..50 {
            if log.record(event(2000 + i)).await.is_ok() {
                recovered = true;
                break;
            }
        }
        assert!(recovered);
        drop(log);
        let out = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let report = verify(String::from_utf8(out).unwrap().lines()).unwrap();
        // Every acknowledged record is there (and the one that finished late).
        assert!(
            report.records > written,
            "{} records, {written} written",
            report.records
        );
    }

    #[tokio::test]
    async fn opening_a_pipe_nobody_reads_times_out() {
        let dir = TempDir::new();
        let fifo = dir.join("audit.fifo");
        mkfifo(&fifo);
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let err = AuditLog::open(config(&fifo, FsyncPolicy::Never, timeout))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < timeout + Duration::from_secs(1));
        // The abandoned open still blocks a runtime thread, and the runtime
        // waits for it at shutdown: keep a reader open for the rest of the
        // process, so that open completes whenever it next runs (no sleep
        // guessing when that is).
        let receiver = tokio::net::unix::pipe::OpenOptions::new().open_receiver(&fifo).unwrap();
        std::mem::forget(receiver);
    }
}
