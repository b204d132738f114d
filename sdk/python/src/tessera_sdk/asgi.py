"""ASGI middleware (Starlette, FastAPI, the ``mcp`` SDK's streamable HTTP app)
that protects an app with a :class:`~tessera_sdk.Verifier`.

For every request but the RFC 9728 metadata it verifies the token — with the
DPoP proof of a bound token, for the request's method, its URL as the client
addressed it (``public_url`` + path) and its body (a proof's ``content_digest``,
see :class:`~tessera_sdk.VerifierConfig` ``require_content_digest``; the body
is read first, at most :data:`MAX_BODY` bytes) — and answers a refusal itself:
401/403/503 with ``WWW-Authenticate`` (naming the metadata URL). For an MCP
``tools/call`` it also requires the scope mapped to the tool (``tool_scopes``)
and answers ``insufficient_scope`` with that scope; and when the token carries
tool-level limits (RFC 9396 ``authorization_details`` of type ``mcp_tool``),
it allows only the tools and argument values they allow
(:meth:`~tessera_sdk.Verified.check_tool_call`), answering any other call 403
``insufficient_scope``. The app sees the verified
token in ``scope["state"]["tessera"]`` and through :func:`current`.

It serves ``/.well-known/oauth-protected-resource`` (RFC 9728), naming the
broker as the authorization server.

A token bound to a TLS client certificate (``cnf.x5t#S256``, RFC 8705) needs
the certificate the request came over. ASGI has no standard place for it but
the optional TLS extension (``scope["extensions"]["tls"]``): by default the
middleware takes the first certificate of its ``client_cert_chain`` (PEM), and
none when that extension is absent or names a ``client_cert_error``. A server
that exposes the certificate elsewhere (or a TLS-terminating proxy the app
trusts) is read with ``client_cert=``: a callable of the scope returning the
DER, or ``None``. When no certificate is available a certificate-bound token
is refused (401 ``invalid_token``), never accepted as a bearer token.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final

from .errors import InsufficientScope, InvalidToken, ToolNotAllowed, VerifyError
from .verifier import Presented, Verified, Verifier

__all__ = ["MAX_BODY", "TesseraMiddleware", "current", "tls_client_cert"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
ClientCert = Callable[[Scope], bytes | None]

MAX_BODY: Final = 1024 * 1024
"""Largest request body read to find an MCP tool name (bigger: 413)."""
METADATA_PATH: Final = "/.well-known/oauth-protected-resource"

_current: contextvars.ContextVar[Verified | None] = contextvars.ContextVar("tessera_verified", default=None)


def current() -> Verified:
    """The verified token of the request being handled (inside the middleware).
    Raises :class:`InvalidToken` outside a verified request."""
    verified = _current.get()
    if verified is None:
        raise InvalidToken("no verified token in this context")
    return verified


class TesseraMiddleware:
    """Wraps ``app``; see the module docs.

    ``public_url`` is the base URL clients use (``https://mcp.example.com``):
    DPoP proofs name it, not the ``Host`` header, which a client controls.
    ``tool_scopes`` maps MCP tool names to the scope each needs; a tool not in
    it is refused unless ``default_scope`` is set. ``client_cert`` returns the
    DER of the request's verified TLS client certificate (default:
    :func:`tls_client_cert`, the ASGI TLS extension's).
    """

    def __init__(
        self,
        app: App,
        verifier: Verifier,
        *,
        public_url: str,
        authorization_server: str,
        realm: str = "tessera",
        scopes_supported: Iterable[str] = (),
        tool_scopes: Mapping[str, str] | None = None,
        default_scope: str | None = None,
        client_cert: ClientCert | None = None,
    ) -> None:
        self.app = app
        self.client_cert: ClientCert = client_cert or tls_client_cert
        self.verifier = verifier
        self.public_url = public_url.rstrip("/")
        self.realm = realm
        self.tool_scopes = dict(tool_scopes or {})
        self.default_scope = default_scope
        resource = verifier.config.audience
        self.metadata = {
            "resource": resource,
            "authorization_servers": [authorization_server],
            "bearer_methods_supported": ["header"],
            "scopes_supported": sorted(set(scopes_supported) | set(self.tool_scopes.values())),
            "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
        }
        self.metadata_url = self.public_url + METADATA_PATH

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] == "websocket":
            # Not verified here (no DPoP for a WebSocket upgrade): refused, never let through.
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan
            return
        path = str(scope.get("path", "/"))
        if path == METADATA_PATH or path.startswith(METADATA_PATH + "/"):
            await _json(send, 200, self.metadata, {})
            return
        headers = _headers(scope)
        method = str(scope.get("method", "GET"))
        # The path as the client sent it (still percent-encoded), as its proof's htu names it.
        raw_path = scope.get("raw_path")
        url = self.public_url + (raw_path.decode("latin-1") if isinstance(raw_path, bytes) else path)
        try:
            cert = self.client_cert(scope)
            # The token's form first: an anonymous caller gets no body read.
            presented = Presented.from_headers(
                headers.get("authorization"), headers.get_all("dpop"), method, url, client_cert=cert
            )
        except VerifyError as err:
            await self._refuse(send, err)
            return
        body, receive = await _buffer(receive)
        if body is None:
            await _json(send, 413, {"error": "request body too large"}, {})
            return
        try:
            verified = await self.verifier.verify_async(dataclasses.replace(presented, body=body))
        except VerifyError as err:
            await self._refuse(send, err)
            return
        if method == "POST" and (self.tool_scopes or self.default_scope is not None or verified.tool_grants):
            calls = _tool_calls(body)
            if calls is None:
                await _json(send, 400, {"error": "invalid_request", "error_description": "body is not JSON"}, {})
                return
            try:
                for name, arguments in calls:
                    if self.tool_scopes or self.default_scope is not None:
                        verified.require_scope(self._scope_for(name))
                    # The token's own tool-level limits (authorization_details).
                    verified.check_tool_call(name if isinstance(name, str) else "", arguments)
            except (InsufficientScope, ToolNotAllowed) as err:
                await self._refuse(send, err)
                return
        scope.setdefault("state", {})["tessera"] = verified
        token = _current.set(verified)
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)

    def _scope_for(self, name: Any) -> str:
        """The scope a tool needs. An unmapped tool needs ``default_scope``, or
        a scope nobody holds."""
        mapped = self.tool_scopes.get(name) if isinstance(name, str) else None
        return mapped or self.default_scope or f"tool:{str(name)[:64]}"

    async def _refuse(self, send: Send, err: VerifyError) -> None:
        extra = dict(err.headers(self.realm))
        if "WWW-Authenticate" in extra:
            extra["WWW-Authenticate"] += f', resource_metadata="{self.metadata_url}"'
        body = {"error": err.kind.value, "error_description": err.reason}
        await _json(send, err.status, body, extra)


def _tool_calls(body: bytes) -> list[tuple[Any, Any]] | None:
    """The (tool name, arguments) of the MCP ``tools/call`` messages of a body
    (one message or a batch); ``None`` for a body that is not JSON with unique
    members (refused: what this parser cannot read must not reach a parser
    that reads it differently)."""
    try:
        message = json.loads(body, object_pairs_hook=_unique)
    except (ValueError, RecursionError):
        return None
    calls = message if isinstance(message, list) else [message]
    found: list[tuple[Any, Any]] = []
    for call in calls:
        if isinstance(call, dict) and call.get("method") == "tools/call":
            params = call.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            arguments = params.get("arguments") if isinstance(params, dict) else None
            found.append((name, arguments))
    return found


class _Headers:
    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self._items = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if len(values) == 1 else None

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self._items if k == name]


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate json member")
        out[key] = value
    return out


def _headers(scope: Scope) -> _Headers:
    return _Headers(scope.get("headers", []))


def tls_client_cert(scope: Scope) -> bytes | None:
    """The DER of the client certificate of the ASGI TLS extension
    (``scope["extensions"]["tls"]["client_cert_chain"][0]``, PEM); ``None``
    when the server does not provide it, the client sent none, or the server
    reports a ``client_cert_error``."""
    extensions = scope.get("extensions")
    tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
    if not isinstance(tls, Mapping) or tls.get("client_cert_error") is not None:
        return None
    chain = tls.get("client_cert_chain")
    if not isinstance(chain, (list, tuple)) or not chain:
        return None
    first = chain[0]
    if isinstance(first, bytes):
        first = first.decode("ascii", "replace")
    if not isinstance(first, str):
        return None
    try:
        return ssl.PEM_cert_to_DER_cert(first)
    except ValueError:
        return None


async def _buffer(receive: Receive) -> tuple[bytes | None, Receive]:
    """Reads the whole body (at most :data:`MAX_BODY`) and a ``receive`` that replays it."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > MAX_BODY:
            return None, receive
        chunks.append(chunk)
        more = bool(message.get("more_body", False))
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


async def _json(send: Send, status: int, body: Mapping[str, Any], headers: Mapping[str, str]) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
