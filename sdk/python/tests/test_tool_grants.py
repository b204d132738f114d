"""The Python twin of ``tessera_core::authz`` holds the shared vectors
(``tests/vectors/tool_grants.json``, which the Rust core tests run too), and
the verifier exposes and enforces a token's tool-level limits."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import pytest

from tessera_sdk import InvalidToken, Presented, ToolNotAllowed, Verifier
from tessera_sdk.authz import ToolGrant, ToolGrantError, UnknownDetailType, parse_details

from ._tokens import AUD, Issuer, config, heartbeat

VECTORS = json.loads(
    (pathlib.Path(__file__).resolve().parents[3] / "tests" / "vectors" / "tool_grants.json").read_text()
)


def _ids(cases: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in cases]


@pytest.mark.parametrize("case", VECTORS["parse"], ids=_ids(VECTORS["parse"]))
def test_parse(case: dict[str, Any]) -> None:
    if case["ok"]:
        ToolGrant.parse(case["detail"])
    else:
        with pytest.raises(ToolGrantError) as err:
            ToolGrant.parse(case["detail"])
        assert isinstance(err.value, UnknownDetailType) == bool(case.get("unknown_type"))


@pytest.mark.parametrize("case", VECTORS["within"], ids=_ids(VECTORS["within"]))
def test_within(case: dict[str, Any]) -> None:
    request, ceiling = ToolGrant.parse(case["request"]), ToolGrant.parse(case["ceiling"])
    assert request.is_within(ceiling) is case["within"]


@pytest.mark.parametrize("case", VECTORS["permits"], ids=_ids(VECTORS["permits"]))
def test_permits(case: dict[str, Any]) -> None:
    grant = ToolGrant.parse(case["grant"])
    if case["permitted"]:
        grant.permits(case["tool"], case["args"])
    else:
        with pytest.raises(ToolGrantError):
            grant.permits(case["tool"], case["args"])


def test_a_claim_is_one_to_eight_details_one_per_server() -> None:
    one = {"type": "mcp_tool", "server": "s", "tools": ["a"]}
    assert len(parse_details([one])) == 1
    for bad in ([], [one, one], [{**one, "server": f"s{i}"} for i in range(9)], one, None):
        with pytest.raises(ToolGrantError):
            parse_details(bad)


def test_the_verifier_exposes_and_enforces_a_tokens_tool_limits() -> None:
    issuer = Issuer()
    v = Verifier.offline(config())
    assert v.load_jwks(issuer.jwks()) == 1
    v.ingest(heartbeat(int(time.time()) - 10), fresh=True)
    detail = {
        "type": "mcp_tool",
        "server": AUD,
        "tools": ["transfer", "list"],
        "constraints": {"transfer": {"amount": {"max": 500}, "repo": {"eq": "acme/site"}}},
    }
    ok = v.verify(Presented(issuer.token(authorization_details=[detail])))
    assert [g.server for g in ok.tool_grants] == [AUD]
    ok.check_tool_call("transfer", {"amount": 500, "repo": "acme/site"})
    ok.check_tool_call("list", None)
    for tool, args in [
        ("transfer", {"amount": 501, "repo": "acme/site"}),
        ("transfer", {"amount": 5, "repo": "acme/other"}),
        ("transfer", {"repo": "acme/site"}),
        ("delete", {}),
    ]:
        with pytest.raises(ToolNotAllowed) as err:
            ok.check_tool_call(tool, args)
        assert err.value.status == 403
        challenge = err.value.www_authenticate("mcp")
        assert challenge is not None
        assert challenge.startswith("Bearer "), challenge
        assert 'error="insufficient_scope"' in challenge, challenge
        assert "acme/other" not in err.value.reason
    plain = v.verify(Presented(issuer.token()))
    assert plain.tool_grants == ()
    plain.check_tool_call("anything", {"amount": 10**6})
    other = v.verify(Presented(issuer.token(authorization_details=[{**detail, "server": "https://other"}])))
    with pytest.raises(ToolNotAllowed):
        other.check_tool_call("transfer", {"amount": 1, "repo": "acme/site"})
    for bad in (
        [{"type": "payment_initiation"}],
        [{**detail, "constraints": {"transfer": {"amount": {"regex": "."}}}}],
        [],
        detail,
    ):
        with pytest.raises(InvalidToken):
            v.verify(Presented(issuer.token(authorization_details=bad)))
