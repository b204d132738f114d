//! The one-pass hot paths keep their guarantees through the real `tesserad`,
//! on the test store (`TESSERA_TEST_STORE=redis` runs them on a real
//! redis-server): a mint whose audit record cannot be written leaves no
//! usable token (its grant, already recorded, is taken back), and the audit
//! trail takes records again once its sink does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tessera_e2e::*;
use tonic::Code;

/// Reads a FIFO on a thread until dropped; dropping it closes the read end,
/// so that the broker's next audit write fails (EPIPE).
struct Reader {
    fifo: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn open(fifo: &Path) -> Self {
        // Read and write: opening a FIFO so never waits for a writer, and
        // each read blocks until the broker writes (no end of file while
        // this end is open), so the thread waits on the broker, not on time.
        let mut file = std::fs::OpenOptions::new().read(true).write(true).open(fifo).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64 * 1024];
            while file.read(&mut buf).is_ok_and(|n| n > 0) && !stopping.load(Ordering::SeqCst) {}
        });
        Self {
            fifo: fifo.to_owned(),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked read with one byte (O_NONBLOCK: the FIFO has a
        // reader, ours, so this open never waits).
        if let Ok(mut waker) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(0o4000)
            .open(&self.fifo)
        {
            let _ = waker.write_all(b"\n");
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mint_whose_audit_record_fails_leaves_no_usable_token() {
    let dir = TempDir::new("audit-fifo");
    let fifo = dir.path().join("audit.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let reader = Reader::open(&fifo);
    let broker = Broker::start_with(&[("TESSERA_AUDIT__FILE", fifo.to_str().unwrap())]);
    let read = ["crm.contacts.read"];
    broker
        .start_task(start_request("audit-gone", &["researcher"], &read, 600))
        .await;
    let mut researcher = broker.agent("researcher").await;
    let mut gateway = broker.verifier("api-gateway").await;
    let kept = issue(&mut researcher, token_request("audit-gone", &read, None)).await;

    // The trail's reader goes away: the next record cannot be written.
    drop(reader);
    let refused = code(researcher.request_token(token_request("audit-gone", &read, None)).await);
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("audit"), "{refused:?}");

    // The trail takes records again: the refused mint left no live grant,
    // the earlier token is still the only one.
    let _reader = Reader::open(&fifo);
    let mut orchestrator = broker.orchestrator().await;
    let mut live = None;
    eventually("the task to be read", std::time::Duration::from_secs(20), async || {
        live = orchestrator
            .get_task(pb::GetTaskRequest {
                task_id: "audit-gone".into(),
            })
            .await
            .ok()
            .map(|t| t.into_inner().live_grants);
        live.is_some()
    })
    .await;
    let live = live.unwrap();
    assert_eq!(live, 1, "only the token whose record was written is live");
    assert!(introspect(&mut gateway, &kept.access_token).await.unwrap());
}
