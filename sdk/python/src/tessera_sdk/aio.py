"""asyncio clients: the twins of :mod:`tessera_sdk.client`, sharing its
request building, input checks and response parsing (``_core``)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from . import _core
from ._core import ApprovalDenied, Completed, DelegationOffer, PendingApproval, Task, Token
from ._pb.tessera.v1 import agent_pb2, agent_pb2_grpc, orchestrator_pb2, orchestrator_pb2_grpc
from .dpop import DpopKey
from .identity import Attestation, call_error

__all__ = ["AsyncAgentClient", "AsyncOrchestratorClient"]

_T = TypeVar("_T")


class _AsyncConnection:
    """One asyncio channel, re-made when the SVID files change."""

    def __init__(self, endpoint: str, identity: Attestation, make_stub: Callable[[grpc.aio.Channel], Any]) -> None:
        self._endpoint = endpoint
        self._identity = identity
        self._make_stub = make_stub
        self._lock = asyncio.Lock()
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    async def stub(self) -> Any:
        async with self._lock:
            changed = self._identity.refresh()
            if changed or self._channel is None:
                if self._channel is not None:
                    await self._channel.close(grace=1.0)
                self._channel = self._identity.aio_channel(self._endpoint)
                self._stub = self._make_stub(self._channel)
            return self._stub

    async def call(self, fn: Callable[[Any], Awaitable[_T]]) -> _T:
        stub = await self.stub()
        try:
            return await fn(stub)
        except grpc.aio.AioRpcError as err:
            raise call_error(self._identity, self._endpoint, err.code(), err.details() or "") from None

    async def close(self) -> None:
        async with self._lock:
            if self._channel is not None:
                await self._channel.close()
                self._channel = None


class AsyncAgentClient:
    """The asyncio :class:`~tessera_sdk.AgentClient`."""

    def __init__(self, endpoint: str, identity: Attestation, *, timeout: float = _core.DEFAULT_TIMEOUT) -> None:
        self._conn = _AsyncConnection(endpoint, identity, agent_pb2_grpc.AgentServiceStub)
        self._timeout = timeout

    async def request_token(
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
        """See :meth:`tessera_sdk.AgentClient.request_token`."""
        req, key = _core.request_token(task_id, audience, scopes, ttl_seconds, bind, mtls_binding, tool_limit)
        resp = await self._conn.call(lambda s: s.RequestToken(req, timeout=self._timeout))
        return _core.request_outcome(resp, key)

    async def token(self, task_id: str, audience: str, scopes: Iterable[str], **kwargs: Any) -> Token:
        """:meth:`request_token`, waiting for an approval if one is needed."""
        outcome = await self.request_token(task_id, audience, scopes, **kwargs)
        if isinstance(outcome, PendingApproval):
            return await self.await_approval(outcome)
        return outcome

    async def await_approval(self, pending: PendingApproval | str, *, timeout: float | None = None) -> Token:
        """See :meth:`tessera_sdk.AgentClient.await_approval`."""
        approval_id = pending.approval_id if isinstance(pending, PendingApproval) else pending
        key = pending.dpop_key if isinstance(pending, PendingApproval) else None
        req = agent_pb2.AwaitApprovalRequest(approval_id=approval_id)

        async def wait(stub: Any) -> Token:
            async for event in stub.AwaitApproval(req, timeout=timeout):
                token = _core.approval_event(event, key)
                if token is not None:
                    return token
            raise ApprovalDenied(f"approval {approval_id} ended without a token")

        return await self._conn.call(wait)

    async def delegate(
        self,
        parent: Token | str,
        delegate: str,
        scopes: Iterable[str] = (),
        *,
        ttl_seconds: int | None = None,
    ) -> Token:
        """See :meth:`tessera_sdk.AgentClient.delegate`."""
        req = _core.delegate_token(parent, delegate, scopes, ttl_seconds)
        resp = await self._conn.call(lambda s: s.DelegateToken(req, timeout=self._timeout))
        return _core.issued(resp, None)

    async def offer(
        self,
        parent: Token | str,
        delegate: str,
        scopes: Iterable[str] = (),
        *,
        ttl_seconds: int | None = None,
    ) -> DelegationOffer:
        """See :meth:`tessera_sdk.AgentClient.offer`."""
        req = _core.delegate_token(parent, delegate, scopes, ttl_seconds)
        resp = await self._conn.call(lambda s: s.OfferDelegation(req, timeout=self._timeout))
        return _core.offer(resp)

    async def redeem(self, offer: DelegationOffer | str, *, key: DpopKey | None = None) -> Token:
        """See :meth:`tessera_sdk.AgentClient.redeem`."""
        req = _core.redeem_delegation(offer, key)
        resp = await self._conn.call(lambda s: s.RedeemDelegation(req, timeout=self._timeout))
        return _core.issued(resp, key)

    async def release(self, token: Token | str) -> bool:
        """See :meth:`tessera_sdk.AgentClient.release`."""
        req = _core.release_token(token)
        resp = await self._conn.call(lambda s: s.ReleaseToken(req, timeout=self._timeout))
        return bool(resp.revoked)

    async def close(self) -> None:
        """Closes the channel."""
        await self._conn.close()

    async def __aenter__(self) -> AsyncAgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncOrchestratorClient:
    """The asyncio :class:`~tessera_sdk.OrchestratorClient`."""

    def __init__(self, endpoint: str, identity: Attestation, *, timeout: float = _core.DEFAULT_TIMEOUT) -> None:
        self._conn = _AsyncConnection(endpoint, identity, orchestrator_pb2_grpc.OrchestratorServiceStub)
        self._timeout = timeout

    async def start_task(
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
        """See :meth:`tessera_sdk.OrchestratorClient.start_task`."""
        req = _core.start_task(
            agents, scope_ceiling, duration_seconds, deadline, task_id, labels, parent_task_id, authorization_details
        )
        return _core.task(await self._conn.call(lambda s: s.StartTask(req, timeout=self._timeout)))

    async def get_task(self, task_id: str) -> Task:
        """The task's current state."""
        req = orchestrator_pb2.GetTaskRequest(task_id=task_id)
        return _core.task(await self._conn.call(lambda s: s.GetTask(req, timeout=self._timeout)))

    async def complete_task(self, task_id: str, reason: str = "") -> Completed:
        """Closes a task: every grant of it is revoked at once."""
        req = orchestrator_pb2.CompleteTaskRequest(task_id=task_id, reason=reason)
        return _core.completed(await self._conn.call(lambda s: s.CompleteTask(req, timeout=self._timeout)))

    @contextlib.asynccontextmanager
    async def task(
        self, agents: Iterable[str], scope_ceiling: Mapping[str, Iterable[str]], **kwargs: Any
    ) -> AsyncIterator[Task]:
        """``async with orchestrator.task(...) as task:``; completes on exit,
        also when the body raises."""
        started = await self.start_task(agents, scope_ceiling, **kwargs)
        try:
            yield started
        except BaseException as exc:
            await self.complete_task(started.task_id, _core.completion_reason(exc))
            raise
        await self.complete_task(started.task_id, _core.completion_reason(None))

    async def close(self) -> None:
        """Closes the channel."""
        await self._conn.close()

    async def __aenter__(self) -> AsyncOrchestratorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
