"""The golden vectors of ``tessera-core`` (``tests/vectors/golden.json``, written
and held to core's verdicts by ``crates/tessera-core/src/token/vectors/golden_file.rs``)
run through the Python verifier: every token and proof must get the verdict the
Rust verifier gives it, and the same reason code.

The Python verifier's refusals carry an exception type and a message, not a
core error variant: :data:`REASONS` is the one table that maps them to the
file's reason codes.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from tessera_sdk import InvalidProof, InvalidToken, Presented, ProofRequired, TokenExpired, Verifier, VerifierConfig
from tessera_sdk.errors import VerifyError

from ._tokens import heartbeat

GOLDEN = pathlib.Path(__file__).resolve().parents[3] / "tests" / "vectors" / "golden.json"

# (exception type, a fragment of its message, the file's reason code); the
# first row whose type matches and whose fragment is in the message wins.
REASONS: list[tuple[type[VerifyError], str, str]] = [
    # The token (core's JwsError).
    (TokenExpired, "", "expired"),
    (ProofRequired, "", "proof_required"),
    (InvalidToken, "token is longer than", "too_long"),
    (InvalidToken, "token is malformed", "malformed"),
    (InvalidToken, "token `kid` is missing or too long", "malformed"),
    (InvalidToken, "token algorithm is not ES256 or EdDSA", "alg_not_allowed"),
    (InvalidToken, "is not allowed by this verifier", "alg_not_in_allow_list"),
    (InvalidToken, "token algorithm does not match its key", "alg_key_mismatch"),
    (InvalidToken, "token header has a member that is not accepted", "forbidden_header"),
    (InvalidToken, "token type is not the expected type", "wrong_typ"),
    (InvalidToken, "token signing key is unknown", "unknown_kid"),
    (InvalidToken, "token signature is invalid", "bad_signature"),
    (InvalidToken, "token issuer is not the expected issuer", "wrong_issuer"),
    (InvalidToken, "token audience is not this resource server", "wrong_audience"),
    (InvalidToken, "token is not valid yet", "not_yet_valid"),
    (InvalidToken, "token was issued in the future", "issued_in_future"),
    # The delegation chain (core's ChainError).
    (InvalidToken, "`act` and `tessera_chain` differ in length", "chain_shape"),
    (InvalidToken, "an `act` ", "chain_shape"),
    (InvalidToken, "the chain is deeper than allowed", "chain_too_long"),
    (InvalidToken, "the chain's root is not the token's `sub`", "chain_subject"),
    (InvalidToken, "`act` does not match the chain's holders", "chain_actors"),
    (InvalidToken, "holds a scope", "chain_widening"),
    (InvalidToken, "outlives", "chain_later_expiry"),
    (InvalidToken, "a chain entry has a malformed", "chain_entry"),
    (InvalidToken, "is missing or malformed", "bad_claims"),
    # The proof (core's BindingError and ProofError).
    (InvalidProof, "the DPoP scheme needs a DPoP-bound token", "dpop_scheme_without_key"),
    (InvalidProof, "proof is too long", "proof_too_long"),
    (InvalidProof, "proof header:", "proof_malformed"),
    (InvalidProof, "names a key or url other than `jwk`", "proof_malformed"),
    (InvalidProof, "proof claims are malformed", "proof_malformed"),
    (InvalidProof, "proof has no `iat`", "proof_malformed"),
    (InvalidProof, "proof `typ` is not", "proof_wrong_typ"),
    (InvalidProof, "proof `alg` is not ES256 or EdDSA", "proof_alg_not_allowed"),
    (InvalidProof, "proof header has no `jwk`", "proof_bad_jwk"),
    (InvalidProof, "proof `jwk`", "proof_bad_jwk"),
    (InvalidProof, "proof signature is invalid", "proof_bad_signature"),
    (InvalidProof, "proof `jti` must be", "proof_bad_jti"),
    (InvalidProof, "proof `htm`", "proof_wrong_htm"),
    (InvalidProof, "proof `htu`", "proof_wrong_htu"),
    (InvalidProof, "proof `iat` is in the future", "proof_future"),
    (InvalidProof, "proof `iat` is too old", "proof_stale"),
    (InvalidProof, "proof `ath`", "proof_wrong_ath"),
    (InvalidProof, "proof key is not the key the token is bound to", "proof_wrong_key"),
    (InvalidProof, "has been used before", "proof_replayed"),
]


def reason_of(err: VerifyError) -> str:
    """The file's reason code for a Python refusal; fails on one outside the table."""
    for kind, fragment, code in REASONS:
        if isinstance(err, kind) and fragment in err.reason:
            return code
    pytest.fail(f"a refusal outside the REASONS table: {type(err).__name__}: {err.reason}")


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GOLDEN.read_text())
    return data


GOLDEN_FILE = load()
SETTINGS: dict[str, Any] = GOLDEN_FILE["settings"]


class FixedClock:
    """The file's ``now``, never moving."""

    def __init__(self, now: int) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now


def verifier(leeway: int) -> Verifier:
    """The verifier the file's settings describe, fed its JWKS and a
    synchronised feed that revokes nothing."""
    cfg = VerifierConfig(
        issuer=SETTINGS["issuer"],
        audience=SETTINGS["audience"],
        algorithms=tuple(SETTINGS["algorithms"]),
        leeway=float(leeway),
        max_act_depth=SETTINGS["max_chain_len"],
        dpop_max_age=float(SETTINGS["proof_max_age_secs"]),
    )
    assert SETTINGS["revoked"] == []
    v = Verifier.offline(cfg, clock=FixedClock(SETTINGS["now"]))
    assert v.load_jwks(GOLDEN_FILE["jwks"]) == len(GOLDEN_FILE["jwks"]["keys"]) == 2
    # Synchronised at the epoch's first second: the sync floor (tokens need
    # an `iat` after it) is below every vector, as core has no such floor.
    v.ingest(heartbeat(1), fresh=True)
    return v


def verdict(v: Verifier, presented: Presented) -> tuple[str, str | None]:
    try:
        v.verify(presented)
    except VerifyError as err:
        return "refuse", reason_of(err)
    return "accept", None


def test_the_file_covers_both_verdicts_and_both_algorithms() -> None:
    tokens, proofs = GOLDEN_FILE["tokens"], GOLDEN_FILE["proofs"]
    assert len(tokens) >= 50
    assert len(proofs) >= 20
    for cases in (tokens, proofs):
        assert {c["expected"] for c in cases} == {"accept", "refuse"}
    assert {c["issuer_key"] for c in tokens} == {"ES256", "EdDSA"}
    assert {c["proof_key"] for c in proofs} == {"ES256", "EdDSA"}
    # Every reason the file records can be said by a row of the table.
    assert {c["reason"] for c in tokens + proofs if c["reason"]} <= {code for _, _, code in REASONS}


@pytest.mark.parametrize("leeway", SETTINGS["leeway_secs"])
def test_every_golden_token_gets_rusts_verdict(leeway: int) -> None:
    v = verifier(leeway)
    wrong = []
    for c in GOLDEN_FILE["tokens"]:
        got = verdict(v, Presented(c["token"]))
        if got != (c["expected"], c["reason"]):
            wrong.append((c["name"], "want", c["expected"], c["reason"], "got", *got))
    assert wrong == []


@pytest.mark.parametrize("leeway", SETTINGS["leeway_secs"])
def test_every_golden_proof_gets_rusts_verdict_in_order_through_one_replay_cache(leeway: int) -> None:
    v = verifier(leeway)
    wrong = []
    for c in GOLDEN_FILE["proofs"]:
        presented = Presented(c["token"], scheme="DPoP", dpop_proof=c["proof"], method=c["htm"], url=c["htu"])
        got = verdict(v, presented)
        if got != (c["expected"], c["reason"]):
            wrong.append((c["name"], "want", c["expected"], c["reason"], "got", *got))
    assert wrong == []
