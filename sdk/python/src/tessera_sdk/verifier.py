"""The resource server's token verifier: the Python twin of the Rust SDK's
``Verifier`` (``crates/tessera-client/src/verifier``).

:meth:`Verifier.check` runs, in this order: the feed (fail closed when never
synchronised or silent longer than ``max_staleness``); the JWS (size, shape,
header members, ``typ`` ``at+jwt``, ``alg`` in the allow-list and equal to
the key's, ``kid`` looked up in the cached JWKS only, signature); the claims
(``iss``, ``aud``, ``exp``/``nbf``/``iat`` with bounded leeway); the ``act``
chain; revocation (token, task, ancestors, sync floor); and the binding of a
bound token: the DPoP proof of ``cnf.jkt`` (method, URL, ``ath``, ``iat``
window, ``jti`` replay), or the TLS client certificate of ``cnf.x5t#S256``
(RFC 8705: SHA-256 of its DER, compared in constant time).

:meth:`Verifier.connect` follows the broker's ``VerifierService`` in a
background thread: JWKS (periodically, and on an unknown ``kid`` at most once
per ``jwks_min_refresh``) and ``WatchRevocations`` with resume and backoff.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import itertools
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import grpc
import jwt

from . import _jose
from ._pb.tessera.v1 import verifier_pb2, verifier_pb2_grpc
from .authz import ToolGrant, ToolGrantError, parse_details
from .dpop import NonceSource, check_proof
from .errors import (
    CertificateMismatch,
    CertificateRequired,
    ConfigError,
    InsufficientScope,
    InvalidProof,
    InvalidToken,
    ProofRequired,
    TokenExpired,
    TokenRevoked,
    ToolNotAllowed,
    Unavailable,
    UseDpopNonce,
)
from .identity import Attestation

__all__ = [
    "MAX_KID_LEN",
    "MAX_LEEWAY",
    "MAX_TOKEN_LEN",
    "MemoryReplayStore",
    "Presented",
    "ReplayStore",
    "Verified",
    "Verifier",
    "VerifierConfig",
    "certificate_thumbprint",
]

MAX_TOKEN_LEN: Final = 16 * 1024
MAX_KID_LEN: Final = 128
MAX_LEEWAY: Final = 300.0
MAX_SUB_LEN: Final = 2048
MAX_KEYS: Final = 64
_CALL_TIMEOUT: Final = 5.0
_HEADER_CACHE: Final = 256
_VERIFIER_STUB: Final[Callable[[Any], Any]] = verifier_pb2_grpc.VerifierServiceStub
_MAX_MESSAGE_BYTES: Final = 256 * 1024
_FORBIDDEN_HEADER: Final = ("jku", "jwk", "x5u", "x5c", "crit")
_REQUIRED_STR: Final = ("iss", "sub", "aud", "jti", "scope", "client_id", "task_id")
_REQUIRED_INT: Final = ("exp", "nbf", "iat")


@dataclass
class VerifierConfig:
    """What a :class:`Verifier` accepts; defaults equal the Rust SDK's."""

    issuer: str
    """The broker's ``iss`` (``tokens.issuer``)."""
    audience: str
    """This resource server's audience; tokens for any other are refused."""
    algorithms: tuple[str, ...] = ("ES256", "EdDSA")
    """Signature algorithms accepted (a subset of ES256, EdDSA)."""
    leeway: float = 5.0
    """Clock skew tolerated on ``exp``, ``nbf``, ``iat``, in seconds (≤ 300)."""
    max_staleness: float = 15.0
    """Fail closed once the feed has been silent this long (0.1 s to 1 h)."""
    max_act_depth: int = 4
    """Most hops in an ``act`` chain (1 to 16, tessera-core's ``MAX_CHAIN_LEN``)."""
    dpop_max_age: float = 60.0
    """Oldest DPoP proof ``iat`` accepted, as an age (1 s to 60 s, tessera-core's bound)."""
    replay_cache_capacity: int = 100_000
    """Most DPoP proofs remembered for replay detection."""
    replay_cache_per_key: int = 10_000
    """Most DPoP proofs remembered for one key thumbprint (one client cannot
    fill the cache and stop DPoP for every other)."""
    replay_store: ReplayStore | None = None
    """A replay store the replicas of this resource server share, instead of
    this verifier's memory (the two capacities above then do not apply)."""
    dpop_nonce: NonceSource | None = None
    """Require every DPoP proof to carry a current nonce of this source (RFC
    9449 section 9): a proof without one is refused with
    :class:`~tessera_sdk.errors.UseDpopNonce`, whose headers carry the nonce
    to retry with. Replicas (Rust or Python) sharing the source's secret
    accept each other's nonces."""
    max_revocations: int = 1_000_000
    """Most revocations held."""
    require_bound: bool = False
    """Refuse bearer tokens: every token must carry ``cnf``."""
    require_content_digest: bool = False
    """Refuse a DPoP proof that does not bind the request body by its
    ``content_digest`` claim (``sha-256=:<base64>:``, RFC 9530); the body must
    then be given (:attr:`Presented.body`). Without this, a proof carrying the
    claim is still checked against a given body."""
    jwks_min_refresh: float = 1.0
    """An unknown ``kid`` refreshes the JWKS at most this often (seconds)."""
    jwks_refresh: float = 60.0
    """The JWKS is refreshed this often regardless (seconds)."""

    def validate(self) -> None:
        """Raises :class:`ConfigError` for a setting out of range."""
        checks = [
            (bool(self.issuer), "issuer", "must not be empty"),
            (bool(self.audience), "audience", "must not be empty"),
            (
                bool(self.algorithms) and set(self.algorithms) <= {"ES256", "EdDSA"},
                "algorithms",
                "must be a non-empty subset of ES256, EdDSA",
            ),
            (0 <= self.leeway <= MAX_LEEWAY, "leeway", "must be between 0 and 300 s"),
            (0.1 <= self.max_staleness <= 3600, "max_staleness", "must be between 100 ms and 1 h"),
            (1 <= self.max_act_depth <= 16, "max_act_depth", "must be between 1 and 16"),
            (1 <= self.dpop_max_age <= 60, "dpop_max_age", "must be between 1 s and 60 s"),
            (1 <= self.replay_cache_capacity <= 10_000_000, "replay_cache_capacity", "out of range"),
            (self.replay_cache_per_key >= 1, "replay_cache_per_key", "must be at least 1"),
            (1 <= self.max_revocations <= 100_000_000, "max_revocations", "out of range"),
            (
                self.jwks_refresh > 0 and self.jwks_min_refresh <= self.jwks_refresh,
                "jwks_refresh",
                "must be positive and at least jwks_min_refresh",
            ),
        ]
        for ok, name, message in checks:
            if not ok:
                raise ConfigError(f"verifier config `{name}`: {message}")


@dataclass(frozen=True)
class Presented:
    """A token as it arrived with a request, and the proofs that came with it."""

    token: str
    scheme: str = "Bearer"
    """``Bearer`` or ``DPoP`` (the ``Authorization`` scheme)."""
    dpop_proof: str | None = None
    """The ``DPoP`` header if exactly one came (``None`` for none or several)."""
    method: str = "GET"
    url: str = ""
    """The request's absolute URL as the client addressed it (for ``htu``)."""
    client_cert: bytes | None = field(default=None, repr=False)
    """The DER of the caller's TLS client certificate, as the TLS layer
    verified it (``None``: none, or not known). Needed for a token bound to a
    certificate (``cnf.x5t#S256``, RFC 8705); such a token without it is refused."""
    body: bytes | None = field(default=None, repr=False)
    """The request body, when the caller has it: a DPoP proof's
    ``content_digest`` must be its digest (``None``: not checked, refused
    with ``require_content_digest``)."""

    @staticmethod
    def from_headers(
        authorization: str | None,
        dpop_headers: list[str],
        method: str,
        url: str,
        *,
        client_cert: bytes | None = None,
        body: bytes | None = None,
    ) -> Presented:
        """Parses an ``Authorization`` header; raises :class:`InvalidToken`.
        ``client_cert`` is the DER of the caller's verified TLS client certificate."""
        if not authorization:
            raise InvalidToken("no access token")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if not token or any(c.isspace() for c in token):
            raise InvalidToken("authorization header is not `Bearer` or `DPoP` followed by a token")
        if scheme.lower() == "bearer":
            scheme = "Bearer"
        elif scheme.lower() == "dpop":
            scheme = "DPoP"
        else:
            raise InvalidToken("authorization header is not `Bearer` or `DPoP` followed by a token")
        proof = dpop_headers[0] if len(dpop_headers) == 1 else None
        return Presented(
            token=token, scheme=scheme, dpop_proof=proof, method=method, url=url, client_cert=client_cert, body=body
        )


def certificate_thumbprint(der: bytes) -> str:
    """``x5t#S256`` (RFC 8705 section 3.1) of a certificate: base64url
    (unpadded) SHA-256 of its DER."""
    return _jose.b64url(hashlib.sha256(der).digest())


def _certificate_matches(x5t_s256: str, der: bytes) -> bool:
    """Whether ``der`` is the certificate of ``x5t_s256``, in constant time."""
    return hmac.compare_digest(certificate_thumbprint(der).encode(), x5t_s256.encode())


@dataclass(frozen=True)
class Verified:
    """A token that passed every check."""

    claims: Mapping[str, Any]
    actors: tuple[str, ...]
    """The delegation chain's actors, current first; empty when not delegated."""
    binding: str
    """``bearer``, ``dpop`` or ``certificate`` (``cnf.x5t#S256``)."""
    tool_grants: tuple[ToolGrant, ...] = ()
    """The token's tool-level limits: its RFC 9396 ``authorization_details``
    of type ``mcp_tool``. Empty: no tool-level limit (scopes still apply)."""

    @property
    def holder(self) -> str:
        """The identity the token was issued to (``client_id``)."""
        return str(self.claims["client_id"])

    @property
    def subject(self) -> str:
        """``sub``: the agent (for a delegated token, the root holder)."""
        return str(self.claims["sub"])

    @property
    def task_id(self) -> str:
        """The task the token belongs to."""
        return str(self.claims["task_id"])

    @property
    def grant_id(self) -> str:
        """The grant id (``jti``)."""
        return str(self.claims["jti"])

    @property
    def expires_at(self) -> int:
        """``exp``, seconds since the epoch."""
        return int(self.claims["exp"])

    @property
    def scopes(self) -> frozenset[str]:
        """The scopes granted."""
        return frozenset(s for s in str(self.claims["scope"]).split(" ") if s)

    def require_scope(self, scope: str) -> None:
        """Raises :class:`InsufficientScope` (403) unless ``scope`` was granted."""
        if scope not in self.scopes:
            raise InsufficientScope(scope)

    def check_tool_call(self, tool: str, args: Any) -> None:
        """Raises :class:`ToolNotAllowed` (403 ``insufficient_scope``) unless the
        token allows calling MCP tool ``tool`` with ``args`` (the ``tools/call``
        arguments, a dict or ``None``): always without ``authorization_details``;
        otherwise only a tool its detail for this audience lists, with every
        constrained argument present and within its constraint."""
        if not self.tool_grants:
            return
        mine = [g for g in self.tool_grants if g.server == self.claims["aud"]]
        if not mine:
            raise ToolNotAllowed("the token's `authorization_details` name no tools of its audience")
        try:
            mine[0].permits(tool, args)
        except ToolGrantError as err:
            raise ToolNotAllowed(str(err)) from None


class _FeedState:
    """Revocations (each kept until its tokens expired), sync and freshness."""

    def __init__(self, capacity: int, keep_extra: int) -> None:
        self.synced = False
        self.last_heard: float | None = None
        self.floor: int | None = None
        self.grants: dict[str, int] = {}
        self.tasks: dict[str, int] = {}
        # Withdrawn signing keys (break-glass): dropped from the key cache at
        # once and never taken back from a JWKS while their tokens may live.
        self.keys: dict[str, int] = {}
        self.capacity = capacity
        self.keep_extra = keep_extra
        # The earliest forget-after held, so pruning is usually free.
        self.next_expiry: int | None = None

    def check_fresh(self, now: float, max_staleness: float) -> None:
        if not self.synced:
            raise Unavailable("revocation feed is not synchronised yet: refusing every token")
        if self.last_heard is None or now - self.last_heard > max_staleness:
            raise Unavailable("revocation feed is stale: refusing every token until it is back")

    def check_token(self, iat: int, jti: str, task_id: str, ancestors: list[str]) -> None:
        if self.floor is not None and iat <= self.floor:
            raise InvalidToken("token was issued before the revocation feed was synchronised; request a new token")
        if jti in self.grants or task_id in self.tasks or any(a in self.grants for a in ancestors):
            raise TokenRevoked("token has been revoked")

    def mark_synced(self, broker_now: int, now: float) -> None:
        self.floor = broker_now if self.floor is None else max(self.floor, broker_now)
        self.synced = True
        self.last_heard = now

    def revoke(
        self, grant: str | None, task: str | None, not_after: int, revoked_at: int, now: float, kid: str | None = None
    ) -> None:
        forget_after = not_after + self.keep_extra
        if forget_after < int(now):
            return
        self.prune(now)
        key: str | None
        if kid is not None:
            target, key = self.keys, kid
        elif grant is not None:
            target, key = self.grants, grant
        else:
            target, key = self.tasks, task
        if key is None:
            return
        if key in target:
            target[key] = max(target[key], forget_after)
            return
        if len(self.grants) + len(self.tasks) + len(self.keys) >= self.capacity:
            # Full: drop it and refuse every token issued up to it instead.
            self.floor = revoked_at if self.floor is None else max(self.floor, revoked_at)
            return
        target[key] = forget_after
        self.next_expiry = forget_after if self.next_expiry is None else min(self.next_expiry, forget_after)

    def prune(self, now: float) -> None:
        secs = int(now)
        if self.next_expiry is None or secs <= self.next_expiry:
            return
        for table in (self.grants, self.tasks, self.keys):
            for key in [k for k, until in table.items() if until < secs]:
                del table[key]
        remaining = [*self.grants.values(), *self.tasks.values(), *self.keys.values()]
        self.next_expiry = min(remaining) if remaining else None


class ReplayStore(Protocol):
    """Where a verifier remembers the DPoP proofs it accepted (RFC 9449
    section 11.1). The default, :class:`MemoryReplayStore`, is this
    verifier's own memory; replicas of one resource server behind a load
    balancer share one (e.g. :class:`tessera_sdk.replay_redis.RedisReplayStore`)
    so a proof one replica accepted is refused by every other."""

    def spend(self, jkt: str, jti: str, until: int, now: int) -> None:
        """Records proof ``jti`` of key ``jkt`` as spent, remembered until
        ``until`` (Unix seconds), atomically. Raises :class:`InvalidProof`
        for a proof spent before and :class:`Unavailable` when the store, or
        this key's share of it, is full or cannot be asked (fail closed)."""


class MemoryReplayStore:
    """Spent proofs in this process's memory: at most ``capacity``, at most
    ``per_key`` for one key thumbprint (so one client spending proofs fast
    fills only its own share), each until its window has passed."""

    def __init__(self, capacity: int = 100_000, per_key: int = 10_000) -> None:
        self._lock = threading.Lock()
        self.seen: dict[str, int] = {}
        self.order: deque[tuple[int, str, str]] = deque()
        self.by_key: dict[str, int] = {}
        self.capacity = capacity
        self.per_key = max(1, min(per_key, capacity))

    def spend(self, jkt: str, jti: str, until: int, now: int) -> None:
        """See :meth:`ReplayStore.spend`."""
        replay_id = f"{jkt}.{jti}"
        with self._lock:
            while self.order and self.order[0][0] < now:
                old_until, old_id, old_jkt = self.order.popleft()
                if self.seen.get(old_id) == old_until:
                    del self.seen[old_id]
                    left = self.by_key.get(old_jkt, 1) - 1
                    if left > 0:
                        self.by_key[old_jkt] = left
                    else:
                        self.by_key.pop(old_jkt, None)
            if self.seen.get(replay_id, -1) >= now:
                raise InvalidProof("dpop proof has been used before")
            if len(self.seen) >= self.capacity:
                raise Unavailable("verifier capacity exhausted (dpop replay cache); refusing until entries expire")
            if self.by_key.get(jkt, 0) >= self.per_key:
                raise Unavailable(
                    "verifier capacity exhausted (dpop replay cache of this key); refusing until entries expire"
                )
            self.order.append((until, replay_id, jkt))
            self.seen[replay_id] = until
            self.by_key[jkt] = self.by_key.get(jkt, 0) + 1


def _actors(act: Any, max_depth: int) -> list[str]:
    out: list[str] = []
    level = act
    while level is not None:
        if len(out) >= max_depth:
            raise InvalidToken("token delegation chain refused: the chain is deeper than allowed")
        if not isinstance(level, dict):
            raise InvalidToken("token delegation chain refused: an `act` is not an object")
        if not set(level) <= {"sub", "act"}:
            raise InvalidToken("token delegation chain refused: an `act` has a member other than `sub` and `act`")
        sub = level.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LEN:
            raise InvalidToken("token delegation chain refused: an `act` has no valid `sub`")
        out.append(sub)
        level = level.get("act")
    return out


def _scopes(scope: str) -> set[str]:
    return {s for s in scope.split(" ") if s}


def _check_chain(claims: Mapping[str, Any], max_depth: int) -> list[str]:
    """The ``act`` / ``tessera_chain`` rules of ``act.rs``; returns the actors."""

    def refuse(why: str) -> InvalidToken:
        return InvalidToken(f"token delegation chain refused: {why}")

    raw_chain = claims.get("tessera_chain")
    chain: list[dict[str, Any]] = []
    if raw_chain is not None:
        if not isinstance(raw_chain, list):
            raise InvalidToken("token claim `tessera_chain` is missing or malformed")
        for hop in raw_chain:
            if (
                not isinstance(hop, dict)
                or set(hop) != {"jti", "sub", "scope", "exp"}
                or not all(isinstance(hop[k], str) for k in ("jti", "sub", "scope"))
                or not isinstance(hop["exp"], int)
                or isinstance(hop["exp"], bool)
            ):
                raise InvalidToken("token claim `tessera_chain` is missing or malformed")
            chain.append(hop)
    actors = _actors(claims.get("act"), max_depth)
    if len(actors) != len(chain):
        raise refuse("`act` and `tessera_chain` differ in length")
    if not chain:
        return actors
    if chain[0]["sub"] != claims["sub"]:
        raise refuse("the chain's root is not the token's `sub`")
    expected = [claims["client_id"], *[hop["sub"] for hop in reversed(chain[1:])]]
    if actors != expected:
        raise refuse("`act` does not match the chain's holders")
    for before, after in itertools.pairwise(chain):
        if not _scopes(after["scope"]) <= _scopes(before["scope"]):
            raise refuse("a hop holds a scope the hop before it did not")
        if after["exp"] > before["exp"]:
            raise refuse("a hop outlives the hop before it")
    last = chain[-1]
    if not _scopes(claims["scope"]) <= _scopes(last["scope"]):
        raise refuse("the token holds a scope its parent did not")
    if claims["exp"] > last["exp"]:
        raise refuse("the token outlives its parent")
    for hop in chain:
        if not hop["jti"] or len(hop["jti"]) > 128 or not hop["sub"] or len(hop["sub"]) > MAX_SUB_LEN:
            raise refuse("a chain entry has a malformed `jti` or `sub`")
    return actors


def _is_access_token_typ(typ: str) -> bool:
    short = typ[12:] if typ[:12].lower() == "application/" else typ
    return short.lower() == "at+jwt"


class Verifier:
    """Verifies Tessera access tokens for one audience.

    Thread-safe. Build it offline (:meth:`offline`, then feed it with
    :meth:`load_jwks` and :meth:`ingest`) or connected (:meth:`connect`).
    """

    def __init__(self, config: VerifierConfig, *, clock: Callable[[], float] = time.time) -> None:
        config.validate()
        self.config: Final = config
        self._clock = clock
        self._lock = threading.Lock()
        # Notified (under `_lock`) whenever the keys or the feed change;
        # `_generation` counts those changes for `wait_for`.
        self._changed = threading.Condition(self._lock)
        self._generation = 0
        self._keys: dict[str, tuple[str, Any]] = {}
        self._feed = _FeedState(config.max_revocations, int(config.leeway))
        self._replay: ReplayStore = config.replay_store or MemoryReplayStore(
            config.replay_cache_capacity, config.replay_cache_per_key
        )
        self._refresh_lock = threading.Lock()
        self._last_refresh: float | None = None
        self._fetch_keys: Callable[[], bool] | None = None
        self._headers: dict[str, tuple[str, str]] = {}
        self._follower: _Follower | None = None

    @classmethod
    def offline(cls, config: VerifierConfig, *, clock: Callable[[], float] = time.time) -> Verifier:
        """A verifier fed by nothing yet: it refuses every token (503) until
        :meth:`load_jwks` and :meth:`ingest` feed it."""
        return cls(config, clock=clock)

    @classmethod
    def connect(cls, endpoint: str, identity: Attestation, config: VerifierConfig) -> Verifier:
        """A verifier that follows the broker at ``endpoint`` (``host:port``)
        over mTLS as ``identity`` (a workload with the ``verifier`` role)."""
        verifier = cls(config)
        verifier._follower = _Follower(verifier, endpoint, identity)
        verifier._fetch_keys = verifier._follower.fetch_keys
        verifier._follower.start()
        return verifier

    def close(self) -> None:
        """Stops following the broker."""
        if self._follower is not None:
            self._follower.stop()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- feeding ----

    def load_jwks(self, jwks: Mapping[str, Any]) -> int:
        """Replaces the cached keys with the usable keys of a JWK Set whose
        algorithm is allowed; returns how many were kept."""
        keys: dict[str, tuple[str, Any]] = {}
        for raw in list(jwks.get("keys", []))[:MAX_KEYS]:
            if not isinstance(raw, dict):
                continue
            kid, alg = raw.get("kid"), raw.get("alg")
            if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LEN:
                continue
            if alg not in self.config.algorithms or raw.get("use", "sig") != "sig" or "d" in raw:
                continue
            try:
                keys[kid] = (str(alg), jwt.PyJWK(raw, algorithm=str(alg)).key)
            except (jwt.PyJWKError, ValueError, TypeError, KeyError):
                continue
        with self._lock:
            # A JWKS fetched before a withdrawal the feed announced must not
            # bring the key back.
            self._keys = {kid: entry for kid, entry in keys.items() if kid not in self._feed.keys}
            self._changed_locked()
        return len(keys)

    def ingest(self, message: verifier_pb2.WatchRevocationsResponse, fresh: bool) -> None:
        """Applies one ``WatchRevocations`` message; ``fresh`` is true for a
        subscription made without a position (its first message synchronises)."""
        now = self._clock()
        with self._lock:
            feed = self._feed
            item = message.WhichOneof("item")
            if item == "heartbeat":
                hb = message.heartbeat
                if fresh and not feed.synced:
                    sent = hb.sent_at.seconds if hb.HasField("sent_at") else int(now)
                    feed.mark_synced(sent, now)
                feed.prune(now)
            elif item == "event":
                ev = message.event
                revoked_at = ev.revoked_at.seconds if ev.HasField("revoked_at") else int(now)
                not_after = ev.not_after.seconds if ev.HasField("not_after") else int(now) + 86400
                target = ev.WhichOneof("target")
                if target == "grant_id":
                    feed.revoke(ev.grant_id, None, not_after, revoked_at, now)
                elif target == "task_id":
                    feed.revoke(None, ev.task_id, not_after, revoked_at, now)
                elif target == "kid":
                    # Withdrawn (break-glass): no token it signed verifies from
                    # now on, without waiting for a JWKS refresh.
                    self._keys.pop(ev.kid, None)
                    feed.revoke(None, None, not_after, revoked_at, now, kid=ev.kid)
                if fresh and not feed.synced:
                    feed.mark_synced(revoked_at, now)
            if feed.synced:
                feed.last_heard = now
            self._changed_locked()

    def position_lost(self) -> None:
        """The broker no longer has our position: refuse all until resynchronised."""
        with self._lock:
            self._feed.synced = False
            self._changed_locked()

    def _changed_since(self, seen: int) -> bool:
        """Whether the keys or the feed changed since ``seen``; under ``_lock``."""
        return self._generation != seen

    def _changed_locked(self) -> None:
        """Wakes :meth:`wait_for`; the caller holds ``_lock``."""
        self._generation += 1
        self._changed.notify_all()

    @property
    def ready(self) -> bool:
        """Whether the feed is synchronised and fresh and keys are loaded."""
        with self._lock:
            try:
                self._feed.check_fresh(self._clock(), self.config.max_staleness)
            except Unavailable:
                return False
            return bool(self._keys)

    @property
    def sync_floor(self) -> int | None:
        """Tokens need an ``iat`` after this (seconds, broker clock): a token
        issued before the feed synchronised may have missed its revocation."""
        with self._lock:
            return self._feed.floor

    def wait_ready(self, timeout: float) -> bool:
        """Waits until :attr:`ready`, or ``timeout`` seconds pass."""
        return self.wait_for(lambda: self.ready, timeout)

    def wait_for(self, check: Callable[[], bool], timeout: float) -> bool:
        """Waits until ``check()`` is true, or ``timeout`` seconds pass; returns
        its last answer. ``check`` runs again after every change of the keys or
        the feed (a revocation, a heartbeat, a resubscription), and at least
        every quarter of ``max_staleness``, since freshness changes with time
        alone. It runs without the verifier's lock, so it may call
        :meth:`verify`."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                seen = self._generation
            if check():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait_for(
                    functools.partial(self._changed_since, seen),
                    min(remaining, self.config.max_staleness / 4),
                )

    # ---- checking ----

    def verify(self, presented: Presented) -> Verified:
        """Verifies a presented token; on an unknown ``kid`` refreshes the JWKS
        (at most once per ``jwks_min_refresh``) and tries again. Raises a
        :class:`~tessera_sdk.errors.VerifyError` subclass."""
        try:
            return self.check(presented)
        except _UnknownKey:
            if self._refresh_on_demand():
                try:
                    return self.check(presented)
                except _UnknownKey:
                    pass
            raise InvalidToken("token signing key is unknown") from None

    def dpop_nonce(self) -> str | None:
        """The nonce to send now in a ``DPoP-Nonce`` header when ``dpop_nonce``
        is configured (any answer may carry it, to keep clients' nonces fresh)."""
        nonces = self.config.dpop_nonce
        return None if nonces is None else nonces.issue(self._clock())

    def authenticate(
        self,
        authorization: str | None,
        dpop: list[str],
        method: str,
        url: str,
        *,
        client_cert: bytes | None = None,
    ) -> Verified:
        """Verifies a request from its ``Authorization`` header, its ``DPoP``
        header values (all of them: more than one is refused), method and
        absolute URL, and ``client_cert``: the DER of the caller's TLS client
        certificate as the TLS layer verified it, if any (a token bound to a
        certificate is refused without it). On a
        :class:`~tessera_sdk.errors.VerifyError` answer ``err.status`` with
        ``err.headers(realm)``."""
        return self.verify(Presented.from_headers(authorization, dpop, method, url, client_cert=client_cert))

    async def verify_async(self, presented: Presented) -> Verified:
        """:meth:`verify` for asyncio code: a JWKS refresh runs off the loop."""
        try:
            return self.check(presented)
        except _UnknownKey:
            return await asyncio.to_thread(self.verify, presented)

    def _refresh_on_demand(self) -> bool:
        if self._fetch_keys is None:
            return False
        asked = time.monotonic()
        with self._refresh_lock:
            last = self._last_refresh
            if last is not None and last >= asked:
                return True
            if last is not None and asked - last < self.config.jwks_min_refresh:
                return False
            done = self._fetch_keys()
            self._last_refresh = time.monotonic()
            return done

    def check(self, presented: Presented) -> Verified:
        """Verifies with the keys already cached; never waits. An unknown
        ``kid`` raises :class:`InvalidToken` too (via :meth:`verify`, which retries)."""
        cfg = self.config
        now = self._clock()
        token = presented.token
        if not token:
            raise InvalidToken("no access token")
        with self._lock:
            self._feed.check_fresh(now, cfg.max_staleness)
        if len(token) > MAX_TOKEN_LEN:
            raise InvalidToken(f"token is longer than {MAX_TOKEN_LEN} bytes")
        try:
            header_b64, payload_b64, _ = _jose.token_segments(token)
        except _jose.JoseFormatError as err:
            raise InvalidToken(f"token is malformed: {err}") from None
        # Every token a key signs has the same header: a header that passed
        # the checks once is remembered (bounded), so the hot path skips them.
        checked = self._headers.get(header_b64)
        if checked is None:
            checked = self._check_header(header_b64)
            if len(self._headers) >= _HEADER_CACHE:
                self._headers.clear()
            self._headers[header_b64] = checked
        alg, kid = checked
        with self._lock:
            if kid in self._feed.keys:
                raise TokenRevoked("token signing key has been withdrawn")
            entry = self._keys.get(kid)
        if entry is None:
            raise _UnknownKey("token signing key is unknown")
        key_alg, key = entry
        if key_alg != alg:
            raise InvalidToken("token algorithm does not match its key")
        if not _jose.verify_signature(key_alg, key, token):
            raise InvalidToken("token signature is invalid")
        try:
            claims = _jose.json_object(_jose.b64url_decode(payload_b64))
        except _jose.JoseFormatError:
            raise InvalidToken("token claim `claim set` is missing or malformed") from None
        for name in _REQUIRED_STR:
            if not isinstance(claims.get(name), str):
                raise InvalidToken(f"token claim `{name}` is missing or malformed")
        for name in _REQUIRED_INT:
            value = claims.get(name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidToken(f"token claim `{name}` is missing or malformed")
        if claims["iss"] != cfg.issuer:
            raise InvalidToken("token issuer is not the expected issuer")
        if claims["aud"] != cfg.audience:
            raise InvalidToken("token audience is not this resource server")
        now_s, leeway = int(now), int(cfg.leeway)
        if claims["exp"] <= now_s - leeway:
            raise TokenExpired("token has expired")
        if claims["nbf"] > now_s + leeway:
            raise InvalidToken("token is not valid yet")
        if claims["iat"] > now_s + leeway:
            raise InvalidToken("token was issued in the future")
        if not claims["jti"]:
            raise InvalidToken("token claim `jti` is missing or malformed")
        if not claims["task_id"]:
            raise InvalidToken("token claim `task_id` is missing or malformed")
        actors = _check_chain(claims, cfg.max_act_depth)
        ancestors = [hop["jti"] for hop in claims.get("tessera_chain") or []]
        with self._lock:
            self._feed.check_token(claims["iat"], claims["jti"], claims["task_id"], ancestors)
        grants: tuple[ToolGrant, ...] = ()
        if "authorization_details" in claims:
            # A limit this verifier cannot read refuses the token, never is ignored.
            try:
                grants = tuple(parse_details(claims["authorization_details"]))
            except ToolGrantError:
                raise InvalidToken("token claim `authorization_details` is missing or malformed") from None
        binding = self._check_binding(claims, presented, now_s)
        return Verified(claims=claims, actors=tuple(actors), binding=binding, tool_grants=grants)

    def _check_header(self, header_b64: str) -> tuple[str, str]:
        """Shape, members, ``alg``, ``kid`` and ``typ`` of a token header: (alg, kid)."""
        try:
            header = _jose.json_object(_jose.b64url_decode(header_b64))
        except _jose.JoseFormatError as err:
            raise InvalidToken(f"token is malformed: {err}") from None
        if any(member in header for member in _FORBIDDEN_HEADER):
            raise InvalidToken("token header has a member that is not accepted")
        alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
        if alg not in ("ES256", "EdDSA"):
            raise InvalidToken("token algorithm is not ES256 or EdDSA")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LEN:
            raise InvalidToken("token `kid` is missing or too long")
        if not isinstance(typ, str) or not _is_access_token_typ(typ):
            raise InvalidToken("token type is not the expected type")
        if alg not in self.config.algorithms:
            raise InvalidToken(f"token algorithm `{alg}` is not allowed by this verifier")
        return str(alg), kid

    def _check_binding(self, claims: Mapping[str, Any], presented: Presented, now: int) -> str:
        cnf = claims.get("cnf")
        if cnf is None:
            if self.config.require_bound:
                raise InvalidToken("bearer tokens are not accepted here: a bound token is required")
            if presented.scheme == "DPoP":
                raise InvalidProof("dpop proof refused: the DPoP scheme needs a DPoP-bound token")
            return "bearer"
        # Exactly one member, as core's `Confirmation` (a token naming both, or
        # an unknown method, is malformed).
        if not isinstance(cnf, dict) or len(cnf) != 1:
            raise InvalidToken("token claim `cnf` is missing or malformed")
        if "x5t#S256" in cnf:
            x5t = cnf["x5t#S256"]
            if not isinstance(x5t, str):
                raise InvalidToken("token claim `cnf` is missing or malformed")
            if presented.client_cert is None:
                raise CertificateRequired("token is bound to a client certificate and none was presented")
            if not _certificate_matches(x5t, presented.client_cert):
                raise CertificateMismatch("client certificate does not match the token's binding")
            return "certificate"
        if "jkt" not in cnf:
            raise InvalidToken("token claim `cnf` is missing or malformed")
        jkt = cnf["jkt"]
        if not isinstance(jkt, str):
            raise InvalidToken("token claim `cnf.jkt` is missing or malformed")
        if presented.scheme != "DPoP" or presented.dpop_proof is None:
            raise ProofRequired("token is bound to a key: a proof of possession is required")
        checked = check_proof(
            presented.dpop_proof,
            method=presented.method,
            url=presented.url,
            access_token=presented.token,
            jkt=jkt,
            now=now,
            max_age=int(self.config.dpop_max_age),
            leeway=int(self.config.leeway),
            body=presented.body,
            require_content_digest=self.config.require_content_digest,
        )
        nonces = self.config.dpop_nonce
        if nonces is not None and (checked.nonce is None or not nonces.check(checked.nonce, now)):
            raise UseDpopNonce(nonces.issue(now))
        # Last: a proof is spent only by a request that passed every check.
        # `<thumbprint>.<jti>`: a thumbprint is base64url, so it has no `.`.
        jkt_of_proof, _, jti = checked.replay_key.partition(".")
        self._replay.spend(jkt_of_proof, jti, checked.remember_until, now)
        return "dpop"


class _UnknownKey(InvalidToken):
    """Internal: the ``kid`` is not cached (``verify`` refreshes and retries)."""


@dataclass
class _Follower:
    """Follows ``VerifierService`` in a daemon thread (see the module docs)."""

    verifier: Verifier
    endpoint: str
    identity: Attestation
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _call: Any = None

    def _stub(self) -> tuple[grpc.Channel, Any]:
        channel = self.identity.channel(
            self.endpoint, options=[("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES)]
        )
        return channel, _VERIFIER_STUB(channel)

    def fetch_keys(self) -> bool:
        """One ``GetJwks`` call; true if the keys were replaced."""
        try:
            channel, stub = self._stub()
        except Exception:  # noqa: BLE001 - an unreadable SVID is retried later
            return False
        try:
            response = stub.GetJwks(verifier_pb2.GetJwksRequest(), timeout=_CALL_TIMEOUT)
        except grpc.RpcError:
            return False
        finally:
            channel.close()
        self.verifier.load_jwks({"keys": [_jwk_dict(k) for k in response.keys]})
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tessera-verifier-feed", daemon=True)
        self._thread.start()
        self._keys_thread = threading.Thread(target=self._refresh_keys, name="tessera-jwks", daemon=True)
        self._keys_thread.start()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _refresh_keys(self) -> None:
        while not self._stop.wait(self.verifier.config.jwks_refresh):
            with self.verifier._refresh_lock:
                self.fetch_keys()
                self.verifier._last_refresh = time.monotonic()

    def _run(self) -> None:
        position: str | None = None
        backoff = 0.1
        max_staleness = self.verifier.config.max_staleness
        while not self._stop.is_set():
            self.fetch_keys()
            fresh = position is None
            try:
                channel, stub = self._stub()
            except Exception:  # noqa: BLE001 - retried with backoff
                channel = None
            if channel is not None:
                done = threading.Event()
                try:
                    call = stub.WatchRevocations(verifier_pb2.WatchRevocationsRequest(after=position or ""))
                    self._call = call
                    last = [time.monotonic()]
                    # One watchdog per subscription: a stream silent past
                    # max_staleness (a dead peer sends no error) is cancelled and re-made.
                    watchdog = threading.Thread(
                        target=_watch, args=(call, last, max_staleness, done), name="tessera-feed-watchdog", daemon=True
                    )
                    watchdog.start()
                    for message in call:
                        last[0] = time.monotonic()
                        backoff = 0.1
                        self.verifier.ingest(message, fresh)
                        item = message.WhichOneof("item")
                        p = message.event.position if item == "event" else message.heartbeat.position
                        if p and len(p) <= 256:
                            position = p
                        if self._stop.is_set():
                            break
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.OUT_OF_RANGE:
                        self.verifier.position_lost()
                        position = None
                finally:
                    done.set()
                    self._call = None
                    channel.close()
            if self._stop.wait(backoff * (1 + random.random() / 4)):  # noqa: S311 - jitter only
                break
            backoff = min(backoff * 2, 5.0)


def _watch(call: Any, last: list[float], max_staleness: float, done: threading.Event) -> None:
    """Cancels ``call`` once nothing arrived for ``max_staleness``; ends with the subscription."""
    while not done.wait(max_staleness / 4):
        if time.monotonic() - last[0] > max_staleness:
            call.cancel()
            return


def _jwk_dict(jwk: verifier_pb2.Jwk) -> dict[str, str]:
    out = {"kty": jwk.kty, "crv": jwk.crv, "x": jwk.x, "kid": jwk.kid, "alg": jwk.alg, "use": jwk.use or "sig"}
    if jwk.y:
        out["y"] = jwk.y
    return out
