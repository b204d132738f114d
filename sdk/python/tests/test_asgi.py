"""TesseraMiddleware offline: an ASGI app behind it, driven through httpx's
ASGI transport, with tokens from the test issuer."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import Any

import httpx

from tessera_sdk import DpopKey, Verifier
from tessera_sdk.asgi import MAX_BODY, TesseraMiddleware, current, tls_client_cert

from ._tokens import Issuer, certificate, config, heartbeat

BASE = "https://mcp.example.com"
TOOLS = {"read": "crm.contacts.read", "write": "crm.contacts.write"}


def setup(**over: Any) -> tuple[Issuer, TesseraMiddleware, list[str]]:
    issuer = Issuer()
    verifier = Verifier.offline(config(**over))
    verifier.load_jwks(issuer.jwks())
    verifier.ingest(heartbeat(int(time.time()) - 10), fresh=True)
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append(f"{current().holder} {scope['state']['tessera'].grant_id} {len(body)}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = TesseraMiddleware(
        app, verifier, public_url=BASE, authorization_server="https://tessera.local", tool_scopes=TOOLS
    )
    return issuer, middleware, seen


def post(middleware: Any, headers: dict[str, str], body: Any, path: str = "/mcp") -> httpx.Response:
    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=middleware), base_url=BASE) as client:
            if isinstance(body, bytes):
                return await client.post(path, headers=headers, content=body)
            return await client.post(path, headers=headers, json=body)

    return asyncio.run(run())


def call(tool: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}}


def test_tools_are_mapped_to_scopes_and_the_app_gets_the_verified_token() -> None:
    issuer, middleware, seen = setup()
    bearer = {"Authorization": f"Bearer {issuer.token()}"}
    assert post(middleware, bearer, call("read")).status_code == 200
    assert seen[0].startswith("spiffe://tessera.local/agent/researcher grant-1 ")
    refused = post(middleware, bearer, call("write"))
    assert refused.status_code == 403
    assert 'scope="crm.contacts.write"' in refused.headers["www-authenticate"]
    assert f'resource_metadata="{BASE}/.well-known/oauth-protected-resource"' in refused.headers["www-authenticate"]
    # An unmapped tool, and a batch hiding a write: refused too.
    assert post(middleware, bearer, call("delete_everything")).status_code == 403
    assert post(middleware, bearer, [call("read"), call("write")]).status_code == 403
    # Other JSON-RPC messages need only a valid token.
    assert post(middleware, bearer, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).status_code == 200
    assert len(seen) == 2


def test_the_body_is_bounded_and_replayed_to_the_app() -> None:
    issuer, middleware, seen = setup()
    bearer = {"Authorization": f"Bearer {issuer.token()}"}
    assert post(middleware, bearer, b"x" * (MAX_BODY + 1)).status_code == 413
    # What the middleware cannot read must not reach a parser that reads it differently.
    assert post(middleware, bearer, b"not json").status_code == 400
    duplicate = b'{"method": "tools/list", "method": "tools/call", "params": {"name": "write"}}'
    assert post(middleware, bearer, duplicate).status_code == 400
    assert seen == []
    assert post(middleware, bearer, call("read")).status_code == 200
    assert seen == [
        f"spiffe://tessera.local/agent/researcher grant-1 {len(httpx.Request('POST', BASE, json=call('read')).content)}"
    ]


def test_dpop_bound_tokens_need_a_proof_for_the_public_url() -> None:
    issuer, middleware, _ = setup()
    key = DpopKey()
    token = issuer.token(cnf={"jkt": key.thumbprint})
    good = {"Authorization": f"DPoP {token}", "DPoP": key.proof("POST", BASE + "/mcp", token)}
    assert post(middleware, good, call("read")).status_code == 200
    as_bearer = post(middleware, {"Authorization": f"Bearer {token}"}, call("read"))
    assert as_bearer.status_code == 401
    other_url = {"Authorization": f"DPoP {token}", "DPoP": key.proof("POST", "http://evil.example/mcp", token)}
    refused = post(middleware, other_url, call("read"))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("DPoP ")
    assert refused.json()["error"] == "invalid_dpop_proof"


def test_the_proof_binds_the_body_it_came_with() -> None:
    issuer, middleware, seen = setup(require_content_digest=True)
    key = DpopKey()
    token = issuer.token(cnf={"jkt": key.thumbprint})
    body = json.dumps(call("read")).encode()
    url = BASE + "/mcp"
    signed = {"Authorization": f"DPoP {token}", "DPoP": key.proof("POST", url, token, body=body)}
    assert post(middleware, signed, body).status_code == 200
    # The same kind of proof over another body, or one without a digest: refused.
    for proof in (key.proof("POST", url, token, body=b"{}"), key.proof("POST", url, token)):
        refused = post(middleware, {"Authorization": f"DPoP {token}", "DPoP": proof}, body)
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_dpop_proof"
        assert "content_digest" in refused.json()["error_description"]
    assert len(seen) == 1


def test_no_token_another_audience_and_a_stale_feed() -> None:
    issuer, middleware, _ = setup()
    assert post(middleware, {}, call("read")).status_code == 401
    other = {"Authorization": f"Bearer {issuer.token(aud='https://api.example.com/payments')}"}
    assert post(middleware, other, call("read")).status_code == 401
    stale = Verifier.offline(config(), clock=lambda: time.time() + 3600)
    stale.load_jwks(issuer.jwks())
    middleware.verifier = stale
    answer = post(middleware, {"Authorization": f"Bearer {issuer.token()}"}, call("read"))
    assert answer.status_code == 503
    assert "www-authenticate" not in answer.headers


def with_tls(middleware: TesseraMiddleware, tls: dict[str, Any] | None) -> Any:
    """The app as a server with the ASGI TLS extension would call it."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if tls is not None:
            scope["extensions"] = {**scope.get("extensions", {}), "tls": tls}
        await middleware(scope, receive, send)

    return app


def test_certificate_bound_tokens_need_the_tls_client_certificate() -> None:
    issuer, middleware, seen = setup()
    cert, other = certificate("agent"), certificate("thief")
    token = issuer.cert_bound(cert)
    headers = {"Authorization": f"Bearer {token}"}

    def tls(der: bytes, error: str | None = None) -> dict[str, Any]:
        return {"client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)], "client_cert_error": error}

    assert post(with_tls(middleware, tls(cert)), headers, call("read")).status_code == 200
    assert len(seen) == 1
    # No TLS extension (the server does not expose the certificate): refused, never a bearer token.
    for app in (middleware, with_tls(middleware, {"client_cert_chain": []}), with_tls(middleware, tls(cert, "bad"))):
        answer = post(app, headers, call("read"))
        assert answer.status_code == 401
        assert answer.json() == {
            "error": "invalid_token",
            "error_description": "token is bound to a client certificate and none was presented",
        }
        assert answer.headers["www-authenticate"].startswith('Bearer realm="tessera", error="invalid_token"')
    mismatch = post(with_tls(middleware, tls(other)), headers, call("read"))
    assert mismatch.status_code == 401
    assert mismatch.json()["error_description"] == "client certificate does not match the token's binding"
    assert "resource_metadata=" in mismatch.headers["www-authenticate"]
    # A server that exposes the certificate elsewhere: a callable of the scope.
    middleware.client_cert = lambda scope: cert
    assert post(middleware, headers, call("read")).status_code == 200
    middleware.client_cert = lambda scope: None
    assert post(middleware, headers, call("read")).status_code == 401
    assert len(seen) == 2


def test_tls_client_cert_reads_the_asgi_tls_extension() -> None:
    cert = certificate()
    pem = ssl.DER_cert_to_PEM_cert(cert)
    assert tls_client_cert({"extensions": {"tls": {"client_cert_chain": [pem, "ignored"]}}}) == cert
    assert tls_client_cert({"extensions": {"tls": {"client_cert_chain": (pem,), "client_cert_error": None}}}) == cert
    scopes: list[dict[str, Any]] = [
        {},
        {"extensions": None},
        {"extensions": {}},
        {"extensions": {"tls": {}}},
        {"extensions": {"tls": {"client_cert_chain": []}}},
        {"extensions": {"tls": {"client_cert_chain": [pem], "client_cert_error": "unknown ca"}}},
        {"extensions": {"tls": {"client_cert_chain": ["not pem"]}}},
        {"extensions": {"tls": {"client_cert_chain": [7]}}},
    ]
    for scope in scopes:
        assert tls_client_cert(scope) is None, scope
