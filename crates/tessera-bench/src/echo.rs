//! The transport floor: a tonic server over the same mTLS setup as
//! `tesserad` (the dev broker certificate, client certificates required from
//! the dev CA) whose `RequestToken` answers at once with a fixed reply of a
//! real token's size. Driving it with the mint load measures what one mTLS
//! gRPC round trip of that shape costs, with no broker work at all.

use std::path::Path;
use std::pin::Pin;

use anyhow::Context as _;
use tessera_client::pb;
use tessera_client::pb::agent_service_server::{AgentService, AgentServiceServer};
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// Length of the fixed access token in the reply: an ES256 JWS of our claims
/// is about this long.
const TOKEN_LEN: usize = 620;

/// Answers `RequestToken` with a constant.
#[derive(Debug, Clone)]
struct Echo {
    reply: pb::IssuedToken,
}

#[tonic::async_trait]
impl AgentService for Echo {
    async fn request_token(
        &self,
        req: Request<pb::RequestTokenRequest>,
    ) -> Result<Response<pb::RequestTokenResponse>, Status> {
        let req = req.into_inner();
        let mut reply = self.reply.clone();
        reply.task_id = req.task_id;
        reply.audience = req.audience;
        reply.scopes = req.scopes;
        Ok(Response::new(pb::RequestTokenResponse {
            outcome: Some(pb::request_token_response::Outcome::Token(reply)),
        }))
    }

    type AwaitApprovalStream = Pin<Box<dyn Stream<Item = Result<pb::AwaitApprovalResponse, Status>> + Send>>;

    async fn await_approval(
        &self,
        _req: Request<pb::AwaitApprovalRequest>,
    ) -> Result<Response<Self::AwaitApprovalStream>, Status> {
        Err(Status::unimplemented("the echo server only answers RequestToken"))
    }

    async fn delegate_token(
        &self,
        _req: Request<pb::DelegateTokenRequest>,
    ) -> Result<Response<pb::IssuedToken>, Status> {
        Err(Status::unimplemented("the echo server only answers RequestToken"))
    }

    async fn offer_delegation(
        &self,
        _req: Request<pb::DelegateTokenRequest>,
    ) -> Result<Response<pb::DelegationOffer>, Status> {
        Err(Status::unimplemented("the echo server only answers RequestToken"))
    }

    async fn redeem_delegation(
        &self,
        _req: Request<pb::RedeemDelegationRequest>,
    ) -> Result<Response<pb::IssuedToken>, Status> {
        Err(Status::unimplemented("the echo server only answers RequestToken"))
    }

    async fn release_token(
        &self,
        _req: Request<pb::ReleaseTokenRequest>,
    ) -> Result<Response<pb::ReleaseTokenResponse>, Status> {
        Err(Status::unimplemented("the echo server only answers RequestToken"))
    }
}

/// Serves the echo on `127.0.0.1:0` with the dev PKI in `dev_dir`, writes
/// `127.0.0.1:PORT` to `ready_file`, and runs until killed.
pub async fn serve(dev_dir: &Path, ready_file: &Path) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |name: &str| {
        let path = dev_dir.join(name);
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("broker.pem")?, read("broker.key.pem")?))
        .client_ca_root(Certificate::from_pem(read("ca.pem")?));
    // Nagle off, as in tesserad's accept loop: with it on, a small reply
    // waits for the client's delayed ACK and the "limit" would measure that.
    let incoming = TcpIncoming::bind(([127, 0, 0, 1], 0).into())?.with_nodelay(Some(true));
    let addr = incoming.local_addr()?;
    let echo = Echo {
        reply: pb::IssuedToken {
            access_token: "x".repeat(TOKEN_LEN),
            token_type: "Bearer".into(),
            grant_id: "echo0000echo0000echo0000echo0000".into(),
            expires_in: 300,
            class: pb::ScopeClass::Read as i32,
            issued_at: Some(prost_types_now()),
            expires_at: Some(prost_types_now()),
            ..Default::default()
        },
    };
    let server = Server::builder()
        .tls_config(tls)?
        .add_service(AgentServiceServer::new(echo))
        .serve_with_incoming(incoming);
    let tmp = ready_file.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, ready_file)?;
    server.await?;
    Ok(())
}

/// A fixed timestamp (the echo never looks at time).
fn prost_types_now() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: 1_800_000_000,
        nanos: 0,
    }
}
