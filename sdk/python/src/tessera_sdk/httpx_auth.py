"""Token provider for ``httpx`` (install the ``httpx`` extra).

:class:`TesseraAuth` attaches, to each request, a token for the request's
audience within the current task: the longest configured audience that is a
prefix of the request URL. It adds a fresh DPoP proof when the token is bound,
renews a token ``renew_before`` seconds before it expires, and on a ``401``
whose ``WWW-Authenticate`` says the token was revoked or expired it gets a
new token and retries the request once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, Generator, Iterable, Mapping
from typing import Final

import httpx

from ._core import Token
from .aio import AsyncAgentClient
from .client import AgentClient
from .errors import ConfigError

__all__ = ["TesseraAuth"]

_RETRY_MARKERS: Final = ("revoked", "expired")


def _url_without_query(request: httpx.Request) -> str:
    return str(request.url.copy_with(query=None, fragment=None))


def _says_revoked_or_expired(response: httpx.Response) -> bool:
    if response.status_code != 401:
        return False
    challenge = response.headers.get("www-authenticate", "").lower()
    return 'error="invalid_token"' in challenge and any(m in challenge for m in _RETRY_MARKERS)


class TesseraAuth(httpx.Auth):
    """``httpx`` auth that requests Tessera tokens as the agent.

    ``audiences`` maps each audience (e.g. ``https://api.example.com/crm``)
    to the scopes to request for it. Give ``agent`` for ``httpx.Client``,
    ``async_agent`` for ``httpx.AsyncClient`` (or both). Requests to a URL
    under no configured audience are refused with :class:`ConfigError`, so
    a token is never sent anywhere it was not issued for.
    """

    def __init__(
        self,
        task_id: str,
        audiences: Mapping[str, Iterable[str]],
        *,
        agent: AgentClient | None = None,
        async_agent: AsyncAgentClient | None = None,
        bind: bool = True,
        ttl_seconds: int | None = None,
        renew_before: float = 30.0,
    ) -> None:
        if agent is None and async_agent is None:
            raise ConfigError("give an agent or an async_agent")
        if not audiences:
            raise ConfigError("at least one audience is required")
        self._task_id = task_id
        self._audiences = {aud.rstrip("/"): tuple(scopes) for aud, scopes in audiences.items()}
        self._agent = agent
        self._async_agent = async_agent
        self._bind = bind
        self._ttl = ttl_seconds
        self._renew_before = renew_before
        self._tokens: dict[str, Token] = {}
        self._lock = threading.Lock()

    def audience_for(self, url: str) -> str:
        """The configured audience a URL belongs to (longest prefix on a path boundary)."""
        best = ""
        for aud in self._audiences:
            if (url == aud or url.startswith(aud + "/") or url.startswith(aud + "?")) and len(aud) > len(best):
                best = aud
        if not best:
            raise ConfigError("the request's URL is under no configured audience: no token is sent")
        return best

    def _cached(self, audience: str) -> Token | None:
        with self._lock:
            token = self._tokens.get(audience)
        if token is not None and token.expires_at - time.time() > self._renew_before:
            return token
        return None

    def _store(self, audience: str, token: Token) -> Token:
        with self._lock:
            self._tokens[audience] = token
        return token

    def _drop(self, audience: str) -> None:
        with self._lock:
            self._tokens.pop(audience, None)

    def _sign(self, request: httpx.Request, token: Token) -> None:
        request.headers["Authorization"] = token.authorization()
        proof = token.dpop_proof(request.method, _url_without_query(request))
        if proof is not None:
            request.headers["DPoP"] = proof
        elif "DPoP" in request.headers:
            del request.headers["DPoP"]

    def _fetch(self, audience: str) -> Token:
        if self._agent is None:
            raise ConfigError("TesseraAuth used by a sync client without a sync agent")
        token = self._agent.token(
            self._task_id, audience, self._audiences[audience], ttl_seconds=self._ttl, bind=self._bind
        )
        return self._store(audience, token)

    async def _fetch_async(self, audience: str) -> Token:
        if self._async_agent is None:
            raise ConfigError("TesseraAuth used by an async client without an async_agent")
        token = await self._async_agent.token(
            self._task_id, audience, self._audiences[audience], ttl_seconds=self._ttl, bind=self._bind
        )
        return self._store(audience, token)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """The flow ``httpx.Client`` runs."""
        audience = self.audience_for(str(request.url))
        token = self._cached(audience) or self._fetch(audience)
        self._sign(request, token)
        response = yield request
        if _says_revoked_or_expired(response):
            self._drop(audience)
            response.read()
            self._sign(request, self._fetch(audience))
            yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The flow ``httpx.AsyncClient`` runs."""
        audience = self.audience_for(str(request.url))
        token = self._cached(audience) or await self._fetch_async(audience)
        self._sign(request, token)
        response = yield request
        if _says_revoked_or_expired(response):
            self._drop(audience)
            await response.aread()
            self._sign(request, await self._fetch_async(audience))
            yield request
