"""A ``TokenVerifier`` for the ``mcp`` SDK's server (install the ``mcp`` extra).

The ``mcp`` SDK hands its verifier only the token of an ``Authorization:
Bearer`` header, with no request to check a DPoP proof against. So
:class:`TesseraTokenVerifier` accepts **bearer** Tessera tokens for this
server's audience only, and refuses DPoP-bound ones (a bound token without
its proof is exactly a stolen token). To accept bound tokens, put
:class:`tessera_sdk.asgi.TesseraMiddleware` in front of the MCP app: it
verifies the proof and maps MCP tools to scopes.

The ``mcp`` SDK calls the verifier before it knows which tool is called, so
a token's tool-level limits (RFC 9396 ``authorization_details`` of type
``mcp_tool``) are not enforced here: they are in ``AccessToken.claims``
(``authorization_details``) for the tool to check with
:meth:`tessera_sdk.Verified.check_tool_call`, or use
:class:`~tessera_sdk.asgi.TesseraMiddleware`, which enforces them on every
``tools/call``.
"""

from __future__ import annotations

from mcp.server.auth.provider import AccessToken

from .errors import VerifyError
from .verifier import Presented, Verifier

__all__ = ["TesseraTokenVerifier"]


class TesseraTokenVerifier:
    """``mcp.server.auth.provider.TokenVerifier`` backed by a :class:`Verifier`."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self.last_error: VerifyError | None = None

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's access info, or ``None`` when the verifier refuses it
        (another audience, expired, revoked, bound, edited chain, feed stale…)."""
        try:
            verified = await self.verifier.verify_async(Presented(token))
        except VerifyError as err:
            self.last_error = err
            return None
        claims = verified.claims
        return AccessToken(
            token=token,
            client_id=verified.holder,
            scopes=sorted(verified.scopes),
            expires_at=verified.expires_at,
            resource=str(claims["aud"]),
            subject=verified.subject,
            claims={
                "iss": claims["iss"],
                "task_id": verified.task_id,
                "jti": verified.grant_id,
                "act": claims.get("act"),
                "authorization_details": claims.get("authorization_details"),
            },
        )
