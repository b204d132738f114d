"""Strict compact-JWS reading shared by the token and proof checks.

PyJWT verifies signatures; these helpers come first and treat the input as
hostile, as ``tessera-core`` does: bounded size, exactly three unpadded
base64url segments, JSON objects whose members are unique.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

_ES256: Final = ec.ECDSA(hashes.SHA256())

_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN_SEGMENTS = re.compile(r"([A-Za-z0-9_-]*)\.([A-Za-z0-9_-]*)\.([A-Za-z0-9_-]*)")


class JoseFormatError(ValueError):
    """The input is not a compact JWS of the expected shape."""


def b64url_decode(segment: str) -> bytes:
    """Decodes one unpadded base64url segment; refuses any other alphabet."""
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise JoseFormatError("segment is not unpadded base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64url(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JoseFormatError("duplicate json member")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise JoseFormatError(f"non-standard json constant {name}")


def json_object(raw: bytes) -> dict[str, Any]:
    """Parses a JSON object with unique members (no NaN/Infinity)."""
    if not raw.lstrip().startswith(b"{"):
        raise JoseFormatError("not a json object")
    try:
        value = json.loads(raw, object_pairs_hook=_unique, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        raise JoseFormatError("not a json object with unique members") from err
    if not isinstance(value, dict):
        raise JoseFormatError("not a json object")
    return value


def token_segments(compact: str) -> tuple[str, str, str]:
    """The three segments of a compact JWS, each only of the base64url
    alphabet (possibly empty), as ``tessera-core``'s ``jws::split``: a bad
    segment is refused as malformed before any other check, and an empty
    signature is left to the signature check, after the header's."""
    match = _TOKEN_SEGMENTS.fullmatch(compact)
    if match is None:
        if compact.count(".") != 2:
            raise JoseFormatError("expected three dot-separated segments")
        raise JoseFormatError("segment is not unpadded base64url")
    return match.group(1), match.group(2), match.group(3)


def access_token_hash(access_token: str) -> str:
    """``ath`` (RFC 9449): base64url of the SHA-256 of the token's ASCII bytes."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint of an EC P-256 or OKP public JWK."""
    kty = jwk.get("kty")
    if kty == "EC":
        members = {"crv": jwk["crv"], "kty": "EC", "x": jwk["x"], "y": jwk["y"]}
    elif kty == "OKP":
        members = {"crv": jwk["crv"], "kty": "OKP", "x": jwk["x"]}
    else:
        raise JoseFormatError("unsupported key type")
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def verify_signature(alg: str, key: Any, compact: str) -> bool:
    """Verifies a compact JWS's signature with ``key`` (a ``cryptography``
    public key, as PyJWK loads it) directly: the hot path of the verifier,
    without re-parsing what the strict checks already read."""
    signing_input, _, signature_b64 = compact.rpartition(".")
    try:
        signature = b64url_decode(signature_b64)
    except JoseFormatError:
        return False
    if len(signature) != 64:
        return False
    try:
        if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), signing_input.encode("ascii"), _ES256)
            return True
        if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, signing_input.encode("ascii"))
            return True
    except (InvalidSignature, UnicodeEncodeError):
        return False
    return False
