"""A test issuer: mints tokens shaped like the broker's, for offline tests."""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from tessera_sdk import VerifierConfig, certificate_thumbprint
from tessera_sdk._jose import b64url, thumbprint
from tessera_sdk._pb.tessera.v1 import verifier_pb2

ISSUER = "https://tessera.local"
AUD = "https://api.example.com/crm"
URL = "https://api.example.com/crm/contacts"


class Issuer:
    """An ES256 (or EdDSA) signing key and its JWKS."""

    def __init__(self, alg: str = "ES256") -> None:
        self.alg = alg
        if alg == "ES256":
            self.key: Any = ec.generate_private_key(ec.SECP256R1())
            n = self.key.public_key().public_numbers()
            self.jwk = {
                "kty": "EC",
                "crv": "P-256",
                "x": b64url(n.x.to_bytes(32, "big")),
                "y": b64url(n.y.to_bytes(32, "big")),
            }
        else:
            self.key = ed25519.Ed25519PrivateKey.generate()
            raw = self.key.public_key().public_bytes_raw()
            self.jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        self.kid = thumbprint(self.jwk)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self.jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}]}

    def claims(self, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "spiffe://tessera.local/agent/researcher",
            "aud": AUD,
            "exp": now + 300,
            "nbf": now,
            "iat": now,
            "jti": "grant-1",
            "scope": "crm.contacts.read",
            "client_id": "spiffe://tessera.local/agent/researcher",
            "task_id": "task-1",
        }
        claims.update(over)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        headers = {"typ": "at+jwt", "kid": self.kid, **header}
        return jwt.encode(claims, self.key, algorithm=self.alg, headers=headers)

    def token(self, **over: Any) -> str:
        return self.sign(self.claims(**over))

    def cert_bound(self, cert_der: bytes, **over: Any) -> str:
        """A token bound to a TLS client certificate (``cnf.x5t#S256``, RFC 8705)."""
        return self.token(cnf={"x5t#S256": certificate_thumbprint(cert_der)}, **over)


def certificate(name: str = "agent") -> bytes:
    """The DER of a fresh self-signed client certificate (a stand-in for an SVID)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def raw_jws(header: str, payload: dict[str, Any] | str, signer: Issuer) -> str:
    """A JWS with a hand-written header (e.g. duplicate members), signed properly."""
    body = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = f"{b64url(header.encode())}.{b64url(body.encode())}"
    alg = jwt.get_algorithm_by_name(signer.alg)
    return f"{signing_input}.{b64url(alg.sign(signing_input.encode(), signer.key))}"


def heartbeat(sent_at: int, position: str = "1-0") -> verifier_pb2.WatchRevocationsResponse:
    msg = verifier_pb2.WatchRevocationsResponse()
    msg.heartbeat.position = position
    msg.heartbeat.sent_at.seconds = sent_at
    return msg


def revocation(
    *, grant_id: str | None = None, task_id: str | None = None, at: int, not_after: int
) -> verifier_pb2.WatchRevocationsResponse:
    msg = verifier_pb2.WatchRevocationsResponse()
    ev = msg.event
    ev.position = f"{at}-1"
    ev.revoked_at.seconds = at
    ev.not_after.seconds = not_after
    if grant_id is not None:
        ev.grant_id = grant_id
    if task_id is not None:
        ev.task_id = task_id
    return msg


def config(**over: Any) -> VerifierConfig:
    return VerifierConfig(issuer=ISSUER, audience=AUD, **over)
