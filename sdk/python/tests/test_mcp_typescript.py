"""The TypeScript MCP SDK's client (``@modelcontextprotocol/sdk``, run by
Node) with Tessera as the authorization server of an MCP server (issue 21).

The same MCP server and broker as ``test_mcp_oauth.py`` (its fixture); the
client is ``tests/mcp_ts/client.mjs``, with the SDK that ``make test``
installs by ``npm ci`` from ``tests/mcp_ts/package-lock.json`` into
``~/.cache/tessera/mcp-ts`` (``TESSERA_MCP_TS_DIR``). It discovers the broker
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
SDK_DIR = pathlib.Path(os.environ.get("TESSERA_MCP_TS_DIR", pathlib.Path.home() / ".cache/tessera/mcp-ts"))

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (SDK_DIR / "node_modules/@modelcontextprotocol/sdk").is_dir(),
    reason="the TypeScript MCP SDK is not installed (make test installs Node and the SDK)",
)


def run_client(setup: Setup, task_id: str) -> dict[str, dict[str, Any]]:
    """Runs the TypeScript client once; its line per provider."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NODE_EXTRA_CA_CERTS": str(setup.broker.dir / "ca.pem"),
        "MCP_SDK_DIR": str(SDK_DIR),
        "MCP_URL": setup.mcp_url,
        "ISSUER": setup.issuer,
        "TASK_ID": task_id,
        "TOOL": "read_contacts",
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
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return {line["provider"]: line for line in lines}


def test_the_typescript_mcp_client_gets_task_bound_tessera_tokens(mcp_setup: Setup) -> None:  # noqa: F811 - the fixture
    setup = mcp_setup
    orch = OrchestratorClient(setup.broker.endpoint, setup.broker.identity("orchestrator"))
    task = orch.start_task([AGENT, SIGNER], {setup.mcp_url: [TOOLS_READ]}, duration_seconds=600)

    answers = run_client(setup, task.task_id)
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
    after = run_client(setup, task.task_id)
    for name, answer in after.items():
        assert not answer["ok"], (name, answer)
        assert any(r.startswith("400 ") and r.endswith("/oauth/token") for r in answer["requested"]), answer
