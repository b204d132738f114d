//! Starting and stopping `tesserad`: configuration errors exit 64 before any
//! port is bound, health and reflection answer, SIGTERM drains and exits 0.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::net::TcpListener;
use std::process::{Command, Stdio};

use tessera_e2e::*;
use tokio_stream::StreamExt as _;

/// Runs `tesserad` on the dev config with `env`, expecting it to exit; returns (code, stderr).
fn run_to_exit(dir: &TempDir, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(bin_dir().join("tesserad"));
    cmd.arg("--config")
        .arg(dir.path().join("tesserad.toml"))
        .env_remove("TESSERA_TEST_STORE")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_64_naming_the_key_before_binding() {
    let dir = dev_init("cfg");
    // A port we hold: if tesserad tried to bind it we would see "cannot bind", not a config error.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("TESSERA_TOKENS__DEFAULT_TTL", "2h")], "tokens.default_ttl"),
        (&[("TESSERA_TOKENS__ALGORITHM", "none")], "tokens.algorithm"),
        (&[("TESSERA_SERVER__MAX_CONNECTIONS", "zero")], "server.max_connections"),
        (&[("TESSERA_SERVER__HTTP_LISTEN", "nope")], "server.http_listen"),
        (&[("TESSERA_SERVER__UNKNOWN_KNOB", "1")], "server.unknown_knob"),
        (&[("TESSERA_TLS__CERT", "/nonexistent/cert.pem")], "tls.cert"),
        (&[("TESSERA_TLS__TRUST_BUNDLE", "/dev/null")], "tls.trust_bundle"),
        (&[("TESSERA_AUDIT__REDIS_STREAM", "true")], "audit.redis_stream"),
        (
            &[("TESSERA_TOKENS__SIGNING_KEY", "/nonexistent/key.pem")],
            "tokens.signing_key",
        ),
    ];
    for (env, key) in cases {
        let mut env = env.to_vec();
        env.push(("TESSERA_SERVER__LISTEN", &listen));
        let (code, stderr) = run_to_exit(&dir, &env);
        assert_eq!(code, 64, "{env:?}: {stderr}");
        assert!(stderr.contains(key), "{env:?}: stderr should name `{key}`: {stderr}");
        assert!(!stderr.contains("cannot bind"), "{stderr}");
    }
    // A corrupt signing key is refused too.
    let corrupt = dir.path().join("corrupt.key.pem");
    std::fs::write(
        &corrupt,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let (code, stderr) = run_to_exit(&dir, &[("TESSERA_TOKENS__SIGNING_KEY", corrupt.to_str().unwrap())]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("tokens.signing_key"), "{stderr}");
    assert!(!stderr.contains("AAAA"));
    // A missing file is named.
    let out = Command::new(bin_dir().join("tesserad"))
        .args(["--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
    drop(held);
}

#[test]
fn check_mode_validates_without_serving() {
    let dir = dev_init("check");
    let out = Command::new(bin_dir().join("tesserad"))
        .arg("--config")
        .arg(dir.path().join("tesserad.toml"))
        .arg("--check")
        .env_remove("TESSERA_TEST_STORE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

// Multi-threaded: `terminate` blocks its thread while the client answers the server's GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_signing_key_is_used() {
    let dir = dev_init("key");
    // A throwaway test key, generated now: its public half must be the JWKS's only key.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let path = dir.path().join("test-only-signing.key.pem");
    std::fs::write(&path, key.serialize_pem()).unwrap();
    let broker = Broker::start_in(dir, &[("TESSERA_TOKENS__SIGNING_KEY", path.to_str().unwrap())]);
    let jwks = broker.jwks().await;
    assert_eq!(jwks.keys.len(), 1);
    assert_eq!(jwks.keys[0].alg, "ES256");
    // Restarting with the same key publishes the same kid.
    let kid = jwks.keys[0].kid.clone();
    let mut broker = broker;
    assert!(broker.terminate().success());
    let again = Broker::start_in(
        dev_init("key2"),
        &[("TESSERA_TOKENS__SIGNING_KEY", path.to_str().unwrap())],
    );
    let jwks = again.jwks().await;
    assert_eq!(jwks.keys[0].kid, kid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_and_sigterm_stops_cleanly() {
    let mut broker = Broker::start();
    let channel = broker.channel("api-gateway").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "tessera.v1.AgentService", "tessera.v1.VerifierService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service}"
        );
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "tessera.v1.AgentService",
        "tessera.v1.OrchestratorService",
        "tessera.v1.AdminService",
        "tessera.v1.VerifierService",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    drop(stream);
    drop(reflection);
    drop(health);

    let status = broker.terminate();
    assert!(status.success(), "tesserad exited with {status}");
    assert!(broker.logs().contains("tesserad stopped"), "{}", broker.logs());
}
