"""What the sync and asyncio clients share: request building, input checks
and response parsing. The clients only add the transport."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf import timestamp_pb2

from ._pb.tessera.v1 import agent_pb2, common_pb2, orchestrator_pb2
from .dpop import DpopKey
from .errors import ConfigError, TesseraError

AGENT_SERVICE: Final = "/tessera.v1.AgentService/"
REQUEST_TOKEN_PATH: Final = AGENT_SERVICE + "RequestToken"
REDEEM_DELEGATION_PATH: Final = AGENT_SERVICE + "RedeemDelegation"
DEFAULT_TIMEOUT: Final = 30.0


@dataclass(frozen=True)
class Token:
    """An issued token. ``access_token`` is a secret: it is not in ``repr``."""

    access_token: str = field(repr=False)
    token_type: str
    """``Bearer`` or ``DPoP``."""
    grant_id: str
    task_id: str
    audience: str
    scopes: tuple[str, ...]
    issued_at: float
    expires_at: float
    """Seconds since the epoch."""
    dpop_key: DpopKey | None = None
    """The key the token is bound to (``DPoP`` tokens): kept in process only."""
    approval_id: str = ""

    def authorization(self) -> str:
        """The ``Authorization`` header value (``Bearer …`` or ``DPoP …``)."""
        return f"{'DPoP' if self.dpop_key is not None else 'Bearer'} {self.access_token}"

    def dpop_proof(self, method: str, url: str, nonce: str | None = None) -> str | None:
        """The ``DPoP`` header value for one request (with the server's
        ``nonce`` when it asked for one), or ``None`` for a bearer token."""
        if self.dpop_key is None:
            return None
        return self.dpop_key.proof(method, url, self.access_token, nonce=nonce)


@dataclass(frozen=True)
class PendingApproval:
    """The request needs a person's approval: wait with ``await_approval``."""

    approval_id: str
    expires_at: float
    reason: str
    dpop_key: DpopKey | None = None


@dataclass(frozen=True)
class Task:
    """A task as the broker reports it."""

    task_id: str
    state: str
    """``ACTIVE``, ``COMPLETED``, ``REVOKED`` or ``EXPIRED``."""
    orchestrator: str
    agents: tuple[str, ...]
    scope_ceiling: Mapping[str, tuple[str, ...]]
    deadline: float
    live_grants: int
    parent_task_id: str = ""


@dataclass(frozen=True)
class Completed:
    """The outcome of ``complete_task``."""

    task: Task
    grants_revoked: int
    child_tasks_ended: tuple[str, ...]


class ApprovalDenied(TesseraError):
    """The approval was denied or expired: no token."""


def _ts(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def _check_ttl(ttl: int | None) -> None:
    if ttl is not None and not 1 <= ttl <= 86_400:
        raise ConfigError("ttl_seconds must be between 1 and 86400")


def request_token(
    task_id: str,
    audience: str,
    scopes: Iterable[str],
    ttl_seconds: int | None,
    bind: bool | DpopKey,
    mtls_binding: bool,
    tool_limit: Mapping[str, Any] | None = None,
) -> tuple[agent_pb2.RequestTokenRequest, DpopKey | None]:
    """The request and the DPoP key it binds to (``bind=True`` makes a new one)."""
    scopes = list(scopes)
    if not task_id or not audience or not scopes:
        raise ConfigError("task_id, audience and at least one scope are required")
    _check_ttl(ttl_seconds)
    key = DpopKey() if bind is True else (bind if isinstance(bind, DpopKey) else None)
    if key is not None and mtls_binding:
        raise ConfigError("a token is bound to a DPoP key or to the certificate, not both")
    req = agent_pb2.RequestTokenRequest(
        task_id=task_id,
        audience=audience,
        scopes=scopes,
        mtls_binding=mtls_binding,
        authorization_details=json.dumps([dict(tool_limit)]) if tool_limit is not None else "",
    )
    if ttl_seconds is not None:
        req.ttl_seconds = ttl_seconds
    if key is not None:
        req.pop_proof = key.proof("POST", REQUEST_TOKEN_PATH)
    return req, key


def issued(token: agent_pb2.IssuedToken, key: DpopKey | None) -> Token:
    """An ``IssuedToken`` as a :class:`Token`; checks the binding came back."""
    if key is not None and token.token_type != "DPoP":
        raise TesseraError("the broker did not bind the token to the DPoP key")
    return Token(
        access_token=token.access_token,
        token_type=token.token_type,
        grant_id=token.grant_id,
        task_id=token.task_id,
        audience=token.audience,
        scopes=tuple(token.scopes),
        issued_at=_ts(token.issued_at),
        expires_at=_ts(token.expires_at),
        dpop_key=key,
        approval_id=token.approval_id,
    )


def request_outcome(resp: agent_pb2.RequestTokenResponse, key: DpopKey | None) -> Token | PendingApproval:
    """A token, or the approval to wait for."""
    if resp.WhichOneof("outcome") == "pending":
        p = resp.pending
        return PendingApproval(p.approval_id, _ts(p.expires_at), p.reason, key)
    if resp.WhichOneof("outcome") != "token":
        raise TesseraError("the broker answered neither a token nor a pending approval")
    return issued(resp.token, key)


def approval_event(event: agent_pb2.AwaitApprovalResponse, key: DpopKey | None) -> Token | None:
    """A token once approved; ``None`` while still pending."""
    if event.WhichOneof("event") == "token":
        return issued(event.token, key)
    return None


def delegate_token(
    parent: Token | str,
    delegate: str,
    scopes: Iterable[str],
    ttl_seconds: int | None,
) -> agent_pb2.DelegateTokenRequest:
    """A ``DelegateToken`` or ``OfferDelegation`` request (they share it)."""
    if not delegate.startswith("spiffe://"):
        raise ConfigError("delegate must be a SPIFFE ID")
    _check_ttl(ttl_seconds)
    parent_token = parent.access_token if isinstance(parent, Token) else parent
    req = agent_pb2.DelegateTokenRequest(parent_token=parent_token, delegate=delegate, scopes=list(scopes))
    if isinstance(parent, Token):
        req.audience, req.task_id = parent.audience, parent.task_id
    if ttl_seconds is not None:
        req.ttl_seconds = ttl_seconds
    return req


@dataclass(frozen=True)
class DelegationOffer:
    """An offer of a child token (``OfferDelegation``). Not a credential: only
    ``delegate`` can redeem it, once, before ``expires_at``; hand ``offer`` to it."""

    offer: str = field(repr=False)
    delegate: str
    expires_at: float
    """Seconds since the epoch."""


def offer(resp: agent_pb2.DelegationOffer) -> DelegationOffer:
    """Parses an ``OfferDelegation`` answer."""
    return DelegationOffer(offer=resp.offer, delegate=resp.delegate, expires_at=_ts(resp.expires_at))


def redeem_delegation(offer: DelegationOffer | str, key: DpopKey | None) -> agent_pb2.RedeemDelegationRequest:
    """A ``RedeemDelegation`` request; ``key`` (the caller's own) binds the child."""
    text = offer.offer if isinstance(offer, DelegationOffer) else offer
    if not text:
        raise ConfigError("an offer is required")
    req = agent_pb2.RedeemDelegationRequest(offer=text)
    if key is not None:
        req.pop_proof = key.proof("POST", REDEEM_DELEGATION_PATH)
    return req


def release_token(target: Token | str) -> agent_pb2.ReleaseTokenRequest:
    """Release by :class:`Token` (its grant id) or by grant id."""
    grant_id = target.grant_id if isinstance(target, Token) else target
    if not grant_id:
        raise ConfigError("a grant id is required")
    return agent_pb2.ReleaseTokenRequest(grant_id=grant_id)


def start_task(
    agents: Iterable[str],
    scope_ceiling: Mapping[str, Iterable[str]],
    duration_seconds: int | None,
    deadline: datetime.datetime | None,
    task_id: str,
    labels: Mapping[str, str] | None,
    parent_task_id: str,
    authorization_details: Sequence[Mapping[str, Any]] = (),
) -> orchestrator_pb2.StartTaskRequest:
    """A ``StartTask`` request: exactly one of ``duration_seconds`` and ``deadline``."""
    if (duration_seconds is None) == (deadline is None):
        raise ConfigError("give exactly one of duration_seconds and deadline")
    agents = list(agents)
    if not agents:
        raise ConfigError("a task needs at least one agent")
    req = orchestrator_pb2.StartTaskRequest(
        task_id=task_id,
        agents=agents,
        scope_ceiling={aud: common_pb2.ScopeSet(scopes=list(s)) for aud, s in scope_ceiling.items()},
        labels=dict(labels or {}),
        parent_task_id=parent_task_id,
        authorization_details=json.dumps(list(authorization_details)) if authorization_details else "",
    )
    if duration_seconds is not None:
        req.duration_seconds = duration_seconds
    elif deadline is not None:
        req.deadline.FromDatetime(deadline.astimezone(datetime.timezone.utc))
    return req


def task(t: common_pb2.Task) -> Task:
    """A ``Task`` message as a :class:`Task`."""
    state = common_pb2.TaskState.Name(t.state).removeprefix("TASK_STATE_")
    return Task(
        task_id=t.task_id,
        state=state,
        orchestrator=t.orchestrator,
        agents=tuple(t.agents),
        scope_ceiling={aud: tuple(s.scopes) for aud, s in t.scope_ceiling.items()},
        deadline=_ts(t.deadline),
        live_grants=t.live_grants,
        parent_task_id=t.parent_task_id,
    )


def completed(resp: orchestrator_pb2.CompleteTaskResponse) -> Completed:
    """A ``CompleteTaskResponse`` as :class:`Completed`."""
    return Completed(task(resp.task), resp.grants_revoked, tuple(resp.child_tasks_ended))


def completion_reason(exc: BaseException | None) -> str:
    """The audit reason a ``task()`` context records on exit."""
    return "completed" if exc is None else f"failed: {type(exc).__name__}"
