"""Tessera as the OAuth authorization server of an MCP server, driven by the
``mcp`` SDK's own headless OAuth clients against a real tesserad (issue 21).

The MCP server (the ``mcp`` SDK behind ``TesseraMiddleware``) serves RFC 9728
metadata naming the broker's HTTPS facade as its authorization server. The
``mcp`` client discovers it from there, reads its RFC 8414 metadata, and gets a
Tessera token for the workload ``agent/ci-runner`` with a JWT-SVID of the dev
setup (``tessera dev jwt``):

- ``client_credentials`` with the JWT-SVID as the client assertion
  (``PrivateKeyJWTOAuthProvider``, Workload Identity Federation), and
- the RFC 7523 ``jwt-bearer`` grant (``IdentityAssertionOAuthProvider``);

and for ``agent/mcp-signer``, whose public key is registered
(``client_jwks_file``), ``client_credentials`` with ``private_key_jwt`` signed
by the SDK itself (``SignedJWTParameters``).

It calls a tool with each; once the orchestrator completes the task, the
token is refused as revoked and no new one is granted.

Two things the SDK's providers cannot say are added by small subclasses: the
task (RFC 9396 ``authorization_details`` of type ``tessera_task``), and, for
``jwt-bearer``, that there is no client secret (Tessera authenticates the
agent by the assertion; RFC 7523 section 3.1 allows the grant without client
authentication).
"""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import httpx2
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from mcp import Client
from mcp.client.auth.extensions.client_credentials import PrivateKeyJWTOAuthProvider, SignedJWTParameters
from mcp.client.auth.extensions.identity_assertion import IdentityAssertionOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from tessera_sdk import OrchestratorClient, Presented, TokenRevoked, Verifier, VerifierConfig, VerifyError
from tessera_sdk.asgi import TesseraMiddleware

from .conftest import Broker, _dev_init, _free_port, spiffe
from .test_e2e import eventually, past_second

TOOLS_READ = "tools.read"
AGENT = "spiffe://tessera.local/agent/ci-runner"
SIGNER = "spiffe://tessera.local/agent/mcp-signer"


@dataclass
class Memory:
    """The ``mcp`` client's ``TokenStorage``, in memory."""

    tokens: OAuthToken | None = None
    client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def _with_task(
    request: httpx2.Request, task_id: str, drop: tuple[str, ...] = (), tools: dict[str, Any] | None = None
) -> httpx2.Request:
    """The token request with the task named (RFC 9396), with the tool-level
    limit ``tools`` (an ``mcp_tool`` detail) if given, and `drop` left out."""
    form = {k: v for k, v in parse_qsl(request.content.decode()) if k not in drop}
    details: list[dict[str, Any]] = [{"type": "tessera_task", "task_id": task_id}]
    if tools is not None:
        details.append(tools)
    form["authorization_details"] = json.dumps(details)
    return httpx2.Request("POST", request.url, data=form, headers={"Content-Type": "application/x-www-form-urlencoded"})


class TaskClientCredentials(PrivateKeyJWTOAuthProvider):
    """``client_credentials`` with a client assertion, for one task."""

    def __init__(self, task_id: str, tools: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task_id = task_id
        self.tools = tools

    async def _exchange_token_client_credentials(self) -> httpx2.Request:
        return _with_task(await super()._exchange_token_client_credentials(), self.task_id, tools=self.tools)


class TaskJwtBearer(IdentityAssertionOAuthProvider):
    """The ``jwt-bearer`` grant for one task, without a client secret."""

    def __init__(self, task_id: str, **kwargs: Any) -> None:
        # The SDK's provider is for confidential clients; Tessera has no
        # secrets, and the placeholder is never sent (dropped below).
        super().__init__(client_secret="not-sent", **kwargs)  # noqa: S106
        self.task_id = task_id

    def _build_token_request(self, scope: str | None, assertion: str) -> httpx2.Request:
        return _with_task(super()._build_token_request(scope, assertion), self.task_id, drop=("client_secret",))


@dataclass
class Setup:
    broker: Broker
    issuer: str
    mcp_url: str
    verifier: Verifier
    tls: ssl.SSLContext
    signer_key: str

    def svid(self, audience: str) -> str:
        """A fresh JWT-SVID of the dev issuer for ``agent/ci-runner``, for ``audience``."""
        return self.broker.cli("dev", "jwt", "--subject", "ci-runner", "--audience", audience).strip()


@pytest.fixture
def setup(tmp_path: pathlib.Path, store_env: dict[str, str]) -> Iterator[Setup]:
    # The MCP server's port first: its URL is the API's audience in the catalog.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    base = f"http://127.0.0.1:{int(listener.getsockname()[1])}"
    mcp_url = base + "/mcp"
    _dev_init(tmp_path, "--jwt")
    # agent/mcp-signer's client key: the private half stays with the test,
    # the public half is registered as its `client_jwks_file`.
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()

    jwk = {"kty": "EC", "crv": "P-256", "x": b64(numbers.x), "y": b64(numbers.y), "kid": "signer-1", "use": "sig"}
    (tmp_path / "mcp-signer.jwks").write_text(json.dumps({"keys": [jwk]}))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with open(tmp_path / "tesserad.toml", "a", encoding="utf-8") as config:
        config.write(
            f"""
[[identities]]
id = "{SIGNER}"
kind = "agent"
owner = "team-research"
roles = ["agent"]
max_ttl = "10m"
client_jwks_file = "mcp-signer.jwks"

[[apis]]
audience = "{mcp_url}"
scopes = {{ "{TOOLS_READ}" = "read" }}
verifiers = ["spiffe://tessera.local/service/api-gateway"]
"""
        )
    # The broker's issuer is its facade's URL: MCP clients fetch the RFC 8414
    # metadata from the issuer named in the RFC 9728 metadata, and check it.
    port = _free_port()
    issuer = f"https://127.0.0.1:{port}"
    broker = Broker(
        dir=tmp_path,
        env={
            **store_env,
            "TESSERA_OAUTH__LISTEN": f"127.0.0.1:{port}",
            "TESSERA_OAUTH__PUBLIC_URL": issuer,
            "TESSERA_TOKENS__ISSUER": issuer,
        },
    )
    broker.start()
    verifier = Verifier.connect(
        broker.endpoint, broker.identity("api-gateway"), VerifierConfig(issuer=issuer, audience=mcp_url)
    )
    eventually(verifier, lambda: verifier.ready, "the verifier is synchronised and has keys")
    floor = verifier.sync_floor
    assert floor is not None
    past_second(floor)
    server = MCPServer("tools")

    @server.tool()
    def read_contacts() -> list[str]:
        """The contacts."""
        return ["ada", "grace"]

    @server.tool()
    def transfer(amount: float, repo: str) -> str:
        """A transfer the token's tool-level limits constrain."""
        return f"sent {amount} to {repo}"

    @server.tool()
    def delete_repo(repo: str) -> str:
        """A tool no token of the tool-limited task lists."""
        return f"deleted {repo}"

    app = TesseraMiddleware(
        server.streamable_http_app(json_response=True, stateless_http=True),
        verifier,
        public_url=base,
        authorization_server=issuer,
        tool_scopes={"read_contacts": TOOLS_READ, "transfer": TOOLS_READ, "delete_repo": TOOLS_READ},
    )
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    tls = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    yield Setup(broker, issuer, mcp_url, verifier, tls, pem)
    uv.should_exit = True
    thread.join(timeout=10)
    listener.close()
    verifier.close()
    broker.stop()


def test_mcp_clients_get_task_bound_tessera_tokens_by_workload_identity(setup: Setup) -> None:
    orch = OrchestratorClient(setup.broker.endpoint, setup.broker.identity("orchestrator"))
    task = orch.start_task([AGENT, SIGNER], {setup.mcp_url: [TOOLS_READ]}, duration_seconds=600)
    answers: list[tuple[str, int, str]] = []

    async def record(response: httpx2.Response) -> None:
        answers.append((str(response.request.url), response.status_code, response.headers.get("www-authenticate", "")))

    async def call(auth: httpx2.Auth) -> Any:
        """Calls ``read_contacts`` through the mcp SDK's client; its result, or the error it raised."""
        answers.clear()
        try:
            async with (
                httpx2.AsyncClient(auth=auth, verify=setup.tls, event_hooks={"response": [record]}) as http,
                Client(streamable_http_client(setup.mcp_url, http_client=http)) as client,
            ):
                return await client.call_tool("read_contacts", {})
        except Exception as err:  # noqa: BLE001 - the mcp client's error, asserted on below
            return err

    async def svid(audience: str, *_: str) -> str:
        return await asyncio.to_thread(setup.svid, audience)

    credentials = TaskClientCredentials(
        task.task_id,
        server_url=setup.mcp_url,
        storage=Memory(),
        client_id=AGENT,
        assertion_provider=svid,
        scope=TOOLS_READ,
        issuer=setup.issuer,
    )
    bearer_storage = Memory()
    jwt_bearer = TaskJwtBearer(
        task.task_id,
        server_url=setup.mcp_url,
        storage=bearer_storage,
        client_id=AGENT,
        issuer=setup.issuer,
        assertion_provider=svid,
        scope=TOOLS_READ,
    )

    signed = TaskClientCredentials(
        task.task_id,
        server_url=setup.mcp_url,
        storage=Memory(),
        client_id=SIGNER,
        assertion_provider=SignedJWTParameters(
            issuer=SIGNER, subject=SIGNER, signing_key=setup.signer_key, signing_algorithm="ES256"
        ).create_assertion_provider(),
        scope=TOOLS_READ,
        issuer=setup.issuer,
    )

    def text(result: Any) -> str:
        assert not isinstance(result, BaseException), (result, answers)
        return " ".join(getattr(block, "text", "") for block in result.content)

    async def scenario() -> None:
        # client_credentials: found by discovery (401 -> RFC 9728 -> RFC 8414), then the tool.
        assert "ada" in text(await call(credentials))
        urls = [url for url, _, _ in answers]
        assert any("/.well-known/oauth-protected-resource" in url for url in urls), urls
        assert f"{setup.issuer}/.well-known/oauth-authorization-server" in urls, urls
        assert (f"{setup.issuer}/oauth/token", 200, "") in answers, answers
        # private_key_jwt, signed by the mcp SDK with the registered key.
        assert "ada" in text(await call(signed))
        # jwt-bearer: the JWT-SVID is the grant.
        assert "grace" in text(await call(jwt_bearer))
        assert bearer_storage.tokens is not None
        token = bearer_storage.tokens.access_token

        # The task completes: the token is refused as revoked, and no new one is granted.
        orch.complete_task(task.task_id)

        def revoked() -> bool:
            try:
                setup.verifier.verify(Presented(token, scheme="Bearer"))
            except TokenRevoked:
                return True
            except VerifyError:
                return False
            return False

        assert await asyncio.to_thread(setup.verifier.wait_for, revoked, 10), "the verifier learns the revocation"
        ended = await call(jwt_bearer)
        assert isinstance(ended, BaseException), ended
        assert any(status == 401 and "revoked" in challenge for _, status, challenge in answers), answers
        assert any(url.endswith("/oauth/token") and status == 400 for url, status, _ in answers), answers
        for provider in (credentials, signed):
            ended = await call(provider)
            assert isinstance(ended, BaseException), ended

    asyncio.run(scenario())
    orch.close()
    # Every token the facade issued is audited with its grant type and client authentication.
    audit = [json.loads(line) for line in (setup.broker.dir / "audit.jsonl").read_text().splitlines()]
    issued = {(r.get("grant_type"), r.get("client_auth")) for r in audit if r["event"] == "token_issued"}
    assert issued == {
        ("client_credentials", "client_assertion"),
        ("client_credentials", "private_key_jwt"),
        ("jwt-bearer", "none"),
    }, issued
    assert spiffe("researcher") not in {r.get("who", {}).get("identity") for r in audit if r["event"] == "token_issued"}


def test_mcp_clients_are_held_to_the_tool_limits_of_their_token(setup: Setup) -> None:
    """A task limited at tool level (RFC 9396 ``mcp_tool``): the token carries
    the limit; the MCP server (``TesseraMiddleware``) lets an allowed tool with
    allowed arguments through and answers 403 ``insufficient_scope`` to a
    disallowed argument value and to a tool the token does not list; a client
    asking for a narrower limit is held to it, one asking for a wider one gets
    ``invalid_authorization_details`` and no token."""
    ceiling: dict[str, Any] = {
        "type": "mcp_tool",
        "server": setup.mcp_url,
        "tools": ["read_contacts", "transfer"],
        "constraints": {"transfer": {"amount": {"max": 500}, "repo": {"eq": "acme/site"}}},
    }
    orch = OrchestratorClient(setup.broker.endpoint, setup.broker.identity("orchestrator"))
    task = orch.start_task(
        [AGENT], {setup.mcp_url: [TOOLS_READ]}, duration_seconds=600, authorization_details=[ceiling]
    )
    answers: list[tuple[str, int, str]] = []

    async def record(response: httpx2.Response) -> None:
        answers.append((str(response.request.url), response.status_code, response.headers.get("www-authenticate", "")))

    async def call(auth: httpx2.Auth, tool: str, args: dict[str, Any]) -> Any:
        """Calls ``tool`` through the mcp SDK's client; its result, or the error it raised."""
        answers.clear()
        try:
            async with (
                httpx2.AsyncClient(auth=auth, verify=setup.tls, event_hooks={"response": [record]}) as http,
                Client(streamable_http_client(setup.mcp_url, http_client=http)) as client,
            ):
                return await client.call_tool(tool, args)
        except Exception as err:  # noqa: BLE001 - the mcp client's error, asserted on below
            return err

    async def svid(audience: str, *_: str) -> str:
        return await asyncio.to_thread(setup.svid, audience)

    def provider(storage: Memory, tools: dict[str, Any] | None = None) -> TaskClientCredentials:
        return TaskClientCredentials(
            task.task_id,
            tools,
            server_url=setup.mcp_url,
            storage=storage,
            client_id=AGENT,
            assertion_provider=svid,
            scope=TOOLS_READ,
            issuer=setup.issuer,
        )

    def text(result: Any) -> str:
        assert not isinstance(result, BaseException), (result, answers)
        assert not result.is_error, result
        return " ".join(getattr(block, "text", "") for block in result.content)

    def refused_by_the_tool_server() -> None:
        """The call failed on the MCP server's 403 ``insufficient_scope`` (the
        client's step-up got a token with the same limits, refused again)."""
        mcp = [(status, challenge) for url, status, challenge in answers if url.startswith(setup.mcp_url)]
        assert (403, mcp[-1][1]) == mcp[-1], answers
        assert 'error="insufficient_scope"' in mcp[-1][1], answers

    limited = Memory()
    narrower = Memory()

    async def scenario() -> None:
        # No detail asked: the token carries the task's limit.
        auth = provider(limited)
        assert "ada" in text(await call(auth, "read_contacts", {}))
        assert limited.tokens is not None
        claims = json.loads(base64.urlsafe_b64decode(limited.tokens.access_token.split(".")[1] + "=="))
        assert claims["authorization_details"] == [ceiling], claims
        assert "sent 500" in text(await call(auth, "transfer", {"amount": 500, "repo": "acme/site"}))
        # Disallowed argument values, a tool not listed.
        refused: list[tuple[str, dict[str, Any]]] = [
            ("transfer", {"amount": 501, "repo": "acme/site"}),
            ("transfer", {"amount": 5, "repo": "acme/other"}),
            ("delete_repo", {"repo": "acme/site"}),
        ]
        for tool, args in refused:
            result = await call(auth, tool, args)
            assert isinstance(result, BaseException), (tool, args, result)
            refused_by_the_tool_server()

        # A narrower limit asked for: held to it.
        narrow = {
            **ceiling,
            "tools": ["transfer"],
            "constraints": {"transfer": {**ceiling["constraints"]["transfer"], "amount": {"max": 100}}},
        }
        auth = provider(narrower, narrow)
        assert "sent 100" in text(await call(auth, "transfer", {"amount": 100, "repo": "acme/site"}))
        for tool, args in [("transfer", {"amount": 101, "repo": "acme/site"}), ("read_contacts", {})]:
            result = await call(auth, tool, args)
            assert isinstance(result, BaseException), (tool, args, result)
            refused_by_the_tool_server()

        # A wider one: refused at the token endpoint, no token.
        wider = {**ceiling, "tools": ["read_contacts", "transfer", "delete_repo"]}
        storage = Memory()
        result = await call(provider(storage, wider), "read_contacts", {})
        assert isinstance(result, BaseException), result
        assert storage.tokens is None
        assert any(url.endswith("/oauth/token") and status == 400 for url, status, _ in answers), answers

    asyncio.run(scenario())
    orch.complete_task(task.task_id)
    orch.close()
    audit = [json.loads(line) for line in (setup.broker.dir / "audit.jsonl").read_text().splitlines()]
    denied = [r for r in audit if r["event"] == "token_denied" and "authorization_details" in json.dumps(r)]
    assert denied, "the wider request is audited"
