"""Every error the SDK raises, and the one place that maps them to HTTP.

Client errors (:class:`TesseraError` and subclasses) say what the broker
refused or why it could not be reached. Verifier refusals
(:class:`VerifyError` and subclasses) carry a :class:`RefusalKind`, which
:func:`http_status` and :meth:`VerifyError.www_authenticate` turn into the
401/403/503 answer a resource server sends, like ``status.rs`` does for gRPC.
None of them ever contains a token or a proof.
"""

from __future__ import annotations

import enum
from typing import Final

import grpc

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "CertificateMismatch",
    "CertificateRequired",
    "ConfigError",
    "IdentityError",
    "InsufficientScope",
    "InvalidProof",
    "InvalidToken",
    "ProofRequired",
    "RefusalKind",
    "Refused",
    "TesseraError",
    "TokenExpired",
    "TokenRevoked",
    "ToolNotAllowed",
    "Unavailable",
    "UseDpopNonce",
    "VerifyError",
    "http_status",
]


class TesseraError(Exception):
    """Base class of every error this package raises."""


class ConfigError(TesseraError, ValueError):
    """A setting given to the SDK is out of its documented range."""


class IdentityError(TesseraError):
    """The workload's SVID files are missing, unreadable, not PEM, or expired."""


class BrokerError(TesseraError):
    """The broker answered a call with an error status.

    ``code`` is the gRPC status code, ``message`` the broker's explanation
    (it never contains a secret).
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code: Final = code
        self.message: Final = message


class Refused(BrokerError):
    """The broker refused the request (permission, argument, state, not found)."""


class BrokerUnavailable(BrokerError):
    """The broker could not be reached or did not answer in time."""


_UNAVAILABLE_CODES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


def broker_error(code: grpc.StatusCode, message: str) -> BrokerError:
    """The exception for a failed call: unavailable or refused."""
    if code in _UNAVAILABLE_CODES:
        return BrokerUnavailable(code, message)
    return Refused(code, message)


class RefusalKind(enum.Enum):
    """What kind of refusal a :class:`VerifyError` is; decides the HTTP answer."""

    INVALID_TOKEN = "invalid_token"
    INVALID_PROOF = "invalid_dpop_proof"
    USE_DPOP_NONCE = "use_dpop_nonce"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    UNAVAILABLE = "unavailable"


_STATUS: Final = {
    RefusalKind.INVALID_TOKEN: 401,
    RefusalKind.INVALID_PROOF: 401,
    RefusalKind.USE_DPOP_NONCE: 401,
    RefusalKind.INSUFFICIENT_SCOPE: 403,
    RefusalKind.UNAVAILABLE: 503,
}


def http_status(kind: RefusalKind) -> int:
    """The HTTP status of a refusal: 401, 403 or 503."""
    return _STATUS[kind]


def _quoted(text: str) -> str:
    return text.replace('"', "").replace("\\", "")


class VerifyError(TesseraError):
    """A token (or its proof) was refused by a :class:`~tessera_sdk.Verifier`.

    ``reason`` says what failed; it never contains the token or the proof.
    """

    kind: RefusalKind = RefusalKind.INVALID_TOKEN

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason: Final = reason

    @property
    def status(self) -> int:
        """The HTTP status to answer with."""
        return http_status(self.kind)

    def headers(self, realm: str) -> dict[str, str]:
        """The response headers of the refusal: ``WWW-Authenticate`` unless a 503."""
        challenge = self.www_authenticate(realm)
        return {} if challenge is None else {"WWW-Authenticate": challenge}

    def www_authenticate(self, realm: str) -> str | None:
        """The ``WWW-Authenticate`` header value (RFC 6750 / RFC 9449), or
        ``None`` for a 503, which has no challenge."""
        if self.kind is RefusalKind.UNAVAILABLE:
            return None
        realm = _quoted(realm)
        params = f'realm="{realm}", error="{self.kind.value}", error_description="{_quoted(self.reason)}"'
        if self.kind in (RefusalKind.INVALID_PROOF, RefusalKind.USE_DPOP_NONCE) or isinstance(self, ProofRequired):
            return f'DPoP {params}, algs="ES256 EdDSA"'
        if isinstance(self, InsufficientScope):
            return f'Bearer {params}, scope="{_quoted(self.scope)}"'
        if isinstance(self, ToolNotAllowed):
            # No scope would help: the limit is the token's authorization_details.
            return f"Bearer {params}"
        return f'Bearer {params}, DPoP realm="{realm}", algs="ES256 EdDSA"'


class InvalidToken(VerifyError):
    """The token is missing, malformed, badly signed, for another audience,
    expired, revoked or its delegation chain is wrong (401)."""

    kind = RefusalKind.INVALID_TOKEN


class TokenRevoked(InvalidToken):
    """The token, its task or an ancestor grant was revoked (401)."""


class TokenExpired(InvalidToken):
    """The token's ``exp`` has passed, beyond the leeway (401)."""


class ProofRequired(InvalidToken):
    """The token is DPoP-bound and came without the ``DPoP`` scheme and a proof (401)."""


class CertificateRequired(InvalidToken):
    """The token is bound to a TLS client certificate (``cnf.x5t#S256``,
    RFC 8705) and none was presented (401)."""


class CertificateMismatch(InvalidToken):
    """The token is bound to a TLS client certificate other than the one it
    came over (401)."""


class InvalidProof(VerifyError):
    """The DPoP proof is malformed, for another request or key, stale, or replayed (401)."""

    kind = RefusalKind.INVALID_PROOF


class UseDpopNonce(VerifyError):
    """The DPoP proof carries no nonce, or not a current one of this
    verifier's (RFC 9449 section 9): answer 401 with the ``DPoP-Nonce`` to
    use, which :meth:`headers` includes; the client retries with it."""

    kind = RefusalKind.USE_DPOP_NONCE

    def __init__(self, nonce: str) -> None:
        super().__init__("dpop proof must carry the server's current nonce")
        self.nonce: Final = nonce

    def headers(self, realm: str) -> dict[str, str]:
        """``WWW-Authenticate`` and the ``DPoP-Nonce`` to retry with."""
        return {**super().headers(realm), "DPoP-Nonce": self.nonce}


class InsufficientScope(VerifyError):
    """The token is valid but lacks the scope the operation needs (403)."""

    kind = RefusalKind.INSUFFICIENT_SCOPE

    def __init__(self, scope: str) -> None:
        super().__init__(f"token lacks scope `{scope[:128]}`")
        self.scope: Final = scope[:128]


class ToolNotAllowed(VerifyError):
    """The token's tool-level limits (``authorization_details`` of type
    ``mcp_tool``) do not allow this tool call (403 ``insufficient_scope``);
    the reason names the tool or argument, never its value."""

    kind = RefusalKind.INSUFFICIENT_SCOPE


class Unavailable(VerifyError):
    """The verifier cannot decide safely: the revocation feed is not synchronised
    or has been silent longer than ``max_staleness``, or a cache is full (503)."""

    kind = RefusalKind.UNAVAILABLE
