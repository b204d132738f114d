"""End to end against a real ``tesserad`` (see conftest.py): the clients, the
verifier following the feed, and the issue's bad inputs where they apply."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import pathlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tessera_sdk import (
    AgentClient,
    AsyncAgentClient,
    AsyncOrchestratorClient,
    BrokerUnavailable,
    CertificateMismatch,
    CertificateRequired,
    DpopKey,
    IdentityError,
    InvalidProof,
    InvalidToken,
    OrchestratorClient,
    PendingApproval,
    Presented,
    ProofRequired,
    Refused,
    SvidSource,
    Token,
    TokenRevoked,
    Unavailable,
    Verifier,
    VerifierConfig,
    VerifyError,
    certificate_thumbprint,
)
from tessera_sdk.replay_redis import RedisReplayStore

from ._tokens import Issuer
from .conftest import CRM, ISSUER, PAYMENTS, Broker, Redis, _dev_init, spiffe

URL = CRM + "/contacts"
READ = "crm.contacts.read"


def eventually(verifier: Verifier, check: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Waits until ``check`` holds, re-checked on every change of ``verifier``'s
    feed or keys (:meth:`Verifier.wait_for`); fails after ``limit`` seconds (a
    bound, not a timing assertion)."""
    if not verifier.wait_for(check, limit):
        pytest.fail(f"not within {limit} s: {what}")


def past_second(floor: int) -> None:
    """Waits for the clock to pass second ``floor`` (a wait on the clock itself)."""
    time.sleep(max(0.0, floor + 1 - time.time()))


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def presented(token: Token, method: str = "GET", url: str = URL) -> Presented:
    return Presented(
        token.access_token,
        "DPoP" if token.dpop_key else "Bearer",
        token.dpop_proof(method, url),
        method,
        url,
    )


@pytest.fixture
def orch(broker: Broker) -> Iterator[OrchestratorClient]:
    with OrchestratorClient(broker.endpoint, broker.identity("orchestrator")) as client:
        yield client


@pytest.fixture
def agent(broker: Broker) -> Iterator[AgentClient]:
    with AgentClient(broker.endpoint, broker.identity("researcher")) as client:
        yield client


def connected_verifier(broker: Broker, audience: str = CRM, **cfg: Any) -> Verifier:
    v = Verifier.connect(
        broker.endpoint, broker.identity("api-gateway"), VerifierConfig(issuer=ISSUER, audience=audience, **cfg)
    )
    eventually(v, lambda: v.ready, "the verifier is synchronised and has keys")
    floor = v.sync_floor
    assert floor is not None
    # Tokens issued in the second the feed synchronised are refused (their
    # revocation could predate the subscription): wait past it.
    past_second(floor)
    return v


@pytest.fixture
def verifier(broker: Broker) -> Iterator[Verifier]:
    v = connected_verifier(broker)
    yield v
    v.close()


def crm_task(orch: OrchestratorClient, *agents: str, scopes: tuple[str, ...] = (READ,)) -> Any:
    return orch.task([spiffe(a) for a in agents or ("researcher",)], {CRM: list(scopes)}, duration_seconds=600)


def test_task_lifecycle_with_bearer_bound_and_delegated_tokens(
    broker: Broker, orch: OrchestratorClient, agent: AgentClient
) -> None:
    with crm_task(orch, "researcher", "writer", scopes=(READ, "crm.notes.read")) as task:
        assert task.state == "ACTIVE"
        bearer = agent.token(task.task_id, CRM, [READ, "crm.notes.read"])
        assert (bearer.token_type, bearer.dpop_key) == ("Bearer", None)
        assert "cnf" not in claims_of(bearer.access_token)
        bound = agent.token(task.task_id, CRM, [READ], bind=True)
        assert bound.token_type == "DPoP"
        assert bound.dpop_key is not None
        assert claims_of(bound.access_token)["cnf"] == {"jkt": bound.dpop_key.thumbprint}
        child = agent.delegate(bearer, spiffe("writer"), [READ])
        assert claims_of(child.access_token)["act"] == {"sub": spiffe("writer")}
        assert child.scopes == (READ,)
        # A child bound to the writer's key is minted in the writer's own call.
        offer = agent.offer(bearer, spiffe("writer"), [READ])
        assert offer.delegate == spiffe("writer")
        with pytest.raises(Refused) as info:
            agent.redeem(offer, key=DpopKey())
        assert info.value.code.name == "PERMISSION_DENIED"
        writer_key = DpopKey()
        with AgentClient(broker.endpoint, broker.identity("writer")) as writer:
            redeemed = writer.redeem(offer, key=writer_key)
        assert redeemed.token_type == "DPoP"
        assert claims_of(redeemed.access_token)["cnf"] == {"jkt": writer_key.thumbprint}
        assert claims_of(redeemed.access_token)["client_id"] == spiffe("writer")
        assert agent.release(bearer) is True
        assert agent.release(bearer.grant_id) is False
        assert orch.get_task(task.task_id).live_grants >= 1
    ended = orch.get_task(task.task_id)
    assert ended.state == "COMPLETED"
    assert ended.live_grants == 0
    with pytest.raises(Refused) as info:
        agent.token(task.task_id, CRM, [READ])
    assert info.value.code.name == "FAILED_PRECONDITION"


def test_the_task_context_completes_the_task_when_the_body_raises(orch: OrchestratorClient) -> None:
    with pytest.raises(RuntimeError, match="agent crashed"), crm_task(orch) as task:
        raise RuntimeError("agent crashed")
    assert orch.get_task(task.task_id).state == "COMPLETED"


def test_refusals_are_refused_errors(orch: OrchestratorClient, agent: AgentClient) -> None:
    with crm_task(orch) as task:
        with pytest.raises(Refused) as info:
            agent.token(task.task_id, CRM, ["crm.contacts.write"])
        assert info.value.code.name == "PERMISSION_DENIED"
        with pytest.raises(Refused):
            agent.token(task.task_id, PAYMENTS, ["payments.invoices.read"])


def test_async_clients_share_the_flow(broker: Broker) -> None:
    async def flow() -> tuple[str, str]:
        async with (
            AsyncOrchestratorClient(broker.endpoint, broker.identity("orchestrator")) as orch,
            AsyncAgentClient(broker.endpoint, broker.identity("researcher")) as agent,
        ):
            async with orch.task([spiffe("researcher")], {CRM: [READ]}, duration_seconds=600) as task:
                token = await agent.token(task.task_id, CRM, [READ], bind=True)
                assert token.token_type == "DPoP"
                assert await agent.release(token)
            with pytest.raises(ValueError, match="boom"):
                async with orch.task([spiffe("researcher")], {CRM: [READ]}, duration_seconds=600) as failing:
                    raise ValueError("boom")
            return (await orch.get_task(task.task_id)).state, (await orch.get_task(failing.task_id)).state

    assert asyncio.run(flow()) == ("COMPLETED", "COMPLETED")


def test_await_approval_returns_the_token_once_a_person_approves(broker: Broker, orch: OrchestratorClient) -> None:
    agent = AgentClient(broker.endpoint, broker.identity("researcher"))
    scopes = {PAYMENTS: ["payments.transfers.create"]}
    with orch.task([spiffe("researcher")], scopes, duration_seconds=600) as task:
        pending = agent.request_token(task.task_id, PAYMENTS, ["payments.transfers.create"], bind=True)
        assert isinstance(pending, PendingApproval)
        result: list[Token] = []
        waiter = threading.Thread(target=lambda: result.append(agent.await_approval(pending, timeout=30)))
        waiter.start()
        broker.cli("--as", "alice", "approvals", "approve", pending.approval_id, "--reason", "pytest")
        waiter.join(timeout=30)
        assert len(result) == 1
        assert result[0].token_type == "DPoP"
        assert result[0].approval_id == pending.approval_id
    agent.close()


def test_the_verifier_accepts_then_refuses_once_the_task_completes(
    orch: OrchestratorClient, agent: AgentClient, verifier: Verifier
) -> None:
    with crm_task(orch) as task:
        token = agent.token(task.task_id, CRM, [READ], bind=True)
        ok = verifier.verify(presented(token))
        assert (ok.binding, ok.task_id, ok.holder) == ("dpop", task.task_id, spiffe("researcher"))

    def refused() -> bool:
        try:
            verifier.verify(presented(token))
        except TokenRevoked:
            return True
        return False

    eventually(verifier, refused, "the verifier refuses the completed task's token")


def test_a_stolen_token_replayed_without_the_dpop_key_is_refused(
    orch: OrchestratorClient, agent: AgentClient, verifier: Verifier
) -> None:
    with crm_task(orch) as task:
        token = agent.token(task.task_id, CRM, [READ], bind=True)
        with pytest.raises(ProofRequired) as as_bearer:
            verifier.verify(Presented(token.access_token, "Bearer", None, "GET", URL))
        assert as_bearer.value.status == 401
        thief = DpopKey()
        with pytest.raises(InvalidProof, match="not the key") as with_own_key:
            verifier.verify(
                Presented(token.access_token, "DPoP", thief.proof("GET", URL, token.access_token), "GET", URL)
            )
        assert with_own_key.value.status == 401
        # The very proof the holder sent, replayed, is refused too.
        proof = token.dpop_proof("GET", URL)
        verifier.verify(Presented(token.access_token, "DPoP", proof, "GET", URL))
        with pytest.raises(InvalidProof, match="used before"):
            verifier.verify(Presented(token.access_token, "DPoP", proof, "GET", URL))


def test_replicas_sharing_a_redis_replay_store_accept_a_proof_once(
    broker: Broker, orch: OrchestratorClient, agent: AgentClient
) -> None:
    """Two replicas of a resource server share a Redis replay store: a proof
    one accepted is refused at the other; one key cannot fill the store past
    its share; a store that does not answer refuses (503), never accepts.
    On a redis-server of its own, whatever the broker's store."""
    redis_server = Redis.start()
    store = RedisReplayStore.from_url(f"redis://127.0.0.1:{redis_server.port}/", per_key=3, timeout=0.5)
    a = connected_verifier(broker, replay_store=store)
    b = connected_verifier(broker, replay_store=store)
    try:
        with crm_task(orch) as task:
            token = agent.token(task.task_id, CRM, [READ], bind=True)

            def at(v: Verifier, proof: str) -> Any:
                return v.verify(Presented(token.access_token, "DPoP", proof, "GET", URL))

            proof = token.dpop_proof("GET", URL)
            assert proof is not None
            at(a, proof)
            with pytest.raises(InvalidProof, match="used before"):
                at(b, proof)
            at(b, str(token.dpop_proof("GET", URL)))
            at(a, str(token.dpop_proof("GET", URL)))
            with pytest.raises(Unavailable, match="of this key") as full:
                at(b, str(token.dpop_proof("GET", URL)))
            assert full.value.status == 503
            redis_server.stop()
            with pytest.raises(Unavailable, match="replay store unavailable") as gone:
                at(a, str(token.dpop_proof("GET", URL)))
            assert gone.value.status == 503
    finally:
        a.close()
        b.close()
        redis_server.stop()


def test_a_token_for_another_audience_is_refused(broker: Broker, orch: OrchestratorClient, agent: AgentClient) -> None:
    payments = connected_verifier(broker, audience=PAYMENTS)
    try:
        with crm_task(orch) as task:
            token = agent.token(task.task_id, CRM, [READ])
            with pytest.raises(InvalidToken, match="audience") as info:
                payments.verify(presented(token, url=PAYMENTS + "/invoices"))
            assert info.value.status == 401
    finally:
        payments.close()


def test_an_edited_act_chain_is_refused(orch: OrchestratorClient, agent: AgentClient, verifier: Verifier) -> None:
    with crm_task(orch, "researcher", "writer") as task:
        parent = agent.token(task.task_id, CRM, [READ])
        child = agent.delegate(parent, spiffe("writer"), [READ])
        assert verifier.verify(presented(child)).actors == (spiffe("writer"),)
        header, _payload, signature = child.access_token.split(".")
        claims = claims_of(child.access_token)
        claims["act"] = {"sub": spiffe("researcher")}
        edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        with pytest.raises(InvalidToken, match="signature"):
            verifier.verify(Presented(f"{header}.{edited}.{signature}"))


def test_a_rotated_signing_key_is_fetched_on_an_unknown_kid(
    broker: Broker, orch: OrchestratorClient, agent: AgentClient, verifier: Verifier
) -> None:
    broker.cli("--as", "alice", "keys", "rotate", "--reason", "pytest")
    with crm_task(orch) as task:
        token = agent.token(task.task_id, CRM, [READ])
        assert verifier.verify(presented(token)).grant_id == token.grant_id


def test_a_feed_cut_longer_than_max_staleness_fails_closed(own_broker: Broker) -> None:
    orch = OrchestratorClient(own_broker.endpoint, own_broker.identity("orchestrator"))
    agent = AgentClient(own_broker.endpoint, own_broker.identity("researcher"))
    verifier = connected_verifier(own_broker, max_staleness=1.0)
    try:
        task = orch.start_task([spiffe("researcher")], {CRM: [READ]}, duration_seconds=600)
        token = agent.token(task.task_id, CRM, [READ])
        assert verifier.verify(presented(token)).grant_id == token.grant_id
        own_broker.stop()

        def unavailable() -> bool:
            try:
                verifier.verify(presented(token))
            except Unavailable:
                return True
            return False

        eventually(verifier, unavailable, "the verifier fails closed once the feed is silent past max_staleness")
        with pytest.raises(Unavailable) as info:
            verifier.verify(presented(token))
        assert info.value.status == 503
        assert info.value.www_authenticate("crm") is None
        # A broker that is down: a clear error, not a hang or a crash.
        with pytest.raises(BrokerUnavailable):
            agent.token(task.task_id, CRM, [READ])
        with pytest.raises(BrokerUnavailable):
            orch.get_task(task.task_id)
    finally:
        verifier.close()
        agent.close()
        orch.close()


def _svid(broker: Broker, directory: pathlib.Path, name: str, not_after: datetime.datetime) -> SvidSource:
    """Copies identity ``name``'s SVID into ``directory``, re-issued by the dev CA until ``not_after``."""
    ca_key = serialization.load_pem_private_key((broker.dir / "ca.key.pem").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((broker.dir / "ca.pem").read_bytes())
    original = x509.load_pem_x509_certificate((broker.dir / "identities" / f"{name}.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(original.subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - datetime.timedelta(days=2))
        .not_valid_after(not_after)
    )
    for ext in original.extensions:
        if ext.oid not in (
            x509.oid.ExtensionOID.SUBJECT_KEY_IDENTIFIER,
            x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ):
            builder = builder.add_extension(ext.value, ext.critical)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    shutil.copy(broker.dir / "ca.pem", directory / "ca.pem")
    (directory / "svid.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "svid.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return SvidSource(str(directory / "ca.pem"), str(directory / "svid.pem"), str(directory / "svid.key"))


def test_an_expired_svid_file_is_a_clear_error(broker: Broker, tmp_path: pathlib.Path) -> None:
    expired = _svid(
        broker, tmp_path, "researcher", datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    )
    agent = AgentClient(broker.endpoint, expired)
    with pytest.raises(IdentityError, match="expired"):
        agent.request_token("any-task", CRM, [READ])


def test_svid_files_are_reloaded_when_rotated(broker: Broker, orch: OrchestratorClient, tmp_path: pathlib.Path) -> None:
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    source = _svid(broker, tmp_path, "researcher", later)
    agent = AgentClient(broker.endpoint, source)
    with crm_task(orch, "researcher", "writer") as task:
        first = agent.token(task.task_id, CRM, [READ])
        assert claims_of(first.access_token)["client_id"] == spiffe("researcher")
        # Rotation in place, as SPIRE's agent does: now the files hold writer's SVID.
        rotated = tmp_path / "next"
        rotated.mkdir()
        _svid(broker, rotated, "writer", later + datetime.timedelta(minutes=1))
        for name in ("svid.pem", "svid.key"):
            shutil.copy(rotated / name, tmp_path / name)
        second = agent.token(task.task_id, CRM, [READ])
        assert claims_of(second.access_token)["client_id"] == spiffe("writer")
    agent.close()


def test_a_verify_error_never_contains_the_token(
    orch: OrchestratorClient, agent: AgentClient, verifier: Verifier
) -> None:
    with crm_task(orch) as task:
        token = agent.token(task.task_id, CRM, [READ], bind=True)
        with pytest.raises(VerifyError) as info:
            verifier.verify(Presented(token.access_token, "Bearer", None, "GET", URL))
        assert token.access_token not in str(info.value)
        assert token.access_token not in repr(token)


def test_the_verifier_resumes_the_feed_after_the_broker_restarts(own_broker: Broker) -> None:
    verifier = connected_verifier(own_broker, max_staleness=1.0)
    try:
        own_broker.stop()
        eventually(verifier, lambda: not verifier.ready, "the verifier notices the silent feed")
        # The same address again, so the verifier's follower finds it.
        own_broker.env["TESSERA_SERVER__LISTEN"] = own_broker.endpoint
        own_broker.start()
        eventually(verifier, lambda: verifier.ready, "the verifier resubscribes (resumed, or fresh after OUT_OF_RANGE)")
        floor = verifier.sync_floor
        assert floor is not None
        past_second(floor)
        with (
            OrchestratorClient(own_broker.endpoint, own_broker.identity("orchestrator")) as orch,
            AgentClient(own_broker.endpoint, own_broker.identity("researcher")) as agent,
        ):
            task = orch.start_task([spiffe("researcher")], {CRM: [READ]}, duration_seconds=600)
            token = agent.token(task.task_id, CRM, [READ])
            assert verifier.verify(presented(token)).grant_id == token.grant_id
            agent.release(token)

            def refused() -> bool:
                try:
                    verifier.verify(presented(token))
                except TokenRevoked:
                    return True
                return False

            eventually(verifier, refused, "a revocation after the restart reaches the verifier")
    finally:
        verifier.close()


def first_der(pem_path: str) -> bytes:
    """The DER of the first certificate of a PEM file (the SVID leaf)."""
    return x509.load_pem_x509_certificates(pathlib.Path(pem_path).read_bytes())[0].public_bytes(
        serialization.Encoding.DER
    )


def test_an_mtls_bound_token_is_accepted_over_the_agents_svid_only(
    broker: Broker, orch: OrchestratorClient, agent: AgentClient, verifier: Verifier
) -> None:
    """RFC 8705: the broker binds the token to the SVID the agent called it
    with; the Python verifier accepts it over that certificate only."""
    svid = first_der(broker.identity("researcher").files.cert)
    other = first_der(broker.identity("writer").files.cert)
    with crm_task(orch) as task:
        token = agent.token(task.task_id, CRM, [READ], mtls_binding=True)
        assert token.token_type == "Bearer"
        assert claims_of(token.access_token)["cnf"] == {"x5t#S256": certificate_thumbprint(svid)}
        authorization = f"Bearer {token.access_token}"
        ok = verifier.authenticate(authorization, [], "GET", URL, client_cert=svid)
        assert ok.binding == "certificate"
        assert ok.holder == spiffe("researcher")
        with pytest.raises(CertificateMismatch):
            verifier.authenticate(authorization, [], "GET", URL, client_cert=other)
        with pytest.raises(CertificateRequired) as info:
            verifier.authenticate(authorization, [], "GET", URL)
        assert info.value.status == 401


def test_a_key_withdrawn_by_break_glass_is_dropped_by_a_connected_verifier_at_once(
    tmp_path: pathlib.Path, own_store_env: dict[str, str]
) -> None:
    """Break-glass withdraws the signing key: a connected verifier refuses its
    tokens as soon as the revocation feed announces it, not at its next JWKS
    refresh (here 10 minutes away). The token checked is one an attacker
    holding the key would forge, for a task that never existed: no task or
    grant revocation covers it, only the key's withdrawal."""
    issuer = Issuer()
    key_path = tmp_path / "withdrawn-signing.key.pem"
    _dev_init(tmp_path)
    key_path.write_bytes(
        issuer.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    env = {
        **own_store_env,
        "TESSERA_TOKENS__SIGNING_KEY": str(key_path),
        "TESSERA_TOKENS__ALGORITHM": "ES256",
        "TESSERA_SERVER__HEARTBEAT_INTERVAL": "500ms",
    }
    broker = Broker(dir=tmp_path, env=env)
    broker.start()
    try:
        verifier = connected_verifier(broker, jwks_refresh=600.0)
        with (
            OrchestratorClient(broker.endpoint, broker.identity("orchestrator")) as orch,
            AgentClient(broker.endpoint, broker.identity("researcher")) as agent,
            crm_task(orch) as task,
        ):
            real = agent.token(task.task_id, CRM, [READ])
            header = json.loads(base64.urlsafe_b64decode(real.access_token.split(".")[0] + "=="))
            forged = issuer.sign(
                {**claims_of(real.access_token), "task_id": "never-started", "jti": "forged-grant"},
                kid=header["kid"],
            )
            forgery = Presented(forged, "Bearer", None, "GET", URL)
            assert verifier.verify(forgery).task_id == "never-started"

            broker.cli("--as", "alice", "revoke-all", "--confirm", "--reason", "key compromise")

            def refused() -> bool:
                try:
                    verifier.check(forgery)
                except (TokenRevoked, InvalidToken):
                    return True
                return False

            eventually(verifier, refused, "the verifier refuses the withdrawn key's forgery")
        verifier.close()
    finally:
        broker.stop()


def test_tool_level_limits_ride_on_tasks_and_token_requests(broker: Broker, orch: OrchestratorClient) -> None:
    """A task's ``mcp_tool`` limit is in every token for its server; a
    narrower one asked for is carried, a wider one refused."""
    ceiling = {"type": "mcp_tool", "server": CRM, "tools": ["lookup", "update"]}
    agent = AgentClient(broker.endpoint, broker.identity("researcher"))
    with orch.task(
        [spiffe("researcher")], {CRM: [READ]}, duration_seconds=600, authorization_details=[ceiling]
    ) as task:

        def details(token: Token | PendingApproval) -> Any:
            assert isinstance(token, Token)
            payload = token.access_token.split(".")[1]
            return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["authorization_details"]

        assert details(agent.request_token(task.task_id, CRM, [READ])) == [ceiling]
        narrow = {**ceiling, "tools": ["lookup"]}
        assert details(agent.request_token(task.task_id, CRM, [READ], tool_limit=narrow)) == [narrow]
        with pytest.raises(Refused, match="wider than the task's ceiling"):
            agent.request_token(task.task_id, CRM, [READ], tool_limit={**ceiling, "tools": ["lookup", "delete"]})
    agent.close()
