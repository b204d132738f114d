"""DPoP (RFC 9449): the key a client keeps and signs proofs with, and the
proof check a resource server runs.

Limits equal ``tessera-core``'s (``crates/tessera-core/src/pop.rs``): a proof
is at most 4 KiB, its ``jti`` at most 128 printable ASCII characters, its
``iat`` at most 60 s old (no leeway on that side) and at most ``leeway`` ahead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from . import _jose
from .errors import InvalidProof

__all__ = [
    "CONTENT_DIGEST_CLAIM",
    "DPOP_TYP",
    "MAX_PROOF_JTI_LEN",
    "MAX_PROOF_LEN",
    "PROOF_MAX_AGE",
    "CheckedProof",
    "DpopKey",
    "access_token_hash",
    "check_proof",
    "content_digest",
    "normalize_htu",
]

DPOP_TYP: Final = "dpop+jwt"
MAX_PROOF_LEN: Final = 4096
CONTENT_DIGEST_CLAIM: Final = "content_digest"
"""The optional proof claim binding the request body (as tessera-core's): the
RFC 9530 ``Content-Digest`` value ``sha-256=:<base64>:`` of the body."""
_MAX_CONTENT_DIGEST_LEN: Final = 128
MAX_PROOF_JTI_LEN: Final = 128
PROOF_MAX_AGE: Final = 60
"""The oldest proof accepted, in seconds by its ``iat`` (tessera-core's bound)."""
_ALGS: Final = frozenset({"ES256", "EdDSA"})
_FORBIDDEN_HEADER: Final = ("kid", "jku", "x5u", "x5c", "crit")
_PUBLIC_JWK_MEMBERS: Final = frozenset({"kty", "crv", "x", "y", "alg", "use", "kid"})

access_token_hash = _jose.access_token_hash


class DpopKey:
    """An EC P-256 key generated in process, never written anywhere; it signs
    DPoP proofs and binds tokens to itself (``cnf.jkt``)."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        numbers = self._key.public_key().public_numbers()
        self._jwk: Final = {
            "kty": "EC",
            "crv": "P-256",
            "x": _jose.b64url(numbers.x.to_bytes(32, "big")),
            "y": _jose.b64url(numbers.y.to_bytes(32, "big")),
        }
        self._thumbprint: Final = _jose.thumbprint(self._jwk)

    @property
    def public_jwk(self) -> dict[str, str]:
        """The public JWK (``kty``, ``crv``, ``x``, ``y``)."""
        return dict(self._jwk)

    @property
    def thumbprint(self) -> str:
        """RFC 7638 thumbprint: the ``cnf.jkt`` of tokens bound to this key."""
        return self._thumbprint

    def proof(
        self,
        htm: str,
        htu: str,
        access_token: str | None = None,
        *,
        iat: int | None = None,
        nonce: str | None = None,
        body: bytes | None = None,
    ) -> str:
        """A fresh proof for ``htm`` ``htu`` (for the broker: ``POST`` and the
        gRPC method path), with ``ath`` when presenting ``access_token``, the
        server's ``nonce`` when it asked for one (``DPoP-Nonce``), and the
        ``content_digest`` of the request ``body`` when given."""
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": htm,
            "htu": htu,
            "iat": int(time.time()) if iat is None else iat,
        }
        if access_token is not None:
            claims["ath"] = _jose.access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        if body is not None:
            claims[CONTENT_DIGEST_CLAIM] = content_digest(body)
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"typ": DPOP_TYP, "jwk": self._jwk})

    def __repr__(self) -> str:
        return f"DpopKey(jkt={self._thumbprint!r})"


def content_digest(body: bytes) -> str:
    """The RFC 9530 ``Content-Digest`` value of ``body`` with SHA-256 alone:
    ``sha-256=:<base64>:``, a proof's ``content_digest``."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def _check_content_digest(claim: object, body: bytes | None, required: bool) -> None:
    """As tessera-core's ``check_content_digest``: a missing claim is refused
    only when required; a present one must be exactly one sha-256 member in
    canonical base64 and, when the body is given, its digest; without a body
    it is refused when required (what cannot be checked is not accepted)."""
    if claim is None:
        if required:
            raise _fail("proof `content_digest` refused: the proof has no `content_digest`")
        return
    digest: bytes | None = None
    if isinstance(claim, str) and len(claim) <= _MAX_CONTENT_DIGEST_LEN:
        b64 = claim.removeprefix("sha-256=:")
        if b64 != claim and b64.endswith(":"):
            b64 = b64[:-1]
            try:
                raw = base64.b64decode(b64, validate=True)
            except ValueError:
                raw = b""
            # Canonical only (padding and trailing bits), as Rust's STANDARD engine.
            if len(raw) == 32 and base64.b64encode(raw).decode("ascii") == b64:
                digest = raw
    if digest is None:
        raise _fail("proof `content_digest` refused: `content_digest` is not `sha-256=:<base64 of 32 bytes>:`")
    if body is None:
        if required:
            raise _fail("proof `content_digest` refused: no request body to check `content_digest` against")
        return
    if not hmac.compare_digest(hashlib.sha256(body).digest(), digest):
        raise _fail("proof `content_digest` refused: `content_digest` is not the digest of the request body")


def normalize_htu(url: str) -> str | None:
    """RFC 9449 section 4.3 step 9: the URL without query and fragment, scheme
    and host lowercased, the default port dropped, an empty path made ``/``.
    ``None`` for anything but an absolute http(s) URL."""
    url = url.split("?", 1)[0].split("#", 1)[0]
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    scheme = scheme.lower()
    default_port = {"https": ":443", "http": ":80"}.get(scheme)
    if default_port is None:
        return None
    slash = rest.find("/")
    authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    if not authority or "@" in authority or any(c.isspace() for c in authority):
        return None
    authority = authority.lower()
    if authority.endswith(default_port):
        authority = authority[: -len(default_port)]
    return f"{scheme}://{authority}{path}"


@dataclass(frozen=True)
class CheckedProof:
    """A proof that passed every check but the replay check."""

    replay_key: str
    remember_until: int
    nonce: str | None = None


def _fail(reason: str) -> InvalidProof:
    return InvalidProof(f"dpop proof refused: {reason}")


def _proof_segments(proof: str) -> tuple[str, str, str]:
    parts = proof.split(".")
    if len(parts) != 3:
        raise _jose.JoseFormatError("expected three dot-separated segments")
    return parts[0], parts[1], parts[2]


def check_proof(
    proof: str,
    *,
    method: str,
    url: str,
    access_token: str,
    jkt: str,
    now: int,
    max_age: int,
    leeway: int,
    body: bytes | None = None,
    require_content_digest: bool = False,
) -> CheckedProof:
    """Checks a proof presented with a ``cnf.jkt``-bound token (RFC 9449
    section 4.3 without a server nonce), and its ``content_digest`` against
    the request ``body`` when given (required with ``require_content_digest``).
    Replay is the caller's, last."""
    if len(proof.encode()) > MAX_PROOF_LEN:
        raise _fail("proof is too long")
    try:
        # Only the header must be well formed here: as tessera-core's
        # verify_proof, the payload and signature segments are read after
        # the header checks (an `alg` `none` proof is refused for its `alg`).
        header_b64, payload_b64, _sig = _proof_segments(proof)
        header = _jose.json_object(_jose.b64url_decode(header_b64))
    except _jose.JoseFormatError as err:
        raise _fail(f"proof header: {err}") from None
    if any(member in header for member in _FORBIDDEN_HEADER):
        raise _fail("proof header names a key or url other than `jwk`")
    typ = header.get("typ")
    # Exactly `dpop+jwt` (RFC 9449 section 4.2), case-insensitively, as
    # tessera-core: no `application/` prefix.
    if not isinstance(typ, str) or typ.lower() != DPOP_TYP:
        raise _fail("proof `typ` is not `dpop+jwt`")
    alg = header.get("alg")
    if alg not in _ALGS:
        raise _fail("proof `alg` is not ES256 or EdDSA")
    raw_jwk = header.get("jwk")
    if not isinstance(raw_jwk, dict):
        raise _fail("proof header has no `jwk`")
    if "d" in raw_jwk or not set(raw_jwk) <= _PUBLIC_JWK_MEMBERS:
        raise _fail("proof `jwk` contains a private or unknown member")
    # As tessera-core's public_jwk: a member it names must be a string, and
    # an `alg` or `use` it declares must be the header's `alg` and `sig`.
    if not all(isinstance(value, str) for value in raw_jwk.values()):
        raise _fail("proof `jwk` has a member that is not a string")
    if raw_jwk.get("alg", alg) != alg or raw_jwk.get("use", "sig") != "sig":
        raise _fail("proof `jwk` declares another `alg` or `use`")
    expected_key = ("EC", "P-256") if alg == "ES256" else ("OKP", "Ed25519")
    if (raw_jwk.get("kty"), raw_jwk.get("crv")) != expected_key:
        raise _fail("proof `jwk` is not a key of its `alg`")
    try:
        key = jwt.PyJWK({**raw_jwk, "alg": alg}, algorithm=str(alg))
        payload = jwt.api_jws.PyJWS().decode(proof, key.key, algorithms=[str(alg)])
    except (jwt.PyJWKError, jwt.InvalidTokenError, ValueError, TypeError, KeyError):
        raise _fail("proof signature is invalid") from None
    try:
        claims = _jose.json_object(payload)
    except _jose.JoseFormatError:
        raise _fail("proof claims are malformed") from None
    del payload_b64
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_PROOF_JTI_LEN or not all("!" <= c <= "~" for c in jti):
        raise _fail("proof `jti` must be 1-128 printable ASCII characters")
    if claims.get("htm") != method:
        raise _fail("proof `htm` is not this request's method")
    htu = claims.get("htu")
    got, want = (normalize_htu(htu) if isinstance(htu, str) else None), normalize_htu(url)
    if got is None or got != want:
        raise _fail("proof `htu` is not this request's url")
    iat = claims.get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool):
        raise _fail("proof has no `iat`")
    # As tessera-core's verify_proof: leeway for a clock ahead only; an old
    # proof gets no leeway and the window is at most PROOF_MAX_AGE.
    max_age = min(max_age, PROOF_MAX_AGE)
    if iat > now + leeway:
        raise _fail("proof `iat` is in the future")
    if iat < now - max_age:
        raise _fail("proof `iat` is too old")
    nonce = claims.get("nonce")
    # As tessera-core: a nonce is at most what a source issues, with room for another server's.
    if nonce is not None and (not isinstance(nonce, str) or not nonce or len(nonce) > MAX_NONCE_LEN):
        raise _fail("proof `nonce` is empty or longer than 256 bytes")
    if claims.get("ath") != _jose.access_token_hash(access_token):
        raise _fail("proof `ath` is not the hash of this access token")
    _check_content_digest(claims.get(CONTENT_DIGEST_CLAIM), body, require_content_digest)
    key_thumbprint = _jose.thumbprint(raw_jwk)
    if key_thumbprint != jkt:
        raise _fail("proof key is not the key the token is bound to")
    # Past this, the proof is too old to be accepted anyway.
    return CheckedProof(replay_key=f"{key_thumbprint}.{jti}", remember_until=iat + max_age + 1, nonce=nonce)


MAX_NONCE_LEN: Final = 256
"""The longest proof ``nonce`` accepted (as tessera-core)."""

_NONCE_LABEL: Final = b"tessera dpop-nonce v1\0"
_NONCE_LEN: Final = 54


class NonceSource:
    """Issues and checks DPoP nonces (RFC 9449 sections 8 and 9) without
    shared state, in tessera-core's format, so Rust and Python replicas
    holding the same ``secret`` accept each other's nonces: base64url of the
    8-byte big-endian time window and the HMAC-SHA256 of a label and that
    window. A nonce is good in its window and the next (between one and two
    ``window`` seconds). The secret never leaves the object."""

    def __init__(self, secret: bytes, window: int = 60) -> None:
        if len(secret) < 32:
            raise ValueError("dpop nonce key must be at least 32 bytes")
        if not 10 <= window <= 3600:
            raise ValueError("dpop nonce window must be between 10 s and 1 h")
        self._secret = bytes(secret)
        self.window = window

    @classmethod
    def random(cls, window: int = 60) -> NonceSource:
        """A source with a fresh key: its nonces are good in this process only."""
        return cls(secrets.token_bytes(32), window)

    def _tag(self, window: int) -> bytes:
        return hmac.new(self._secret, _NONCE_LABEL + window.to_bytes(8, "big", signed=True), hashlib.sha256).digest()

    def issue(self, now: float) -> str:
        """The nonce to hand out at ``now`` (the same for every client in one window)."""
        window = int(now) // self.window
        return _jose.b64url(window.to_bytes(8, "big", signed=True) + self._tag(window))

    def check(self, nonce: str, now: float) -> bool:
        """Whether ``nonce`` was issued with this key in the window of ``now`` or the one before."""
        if len(nonce) != _NONCE_LEN:
            return False
        try:
            raw = _jose.b64url_decode(nonce)
        except ValueError:
            return False
        if len(raw) != 40:
            return False
        window = int.from_bytes(raw[:8], "big", signed=True)
        current = int(now) // self.window
        if window not in (current, current - 1):
            return False
        return hmac.compare_digest(raw[8:], self._tag(window))

    def __repr__(self) -> str:
        return f"NonceSource(window={self.window})"


def urlsplit_ok(url: str) -> bool:
    """Whether ``url`` is an absolute http(s) URL (used to validate settings)."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
