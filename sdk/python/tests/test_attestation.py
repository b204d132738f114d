"""Attesting with a JWT (file or callable) and over the broker's Unix socket,
against a real tesserad made with `tessera dev init --jwt --unix-socket`."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
from collections.abc import Iterator

import pytest

from tessera_sdk import (
    AgentClient,
    AsyncAgentClient,
    IdentityError,
    JwtSource,
    OrchestratorClient,
    Refused,
    UnixSocketSource,
)

from .conftest import CRM, Broker, _broker, bin_dir, spiffe
from .test_e2e import claims_of

READ = "crm.contacts.read"


@pytest.fixture
def attest_broker(tmp_path: pathlib.Path, store_env: dict[str, str]) -> Iterator[Broker]:
    b = _broker(tmp_path, store_env, "--jwt", "--unix-socket", str(tmp_path / "run" / "agent.sock"))
    yield b
    b.stop()


def _dev_jwt(broker: Broker, subject: str) -> str:
    out = subprocess.run(  # noqa: S603
        [str(bin_dir() / "tessera"), "--dev-dir", str(broker.dir), "dev", "jwt", "--subject", subject],
        capture_output=True,
        check=True,
    )
    return out.stdout.decode().strip()


def test_jwt_and_unix_socket_attestation(attest_broker: Broker, tmp_path: pathlib.Path) -> None:
    b = attest_broker
    agents = [spiffe("researcher"), "spiffe://tessera.local/agent/ci-runner", "spiffe://tessera.local/agent/local"]
    with (
        OrchestratorClient(b.endpoint, b.identity("orchestrator")) as orch,
        orch.task(agents, {CRM: [READ]}, duration_seconds=600) as task,
    ):
        token_file = tmp_path / "ci.jwt"
        token_file.write_text(_dev_jwt(b, "ci-runner") + "\n")
        ci = AgentClient(b.endpoint, JwtSource(str(b.dir / "ca.pem"), token_file=str(token_file)))
        issued = ci.token(task.task_id, CRM, [READ], bind=True)
        assert claims_of(issued.access_token)["client_id"] == "spiffe://tessera.local/agent/ci-runner"
        # A JWT for an identity the task does not name: refused by the broker.
        token_file.write_text(_dev_jwt(b, "stranger"))
        with pytest.raises(Refused):
            ci.token(task.task_id, CRM, [READ])
        token_file.unlink()
        with pytest.raises(IdentityError, match="cannot read"):
            ci.token(task.task_id, CRM, [READ])
        ci.close()

        from_callable = JwtSource(str(b.dir / "ca.pem"), token=lambda: _dev_jwt(b, "ci-runner"))

        async def run() -> str:
            async with AsyncAgentClient(b.endpoint, from_callable) as agent:
                return (await agent.token(task.task_id, CRM, [READ])).grant_id

        assert asyncio.run(run())

        local = AgentClient("ignored", UnixSocketSource(str(b.dir / "run" / "agent.sock")))
        issued = local.token(task.task_id, CRM, [READ])
        assert claims_of(issued.access_token)["client_id"] == "spiffe://tessera.local/agent/local"
        local.close()
    with pytest.raises(IdentityError, match="does not exist"):
        AgentClient("ignored", UnixSocketSource(str(tmp_path / "nowhere.sock"))).token(task.task_id, CRM, [READ])
    with pytest.raises(IdentityError):
        JwtSource("ca.pem")
