"""Attesting with a JWT (file or callable) and over the broker's Unix socket,
against a real tesserad made with `tessera dev init --jwt --unix-socket`."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import pathlib
import stat
import subprocess
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tessera_sdk import (
    AgentClient,
    AsyncAgentClient,
    BrokerUnavailable,
    IdentityError,
    JwtSource,
    OrchestratorClient,
    Refused,
    SvidSource,
    UnixSocketSource,
)

from .conftest import CRM, Broker, _broker, _dev_init, bin_dir, spiffe
from .test_e2e import claims_of

READ = "crm.contacts.read"
BROKER = "spiffe://tessera.local/tesserad"


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
        ci = AgentClient(b.endpoint, JwtSource(str(b.dir / "ca.pem"), broker_id=BROKER, token_file=str(token_file)))
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

        from_callable = JwtSource(str(b.dir / "ca.pem"), broker_id=BROKER, token=lambda: _dev_jwt(b, "ci-runner"))

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
    with pytest.raises(IdentityError, match="exactly one"):
        JwtSource("ca.pem", broker_id=BROKER)
    with pytest.raises(IdentityError, match="not a SPIFFE ID"):
        JwtSource("ca.pem", broker_id="tesserad.example", token=lambda: "a.b.c")


def _impostor_certificate(directory: pathlib.Path, spiffe_id: str) -> None:
    """Replaces the broker's certificate with one the dev CA issued for the
    broker's host names but to another workload: ``spiffe_id``."""
    ca_key = serialization.load_pem_private_key((directory / "ca.key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.UniformResourceIdentifier(spiffe_id),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "broker.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "broker.key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def test_the_sdk_refuses_a_server_with_another_spiffe_id(tmp_path: pathlib.Path, store_env: dict[str, str]) -> None:
    """The broker must prove its SPIFFE ID, not only its host name: a server
    with a valid certificate from the same CA for the broker's host names, but
    another workload's SPIFFE ID, is refused over mTLS and over JWT
    attestation, synchronous and asyncio; told to expect that ID, the SDK
    reaches it (so the pin, not the server, refused)."""
    impostor = "spiffe://tessera.local/agent/impostor"
    _dev_init(tmp_path, "--jwt")
    _impostor_certificate(tmp_path, impostor)
    b = Broker(dir=tmp_path, env=dict(store_env))
    b.start()
    try:
        svid = SvidSource.from_dir(str(tmp_path), "orchestrator")
        assert svid.broker_id == BROKER
        with OrchestratorClient(b.endpoint, svid) as orch, pytest.raises(BrokerUnavailable, match="agent/impostor"):
            orch.get_task("nope")
        jwt = JwtSource(str(tmp_path / "ca.pem"), broker_id=BROKER, token=lambda: _dev_jwt(b, "ci-runner"))
        with AgentClient(b.endpoint, jwt) as agent, pytest.raises(BrokerUnavailable, match="not the broker"):
            agent.release("g_nope")

        async def refused_async() -> None:
            async with AsyncAgentClient(b.endpoint, SvidSource.from_dir(str(tmp_path), "researcher")) as agent:
                await agent.release("g_nope")

        with pytest.raises(BrokerUnavailable, match="agent/impostor"):
            asyncio.run(refused_async())

        told = SvidSource.from_dir(str(tmp_path), "orchestrator", broker_id=impostor)
        with OrchestratorClient(b.endpoint, told) as orch, pytest.raises(Refused) as refused:
            orch.get_task("nope")
        assert "impostor" not in str(refused.value)
        # The relay's socket lives in a directory only this user may enter.
        relay_dir = pathlib.Path(told._relays.relay(b.endpoint).path).parent
        assert stat.S_IMODE(relay_dir.stat().st_mode) == 0o700
    finally:
        b.stop()
