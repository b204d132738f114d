//! The approval webhook: when a request starts waiting for a person, the
//! broker POSTs a JSON notice to `[approvals] webhook` so approvers hear of
//! it (a chat bridge, a ticketing system). Best effort and off the request
//! path: the notice is sent by a task of its own, with a deadline per
//! attempt and three attempts; a failure is logged and counted, and never
//! fails or delays the request (the approval stays listed by
//! `ListApprovals`).
//!
//! The notice names the approval and what it would grant, never a token or
//! a key. With `webhook_secret_file`, each notice carries
//! `X-Tessera-Signature: sha256=<hex HMAC-SHA256 of the body>` so the
//! receiver can check it came from the broker. HTTPS (roots from
//! `webhook_ca`) is required except to a loopback address; redirects are
//! not followed.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::json;
use tessera_core::approval::Approval;
use tokio::net::TcpStream;

use crate::broker::ApprovalNotifier;

/// Attempts per notice.
const ATTEMPTS: u32 = 3;

/// Where and how notices go.
#[derive(Clone)]
pub struct Webhook {
    url: hyper::Uri,
    tls: Option<Arc<rustls::ClientConfig>>,
    secret: Option<ring::hmac::Key>,
    timeout: Duration,
    instance: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

/// Why the webhook cannot be set up (checked at start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// Not an `https://` URL (or `http://` to a loopback address).
    #[error("approvals.webhook: {0}")]
    Url(&'static str),
    /// The roots or the secret could not be read.
    #[error("{0}")]
    File(String),
}

impl Webhook {
    /// A webhook to `url`; `ca` (PEM roots) is required for `https`.
    pub fn new(
        url: &str,
        ca: Option<&std::path::Path>,
        secret_file: Option<&std::path::Path>,
        timeout: Duration,
        instance: String,
    ) -> Result<Self, WebhookError> {
        let (url, https) = check_url(url, ca.is_some()).map_err(WebhookError::Url)?;
        let tls = match (https, ca) {
            (true, Some(ca)) => {
                Some(crate::attest::fetch::client_config(ca).map_err(|e| WebhookError::File(e.to_string()))?)
            }
            _ => None,
        };
        let secret = match secret_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    WebhookError::File(format!("approvals.webhook_secret_file `{}`: {e}", path.display()))
                })?;
                let secret = text.trim();
                if secret.len() < 16 {
                    return Err(WebhookError::File(
                        "approvals.webhook_secret_file: the secret must be at least 16 characters".into(),
                    ));
                }
                Some(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()))
            }
        };
        Ok(Self {
            url,
            tls,
            secret,
            timeout,
            instance,
        })
    }

    /// The notice for `approval`: what waits, for whom, until when.
    fn body(&self, approval: &Approval) -> Vec<u8> {
        let r = &approval.request;
        json!({
            "type": "tessera.approval.pending",
            "approval_id": approval.id.to_string(),
            "requester": r.requester.to_string(),
            "task_id": r.task_id.to_string(),
            "audience": r.audience.to_string(),
            "scopes": r.scopes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "class": approval.class.to_string(),
            "high_impact": approval.high_impact.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "blast_radius": approval.blast_radius,
            "reason": approval.reason,
            "expires_at": approval.expires_at.to_rfc3339(),
            "broker": self.instance,
        })
        .to_string()
        .into_bytes()
    }

    async fn post(&self, body: &[u8]) -> Result<(), String> {
        let host = self.url.host().ok_or("no host")?;
        let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = self.url.port_u16().unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let mut request = hyper::Request::post(self.url.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                hyper::header::HOST,
                self.url.authority().map_or(bare.as_str(), |a| a.as_str()),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "tesserad");
        if let Some(key) = &self.secret {
            let tag = ring::hmac::sign(key, body);
            request = request.header("x-tessera-signature", format!("sha256={}", hex(tag.as_ref())));
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| e.to_string())?;
        let status = match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(bare.clone()).map_err(|_| "bad host".to_owned())?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("tls: {e}"))?;
                send(stream, request).await?
            }
            None => send(tcp, request).await?,
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

async fn send<S>(stream: S, request: hyper::Request<Full<Bytes>>) -> Result<hyper::StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let answer = sender.send_request(request).await.map_err(|e| e.to_string());
    driver.abort();
    Ok(answer?.status())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Checks a webhook URL: `https` (which needs roots, `has_ca`) or `http`
/// to a loopback address. Returns it parsed, and whether it is https.
pub fn check_url(url: &str, has_ca: bool) -> Result<(hyper::Uri, bool), &'static str> {
    let url: hyper::Uri = url.parse().map_err(|_| "not a URL")?;
    let host = url.host().ok_or("no host")?;
    match url.scheme_str() {
        Some("https") if has_ca => Ok((url, true)),
        Some("https") => Err("an https webhook needs approvals.webhook_ca"),
        Some("http") if is_loopback(host) => Ok((url, false)),
        Some("http") => Err("plain http only to a loopback address; use https"),
        _ => Err("the scheme must be https"),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost" || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl ApprovalNotifier for Webhook {
    fn pending(&self, approval: &Approval) {
        let webhook = self.clone();
        let body = webhook.body(approval);
        let id = approval.id.to_string();
        tokio::spawn(async move {
            for attempt in 1..=ATTEMPTS {
                let sent = tokio::time::timeout(webhook.timeout, webhook.post(&body))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {:?}", webhook.timeout)));
                match sent {
                    Ok(()) => {
                        tracing::info!(event = "approval_webhook_sent", approval_id = %id, attempt, "approvers notified");
                        return;
                    }
                    Err(e) if attempt < ATTEMPTS => {
                        tracing::warn!(approval_id = %id, attempt, error = %e, "approval webhook failed; retrying");
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    }
                    Err(e) => {
                        tracing::error!(approval_id = %id, error = %e, "approval webhook failed; approvers were not notified (ListApprovals still shows it)");
                        crate::telemetry::webhook_failure();
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_accepted() {
        let make = |url: &str| Webhook::new(url, None, None, Duration::from_secs(1), "b".into()).map(drop);
        assert!(make("http://127.0.0.1:9/hook").is_ok());
        assert!(make("http://[::1]:9/hook").is_ok());
        assert!(make("http://localhost/hook").is_ok());
        assert_eq!(
            make("http://hooks.example.org/hook"),
            Err(WebhookError::Url("plain http only to a loopback address; use https"))
        );
        assert_eq!(
            make("https://hooks.example.org/hook"),
            Err(WebhookError::Url("an https webhook needs approvals.webhook_ca"))
        );
        assert!(make("ftp://127.0.0.1/x").is_err());
        assert!(make("not a url").is_err());
    }

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
