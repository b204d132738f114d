"""Five-minute tour against `make run`: an orchestrator opens a task, an agent
gets a DPoP-bound token and calls a CRM API through httpx, the API verifies it
with the SDK's verifier; a write is refused (403), and once the task completes
the same call is refused as revoked (401).

    make run                                                   # terminal 1
    ~/.cache/tessera/venv/bin/python sdk/python/examples/quickstart.py   # terminal 2

Arguments (optional): the broker's host:port (default `TESSERA_ENDPOINT`, as
for the CLI, else 127.0.0.1:7443) and the dev directory (.tessera-dev). The
"API" is an in-process httpx transport, so the tour needs nothing but the
broker.
"""

from __future__ import annotations

import os
import sys
import time

import httpx

from tessera_sdk import AgentClient, OrchestratorClient, SvidSource, Verifier, VerifierConfig, VerifyError
from tessera_sdk.httpx_auth import TesseraAuth

CRM = "https://api.example.com/crm"
ISSUER = "https://tessera.local"


def crm_api(verifier: Verifier) -> httpx.MockTransport:
    """A CRM API: reads need crm.contacts.read, writes crm.contacts.write."""

    def handle(request: httpx.Request) -> httpx.Response:
        needed = "crm.contacts.read" if request.method == "GET" else "crm.contacts.write"
        try:
            who = verifier.authenticate(
                request.headers.get("authorization"), request.headers.get_list("dpop"), request.method, str(request.url)
            )
            who.require_scope(needed)
        except VerifyError as err:
            return httpx.Response(err.status, headers=err.headers("crm"), json={"error": err.reason})
        return httpx.Response(200, json={"contacts": ["ada", "grace"], "caller": who.holder, "binding": who.binding})

    return httpx.MockTransport(handle)


def main(endpoint: str = os.environ.get("TESSERA_ENDPOINT", "127.0.0.1:7443"), dev: str = ".tessera-dev") -> int:
    """Runs the example against the broker at ``endpoint`` with the dev PKI in ``dev``."""
    orchestrator = OrchestratorClient(endpoint, SvidSource.from_dir(dev, "orchestrator"))
    agent = AgentClient(endpoint, SvidSource.from_dir(dev, "researcher"))
    verifier = Verifier.connect(
        endpoint, SvidSource.from_dir(dev, "api-gateway"), VerifierConfig(issuer=ISSUER, audience=CRM)
    )
    if not verifier.wait_ready(10):
        print("the verifier could not follow the broker: is `make run` running?", file=sys.stderr)
        return 1
    # Tokens from the second the verifier synchronised are refused (fail-safe): start after it.
    floor = verifier.sync_floor
    if floor is not None:
        time.sleep(max(0.0, floor + 1 - time.time()))

    with orchestrator.task(
        agents=["spiffe://tessera.local/agent/researcher"],
        scope_ceiling={CRM: ["crm.contacts.read"]},
        duration_seconds=300,
    ) as task:
        print(f"task {task.task_id} started")
        auth = TesseraAuth(task.task_id, {CRM: ["crm.contacts.read"]}, agent=agent)
        with httpx.Client(transport=crm_api(verifier), auth=auth) as http:
            read = http.get(CRM + "/contacts")
            print("read  ->", read.status_code, read.json())
            write = http.post(CRM + "/contacts", json={"name": "alan"})
            print("write ->", write.status_code, write.headers["www-authenticate"])
    print(f"task {task.task_id} completed: its tokens are revoked")

    token = auth.tokens.cached(CRM)
    assert token is not None
    url = CRM + "/contacts"
    refusal: list[VerifyError] = []

    def refused() -> bool:
        try:
            verifier.authenticate(token.authorization(), [token.dpop_proof("GET", url) or ""], "GET", url)
        except VerifyError as err:
            refusal.append(err)
            return True
        return False

    # Re-checked on every revocation-feed event, not on a timer.
    if not verifier.wait_for(refused, 10):
        print("the revocation did not arrive within 10 s", file=sys.stderr)
        return 1
    print("after ->", refusal[-1].status, refusal[-1].reason)
    verifier.close()
    return 0 if (read.status_code, write.status_code) == (200, 403) else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
