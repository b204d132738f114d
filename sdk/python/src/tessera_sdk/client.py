"""Synchronous clients: :class:`AgentClient` and :class:`OrchestratorClient`.

Both speak gRPC over mTLS with the workload's SVID (:class:`SvidSource`),
re-made when the SVID files rotate. Errors: :class:`~tessera_sdk.errors.Refused`
(the broker said no), :class:`~tessera_sdk.errors.BrokerUnavailable` (down,
timed out), :class:`~tessera_sdk.errors.IdentityError` (SVID files).
"""

from __future__ import annotations

import contextlib
import datetime
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from . import _core
from ._core import ApprovalDenied, Completed, DelegationOffer, PendingApproval, Task, Token
from ._pb.tessera.v1 import agent_pb2, agent_pb2_grpc, orchestrator_pb2, orchestrator_pb2_grpc
from .dpop import DpopKey
from .identity import Attestation, call_error

__all__ = ["AgentClient", "OrchestratorClient"]

_T = TypeVar("_T")


class _Connection:
    """One channel, re-made when the SVID files change."""

    def __init__(self, endpoint: str, identity: Attestation, make_stub: Callable[[grpc.Channel], Any]) -> None:
        self._endpoint = endpoint
        self._identity = identity
        self._make_stub = make_stub
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: Any = None

    def stub(self) -> Any:
        with self._lock:
            changed = self._identity.refresh()
            if changed or self._channel is None:
                if self._channel is not None:
                    self._channel.close()
                self._channel = self._identity.channel(self._endpoint)
                self._stub = self._make_stub(self._channel)
            return self._stub

    def call(self, fn: Callable[[Any], _T]) -> _T:
        stub = self.stub()
        try:
            return fn(stub)
        except grpc.RpcError as err:
            raise call_error(self._identity, self._endpoint, err.code(), err.details() or "") from None

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None


class AgentClient:
    """An agent's client: request, delegate and release tokens, await approvals.

    ``endpoint`` is the broker's ``host:port`` (or ``https://host:port``).
    """

    def __init__(self, endpoint: str, identity: Attestation, *, timeout: float = _core.DEFAULT_TIMEOUT) -> None:
        self._conn = _Connection(endpoint, identity, agent_pb2_grpc.AgentServiceStub)
        self._timeout = timeout

    def request_token(
        self,
        task_id: str,
        audience: str,
        scopes: Iterable[str],
        *,
        ttl_seconds: int | None = None,
        bind: bool | DpopKey = False,
        mtls_binding: bool = False,
        tool_limit: Mapping[str, Any] | None = None,
    ) -> Token | PendingApproval:
        """Requests a token for ``audience`` within ``task_id``.

        ``bind=True`` binds it to a new DPoP key the client keeps in
        ``Token.dpop_key`` (or pass a :class:`DpopKey`). Returns a
        :class:`PendingApproval` when a person must approve first.
        ``tool_limit``: a tool-level limit (an ``mcp_tool`` detail for
        ``audience``) within the task's; without it the token carries the
        task's limit for the audience, if any.
        """
        req, key = _core.request_token(task_id, audience, scopes, ttl_seconds, bind, mtls_binding, tool_limit)
        resp = self._conn.call(lambda s: s.RequestToken(req, timeout=self._timeout))
        return _core.request_outcome(resp, key)

    def token(self, task_id: str, audience: str, scopes: Iterable[str], **kwargs: Any) -> Token:
        """:meth:`request_token`, waiting for an approval if one is needed."""
        outcome = self.request_token(task_id, audience, scopes, **kwargs)
        if isinstance(outcome, PendingApproval):
            return self.await_approval(outcome)
        return outcome

    def await_approval(self, pending: PendingApproval | str, *, timeout: float | None = None) -> Token:
        """Waits until the approval is granted and returns the token; raises
        :class:`ApprovalDenied` when it is denied or expires."""
        approval_id = pending.approval_id if isinstance(pending, PendingApproval) else pending
        key = pending.dpop_key if isinstance(pending, PendingApproval) else None
        req = agent_pb2.AwaitApprovalRequest(approval_id=approval_id)

        def wait(stub: Any) -> Token:
            for event in stub.AwaitApproval(req, timeout=timeout):
                token = _core.approval_event(event, key)
                if token is not None:
                    return token
            raise ApprovalDenied(f"approval {approval_id} ended without a token")

        return self._conn.call(wait)

    def delegate(
        self,
        parent: Token | str,
        delegate: str,
        scopes: Iterable[str] = (),
        *,
        ttl_seconds: int | None = None,
    ) -> Token:
        """Mints an attenuated bearer child of ``parent`` for the agent
        ``delegate`` (a SPIFFE ID) and returns it to this caller. Its
        ``client_id`` names the delegate but does not prove the delegate holds
        it; classes the broker requires bound (write, admin) are refused: use
        :meth:`offer`."""
        req = _core.delegate_token(parent, delegate, scopes, ttl_seconds)
        resp = self._conn.call(lambda s: s.DelegateToken(req, timeout=self._timeout))
        return _core.issued(resp, None)

    def offer(
        self,
        parent: Token | str,
        delegate: str,
        scopes: Iterable[str] = (),
        *,
        ttl_seconds: int | None = None,
    ) -> DelegationOffer:
        """Offers ``delegate`` a child of ``parent``: the same checks as
        :meth:`delegate`, but the answer is an offer only the delegate can
        redeem (:meth:`redeem`), binding the child to its own key. This caller
        never receives the child."""
        req = _core.delegate_token(parent, delegate, scopes, ttl_seconds)
        resp = self._conn.call(lambda s: s.OfferDelegation(req, timeout=self._timeout))
        return _core.offer(resp)

    def redeem(self, offer: DelegationOffer | str, *, key: DpopKey | None = None) -> Token:
        """Redeems an offer made to this caller: the child, bound to ``key``
        (this caller's own, ``DPoP``) when given, else a bearer child."""
        req = _core.redeem_delegation(offer, key)
        resp = self._conn.call(lambda s: s.RedeemDelegation(req, timeout=self._timeout))
        return _core.issued(resp, key)

    def release(self, token: Token | str) -> bool:
        """Gives a token back (by :class:`Token` or grant id); true if it was live."""
        req = _core.release_token(token)
        return bool(self._conn.call(lambda s: s.ReleaseToken(req, timeout=self._timeout)).revoked)

    def close(self) -> None:
        """Closes the channel."""
        self._conn.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OrchestratorClient:
    """An orchestrator's client: start, get and complete tasks."""

    def __init__(self, endpoint: str, identity: Attestation, *, timeout: float = _core.DEFAULT_TIMEOUT) -> None:
        self._conn = _Connection(endpoint, identity, orchestrator_pb2_grpc.OrchestratorServiceStub)
        self._timeout = timeout

    def start_task(
        self,
        agents: Iterable[str],
        scope_ceiling: Mapping[str, Iterable[str]],
        *,
        duration_seconds: int | None = None,
        deadline: datetime.datetime | None = None,
        task_id: str = "",
        labels: Mapping[str, str] | None = None,
        parent_task_id: str = "",
        authorization_details: Sequence[Mapping[str, Any]] = (),
    ) -> Task:
        """Opens a task: who may act, with which ceiling (audience → scopes), until when.
        ``authorization_details``: tool-level limits, RFC 9396 ``mcp_tool`` details
        (see :mod:`tessera_sdk.authz`), each for an audience of the ceiling."""
        req = _core.start_task(
            agents, scope_ceiling, duration_seconds, deadline, task_id, labels, parent_task_id, authorization_details
        )
        return _core.task(self._conn.call(lambda s: s.StartTask(req, timeout=self._timeout)))

    def get_task(self, task_id: str) -> Task:
        """The task's current state."""
        req = orchestrator_pb2.GetTaskRequest(task_id=task_id)
        return _core.task(self._conn.call(lambda s: s.GetTask(req, timeout=self._timeout)))

    def complete_task(self, task_id: str, reason: str = "") -> Completed:
        """Closes a task: every grant of it is revoked at once."""
        req = orchestrator_pb2.CompleteTaskRequest(task_id=task_id, reason=reason)
        return _core.completed(self._conn.call(lambda s: s.CompleteTask(req, timeout=self._timeout)))

    @contextlib.contextmanager
    def task(self, agents: Iterable[str], scope_ceiling: Mapping[str, Iterable[str]], **kwargs: Any) -> Iterator[Task]:
        """``with orchestrator.task(...) as task:`` starts a task and completes
        it on exit, also when the body raises (the exception propagates)."""
        started = self.start_task(agents, scope_ceiling, **kwargs)
        try:
            yield started
        except BaseException as exc:
            self.complete_task(started.task_id, _core.completion_reason(exc))
            raise
        self.complete_task(started.task_id, _core.completion_reason(None))

    def close(self) -> None:
        """Closes the channel."""
        self._conn.close()

    def __enter__(self) -> OrchestratorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
