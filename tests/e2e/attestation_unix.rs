//! Unix-socket attestation through the real `tesserad`: this test process
//! connects over the socket and is attested by its uid and the SHA-256 of
//! its own executable; a wrong uid or a wrong hash is refused with
//! UNAUTHENTICATED and an audit record; the socket is private.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::PathBuf;

use tessera_e2e::attestation::{append_config, audit_records, foreign_identity, wait_refusal_audited};
use tessera_e2e::{Broker, dev_init};
use tonic::Code;

fn own_exe_sha256() -> String {
    let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let hash = ring::digest::digest(&ring::digest::SHA256, &bytes);
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// A broker with a Unix listener and one identity `agent/local` whose
/// selectors are `uid` and `exe_sha256`.
fn unix_broker(uid: u32, exe_sha256: &str) -> (Broker, PathBuf) {
    unix_broker_with(uid, exe_sha256, "")
}

/// [`unix_broker`] with `extra` lines in the identity's entry.
fn unix_broker_with(uid: u32, exe_sha256: &str, extra: &str) -> (Broker, PathBuf) {
    let dir = dev_init("unix");
    let socket = dir.path().join("run").join("agent.sock");
    append_config(
        dir.path(),
        &format!(
            r#"
[attestation.unix]
socket = {socket:?}
mode = "0600"

[[identities]]
id = "spiffe://tessera.local/agent/local"
kind = "agent"
owner = "team-research"
roles = ["agent", "verifier"]
max_ttl = "10m"
attestation = ["unix"]
unix = {{ uid = {uid}, exe_sha256 = "sha256:{exe_sha256}" }}
{extra}
"#,
            socket = socket.display().to_string()
        ),
    );
    let broker = Broker::start_in(dir, &[]);
    // The ready file is written before the Unix listener is bound: wait for it.
    let started = std::time::Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no socket: {}",
            broker.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (broker, socket)
}

async fn jwks_over(socket: &std::path::Path) -> Result<(), tonic::Status> {
    let channel = tessera_client::connect_unix(socket).await.unwrap();
    tessera_client::VerifierClient::new(channel)
        .introspect(tessera_e2e::attestation::introspect_request())
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_process_is_attested_by_uid_and_executable_hash() {
    let (broker, socket) = unix_broker(own_uid(), &own_exe_sha256());
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "the socket is private");
    assert_eq!(
        std::fs::metadata(socket.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    jwks_over(&socket).await.unwrap();
    // The orchestrator (x509) can put agent/local in a task; it gets a token over the socket.
    let mut o = broker.orchestrator().await;
    let mut req = tessera_e2e::start_request("unix-1", &["local"], &["crm.contacts.read"], 600);
    req.agents = vec!["spiffe://tessera.local/agent/local".into()];
    o.start_task(req).await.unwrap();
    let channel = tessera_client::connect_unix(&socket).await.unwrap();
    let mut agent = tessera_client::AgentClient::new(channel);
    tessera_e2e::issue(
        &mut agent,
        tessera_e2e::token_request("unix-1", &["crm.contacts.read"], Some(60)),
    )
    .await;
    let issued = audit_records(&broker)
        .into_iter()
        .find(|r| r["event"] == "token_issued")
        .expect("a token_issued record");
    assert_eq!(issued["who"]["identity"], "spiffe://tessera.local/agent/local");
    assert_eq!(issued["who"]["attestation"], "unix");
    let evidence = issued["who"]["evidence"].as_str().unwrap();
    assert!(evidence.contains(&own_exe_sha256()), "{evidence}");
    assert!(evidence.contains(&format!("uid={}", own_uid())), "{evidence}");
}

/// The socket serves the same service set as the TCP port, behind the same
/// caps: health and reflection answer on both, and a request over
/// `server.max_message_bytes` (64 KiB in the dev config) is refused the
/// same way on both, by our services and by health alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_serves_the_same_services_and_caps_as_the_tcp_port() {
    use tokio_stream::StreamExt as _;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (broker, socket) = unix_broker(own_uid(), &own_exe_sha256());
    let unix = tessera_client::connect_unix(&socket).await.unwrap();
    let tcp = broker.channel("api-gateway").await;
    for (listener, channel) in [("unix", unix), ("tcp", tcp)] {
        let mut health = HealthClient::new(channel.clone());
        for service in ["", "tessera.v1.AgentService", "tessera.v1.VerifierService"] {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap_or_else(|s| panic!("{listener}: health of `{service}`: {s:?}"))
                .into_inner()
                .status();
            assert_eq!(status, ServingStatus::Serving, "{listener}: `{service}`");
        }

        let request = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap_or_else(|s| panic!("{listener}: reflection: {s:?}"))
            .into_inner();
        let answer = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("{listener}: {answer:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in [
            "tessera.v1.AgentService",
            "tessera.v1.OrchestratorService",
            "tessera.v1.AdminService",
            "tessera.v1.VerifierService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{listener}: {want} missing from {names:?}"
            );
        }

        // The same list over reflection v1alpha (grpcio-reflection, older grpcurl).
        let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut stream =
            tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone())
                .server_reflection_info(tokio_stream::once(request))
                .await
                .unwrap_or_else(|s| panic!("{listener}: reflection v1alpha: {s:?}"))
                .into_inner();
        let answer = stream.next().await.unwrap().unwrap();
        let Some(tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(
            alpha,
        )) = answer.message_response
        else {
            panic!("{listener}: {answer:?}")
        };
        // Each builder lists its own reflection service; the rest is the same.
        let ours = |names: &[String]| -> Vec<String> {
            let mut ours: Vec<String> = names
                .iter()
                .filter(|n| !n.starts_with("grpc.reflection."))
                .cloned()
                .collect();
            ours.sort();
            ours
        };
        let alpha: Vec<String> = alpha.service.into_iter().map(|s| s.name).collect();
        assert!(
            alpha.iter().any(|n| n == "grpc.reflection.v1alpha.ServerReflection"),
            "{listener}: {alpha:?}"
        );
        assert_eq!(ours(&alpha), ours(&names), "{listener}: v1alpha lists what v1 lists");

        let oversized = "a".repeat(65 * 1024);
        let refusals = [
            tessera_client::VerifierClient::new(channel.clone())
                .introspect(tessera_e2e::pb::IntrospectRequest {
                    token: oversized.clone(),
                })
                .await
                .map(drop),
            health
                .check(tonic_health::pb::HealthCheckRequest { service: oversized })
                .await
                .map(drop),
        ];
        for refused in refusals {
            let status = refused.expect_err("a request over the cap was served");
            assert_eq!(status.code(), Code::OutOfRange, "{listener}: {status:?}");
            assert!(
                status.message().contains("65536"),
                "{listener}: the message names the cap: {status:?}"
            );
        }
    }
}

/// SIGTERM stops the socket with the TCP port: the broker exits 0 and the
/// socket file is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_socket_and_removes_it() {
    let (mut broker, socket) = unix_broker(own_uid(), &own_exe_sha256());
    jwks_over(&socket).await.unwrap();
    let status = broker.terminate();
    assert!(status.success(), "tesserad exited with {status}");
    assert!(!socket.exists(), "the socket outlived the broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_uid_is_refused_and_audited() {
    let (broker, socket) = unix_broker(own_uid().wrapping_add(4242), &own_exe_sha256());
    let status = jwks_over(&socket).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("no identity matches"), "{status:?}");
    wait_refusal_audited(&broker, "unix", "no identity matches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executable_with_another_hash_is_refused_and_audited() {
    let (broker, socket) = unix_broker(own_uid(), &"0".repeat(64));
    let status = jwks_over(&socket).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    wait_refusal_audited(&broker, "unix", "no identity matches");
    assert!(
        audit_records(&broker).iter().all(|r| r["event"] != "token_issued"),
        "nothing was issued"
    );
    // The identity registered for unix cannot use mTLS either, even with an
    // SVID from the broker's own CA: unix-only.
    let svid = foreign_identity(&broker, "spiffe://tessera.local/agent/local", true);
    let channel = tessera_client::connect(&broker.endpoint(), &svid).await.unwrap();
    let status = tessera_client::VerifierClient::new(channel)
        .introspect(tessera_e2e::attestation::introspect_request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("may not attest by `x509`"), "{status:?}");
    wait_refusal_audited(&broker, "x509", "may not attest by `x509`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_unix_identity_is_refused_and_audited() {
    let (broker, socket) = unix_broker_with(own_uid(), &own_exe_sha256(), "disabled = true");
    let status = jwks_over(&socket).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("disabled"), "{status:?}");
    let record = wait_refusal_audited(&broker, "unix", "disabled");
    assert_eq!(record["who"]["identity"], "spiffe://tessera.local/agent/local");
}

/// The README flow: `tessera dev init --jwt --unix-socket`, then an agent
/// obtains a token through the CLI by JWT (`dev jwt` + `--jwt-file`) and by
/// the Unix socket (`--unix-socket`); the audit trail names each method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_obtains_tokens_by_jwt_and_by_unix_socket() {
    let dir = tessera_e2e::TempDir::new("cli-attest");
    let socket = dir.path().join("run").join("agent.sock");
    let out = std::process::Command::new(tessera_e2e::bin_dir().join("tessera"))
        .args(["dev", "init", "--jwt", "--unix-socket"])
        .arg(&socket)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("jwt-issuer.THROWAWAY-TEST-KEY.pem").exists());
    let broker = Broker::start_in(dir, &[]);
    let started = std::time::Instant::now();
    while !socket.exists() {
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "no socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    ok(broker.tessera(&[
        "--as",
        "orchestrator",
        "task",
        "start",
        "--id",
        "cli-attest",
        "--agent",
        "spiffe://tessera.local/agent/ci-runner",
        "--agent",
        "spiffe://tessera.local/agent/local",
        "--allow",
        "https://api.example.com/crm crm.contacts.read",
        "--ttl",
        "15m",
    ]));
    let request = [
        "token",
        "request",
        "--task",
        "cli-attest",
        "--audience",
        tessera_e2e::CRM,
        "--scope",
        "crm.contacts.read",
    ];
    // JWT: a fresh token from the throwaway issuer, presented as a bearer token.
    let jwt = ok(broker.tessera(&["dev", "jwt", "--subject", "ci-runner"])).stdout;
    let jwt_file = broker.dir.path().join("ci.jwt");
    std::fs::write(&jwt_file, &jwt).unwrap();
    let mut args = vec!["--jwt-file", jwt_file.to_str().unwrap()];
    args.extend(request);
    ok(broker.tessera(&args));
    // Unix socket: attested by this uid.
    let mut args = vec!["--unix-socket", socket.to_str().unwrap()];
    args.extend(request);
    ok(broker.tessera(&args));
    let methods: Vec<(String, String)> = audit_records(&broker)
        .into_iter()
        .filter(|r| r["event"] == "token_issued")
        .map(|r| {
            (
                r["who"]["identity"].as_str().unwrap().to_owned(),
                r["who"]["attestation"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        methods.contains(&("spiffe://tessera.local/agent/ci-runner".into(), "jwt".into())),
        "{methods:?}"
    );
    assert!(
        methods.contains(&("spiffe://tessera.local/agent/local".into(), "unix".into())),
        "{methods:?}"
    );
    // A JWT for an identity not allowed to use jwt is refused through the CLI too.
    let jwt = ok(broker.tessera(&["dev", "jwt", "--subject", "researcher"])).stdout;
    std::fs::write(&jwt_file, &jwt).unwrap();
    let mut args = vec!["--jwt-file", jwt_file.to_str().unwrap()];
    args.extend(request);
    let out = broker.tessera(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not attest by `jwt`"));
}

/// The interpreter a `python3` child runs as (what `/proc/<pid>/exe` names).
fn python3_exe() -> PathBuf {
    let out = std::process::Command::new("python3")
        .args(["-c", "import os, sys; print(os.path.realpath(sys.executable))"])
        .output()
        .expect("python3 (make test installs it)");
    assert!(out.status.success());
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A `python3` child that connects to the broker's `socket`, hands the
/// connected socket to us over `mailbox` (SCM_RIGHTS), then waits for its
/// standard input to close before exiting: the connection's peer is the
/// child, whatever process later uses the socket.
const HAND_OVER: &str = r"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
m = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
m.connect(sys.argv[2])
socket.send_fds(m, [b'x'], [s.fileno()])
sys.stdin.read()
";

/// Starts the child and receives the socket it connected.
fn connected_by_child(
    socket: &std::path::Path,
    mailbox: &std::path::Path,
) -> (std::process::Child, std::os::fd::OwnedFd) {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let _ = std::fs::remove_file(mailbox);
    let listener = std::os::unix::net::UnixListener::bind(mailbox).unwrap();
    let child = std::process::Command::new("python3")
        .args(["-c", HAND_OVER])
        .arg(socket)
        .arg(mailbox)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (conn, _) = listener.accept().unwrap();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    rustix::net::recvmsg(
        &conn,
        &mut [std::io::IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::empty(),
    )
    .unwrap();
    let fd = control
        .drain()
        .find_map(|m| match m {
            RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
            _ => None,
        })
        .expect("the child sent its socket");
    (child, fd)
}

/// Hands one already connected socket to the channel, once.
struct HandedOver(std::sync::Arc<std::sync::Mutex<Option<tokio::net::UnixStream>>>);

impl tower_service::Service<tonic::transport::Uri> for HandedOver {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::transport::Uri) -> Self::Future {
        let taken = self.0.lock().unwrap().take();
        std::future::ready(
            taken
                .map(hyper_util::rt::TokioIo::new)
                .ok_or_else(|| std::io::Error::other("the handed-over socket was used already")),
        )
    }
}

/// A gRPC channel over an already connected Unix socket.
async fn channel_over(fd: std::os::fd::OwnedFd) -> tonic::transport::Channel {
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    std_stream.set_nonblocking(true).unwrap();
    let stream = tokio::net::UnixStream::from_std(std_stream).unwrap();
    tonic::transport::Endpoint::from_static("http://tesserad.local")
        .connect_with_connector(HandedOver(std::sync::Arc::new(std::sync::Mutex::new(Some(stream)))))
        .await
        .unwrap()
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// A14: the peer is the process that connected, pinned by the kernel. A
/// socket connected by a python3 child is attested as the child (its
/// interpreter is the registered executable) while the child lives; if
/// the child has exited by the time the broker looks (the broker is
/// stopped while the child connects, hands the socket over and exits, so
/// its PID is free for reuse), the connection attests nobody:
/// UNAUTHENTICATED, audited, even though the process using it is alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_peer_exited_is_refused() {
    let python = python3_exe();
    let bytes = std::fs::read(&python).unwrap();
    let hash: String = ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (broker, socket) = unix_broker(own_uid(), &hash);
    let mailbox = broker.dir.path().join("mailbox.sock");

    // The child alive: attested as agent/local (its exe is python3).
    let (mut child, fd) = connected_by_child(&socket, &mailbox);
    let mut v = tessera_client::VerifierClient::new(channel_over(fd).await.into());
    v.introspect(tessera_e2e::attestation::introspect_request())
        .await
        .expect("a live peer running the registered executable is attested");
    drop(child.stdin.take());
    child.wait().unwrap();

    // The broker stopped: the child connects (the kernel queues it),
    // hands the socket over, and exits before the broker accepts.
    signal(broker.pid(), rustix::process::Signal::STOP);
    let (mut child, fd) = connected_by_child(&socket, &mailbox);
    drop(child.stdin.take());
    let exited = child.wait();
    signal(broker.pid(), rustix::process::Signal::CONT);
    exited.unwrap();
    let mut v = tessera_client::VerifierClient::new(channel_over(fd).await.into());
    let status = v
        .introspect(tessera_e2e::attestation::introspect_request())
        .await
        .expect_err("a connection whose peer exited was attested");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("exited") || status.message().contains("gone"),
        "{status:?}"
    );
    let record = wait_refusal_audited(&broker, "unix", "refusing");
    assert_eq!(record["who"]["identity"], "(unattested)");
}
