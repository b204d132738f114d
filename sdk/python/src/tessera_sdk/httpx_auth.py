"""Token provider for ``httpx`` (install the ``httpx`` extra).

:class:`TesseraAuth` attaches, to each request, a token for the request's
audience within the current task: the longest configured audience that is a
prefix of the request URL (a URL under none is refused, so a token never goes
anywhere it was not issued for). It adds a fresh DPoP proof when the token is
bound (with the server's ``DPoP-Nonce`` once it sent one, retrying once on
``use_dpop_nonce``), renews a token ``renew_before`` seconds before it
expires, and on a ``401`` whose ``WWW-Authenticate`` says the token was
revoked or expired gets a new token and retries the request once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterable, Mapping

import httpx

from ._auth_core import TokenCache, asks_for_nonce, says_revoked_or_expired, sign
from .aio import AsyncAgentClient
from .client import AgentClient

__all__ = ["TesseraAuth"]


class TesseraAuth(httpx.Auth):
    """``httpx`` auth that requests Tessera tokens as the agent.

    ``audiences`` maps each audience (e.g. ``https://api.example.com/crm``)
    to the scopes to request for it; ``urls`` maps URL prefixes to those
    audiences when an API is not served under its audience's URL (by
    default each audience is its own prefix). Give ``agent`` for ``httpx.Client``,
    ``async_agent`` for ``httpx.AsyncClient`` (or both). ``bind=True``
    (default) asks for DPoP-bound tokens.
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
        urls: Mapping[str, str] | None = None,
    ) -> None:
        self.tokens = TokenCache(task_id, audiences, agent, async_agent, bind, ttl_seconds, renew_before, urls)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """The flow ``httpx.Client`` runs."""
        audience = self.tokens.audience_for(str(request.url))
        url = str(request.url)
        token = self.tokens.cached(audience) or self.tokens.fetch(audience)
        sign(request.headers, request.method, url, token, self.tokens.nonce(audience))
        response = yield request
        self.tokens.remember_nonce(audience, response.headers.get("dpop-nonce"))
        if (
            token.dpop_key is not None
            and self.tokens.nonce(audience) is not None
            and asks_for_nonce(response.status_code, response.headers.get("www-authenticate", ""))
        ):
            response.read()
            sign(request.headers, request.method, url, token, self.tokens.nonce(audience))
            response = yield request
            self.tokens.remember_nonce(audience, response.headers.get("dpop-nonce"))
        if says_revoked_or_expired(response.status_code, response.headers.get("www-authenticate", "")):
            self.tokens.drop(audience)
            response.read()
            sign(request.headers, request.method, url, self.tokens.fetch(audience), self.tokens.nonce(audience))
            yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The flow ``httpx.AsyncClient`` runs."""
        audience = self.tokens.audience_for(str(request.url))
        url = str(request.url)
        token = self.tokens.cached(audience) or await self.tokens.fetch_async(audience)
        sign(request.headers, request.method, url, token, self.tokens.nonce(audience))
        response = yield request
        self.tokens.remember_nonce(audience, response.headers.get("dpop-nonce"))
        if (
            token.dpop_key is not None
            and self.tokens.nonce(audience) is not None
            and asks_for_nonce(response.status_code, response.headers.get("www-authenticate", ""))
        ):
            await response.aread()
            sign(request.headers, request.method, url, token, self.tokens.nonce(audience))
            response = yield request
            self.tokens.remember_nonce(audience, response.headers.get("dpop-nonce"))
        if says_revoked_or_expired(response.status_code, response.headers.get("www-authenticate", "")):
            self.tokens.drop(audience)
            await response.aread()
            fresh = await self.tokens.fetch_async(audience)
            sign(request.headers, request.method, url, fresh, self.tokens.nonce(audience))
            yield request
