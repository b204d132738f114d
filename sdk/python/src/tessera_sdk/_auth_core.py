"""What the ``httpx`` and ``httpx2`` token providers share: which audience a
URL belongs to, the token cache with renewal before expiry, signing a
request (``Authorization`` and ``DPoP``), and when to retry."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Final

from ._core import Token
from .aio import AsyncAgentClient
from .client import AgentClient
from .errors import ConfigError

_RETRY_MARKERS: Final = ("revoked", "expired")
_MAX_NONCE: Final = 256


def says_revoked_or_expired(status: int, www_authenticate: str) -> bool:
    """A ``401`` whose challenge says the token was revoked or expired: worth one retry."""
    challenge = www_authenticate.lower()
    return status == 401 and 'error="invalid_token"' in challenge and any(m in challenge for m in _RETRY_MARKERS)


def asks_for_nonce(status: int, www_authenticate: str) -> bool:
    """A ``401`` whose challenge says the DPoP proof must carry the server's nonce (RFC 9449 section 9)."""
    return status == 401 and 'error="use_dpop_nonce"' in www_authenticate.lower()


def without_query(url: str) -> str:
    """The URL a DPoP proof's ``htu`` names: no query, no fragment."""
    return url.split("#", 1)[0].split("?", 1)[0]


class TokenCache:
    """Tokens per audience within one task, renewed ``renew_before`` seconds before expiry."""

    def __init__(
        self,
        task_id: str,
        audiences: Mapping[str, Iterable[str]],
        agent: AgentClient | None,
        async_agent: AsyncAgentClient | None,
        bind: bool,
        ttl_seconds: int | None,
        renew_before: float,
        urls: Mapping[str, str] | None = None,
    ) -> None:
        if agent is None and async_agent is None:
            raise ConfigError("give an agent or an async_agent")
        if not task_id or not audiences:
            raise ConfigError("a task id and at least one audience are required")
        if renew_before < 0:
            raise ConfigError("renew_before must not be negative")
        self.task_id = task_id
        self.audiences = {aud: tuple(scopes) for aud, scopes in audiences.items()}
        # URL prefix -> audience; by default every audience is its own URL prefix.
        self.urls = {prefix.rstrip("/"): aud for prefix, aud in (urls or {a: a for a in audiences}).items()}
        unknown = set(self.urls.values()) - set(self.audiences)
        if unknown:
            raise ConfigError(f"urls name audiences with no scopes: {sorted(unknown)}")
        self._agent = agent
        self._async_agent = async_agent
        self._bind = bind
        self._ttl = ttl_seconds
        self._renew_before = renew_before
        self._tokens: dict[str, Token] = {}
        self._nonces: dict[str, str] = {}
        self._lock = threading.Lock()

    def audience_for(self, url: str) -> str:
        """The audience of the longest configured URL prefix of ``url`` (on a
        path boundary). A URL under none gets no token."""
        url = without_query(url)
        best = ""
        for prefix in self.urls:
            if (url == prefix or url.startswith(prefix + "/")) and len(prefix) > len(best):
                best = prefix
        if not best:
            raise ConfigError("the request's URL is under no configured audience: no token is sent")
        return self.urls[best]

    def cached(self, audience: str) -> Token | None:
        """The cached token unless it expires within ``renew_before``."""
        with self._lock:
            token = self._tokens.get(audience)
        if token is not None and token.expires_at - time.time() > self._renew_before:
            return token
        return None

    def nonce(self, audience: str) -> str | None:
        """The last ``DPoP-Nonce`` the audience's server sent, to put in proofs."""
        with self._lock:
            return self._nonces.get(audience)

    def remember_nonce(self, audience: str, value: str | None) -> None:
        """Keeps a ``DPoP-Nonce`` the audience's server sent (a short printable value)."""
        if value and len(value) <= _MAX_NONCE and all("!" <= c <= "~" for c in value):
            with self._lock:
                self._nonces[audience] = value

    def drop(self, audience: str) -> None:
        """Forgets the token (it was refused as revoked or expired)."""
        with self._lock:
            self._tokens.pop(audience, None)

    def _store(self, audience: str, token: Token) -> Token:
        with self._lock:
            self._tokens[audience] = token
        return token

    def fetch(self, audience: str) -> Token:
        """A new token from the broker (sync)."""
        if self._agent is None:
            raise ConfigError("a sync HTTP client needs the token provider's `agent`")
        scopes = self.audiences[audience]
        token = self._agent.token(self.task_id, audience, scopes, ttl_seconds=self._ttl, bind=self._bind)
        return self._store(audience, token)

    async def fetch_async(self, audience: str) -> Token:
        """A new token from the broker (asyncio)."""
        if self._async_agent is None:
            raise ConfigError("an async HTTP client needs the token provider's `async_agent`")
        scopes = self.audiences[audience]
        token = await self._async_agent.token(self.task_id, audience, scopes, ttl_seconds=self._ttl, bind=self._bind)
        return self._store(audience, token)


def sign(headers: MutableMapping[str, str], method: str, url: str, token: Token, nonce: str | None = None) -> None:
    """Sets ``Authorization`` and, for a bound token, a fresh ``DPoP`` proof
    (carrying the server's ``nonce`` when it sent one)."""
    headers["Authorization"] = token.authorization()
    proof = token.dpop_proof(method, without_query(url), nonce)
    if proof is not None:
        headers["DPoP"] = proof
    elif "DPoP" in headers:
        del headers["DPoP"]
