"""The TypeScript MCP SDK's client (``@modelcontextprotocol/sdk``, run by
Node) with Tessera as the authorization server of an MCP server (issue 21).

The same MCP server and broker as ``test_mcp_oauth.py`` (its fixture); the
client is ``tests/mcp_ts/client.mjs``, with the SDK that ``make node-tools``
(part of ``make test``) installs by ``npm ci`` from the repository's
``tests/mcp-js/package-lock.json`` into ``~/.cache/tessera/mcp-js``
(``TESSERA_MCP_JS_DIR``), the same install ``tests/e2e/mcp_layer.rs`` uses. It discovers the broker
from the server's RFC 9728 metadata, gets task-bound tokens by
``client_credentials`` with a JWT-SVID client assertion and with
``private_key_jwt`` signed by the SDK, and by ``jwt-bearer`` with a JWT-SVID
(a provider of a few lines: the SDK takes any grant through
``prepareTokenRequest``), calls a tool, and after the
orchestrator completes the task gets no token and no tool call.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from typing import Any

import pytest

from tessera_sdk import OrchestratorClient

from .test_mcp_oauth import AGENT, SIGNER, TOOLS_READ, Setup
from .test_mcp_oauth import setup as mcp_setup  # noqa: F401 - the same fixture, under this name

CLIENT = pathlib.Path(__file__).parent / "mcp_ts" / "client.mjs"
SDK_DIR = pathlib.Path(os.environ.get("TESSERA_MCP_JS_DIR", pathlib.Path.home() / ".cache/tessera/mcp-js"))


@pytest.fixture(autouse=True)
def _sdk_installed() -> None:
    if shutil.which("node") is None or not (SDK_DIR / "node_modules/@modelcontextprotocol/sdk").is_dir():
        pytest.fail(f"the TypeScript MCP SDK is not installed in {SDK_DIR}: run `make node-tools` (make test does)")


READ = [{"tool": "read_contacts", "arguments": {}}]


def run_client(
    setup: Setup, task_id: str, calls: list[dict[str, Any]] = READ, providers: str = "svid,signed,bearer"
) -> list[dict[str, Any]]:
    """Runs the TypeScript client once: its line per provider and call."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NODE_EXTRA_CA_CERTS": str(setup.broker.dir / "ca.pem"),
        "MCP_SDK_DIR": str(SDK_DIR),
        "MCP_URL": setup.mcp_url,
        "ISSUER": setup.issuer,
        "TASK_ID": task_id,
        "CALLS": json.dumps(calls),
        "PROVIDERS": providers,
        "SCOPE": TOOLS_READ,
        "SVID_CLIENT": AGENT,
        "SVID": setup.svid(setup.issuer),
        "SVID_BEARER": setup.svid(setup.issuer),
        "SIGNER_CLIENT": SIGNER,
        "SIGNER_PEM": setup.signer_key,
    }
    done = subprocess.run(  # noqa: S603 - our own script, fixed arguments
        ["node", str(CLIENT)],  # noqa: S607 - node from PATH, as installed by make test
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def by_provider(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["provider"]: line for line in lines}


def test_the_typescript_mcp_client_gets_task_bound_tessera_tokens(mcp_setup: Setup) -> None:  # noqa: F811 - the fixture
    setup = mcp_setup
    orch = OrchestratorClient(setup.broker.endpoint, setup.broker.identity("orchestrator"))
    task = orch.start_task([AGENT, SIGNER], {setup.mcp_url: [TOOLS_READ]}, duration_seconds=600)

    answers = by_provider(run_client(setup, task.task_id))
    assert set(answers) == {"svid", "signed", "bearer"}, answers
    for name, answer in answers.items():
        assert answer["ok"], (name, answer)
        assert "ada" in answer["text"], (name, answer)
    # Found by discovery: 401 from the MCP server, its RFC 9728 metadata,
    # the broker's RFC 8414 metadata, then the token endpoint.
    requested = answers["svid"]["requested"]
    assert any(r.startswith("401 ") and setup.mcp_url in r for r in requested), requested
    assert any("/.well-known/oauth-protected-resource" in r for r in requested), requested
    assert f"200 {setup.issuer}/.well-known/oauth-authorization-server" in requested, requested
    assert f"200 {setup.issuer}/oauth/token" in requested, requested

    audit = [json.loads(line) for line in (setup.broker.dir / "audit.jsonl").read_text().splitlines()]
    issued = {
        (r.get("who", {}).get("identity"), r.get("grant_type"), r.get("client_auth"), r.get("task_id"))
        for r in audit
        if r["event"] == "token_issued"
    }
    assert issued == {
        (AGENT, "client_credentials", "client_assertion", task.task_id),
        (SIGNER, "client_credentials", "private_key_jwt", task.task_id),
        (AGENT, "jwt-bearer", "none", task.task_id),
    }, issued

    # The task completes: no token for it any more, so no tool call.
    orch.complete_task(task.task_id)
    orch.close()
    after = by_provider(run_client(setup, task.task_id))
    assert set(after) == {"svid", "signed", "bearer"}, after
    for name, answer in after.items():
        assert not answer["ok"], (name, answer)
        assert any(r.startswith("400 ") and r.endswith("/oauth/token") for r in answer["requested"]), answer


def test_the_typescript_mcp_client_is_held_to_the_tool_limits_of_its_token(
    mcp_setup: Setup,  # noqa: F811 - the fixture
) -> None:
    """A task limited at tool level (RFC 9396 ``mcp_tool``): the token the
    TypeScript client gets carries the limit, an allowed tool with allowed
    arguments goes through, and the MCP server answers 403
    ``insufficient_scope`` to a disallowed argument value and to a tool the
    token does not list."""
    setup = mcp_setup
    ceiling = {
        "type": "mcp_tool",
        "server": setup.mcp_url,
        "tools": ["read_contacts", "transfer"],
        "constraints": {"transfer": {"amount": {"max": 500}, "repo": {"eq": "acme/site"}}},
    }
    orch = OrchestratorClient(setup.broker.endpoint, setup.broker.identity("orchestrator"))
    task = orch.start_task(
        [SIGNER], {setup.mcp_url: [TOOLS_READ]}, duration_seconds=600, authorization_details=[ceiling]
    )
    orch.close()
    calls = [
        {"tool": "transfer", "arguments": {"amount": 120, "repo": "acme/site"}},
        {"tool": "transfer", "arguments": {"amount": 900, "repo": "acme/site"}},
        {"tool": "transfer", "arguments": {"amount": 120, "repo": "acme/other"}},
        {"tool": "delete_repo", "arguments": {"repo": "acme/site"}},
    ]
    allowed, too_much, other_repo, unlisted = run_client(setup, task.task_id, calls, providers="signed")
    assert allowed["ok"], allowed
    assert "sent 120" in allowed["text"], allowed
    for refused in (too_much, other_repo, unlisted):
        assert not refused["ok"], refused
        assert f"403 {setup.mcp_url}" in refused["requested"], refused
        assert f"200 {setup.issuer}/oauth/token" in refused["requested"], (
            "a token was issued, then refused by the tool server"
        )
