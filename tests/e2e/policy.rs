//! Policy-as-code through the real `tesserad`: a bad policy stops the start
//! naming file and line; a bad policy on reload (RPC or SIGHUP) is refused,
//! audited and counted while the old policy keeps deciding; a good one takes
//! over; decisions carry the deciding policies and the set's hash; admin
//! calls by non-operators are refused by policy and audited; a watched
//! directory (`[policy] watch`, a Kubernetes ConfigMap) reloads itself.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tessera_e2e::*;
use tonic::Code;

const READ: &[&str] = &["crm.contacts.read"];

fn records(broker: &Broker) -> Vec<Value> {
    let text = std::fs::read_to_string(broker.dir.path().join("audit.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn policies(broker: &Broker) -> std::path::PathBuf {
    broker.dir.path().join("policies")
}

fn sighup(broker: &Broker) {
    let status = Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls `check` until it is true, for up to 15 s.
async fn eventually(what: &str, check: impl AsyncFnMut() -> bool) {
    tessera_e2e::eventually(what, Duration::from_secs(15), check).await;
}

fn reload_records(broker: &Broker, decision: &str) -> Vec<Value> {
    records(broker)
        .into_iter()
        .filter(|r| r["event"] == "policy_reloaded" && r["decision"] == decision)
        .collect()
}

const BROKEN: &str = "// a typo on line 3\n\npermit (principal, action, resource) when { principal.kind == };\n";

const PAUSE_READS: &str = r#"// Incident SEC-42: reads paused.
@id("pause-reads")
@reason("reads are paused during incident SEC-42")
forbid (principal, action == Action::"RequestToken", resource)
when { context.class == "read" };
"#;

#[test]
fn a_bad_policy_stops_the_start_naming_file_and_line() {
    let dir = dev_init("policy-start");
    std::fs::write(dir.path().join("policies").join("zz-local.cedar"), BROKEN).unwrap();
    let out = Command::new(bin_dir().join("tesserad"))
        .arg("--config")
        .arg(dir.path().join("tesserad.toml"))
        .env("TESSERA_SERVER__LISTEN", "127.0.0.1:0")
        .env("TESSERA_SERVER__HTTP_LISTEN", "127.0.0.1:0")
        .env_remove("TESSERA_TEST_STORE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("zz-local.cedar:3"), "{stderr}");

    // A policy that parses but breaks the schema is refused the same way.
    std::fs::write(
        dir.path().join("policies").join("zz-local.cedar"),
        "permit (principal, action == Action::\"RequestToken\", resource)\nwhen { principal.department == \"x\" };\n",
    )
    .unwrap();
    let out = Command::new(bin_dir().join("tesserad"))
        .args(["--check", "--config"])
        .arg(dir.path().join("tesserad.toml"))
        .env_remove("TESSERA_TEST_STORE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("zz-local.cedar:2"), "{stderr}");

    // So is a policy directory that does not exist.
    let out = Command::new(bin_dir().join("tesserad"))
        .args(["--check", "--config"])
        .arg(dir.path().join("tesserad.toml"))
        .env("TESSERA_POLICY__DIR", "/nonexistent/policies")
        .env_remove("TESSERA_TEST_STORE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("/nonexistent/policies"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_on_reload_leaves_the_old_policy_deciding() {
    let broker = Broker::start();
    broker
        .start_task(start_request("pol-1", &["researcher"], READ, 900))
        .await;
    let mut admin = broker.admin("alice").await;

    // Reloading the unchanged directory keeps the same set.
    let first = admin
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(first.policy_set_hash.starts_with("sha256:"), "{first:?}");
    assert!(first.policies > 20, "{first:?}");
    let issued = broker.issue_as("researcher", token_request("pol-1", READ, None)).await;
    let rec = records(&broker)
        .into_iter()
        .find(|r| r["event"] == "token_issued" && r["grant_id"] == issued.grant_id.as_str())
        .unwrap();
    assert_eq!(rec["policy_ids"], serde_json::json!(["agents-read"]));
    assert_eq!(rec["policy_hash"], first.policy_set_hash.as_str());

    // A broken file: the RPC refuses it with file and line, the old set stays.
    std::fs::write(policies(&broker).join("zz-local.cedar"), BROKEN).unwrap();
    let refused = code(admin.reload_policy(pb::ReloadPolicyRequest {}).await);
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("zz-local.cedar:3"), "{refused:?}");
    broker.issue_as("researcher", token_request("pol-1", READ, None)).await;
    let denied = reload_records(&broker, "deny");
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(denied[0]["reason"].as_str().unwrap().contains("zz-local.cedar:3"));
    assert_eq!(denied[0]["policy_hash"], first.policy_set_hash.as_str());
    assert_eq!(denied[0]["who"]["identity"], format!("spiffe://{TD}/operator/alice"));

    // SIGHUP with the same broken file: refused, audited, counted; still serving the old set.
    sighup(&broker);
    eventually("the refused SIGHUP reload to be audited", async || {
        reload_records(&broker, "deny").len() == 2
    })
    .await;
    broker.issue_as("researcher", token_request("pol-1", READ, None)).await;
    let (status, metrics) = broker.http_get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tessera_policy_reloads_total{result=\"refused\"} 2")),
        "{metrics}"
    );

    // A valid forbid replaces the broken file: SIGHUP puts it in force.
    std::fs::write(policies(&broker).join("zz-local.cedar"), PAUSE_READS).unwrap();
    sighup(&broker);
    let mut agent = broker.agent("researcher").await;
    let mut denial = None;
    eventually("the new policy to decide", async || {
        match agent.request_token(token_request("pol-1", READ, None)).await {
            Ok(_) => false,
            Err(status) => {
                denial = Some(status);
                true
            }
        }
    })
    .await;
    let denial = denial.unwrap();
    assert_eq!(denial.code(), Code::PermissionDenied, "{denial:?}");
    assert!(
        denial.message().contains("reads are paused during incident SEC-42"),
        "{denial:?}"
    );
    let allowed = reload_records(&broker, "allow");
    let new_hash = allowed.last().unwrap()["policy_hash"].as_str().unwrap().to_owned();
    assert_ne!(new_hash, first.policy_set_hash);
    let rec = records(&broker)
        .into_iter()
        .rfind(|r| r["event"] == "token_denied")
        .unwrap();
    assert_eq!(rec["policy_ids"], serde_json::json!(["pause-reads"]));
    assert_eq!(rec["policy_hash"], new_hash.as_str());

    // The RPC agrees on what is in force.
    let again = admin
        .reload_policy(pb::ReloadPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.policy_set_hash, new_hash);
    assert_eq!(again.policies, first.policies + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_by_non_operators_are_refused_by_policy_and_audited() {
    let broker = Broker::start();
    for name in ["researcher", "orchestrator", "api-gateway"] {
        let mut admin = broker.admin(name).await;
        let refused = code(admin.reload_policy(pb::ReloadPolicyRequest {}).await);
        assert_eq!(refused.code(), Code::PermissionDenied, "{name}: {refused:?}");
        assert!(
            refused.message().contains("does not hold the operator role"),
            "{name}: {refused:?}"
        );
        let refused = code(admin.list_grants(pb::ListGrantsRequest::default()).await);
        assert_eq!(refused.code(), Code::PermissionDenied, "{name}: {refused:?}");
    }
    let recs = records(&broker);
    for name in ["agent/researcher", "orchestrator", "service/api-gateway"] {
        for rpc in ["ReloadPolicy", "ListGrants"] {
            let rec = recs
                .iter()
                .find(|r| {
                    r["event"] == "admin_denied"
                        && r["who"]["identity"] == format!("spiffe://{TD}/{name}")
                        && r["reason"].as_str().unwrap().starts_with(rpc)
                })
                .unwrap_or_else(|| panic!("{name} {rpc} not audited"));
            assert_eq!(rec["policy_ids"], serde_json::json!(["admin-api-needs-operator-role"]));
            assert!(rec["policy_hash"].as_str().unwrap().starts_with("sha256:"));
        }
    }
    // Nothing was reloaded by the refused calls.
    assert!(reload_records(&broker, "allow").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_caps_lifetimes_and_limits_who_orchestrators_assign() {
    let broker = Broker::start();
    broker
        .start_task(start_request(
            "pol-2",
            &["researcher"],
            &["crm.contacts.read", "crm.contacts.write"],
            900,
        ))
        .await;
    // Writes live at most 5 minutes for agents, whatever is asked.
    let write = broker
        .issue_as(
            "researcher",
            pb::RequestTokenRequest {
                mtls_binding: true,
                ..token_request("pol-2", &["crm.contacts.write"], Some(900))
            },
        )
        .await;
    assert_eq!(write.expires_in, 300);
    let read = broker
        .issue_as("researcher", token_request("pol-2", READ, Some(900)))
        .await;
    assert_eq!(read.expires_in, 600);

    // The orchestrator's owner does not own alice: the task is refused and audited.
    let mut o = broker.orchestrator().await;
    let mut req = start_request("pol-3", &["researcher"], READ, 600);
    req.agents.push(format!("spiffe://{TD}/operator/alice"));
    let refused = code(o.start_task(req).await);
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("agents its owner owns"), "{refused:?}");
    let rec = records(&broker)
        .into_iter()
        .find(|r| r["event"] == "task_denied" && r["task_id"] == "pol-3")
        .unwrap();
    assert_eq!(
        rec["policy_ids"],
        serde_json::json!(["orchestrators-start-tasks-only-for-their-owners-agents"])
    );
}

/// Puts `files` in `dir` the way the kubelet updates a ConfigMap volume: a
/// new `..<version>` directory, the `..data` symlink swapped to it by a
/// rename, and each file a symlink through `..data`.
fn configmap_version(dir: &std::path::Path, version: &str, files: &[(String, String)]) {
    let target = dir.join(version);
    std::fs::create_dir_all(&target).unwrap();
    for (name, text) in files {
        std::fs::write(target.join(name), text).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if !name.starts_with('.') && !files.iter().any(|(f, _)| *f == name) {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_policy_directory_reloads_itself_when_its_configmap_changes() {
    let dir = dev_init("policy-watch");
    let mut baseline: Vec<(String, String)> = std::fs::read_dir(dir.path().join("policies"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    baseline.sort();
    let configmap = dir.path().join("configmap");
    configmap_version(&configmap, "..v1", &baseline);
    let configmap = configmap.to_str().unwrap().to_owned();
    let broker = Broker::start_in(
        dir,
        &[("TESSERA_POLICY__DIR", &configmap), ("TESSERA_POLICY__WATCH", "true")],
    );
    broker
        .start_task(start_request("pol-w", &["researcher"], READ, 900))
        .await;
    broker.issue_as("researcher", token_request("pol-w", READ, None)).await;
    let configmap = std::path::PathBuf::from(configmap);
    let mut agent = broker.agent("researcher").await;

    // A new version with a forbid: in force without a signal or an RPC. The
    // waits are on the audit trail's reload records, not on refused
    // requests (enough of those would quarantine the agent).
    let mut paused = baseline.clone();
    paused.push(("zz-local.cedar".into(), PAUSE_READS.into()));
    configmap_version(&configmap, "..v2", &paused);
    eventually("the changed ConfigMap to be reloaded", async || {
        reload_records(&broker, "allow").len() == 1
    })
    .await;
    let denial = code(agent.request_token(token_request("pol-w", READ, None)).await);
    assert_eq!(denial.code(), Code::PermissionDenied, "{denial:?}");
    assert!(denial.message().contains("SEC-42"), "{denial:?}");
    let allowed = reload_records(&broker, "allow");
    assert!(allowed[0].get("who").is_none_or(Value::is_null), "{allowed:?}");

    // A broken version: refused and audited once; the forbid stays in force.
    let mut broken = baseline.clone();
    broken.push(("zz-local.cedar".into(), BROKEN.into()));
    configmap_version(&configmap, "..v3", &broken);
    eventually("the broken ConfigMap to be refused", async || {
        reload_records(&broker, "deny").len() == 1
    })
    .await;
    assert_eq!(
        code(agent.request_token(token_request("pol-w", READ, None)).await).code(),
        Code::PermissionDenied
    );

    // Back to the baseline: reads are allowed again, and the broken version
    // was refused once, not at every look.
    configmap_version(&configmap, "..v4", &baseline);
    eventually("the baseline to be reloaded", async || {
        reload_records(&broker, "allow").len() == 2
    })
    .await;
    agent.request_token(token_request("pol-w", READ, None)).await.unwrap();
    assert_eq!(reload_records(&broker, "deny").len(), 1);
}

#[test]
fn the_cli_validates_offline_and_reloads() {
    let broker = Broker::start();
    let dir = policies(&broker);
    let out = broker.tessera(&["--output", "json", "policy", "validate", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let valid: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(valid["valid"], true);

    let bad = dir.join("zz-local.cedar");
    std::fs::write(&bad, BROKEN).unwrap();
    for path in [&dir, &bad] {
        let out = broker.tessera(&["policy", "validate", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("zz-local.cedar:3"), "{stderr}");
    }
    std::fs::remove_file(&bad).unwrap();

    let out = broker.tessera(&["--as", "alice", "--output", "json", "policy", "reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reloaded: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reloaded["policy_set_hash"], valid["policy_set_hash"]);
    let out = broker.tessera(&["--as", "researcher", "policy", "reload"]);
    assert_eq!(out.status.code(), Some(2));
}
