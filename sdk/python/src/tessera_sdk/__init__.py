"""Tessera's Python SDK: agent and orchestrator clients, a token verifier for
resource servers, and an ``httpx`` token provider.

Quick start::

    from tessera_sdk import AgentClient, OrchestratorClient, SvidSource

    orch = OrchestratorClient("127.0.0.1:7443", SvidSource.from_dir(".tessera-dev", "orchestrator"))
    agent = AgentClient("127.0.0.1:7443", SvidSource.from_dir(".tessera-dev", "researcher"))
    with orch.task(["spiffe://tessera.local/agent/researcher"],
                   {"https://api.example.com/crm": ["crm.contacts.read"]},
                   duration_seconds=600) as task:
        token = agent.token(task.task_id, "https://api.example.com/crm", ["crm.contacts.read"], bind=True)
"""

from ._core import ApprovalDenied, Completed, DelegationOffer, PendingApproval, Task, Token
from .aio import AsyncAgentClient, AsyncOrchestratorClient
from .authz import ToolGrant
from .client import AgentClient, OrchestratorClient
from .dpop import DpopKey, NonceSource
from .errors import (
    BrokerError,
    BrokerUnavailable,
    CertificateMismatch,
    CertificateRequired,
    ConfigError,
    IdentityError,
    InsufficientScope,
    InvalidProof,
    InvalidToken,
    ProofRequired,
    RefusalKind,
    Refused,
    TesseraError,
    TokenExpired,
    TokenRevoked,
    ToolNotAllowed,
    Unavailable,
    UseDpopNonce,
    VerifyError,
    http_status,
)
from .identity import Attestation, JwtSource, SvidSource, UnixSocketSource
from .verifier import (
    MemoryReplayStore,
    Presented,
    ReplayStore,
    Verified,
    Verifier,
    VerifierConfig,
    certificate_thumbprint,
)

__all__ = [
    "AgentClient",
    "ApprovalDenied",
    "AsyncAgentClient",
    "AsyncOrchestratorClient",
    "Attestation",
    "BrokerError",
    "BrokerUnavailable",
    "CertificateMismatch",
    "CertificateRequired",
    "Completed",
    "ConfigError",
    "DelegationOffer",
    "DpopKey",
    "IdentityError",
    "InsufficientScope",
    "InvalidProof",
    "InvalidToken",
    "JwtSource",
    "MemoryReplayStore",
    "NonceSource",
    "OrchestratorClient",
    "PendingApproval",
    "Presented",
    "ProofRequired",
    "RefusalKind",
    "Refused",
    "ReplayStore",
    "SvidSource",
    "Task",
    "TesseraError",
    "Token",
    "TokenExpired",
    "TokenRevoked",
    "ToolGrant",
    "ToolNotAllowed",
    "Unavailable",
    "UnixSocketSource",
    "UseDpopNonce",
    "Verified",
    "Verifier",
    "VerifierConfig",
    "VerifyError",
    "certificate_thumbprint",
    "http_status",
]

__version__ = "0.1.0"
