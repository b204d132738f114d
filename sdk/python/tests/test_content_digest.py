"""The DPoP ``content_digest`` vectors of ``tessera-core``
(``tests/vectors/content_digest.json``, written and held to core's verdicts by
``crates/tessera-core/src/pop/tests.rs``): the Python proof check must give
every case the verdict the Rust one gives, and the verifier must pass the
request body to it."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import pytest

from tessera_sdk import InvalidProof
from tessera_sdk.dpop import CONTENT_DIGEST_CLAIM, DpopKey, check_proof, content_digest

VECTORS = pathlib.Path(__file__).resolve().parents[3] / "tests" / "vectors" / "content_digest.json"


def _table() -> dict[str, Any]:
    table: dict[str, Any] = json.loads(VECTORS.read_text())
    return table


def _check(table: dict[str, Any], proof: str, body: bytes | None, required: bool) -> None:
    check_proof(
        proof,
        method=table["htm"],
        url=table["htu"],
        access_token=table["access_token"],
        jkt=table["jkt"],
        now=table["now"],
        max_age=table["max_age_secs"],
        leeway=table["leeway_secs"],
        body=body,
        require_content_digest=required,
    )


def test_the_file_has_both_verdicts() -> None:
    verdicts = [case["expected"] for case in _table()["cases"]]
    assert verdicts.count("accept") >= 5
    assert verdicts.count("reject") >= 10


@pytest.mark.parametrize("case", _table()["cases"], ids=lambda case: str(case["name"]))
def test_every_vector_gets_rusts_verdict(case: dict[str, Any]) -> None:
    table = _table()
    body = None if case["body"] is None else case["body"].encode()
    if case["expected"] == "accept":
        _check(table, case["proof"], body, case["required"])
    else:
        with pytest.raises(InvalidProof, match="content_digest"):
            _check(table, case["proof"], body, case["required"])


def test_a_key_signs_the_digest_of_the_body_it_is_given() -> None:
    key = DpopKey()
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    proof = key.proof("POST", "https://mcp.test/mcp", "tok", body=body)
    assert content_digest(body).startswith("sha-256=:")
    assert CONTENT_DIGEST_CLAIM == "content_digest"
    common: dict[str, Any] = {
        "method": "POST",
        "url": "https://mcp.test/mcp",
        "access_token": "tok",
        "jkt": key.thumbprint,
        "max_age": 60,
        "leeway": 5,
    }
    now = int(time.time())
    check_proof(proof, now=now, body=body, require_content_digest=True, **common)
    with pytest.raises(InvalidProof, match="content_digest"):
        check_proof(proof, now=now, body=b"{}", **common)
    # Without a body the claim's form is checked, its value not.
    check_proof(proof, now=now, **common)
