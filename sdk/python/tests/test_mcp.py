"""The MCP example server behind TesseraMiddleware, driven by the ``mcp`` SDK's
own client with the httpx2 token provider, against a real tesserad; and the
``TokenVerifier`` for the ``mcp`` SDK's own bearer auth."""

from __future__ import annotations

import asyncio
import importlib.util
import pathlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tessera_sdk import AsyncAgentClient, OrchestratorClient, Presented, TokenRevoked, Verifier, VerifyError
from tessera_sdk.httpx2_auth import TesseraAuth
from tessera_sdk.mcp import TesseraTokenVerifier

from .conftest import CRM, Broker, spiffe
from .test_e2e import connected_verifier

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
READ, WRITE = "crm.contacts.read", "crm.contacts.write"


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("mcp_server_example", EXAMPLES / "mcp_server.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def verifier(broker: Broker) -> Iterator[Verifier]:
    v = connected_verifier(broker)
    yield v
    v.close()


@pytest.fixture
def mcp_url(verifier: Verifier) -> Iterator[str]:
    # Listening before the server starts: a request made before uvicorn is up
    # waits in the socket's backlog, so nothing needs to wait for it.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = int(listener.getsockname()[1])
    base = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(_example().build_app(verifier, base), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    yield base + "/mcp"
    server.should_exit = True
    thread.join(timeout=10)
    listener.close()


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def test_an_agent_calls_mcp_tools_with_the_token_provider(broker: Broker, verifier: Verifier, mcp_url: str) -> None:
    orch = OrchestratorClient(broker.endpoint, broker.identity("orchestrator"))
    task = orch.start_task([spiffe("researcher")], {CRM: [READ, WRITE]}, duration_seconds=600)
    base = mcp_url.removesuffix("/mcp")
    answers: list[tuple[int, str]] = []

    async def record(response: Any) -> None:
        answers.append((response.status_code, response.headers.get("www-authenticate", "")))

    async def call(auth: TesseraAuth, tool: str, args: dict[str, Any]) -> Any:
        """Calls ``tool`` through the mcp SDK's client; its result, or the error it raised."""
        answers.clear()
        try:
            async with (
                httpx2.AsyncClient(auth=auth, event_hooks={"response": [record]}) as http,
                Client(streamable_http_client(mcp_url, http_client=http)) as client,
            ):
                return await client.call_tool(tool, args)
        except Exception as err:  # noqa: BLE001 - the mcp client's error, asserted on below
            return err

    async def scenario() -> None:
        async with AsyncAgentClient(broker.endpoint, broker.identity("researcher")) as agent:
            reader = TesseraAuth(task.task_id, {CRM: [READ]}, async_agent=agent, urls={base: CRM})
            writer = TesseraAuth(task.task_id, {CRM: [WRITE]}, async_agent=agent, urls={base: CRM})
            assert "ada" in _text(await call(reader, "read_contacts", {}))
            assert {status for status, _ in answers} == {200}
            # The write tool with a read token: 403 naming the scope, before the tool runs.
            assert isinstance(await call(reader, "write_contact", {"name": "mallory"}), Exception)
            assert any(
                status == 403 and 'error="insufficient_scope"' in challenge and f'scope="{WRITE}"' in challenge
                for status, challenge in answers
            ), answers
            written = await call(writer, "write_contact", {"name": "alan"})
            assert "added alan as spiffe://tessera.local/agent/researcher" in _text(written)
            after = _text(await call(reader, "read_contacts", {}))
            assert "alan" in after
            assert "mallory" not in after
            # The task completes: the next call's token is refused as revoked, and
            # the provider's one retry cannot get a new token for an ended task.
            orch.complete_task(task.task_id)
            token = reader.tokens.cached(CRM)
            assert token is not None

            def revoked() -> bool:
                try:
                    # Revocation is checked before any proof: the token alone tells.
                    verifier.verify(Presented(token.access_token, scheme=token.token_type))
                except TokenRevoked:
                    return True
                except VerifyError:
                    return False
                return False

            ok = await asyncio.to_thread(verifier.wait_for, revoked, 10)
            assert ok, "the verifier learns the task's revocation"
            ended = await call(reader, "read_contacts", {})
            assert any(status == 401 and "revoked" in challenge for status, challenge in answers), answers
            assert isinstance(ended, BaseException)
            assert "is completed" in repr(ended), ended

    asyncio.run(scenario())
    orch.close()


def test_the_middleware_answers_with_status_challenge_and_metadata(broker: Broker, mcp_url: str) -> None:
    base = mcp_url.removesuffix("/mcp")
    meta = httpx.get(base + "/.well-known/oauth-protected-resource/mcp")
    assert meta.status_code == 200
    assert meta.json()["resource"] == CRM
    assert meta.json()["authorization_servers"] == ["https://tessera.local"]
    assert set(meta.json()["scopes_supported"]) == {READ, WRITE}
    anonymous = httpx.post(mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert anonymous.status_code == 401
    challenge = anonymous.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert f'resource_metadata="{base}/.well-known/oauth-protected-resource"' in challenge


def test_the_mcp_token_verifier_accepts_bearer_tokens_of_its_audience_only(broker: Broker, verifier: Verifier) -> None:
    from tessera_sdk import AgentClient

    token_verifier = TesseraTokenVerifier(verifier)
    with (
        OrchestratorClient(broker.endpoint, broker.identity("orchestrator")) as orch,
        AgentClient(broker.endpoint, broker.identity("researcher")) as agent,
        orch.task([spiffe("researcher")], {CRM: [READ]}, duration_seconds=600) as task,
    ):
        bearer = agent.token(task.task_id, CRM, [READ])
        access = asyncio.run(token_verifier.verify_token(bearer.access_token))
        assert access is not None
        assert (access.client_id, access.resource, access.scopes) == (spiffe("researcher"), CRM, [READ])
        bound = agent.token(task.task_id, CRM, [READ], bind=True)
        assert asyncio.run(token_verifier.verify_token(bound.access_token)) is None
        assert asyncio.run(token_verifier.verify_token(bearer.access_token + "x")) is None
    refused = verifier.wait_for(lambda: asyncio.run(token_verifier.verify_token(bearer.access_token)) is None, 10)
    assert refused, "the completed task's token is refused"


def test_the_middleware_refuses_websockets_and_passes_lifespan() -> None:
    from tessera_sdk.asgi import TesseraMiddleware

    from ._tokens import config

    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["type"])

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    middleware = TesseraMiddleware(
        app, Verifier.offline(config()), public_url="http://127.0.0.1", authorization_server="https://tessera.local"
    )
    asyncio.run(middleware({"type": "websocket", "path": "/ws", "headers": []}, receive, send))
    asyncio.run(middleware({"type": "lifespan"}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert reached == ["lifespan"]
