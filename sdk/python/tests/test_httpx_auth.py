"""The httpx and httpx2 token providers against a real broker, with a resource
server (an in-process transport) that runs the real verifier."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import httpx2
import pytest

from tessera_sdk import (
    AgentClient,
    AsyncAgentClient,
    ConfigError,
    NonceSource,
    OrchestratorClient,
    Presented,
    TokenRevoked,
    Verifier,
    VerifyError,
)
from tessera_sdk._auth_core import says_revoked_or_expired

from .conftest import CRM, PAYMENTS, Broker, spiffe
from .test_e2e import connected_verifier, eventually

READ = "crm.contacts.read"


@pytest.fixture(params=["httpx", "httpx2"])
def lib(request: pytest.FixtureRequest) -> tuple[ModuleType, Any]:
    """(the HTTP library, its TesseraAuth class)."""
    name = str(request.param)
    module = httpx2 if name == "httpx2" else httpx
    auth = importlib.import_module(f"tessera_sdk.{name}_auth")
    return module, auth.TesseraAuth


class ResourceServer:
    """Answers like a protected API: the verifier decides, errors map to status + challenge."""

    def __init__(self, lib: ModuleType, verifier: Verifier) -> None:
        self.lib = lib
        self.verifier = verifier
        self.grants: list[str] = []
        self.statuses: list[int] = []
        self.refusals: list[str] = []

    def __call__(self, request: Any) -> Any:
        url = str(request.url)
        try:
            verified = self.verifier.authenticate(
                request.headers.get("authorization"), request.headers.get_list("dpop"), request.method, url
            )
            verified.require_scope(READ)
        except VerifyError as err:
            self.statuses.append(err.status)
            self.refusals.append(f"{type(err).__name__}: {err}")
            return self.lib.Response(err.status, headers=err.headers("crm"))
        self.grants.append(verified.grant_id)
        self.statuses.append(200)
        nonce = self.verifier.dpop_nonce()
        headers = {} if nonce is None else {"DPoP-Nonce": nonce}
        return self.lib.Response(200, json={"holder": verified.holder, "binding": verified.binding}, headers=headers)


@pytest.fixture
def verifier(broker: Broker) -> Iterator[Verifier]:
    v = connected_verifier(broker)
    yield v
    v.close()


@pytest.fixture
def task_id(broker: Broker) -> Iterator[str]:
    with OrchestratorClient(broker.endpoint, broker.identity("orchestrator")) as orch:
        task = orch.start_task([spiffe("researcher")], {CRM: [READ]}, duration_seconds=600)
        yield task.task_id
        orch.complete_task(task.task_id)


def test_sync_client_gets_a_bound_token_retries_once_when_revoked_and_renews(
    broker: Broker, verifier: Verifier, task_id: str, lib: tuple[ModuleType, Any]
) -> None:
    module, auth_class = lib
    server = ResourceServer(module, verifier)
    with AgentClient(broker.endpoint, broker.identity("researcher")) as agent:
        auth = auth_class(task_id, {CRM: [READ]}, agent=agent)
        with module.Client(transport=module.MockTransport(server), auth=auth) as http:
            first = http.get(CRM + "/contacts?page=1")
            assert first.status_code == 200, server.refusals
            assert first.json()["binding"] == "dpop"
            assert http.get(CRM + "/contacts").status_code == 200
            assert server.grants[0] == server.grants[1], "the cached token is reused"
            # Revoke it behind the provider's back: one 401 "revoked", one retry with a new token.
            agent.release(server.grants[0])
            eventually(verifier, lambda: _refused(verifier, http, module), "the verifier sees the release")
            server.statuses.clear()
            again = http.get(CRM + "/contacts")
            assert again.status_code == 200
            assert server.statuses == [401, 200]
            assert server.grants[-1] != server.grants[0]
            # Never sent to a URL of no configured audience.
            with pytest.raises(ConfigError):
                http.get(PAYMENTS + "/invoices")
            with pytest.raises(ConfigError):
                http.get("https://api.example.com/crmx")
        renewing = auth_class(task_id, {CRM: [READ]}, agent=agent, ttl_seconds=60, renew_before=120)
        with module.Client(transport=module.MockTransport(server), auth=renewing) as http:
            http.get(CRM + "/a")
            http.get(CRM + "/b")
        assert server.grants[-1] != server.grants[-2], "a token about to expire is renewed"


def _refused(verifier: Verifier, http: Any, module: ModuleType) -> bool:
    """Whether the verifier refuses the provider's cached token (probed without its retry)."""
    token = http.auth.tokens.cached(CRM)
    url = CRM + "/probe"
    try:
        verifier.verify(Presented(token.access_token, "DPoP", token.dpop_proof("GET", url), "GET", url))
    except TokenRevoked:
        return True
    return False


def test_async_client_flow(broker: Broker, verifier: Verifier, task_id: str, lib: tuple[ModuleType, Any]) -> None:
    module, auth_class = lib
    server = ResourceServer(module, verifier)

    async def run() -> list[int]:
        async with AsyncAgentClient(broker.endpoint, broker.identity("researcher")) as agent:
            auth = auth_class(task_id, {CRM: [READ]}, async_agent=agent)
            async with module.AsyncClient(transport=module.MockTransport(server), auth=auth) as http:
                one = await http.get(CRM + "/contacts")
                two = await http.post(CRM + "/contacts/search", json={"q": "x"})
                return [one.status_code, two.status_code]

    assert asyncio.run(run()) == [200, 200]
    assert server.grants[0] == server.grants[1]


def test_a_sync_client_without_a_sync_agent_is_a_config_error(lib: tuple[ModuleType, Any]) -> None:
    _, auth_class = lib
    with pytest.raises(ConfigError):
        auth_class("t", {CRM: [READ]})


def test_only_revoked_or_expired_401s_are_retried() -> None:
    revoked = 'Bearer realm="crm", error="invalid_token", error_description="token has been revoked"'
    assert says_revoked_or_expired(401, revoked)
    assert says_revoked_or_expired(401, revoked.replace("has been revoked", "has expired"))
    assert not says_revoked_or_expired(403, revoked)
    assert not says_revoked_or_expired(401, 'Bearer error="invalid_token", error_description="audience"')
    assert not says_revoked_or_expired(401, 'DPoP error="invalid_dpop_proof", error_description="revoked"')


def test_a_server_asking_for_dpop_nonces_gets_them_after_one_retry(
    broker: Broker, task_id: str, lib: tuple[ModuleType, Any]
) -> None:
    """RFC 9449 section 9: the resource server refuses a proof without its
    nonce (401 use_dpop_nonce, with DPoP-Nonce); the provider retries once
    with it, then keeps the newest nonce the server sends for later requests."""
    module, auth_class = lib
    verifier = connected_verifier(broker, dpop_nonce=NonceSource.random())
    try:
        server = ResourceServer(module, verifier)
        with AgentClient(broker.endpoint, broker.identity("researcher")) as agent:
            auth = auth_class(task_id, {CRM: [READ]}, agent=agent)
            with module.Client(transport=module.MockTransport(server), auth=auth) as http:
                assert http.get(CRM + "/contacts").status_code == 200
                assert server.statuses == [401, 200], server.refusals
                assert server.refusals == ["UseDpopNonce: dpop proof must carry the server's current nonce"]
                assert http.get(CRM + "/contacts").status_code == 200
                assert server.statuses == [401, 200, 200], "the nonce is kept"
    finally:
        verifier.close()
