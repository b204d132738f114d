//! The runnable examples end to end: the example resource server (axum,
//! protected by the SDK `Verifier`) in front of a real `tesserad`, the
//! example agent against it, and a DPoP-bound write token that works for its
//! holder and is refused in a thief's hands (no key, another key, a replayed
//! proof).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test"
)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};

use tessera_client::PopKey;
use tessera_e2e::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The example resource server, following `broker`; killed on drop.
struct ResourceServer {
    child: Child,
    addr: String,
}

impl ResourceServer {
    fn start(broker: &Broker) -> Self {
        let mut child = Command::new(bin_dir().join("resource-server"))
            .env("TESSERA_DEV_DIR", broker.dir.path())
            .env("TESSERA_ENDPOINT", broker.endpoint())
            .env("EXAMPLE_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the resource server exited before listening")
                .unwrap();
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}/crm/contacts", self.addr)
    }

    /// One request; returns the status and the `WWW-Authenticate` header.
    async fn call(&self, method: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        let mut request = format!("{method} /crm/contacts HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let head = text.split("\r\n\r\n").next().unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let challenge = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("www-authenticate:")
                    .then(|| l.to_owned())
            })
            .unwrap_or_default();
        (status, challenge)
    }
}

impl Drop for ResourceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_agent_runs_against_the_example_resource_server() {
    let broker = Broker::start();
    let server = ResourceServer::start(&broker);
    let out = Command::new(bin_dir().join("agent"))
        .env("TESSERA_DEV_DIR", broker.dir.path())
        .env("TESSERA_ENDPOINT", broker.endpoint())
        .env("EXAMPLE_SERVER", &server.addr)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("with the token     -> 200"), "{stdout}");
    assert!(stdout.contains("with a read token  -> 403"), "{stdout}");
    assert!(stdout.contains("without a token    -> 401"), "{stdout}");
    assert!(stdout.contains("GET with the same token -> 401"), "{stdout}");
    assert!(find_secret(&stdout).is_none(), "the agent printed a secret: {stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_bound_token_is_refused_and_its_holder_is_served() {
    let broker = Broker::start();
    let server = ResourceServer::start(&broker);
    // A token minted in the second the server's verifier synchronised is
    // refused by design (its sync floor); mint after it. The server
    // synchronised before it said it listens, so no later than now.
    tessera_e2e::wait_past_second(tessera_e2e::now_secs()).await;
    broker
        .start_task(start_request("bound-1", &["writer"], &["crm.contacts.write"], 600))
        .await;
    let key = PopKey::generate().unwrap();
    let token = broker
        .issue_as(
            "writer",
            pb::RequestTokenRequest {
                pop_proof: key.proof("POST", tessera_client::REQUEST_TOKEN_HTU, None).unwrap(),
                ..token_request("bound-1", &["crm.contacts.write"], None)
            },
        )
        .await;
    assert_eq!(token.token_type, "DPoP");
    let t = token.access_token.as_str();
    let dpop_auth = format!("DPoP {t}");

    // The holder: token and a fresh proof for this request, with `ath`.
    let proof = key.proof("POST", &server.url(), Some(t)).unwrap();
    let (status, _) = server
        .call("POST", &[("Authorization", &dpop_auth), ("DPoP", &proof)])
        .await;
    assert_eq!(status, 201, "the holder is served");

    // A thief without the key: as a bearer token, or with no proof.
    let bearer = format!("Bearer {t}");
    let (status, challenge) = server.call("POST", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 401, "{challenge}");
    let (status, challenge) = server.call("POST", &[("Authorization", &dpop_auth)]).await;
    assert_eq!(status, 401, "{challenge}");
    // With a proof of its own key.
    let other = PopKey::generate().unwrap();
    let forged = other.proof("POST", &server.url(), Some(t)).unwrap();
    let (status, challenge) = server
        .call("POST", &[("Authorization", &dpop_auth), ("DPoP", &forged)])
        .await;
    assert_eq!(status, 401, "{challenge}");
    // Replaying the holder's proof seen on the wire.
    let (status, challenge) = server
        .call("POST", &[("Authorization", &dpop_auth), ("DPoP", &proof)])
        .await;
    assert_eq!(status, 401, "{challenge}");
    assert!(challenge.contains("invalid_dpop_proof"), "{challenge}");
    // A proof for another method or URL.
    let elsewhere = key.proof("GET", &server.url(), Some(t)).unwrap();
    let (status, _) = server
        .call("POST", &[("Authorization", &dpop_auth), ("DPoP", &elsewhere)])
        .await;
    assert_eq!(status, 401);

    // The holder, with a new proof, is still served.
    let again = key.proof("POST", &server.url(), Some(t)).unwrap();
    let (status, _) = server
        .call("POST", &[("Authorization", &dpop_auth), ("DPoP", &again)])
        .await;
    assert_eq!(status, 201);
}
