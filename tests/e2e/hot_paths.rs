//! The one-pass hot paths keep their guarantees through the real `tesserad`,
//! on the test store (`TESSERA_TEST_STORE=redis` runs them on a real
//! redis-server): a mint whose audit record cannot be written leaves no
//! usable token (its grant, already recorded, is taken back), a mint whose
//! grant write fails has its `token_issued` record (written alongside)
//! withdrawn by a `token_denied` one, and the audit trail takes records
//! again once its sink does.
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

/// The grant write and the `token_issued` record are written at once: a
/// mint whose grant the store refuses (here: its task holds its bound of
/// live grants) has its `token_issued` record followed by a `token_denied`
/// record naming the same grant, the token never leaves, and the trail
/// still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mint_whose_grant_write_fails_is_withdrawn_in_the_trail() {
    let broker = Broker::start_with(&[("TESSERA_STORE__MAX_LIVE_GRANTS_PER_TASK", "1")]);
    let read = ["crm.contacts.read"];
    broker
        .start_task(start_request("write-fails", &["researcher"], &read, 600))
        .await;
    let mut researcher = broker.agent("researcher").await;
    let mut gateway = broker.verifier("api-gateway").await;
    let kept = issue(&mut researcher, token_request("write-fails", &read, None)).await;
    let refused = code(
        researcher
            .request_token(token_request("write-fails", &read, None))
            .await,
    );
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    let records: Vec<serde_json::Value> = tessera_e2e::attestation::audit_records(&broker)
        .into_iter()
        .filter(|r| r["task_id"] == "write-fails")
        .collect();
    let issued: Vec<&serde_json::Value> = records.iter().filter(|r| r["event"] == "token_issued").collect();
    let withdrawn: Vec<&serde_json::Value> = issued
        .iter()
        .copied()
        .filter(|r| r["grant_id"] != kept.grant_id.as_str())
        .collect();
    assert_eq!(withdrawn.len(), 1, "{records:#?}");
    let grant_id = withdrawn[0]["grant_id"].as_str().unwrap();
    let at = records.iter().position(|r| r["grant_id"] == grant_id).unwrap();
    let after: Vec<&serde_json::Value> = records[at + 1..].iter().collect();
    assert_eq!(after.len(), 1, "one refusal follows, no second one: {records:#?}");
    assert_eq!(after[0]["event"], "token_denied");
    assert_eq!(after[0]["decision"], "deny");
    assert_eq!(after[0]["grant_id"], grant_id);
    assert!(
        after[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("token withdrawn before it left"),
        "{:?}",
        after[0]
    );

    let mut orchestrator = broker.orchestrator().await;
    let task = orchestrator
        .get_task(pb::GetTaskRequest {
            task_id: "write-fails".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.live_grants, 1, "only the kept token's grant is live");
    assert!(introspect(&mut gateway, &kept.access_token).await.unwrap());
    let out = broker.tessera(&["audit", "verify", broker.audit.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
