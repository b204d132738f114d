"""An MCP server (the ``mcp`` SDK, streamable HTTP) protected by Tessera.

Two tools on the CRM audience: ``read_contacts`` needs ``crm.contacts.read``;
``write_contact`` needs ``crm.contacts.write`` and a DPoP-bound token. The
:class:`~tessera_sdk.asgi.TesseraMiddleware` in front verifies every request
(token, DPoP proof, revocation), maps each tool to its scope (403
``insufficient_scope`` naming the scope), and serves the RFC 9728 metadata.

    make run                                                     # terminal 1
    ~/.cache/tessera/venv/bin/python sdk/python/examples/mcp_server.py   # terminal 2: http://127.0.0.1:8765/mcp
"""

from __future__ import annotations

import os
import sys
from typing import Any

from mcp.server.mcpserver import MCPServer

from tessera_sdk import SvidSource, Verifier, VerifierConfig
from tessera_sdk.asgi import TesseraMiddleware, current

CRM = "https://api.example.com/crm"
ISSUER = "https://tessera.local"
TOOL_SCOPES = {"read_contacts": "crm.contacts.read", "write_contact": "crm.contacts.write"}


def build_app(verifier: Verifier, public_url: str) -> Any:
    """The MCP app behind the Tessera middleware."""
    server = MCPServer("crm")
    contacts = ["ada", "grace"]

    @server.tool()
    def read_contacts() -> list[str]:
        """The contacts."""
        return list(contacts)

    @server.tool()
    def write_contact(name: str) -> str:
        """Adds a contact; needs a DPoP-bound write token."""
        if current().binding != "dpop":
            raise PermissionError("writes need a DPoP-bound token")
        contacts.append(name)
        return f"added {name} as {current().holder}"

    app = server.streamable_http_app(json_response=True, stateless_http=True)
    return TesseraMiddleware(
        app,
        verifier,
        public_url=public_url,
        authorization_server=ISSUER,
        realm="crm-mcp",
        tool_scopes=TOOL_SCOPES,
    )


def main(
    endpoint: str = os.environ.get("TESSERA_ENDPOINT", "127.0.0.1:7443"), dev: str = ".tessera-dev", port: str = "8765"
) -> int:
    """Runs the example against the broker at ``endpoint`` (default ``TESSERA_ENDPOINT``, as for the CLI)
    with the dev PKI in ``dev``."""
    import uvicorn

    verifier = Verifier.connect(
        endpoint, SvidSource.from_dir(dev, "api-gateway"), VerifierConfig(issuer=ISSUER, audience=CRM)
    )
    if not verifier.wait_ready(10):
        print("the verifier could not follow the broker: is `make run` running?", file=sys.stderr)
        return 1
    uvicorn.run(build_app(verifier, f"http://127.0.0.1:{port}"), host="127.0.0.1", port=int(port))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
