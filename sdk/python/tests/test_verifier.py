"""Offline verifier checks, one refusal per test, with a hand-driven clock."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

import jwt
import pytest

from tessera_sdk import (
    CertificateMismatch,
    CertificateRequired,
    ConfigError,
    DpopKey,
    InsufficientScope,
    InvalidProof,
    InvalidToken,
    MemoryReplayStore,
    NonceSource,
    Presented,
    ProofRequired,
    TokenExpired,
    TokenRevoked,
    Unavailable,
    UseDpopNonce,
    Verifier,
    VerifyError,
    certificate_thumbprint,
)
from tessera_sdk._jose import b64url
from tessera_sdk.dpop import MAX_PROOF_LEN, access_token_hash, normalize_htu

from ._tokens import AUD, URL, Issuer, certificate, config, heartbeat, raw_jws, revocation


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def ready(issuer: Issuer, clock: Clock, **cfg: Any) -> Verifier:
    v = Verifier.offline(config(**cfg), clock=clock)
    assert v.load_jwks(issuer.jwks()) == 1
    v.ingest(heartbeat(int(clock.now) - 10), fresh=True)
    return v


def refused(v: Verifier, presented: Presented) -> VerifyError:
    with pytest.raises(VerifyError) as info:
        v.verify(presented)
    return info.value


def test_a_good_bearer_token_passes_with_its_claims(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock)
    ok = v.verify(Presented(issuer.token()))
    assert (ok.grant_id, ok.task_id, ok.binding, ok.actors) == ("grant-1", "task-1", "bearer", ())
    ok.require_scope("crm.contacts.read")
    with pytest.raises(InsufficientScope) as info:
        ok.require_scope("crm.contacts.write")
    assert info.value.status == 403
    assert info.value.www_authenticate("crm") == (
        'Bearer realm="crm", error="insufficient_scope", '
        'error_description="token lacks scope `crm.contacts.write`", scope="crm.contacts.write"'
    )


def test_feed_never_synchronised_refuses_with_503(issuer: Issuer, clock: Clock) -> None:
    v = Verifier.offline(config(), clock=clock)
    v.load_jwks(issuer.jwks())
    err = refused(v, Presented(issuer.token()))
    assert isinstance(err, Unavailable)
    assert err.status == 503
    assert err.www_authenticate("crm") is None


def test_wait_for_wakes_on_a_feed_change_not_a_timer(issuer: Issuer, clock: Clock) -> None:
    # max_staleness of an hour: without the feed's notification, the waiter
    # would re-check only after 15 minutes.
    v = Verifier.offline(config(max_staleness=3600), clock=clock)
    v.load_jwks(issuer.jwks())
    answer: list[bool] = []
    checked = threading.Event()

    def ready() -> bool:
        checked.set()
        return v.ready

    waiter = threading.Thread(target=lambda: answer.append(v.wait_for(ready, 600)), daemon=True)
    waiter.start()
    assert checked.wait(10)
    v.ingest(heartbeat(int(clock.now) - 10), fresh=True)
    # A liveness bound, not a timing target: woken, it answers at once; not
    # woken, it would sleep out its 15-minute re-check.
    waiter.join(timeout=60)
    assert answer == [True]
    assert not v.wait_for(lambda: False, 0)


def test_feed_silent_longer_than_max_staleness_fails_closed_and_recovers(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock, max_staleness=15)
    token = issuer.token()
    clock.now += 15
    assert v.verify(Presented(token)).grant_id == "grant-1"
    clock.now += 1
    assert isinstance(refused(v, Presented(token)), Unavailable)
    v.ingest(heartbeat(int(clock.now), "2-0"), fresh=False)
    assert v.verify(Presented(token)).grant_id == "grant-1"


def test_position_lost_refuses_until_a_fresh_subscription_answers(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock)
    v.position_lost()
    assert isinstance(refused(v, Presented(issuer.token())), Unavailable)
    clock.now += 2
    v.ingest(heartbeat(int(clock.now)), fresh=True)
    # The new floor refuses what was issued before it: its revocation may be lost.
    err = refused(v, Presented(issuer.token(iat=int(clock.now) - 2)))
    assert isinstance(err, InvalidToken)
    assert "before the revocation feed" in err.reason
    clock.now += 1
    assert v.verify(Presented(issuer.token(iat=int(clock.now)))).grant_id == "grant-1"


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"aud": "https://api.example.com/payments"}, "audience"),
        ({"iss": "https://evil.example"}, "issuer"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
        ({"iat": int(time.time()) + 3600}, "future"),
        ({"task_id": None}, "task_id"),
        ({"jti": ""}, "jti"),
        ({"exp": "soon"}, "exp"),
    ],
)
def test_claims_are_checked(issuer: Issuer, clock: Clock, over: dict[str, Any], reason: str) -> None:
    v = ready(issuer, clock)
    err = refused(v, Presented(issuer.token(**over)))
    assert isinstance(err, InvalidToken)
    assert reason in err.reason
    assert err.status == 401


def test_expiry_has_a_bounded_leeway(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock, leeway=5)
    assert v.verify(Presented(issuer.token(exp=int(clock.now) - 4))).grant_id == "grant-1"
    assert isinstance(refused(v, Presented(issuer.token(exp=int(clock.now) - 5))), TokenExpired)
    with pytest.raises(ConfigError):
        Verifier.offline(config(leeway=301))


def test_header_checks(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock)
    claims = issuer.claims()
    cases = {
        "typ": issuer.sign(claims, typ="JWT"),
        "jku": issuer.sign(claims, jku="https://evil.example/jwks"),
        "kid": issuer.sign(claims, kid="k" * 129),
        "unique": raw_jws(
            f'{{"alg":"ES256","typ":"at+jwt","kid":"{issuer.kid}","kid":"{issuer.kid}"}}', claims, issuer
        ),
    }
    for name, token in cases.items():
        assert isinstance(refused(v, Presented(token)), InvalidToken), name
    assert v.verify(Presented(issuer.sign(claims, typ="application/AT+JWT"))).grant_id == "grant-1"


def test_size_and_shape_limits(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock)
    for token in ["a" * (16 * 1024 + 1), "a.b", "a.b.c.d", "a+b.c.d", issuer.token() + "="]:
        assert isinstance(refused(v, Presented(token)), InvalidToken)


def test_algorithm_allow_list_and_unknown_key(clock: Clock) -> None:
    ed = Issuer("EdDSA")
    v = Verifier.offline(config(algorithms=("ES256",)), clock=clock)
    assert v.load_jwks(ed.jwks()) == 0  # a key of a disallowed algorithm is not kept
    v.ingest(heartbeat(int(clock.now) - 10), fresh=True)
    assert "not allowed" in refused(v, Presented(ed.token())).reason
    other = Issuer()
    assert "unknown" in refused(v, Presented(other.token())).reason
    both = Verifier.offline(config(), clock=clock)
    both.load_jwks(ed.jwks())
    both.ingest(heartbeat(int(clock.now) - 10), fresh=True)
    assert both.verify(Presented(ed.token())).grant_id == "grant-1"


def test_a_tampered_payload_fails_the_signature(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock)
    header, _, sig = issuer.token().split(".")
    forged = b64url(json.dumps(issuer.claims(scope="crm.contacts.write")).encode())
    assert "signature" in refused(v, Presented(f"{header}.{forged}.{sig}")).reason


def test_revocations_of_grant_task_and_ancestor(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock)
    now = int(clock.now)
    v.ingest(revocation(grant_id="grant-1", at=now, not_after=now + 300), fresh=False)
    assert isinstance(refused(v, Presented(issuer.token())), TokenRevoked)
    v.ingest(revocation(task_id="task-2", at=now, not_after=now + 300), fresh=False)
    assert isinstance(refused(v, Presented(issuer.token(jti="g2", task_id="task-2"))), TokenRevoked)
    assert v.verify(Presented(issuer.token(jti="g3"))).grant_id == "g3"


def delegated(issuer: Issuer, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = issuer.claims(
        jti="child",
        client_id="spiffe://tessera.local/agent/writer",
        act={"sub": "spiffe://tessera.local/agent/writer"},
        tessera_chain=[
            {
                "jti": "parent",
                "sub": "spiffe://tessera.local/agent/researcher",
                "scope": "crm.contacts.read",
                "exp": now + 300,
            }
        ],
        exp=now + 200,
    )
    claims.update(over)
    return claims


def test_a_well_formed_act_chain_passes_and_an_edited_one_is_refused(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock)
    ok = v.verify(Presented(issuer.sign(delegated(issuer))))
    assert ok.actors == ("spiffe://tessera.local/agent/writer",)
    edits: list[dict[str, Any]] = [
        {"act": {"sub": "spiffe://tessera.local/agent/mallory"}},
        {"act": {"sub": "spiffe://tessera.local/agent/writer", "extra": 1}},
        {"act": None},
        {"scope": "crm.contacts.read crm.contacts.write"},
        {"exp": int(time.time()) + 400},
        {"sub": "spiffe://tessera.local/agent/other"},
    ]
    for edit in edits:
        claims = {k: v for k, v in delegated(issuer, **edit).items() if v is not None}
        err = refused(v, Presented(issuer.sign(claims)))
        assert isinstance(err, InvalidToken), edit
        assert "delegation" in err.reason or "tessera_chain" in err.reason, edit


def test_a_revoked_ancestor_kills_the_child(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock)
    now = int(clock.now)
    v.ingest(revocation(grant_id="parent", at=now, not_after=now + 300), fresh=False)
    assert isinstance(refused(v, Presented(issuer.sign(delegated(issuer)))), TokenRevoked)


def test_chain_depth_is_bounded(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock, max_act_depth=1)
    act: dict[str, Any] = {"sub": "a", "act": {"sub": "b"}}
    assert "deeper" in refused(v, Presented(issuer.token(act=act))).reason
    with pytest.raises(ConfigError):
        Verifier.offline(config(max_act_depth=17))


def bound(issuer: Issuer, key: DpopKey) -> str:
    return issuer.token(cnf={"jkt": key.thumbprint})


def test_dpop_bound_token_needs_a_proof_for_this_request(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock)
    key = DpopKey()
    token = bound(issuer, key)
    now = int(clock.now)

    def present(proof: str | None, scheme: str = "DPoP", method: str = "GET", url: str = URL) -> Presented:
        return Presented(token, scheme, proof, method, url)

    ok = v.verify(present(key.proof("GET", URL + "?q=1", token, iat=now)))
    assert ok.binding == "dpop"
    assert v.verify(present(key.proof("GET", URL, token, iat=now - 60))).binding == "dpop"
    assert v.verify(present(key.proof("GET", URL, token, iat=now + 5))).binding == "dpop"
    with pytest.raises(ConfigError):
        Verifier.offline(config(dpop_max_age=61))
    # A stolen token replayed without the key: as bearer, or with the thief's proof.
    assert isinstance(refused(v, present(None, scheme="Bearer")), ProofRequired)
    assert isinstance(refused(v, present(None)), ProofRequired)
    thief = DpopKey()
    err = refused(v, present(thief.proof("GET", URL, token, iat=now)))
    assert isinstance(err, InvalidProof)
    assert "not the key" in err.reason
    assert err.www_authenticate("crm") is not None
    assert err.www_authenticate("crm").startswith("DPoP ")  # type: ignore[union-attr]
    cases = {
        "htm": key.proof("POST", URL, token, iat=now),
        "htu": key.proof("GET", "https://api.example.com/payments", token, iat=now),
        "ath": key.proof("GET", URL, "another-token", iat=now),
        "no ath": key.proof("GET", URL, None, iat=now),
        "too old": key.proof("GET", URL, token, iat=now - 61),
        "future": key.proof("GET", URL, token, iat=now + 6),
        "long": "a" * (MAX_PROOF_LEN + 1),
    }
    for name, proof in cases.items():
        assert isinstance(refused(v, present(proof)), InvalidProof), name


def test_proofs_tessera_core_refuses_are_refused(issuer: Issuer, clock: Clock) -> None:
    """Each was accepted before the golden vectors compared the two verifiers
    (tessera-core's verify_proof refuses them): a `typ` with the
    `application/` prefix, and a `jwk` declaring another `alg` or `use`."""
    v = ready(issuer, clock)
    key = DpopKey()
    token = bound(issuer, key)
    now = int(clock.now)
    claims = {"htm": "GET", "htu": URL, "iat": now, "ath": access_token_hash(token)}
    jtis = iter(range(100))

    def proof(typ: str = "dpop+jwt", **jwk: str) -> str:
        header = {"typ": typ, "jwk": {**key.public_jwk, **jwk}}
        return jwt.encode({**claims, "jti": f"j-{next(jtis)}"}, key._key, "ES256", header)

    assert v.verify(Presented(token, "DPoP", proof(typ="DPoP+JWT"), "GET", URL)).binding == "dpop"
    assert v.verify(Presented(token, "DPoP", proof(alg="ES256", use="sig"), "GET", URL)).binding == "dpop"
    for name, bad in {
        "typ with application/": proof(typ="application/dpop+jwt"),
        "jwk alg": proof(alg="EdDSA"),
        "jwk use": proof(use="enc"),
    }.items():
        err = refused(v, Presented(token, "DPoP", bad, "GET", URL))
        assert isinstance(err, InvalidProof), name


def test_a_proof_is_accepted_once(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock)
    key = DpopKey()
    token = bound(issuer, key)
    proof = key.proof("GET", URL, token, iat=int(clock.now))
    assert v.verify(Presented(token, "DPoP", proof, "GET", URL)).binding == "dpop"
    err = refused(v, Presented(token, "DPoP", proof, "GET", URL))
    assert isinstance(err, InvalidProof)
    assert "used before" in err.reason


def test_a_bearer_token_with_the_dpop_scheme_is_refused(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock)
    assert isinstance(refused(v, Presented(issuer.token(), "DPoP", None, "GET", URL)), InvalidProof)
    strict = ready(issuer, clock, require_bound=True)
    assert "bound token is required" in refused(strict, Presented(issuer.token())).reason


def test_authorization_header_parsing() -> None:
    p = Presented.from_headers("dpop abc", ["proof"], "GET", URL)
    assert (p.scheme, p.token, p.dpop_proof) == ("DPoP", "abc", "proof")
    assert Presented.from_headers("Bearer abc", ["a", "b"], "GET", URL).dpop_proof is None
    for bad in [None, "", "Basic abc", "Bearer", "Bearer a b"]:
        with pytest.raises(InvalidToken):
            Presented.from_headers(bad, [], "GET", URL)


def test_htu_normalisation() -> None:
    assert normalize_htu("HTTPS://API.example.com:443/crm?x#y") == "https://api.example.com/crm"
    assert normalize_htu("http://h:80") == "http://h/"
    assert normalize_htu("https://u@h/") is None
    assert normalize_htu("/tessera.v1.AgentService/RequestToken") is None


def test_audience_is_this_servers_only(issuer: Issuer, clock: Clock) -> None:
    v = ready(issuer, clock)
    assert v.config.audience == AUD
    # An array `aud` is not this verifier's one audience either.
    assert "aud" in refused(v, Presented(issuer.token(aud=[AUD]))).reason


def test_revocations_are_forgotten_once_their_tokens_expired_and_capacity_fails_safe(
    issuer: Issuer, clock: Clock
) -> None:
    v = ready(issuer, clock, max_revocations=2, leeway=0)
    now = int(clock.now)
    v.ingest(revocation(grant_id="a", at=now, not_after=now + 10), fresh=False)
    v.ingest(revocation(grant_id="b", at=now, not_after=now + 100), fresh=False)
    assert isinstance(refused(v, Presented(issuer.token(jti="a"))), TokenRevoked)
    # Full: a third revocation is dropped and every token issued up to it is refused instead.
    v.ingest(revocation(grant_id="c", at=now + 1, not_after=now + 100), fresh=False)
    clock.now += 1
    assert "before the revocation feed" in refused(v, Presented(issuer.token(jti="c", iat=now + 1))).reason
    clock.now += 10
    v.ingest(heartbeat(int(clock.now), "9-0"), fresh=False)
    # "a" expired everywhere and was forgotten: room for "d".
    v.ingest(revocation(grant_id="d", at=now + 11, not_after=now + 100), fresh=False)
    assert isinstance(refused(v, Presented(issuer.token(jti="d", iat=now + 11, exp=now + 99))), TokenRevoked)
    assert isinstance(refused(v, Presented(issuer.token(jti="b", iat=now + 11, exp=now + 99))), TokenRevoked)
    assert v.verify(Presented(issuer.token(jti="e", iat=now + 11, exp=now + 99))).grant_id == "e"


def test_certificate_bound_token_needs_its_client_certificate(issuer: Issuer, clock: Clock) -> None:
    """RFC 8705: `cnf.x5t#S256` is the SHA-256 of the DER of the TLS client
    certificate the token must come over, as tessera-core checks it."""
    v = ready(issuer, clock)
    cert, other = certificate("agent"), certificate("thief")
    token = issuer.cert_bound(cert)
    assert certificate_thumbprint(cert) == b64url(hashlib.sha256(cert).digest())
    assert "=" not in certificate_thumbprint(cert)
    ok = v.verify(Presented(token, client_cert=cert))
    assert ok.binding == "certificate"
    assert v.authenticate(f"Bearer {token}", [], "GET", URL, client_cert=cert).binding == "certificate"
    # Without a certificate (the TLS layer gave none), or over another one.
    missing = refused(v, Presented(token))
    assert isinstance(missing, CertificateRequired)
    assert missing.status == 401
    assert missing.www_authenticate("crm") is not None
    assert missing.www_authenticate("crm").startswith('Bearer realm="crm", error="invalid_token"')  # type: ignore[union-attr]
    mismatch = refused(v, Presented(token, client_cert=other))
    assert isinstance(mismatch, CertificateMismatch)
    assert mismatch.status == 401
    assert isinstance(refused(v, Presented(token, client_cert=b"")), CertificateMismatch)
    assert isinstance(refused(v, Presented(token, client_cert=cert + b"\x00")), CertificateMismatch)
    # A certificate never turns a DPoP-bound or bearer token into anything else.
    key = DpopKey()
    assert isinstance(refused(v, Presented(bound(issuer, key), client_cert=cert)), ProofRequired)
    assert v.verify(Presented(issuer.token(), client_cert=cert)).binding == "bearer"
    # A certificate-bound token counts as bound.
    assert ready(issuer, clock, require_bound=True).verify(Presented(token, client_cert=cert)).binding == "certificate"


def test_ambiguous_or_unknown_confirmation_is_refused(issuer: Issuer, clock: Clock) -> None:
    """As tessera-core's `Confirmation`: exactly one of `jkt` and `x5t#S256`."""
    v = ready(issuer, clock)
    cert = certificate()
    key = DpopKey()
    x5t = certificate_thumbprint(cert)
    cases: dict[str, Any] = {
        "both": {"jkt": key.thumbprint, "x5t#S256": x5t},
        "unknown": {"x5t": x5t},
        "unknown too": {"x5t#S256": x5t, "kid": "a"},
        "empty": {},
        "not a string": {"x5t#S256": 1},
        "not an object": "x5t#S256",
    }
    for name, cnf in cases.items():
        token = issuer.token(cnf=cnf)
        err = refused(v, Presented(token, client_cert=cert))
        assert type(err) is InvalidToken, name
        assert "cnf" in err.reason, name
        proof = key.proof("GET", URL, token)
        assert type(refused(v, Presented(token, "DPoP", proof, "GET", URL, client_cert=cert))) is InvalidToken, name


def test_one_key_cannot_fill_the_memory_replay_store_for_everyone() -> None:
    store = MemoryReplayStore(capacity=10, per_key=2)
    store.spend("keyA", "1", 110, 100)
    store.spend("keyA", "2", 110, 100)
    with pytest.raises(Unavailable, match="of this key"):
        store.spend("keyA", "3", 110, 100)
    # Another key still has room, and a replay is still a replay.
    store.spend("keyB", "1", 110, 100)
    with pytest.raises(InvalidProof, match="used before"):
        store.spend("keyA", "1", 110, 100)
    # Once keyA's proofs leave the window, its share comes back.
    store.spend("keyA", "3", 130, 111)
    # The whole store is bounded too.
    small = MemoryReplayStore(capacity=1)
    small.spend("keyA", "1", 110, 100)
    with pytest.raises(Unavailable, match="replay cache\\)"):
        small.spend("keyB", "1", 110, 100)


def test_a_verifier_asking_for_nonces_refuses_proofs_without_a_current_one(issuer: Issuer, clock: Clock) -> None:
    nonces = NonceSource(b"k" * 32, window=60)
    v = ready(issuer, clock, dpop_nonce=nonces)
    key = DpopKey()
    token = bound(issuer, key)
    now = int(clock.now)

    def present(nonce: str | None) -> Presented:
        return Presented(token, "DPoP", key.proof("GET", URL, token, iat=now, nonce=nonce), "GET", URL)

    err = refused(v, present(None))
    assert isinstance(err, UseDpopNonce)
    assert err.status == 401
    headers = err.headers("crm")
    assert headers["WWW-Authenticate"].startswith('DPoP realm="crm", error="use_dpop_nonce"')
    current = headers["DPoP-Nonce"]
    assert current == v.dpop_nonce()
    assert nonces.check(current, clock.now)
    assert v.verify(present(current)).binding == "dpop"
    # The previous window's nonce is still good; older, another key's, or garbage are not.
    assert v.verify(present(nonces.issue(clock.now - 60))).binding == "dpop"
    for stale in (nonces.issue(clock.now - 120), NonceSource(b"x" * 32).issue(clock.now), "x" * 54, current[:-1]):
        assert isinstance(refused(v, present(stale)), UseDpopNonce)
    assert isinstance(refused(v, present("n" * 257)), InvalidProof)
    with pytest.raises(ValueError, match="32 bytes"):
        NonceSource(b"short")


def test_dpop_nonces_are_tessera_cores() -> None:
    """The vector `dpop_nonces_are_the_python_sdks` in tests/e2e/verifier.rs checks on the Rust side."""
    source = NonceSource(bytes(range(32)), window=60)
    assert source.issue(1_796_640_000) == "AAAAAAHI6MBCD42XlhZKIFPev4AC5LrtlhSs4hr4BpkMD61w_soO1Q"
    assert source.check("AAAAAAHI6MBCD42XlhZKIFPev4AC5LrtlhSs4hr4BpkMD61w_soO1Q", 1_796_640_059)


def test_the_redis_replay_script_is_the_rust_sdks() -> None:
    """Rust and Python verifier replicas share one Redis replay store only if
    they run one script on one key layout: the Rust SDK's copy is read from
    the repository and must be the same, line for line."""
    import pathlib
    import re

    from tessera_sdk import replay_redis

    rust = pathlib.Path(__file__).resolve().parents[3] / "crates/tessera-client/src/verifier/replay_redis.rs"
    found = re.search(r'const SPEND: &str = r"(.*?)";', rust.read_text(), re.S)
    assert found is not None, "the Rust script moved: update this test"
    assert found.group(1).strip().splitlines() == replay_redis._SPEND.strip().splitlines()
    assert 'format!("{}{{{}}}", self.prefix, proof.jkt)' in rust.read_text(), "the Rust key layout changed"
