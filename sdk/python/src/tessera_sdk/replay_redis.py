"""A DPoP replay store in Redis that the verifier replicas of one resource
server share (install the ``redis`` extra: ``tessera-broker-sdk[redis]``).

One sorted set per key thumbprint, ``<prefix>{<jkt>}``, holds that key's spent
``jti`` s scored by the instant they may be forgotten. One script forgets the
expired members, refuses a member already there, refuses a key whose share is
full, and adds the proof, atomically: two replicas shown the same proof at
once accept it once. The set expires with its last member; the hash tag keeps
each set in one Cluster slot. The same layout and script as the Rust SDK's
``RedisReplayStore``, so Rust and Python replicas can share one store.

The verifier calls it synchronously: give the client a ``socket_timeout`` (the
verifier refuses, 503, when Redis does not answer in time).
"""

from __future__ import annotations

import redis

from .errors import InvalidProof, Unavailable

__all__ = ["RedisReplayStore"]

# KEYS[1]: the key's set. ARGV: jti, until, now, per_key.
# Returns 1 (spent now), 0 (spent before) or -1 (this key's share is full).
_SPEND = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return -1 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], tonumber(last[2]) + 1)
return 1
"""


class RedisReplayStore:
    """Spent DPoP proofs of every replica, in Redis: at most ``per_key`` live
    proofs per key thumbprint, keys named ``<prefix>{<thumbprint>}``."""

    def __init__(self, client: redis.Redis, prefix: str = "tessera-dpop:", per_key: int = 10_000) -> None:
        self._client = client
        self._script = client.register_script(_SPEND)
        self.prefix = prefix
        self.per_key = max(1, per_key)

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "tessera-dpop:", per_key: int = 10_000, timeout: float = 1.0
    ) -> RedisReplayStore:
        """A store on the Redis at ``url`` (``redis://`` or ``rediss://``), each call bounded by ``timeout``."""
        return cls(redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout), prefix, per_key)

    def spend(self, jkt: str, jti: str, until: int, now: int) -> None:
        """See :meth:`tessera_sdk.verifier.ReplayStore.spend`."""
        try:
            answer = self._script(keys=[f"{self.prefix}{{{jkt}}}"], args=[jti, until, now, self.per_key])
        except redis.RedisError as err:
            raise Unavailable(f"dpop replay store unavailable: {type(err).__name__}") from None
        if answer == 0:
            raise InvalidProof("dpop proof has been used before")
        if answer != 1:
            raise Unavailable(
                "verifier capacity exhausted (dpop replay store of this key); refusing until entries expire"
            )
