"""The broker's SPIFFE ID, pinned, for grpcio.

grpcio checks that the broker's certificate chains to the trust bundle and
names the endpoint's host, but it cannot be told to require a SPIFFE ID, the
check the SPIFFE X.509-SVID profile asks of a peer: another workload of the
trust domain holding a valid SVID for the broker's host name would pass (and
the broker's rustls refuses a SPIFFE ID sent as the TLS server name, so
``grpc.ssl_target_name_override`` cannot stand in for it).

So the SDK makes the TLS connection itself, with Python's :mod:`ssl`:
:class:`PinnedRelay` accepts grpcio's connections on a Unix socket in a
directory only this user may enter, opens TLS to the broker for each one,
refuses a broker whose certificate does not carry exactly one URI SAN, the
expected SPIFFE ID (as the Rust SDK does), and then relays the bytes. grpcio
reaches the socket with local credentials, so call credentials (a JWT) still
apply. Every relay of the process runs on one asyncio loop in one daemon
thread; a relay ends with the attestation source that made it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import tempfile
import threading
import weakref
from collections.abc import Callable
from typing import Any

from .errors import IdentityError

CONNECT_TIMEOUT = 5.0
"""How long the TCP connection and TLS handshake to the broker may take."""

_CHUNK = 64 * 1024


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for an IPv6 literal) as (host, port)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise IdentityError(f"endpoint `{endpoint}` is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def refusal(peercert: dict[str, Any] | None, broker_id: str) -> str | None:
    """Why the broker's (already verified) certificate is not the broker's, or None."""
    if not peercert:
        return "the server presented no certificate"
    uris = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"]
    if len(uris) != 1:
        return f"the server certificate has {len(uris)} URI SANs, not exactly one (the broker `{broker_id}`)"
    if uris[0] != broker_id:
        return f"the server is `{uris[0]}`, not the broker `{broker_id}`"
    return None


def client_context(bundle: bytes, cert_file: str | None = None, key_file: str | None = None) -> ssl.SSLContext:
    """TLS ≥ 1.2 to the broker: ``bundle`` as the only roots, the host name
    checked, ALPN ``h2``, and the SVID as client certificate when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cadata=bundle.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as err:
        raise IdentityError(f"the trust bundle is unusable: {err}") from None
    if cert_file is not None:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as err:
            raise IdentityError(f"the SVID `{cert_file}` and its key are unusable: {err}") from None
    ctx.set_alpn_protocols(["h2"])
    return ctx


class _Loop:
    """The one asyncio loop, in a daemon thread, that every relay runs on."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or not cls._loop.is_running():
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                threading.Thread(target=run, name="tessera-pinned-tls", daemon=True).start()
                started.wait()
                cls._loop = loop
            return cls._loop


class PinnedRelay:
    """A local Unix socket whose every connection is relayed to ``endpoint``
    over TLS from ``context()``, once the broker proved to be ``broker_id()``."""

    def __init__(self, endpoint: str, context: Callable[[], ssl.SSLContext], broker_id: Callable[[], str]) -> None:
        self.host, self.port = split_endpoint(endpoint)
        self._context = context
        self._broker_id = broker_id
        self.last_refusal: str | None = None
        # mkdtemp makes the directory 0700: only this user reaches the socket.
        self._dir = tempfile.mkdtemp(prefix="tessera-pinned-")
        self.path = os.path.join(self._dir, "broker.sock")
        self._loop = _Loop.get()
        try:
            self._server = asyncio.run_coroutine_threadsafe(
                asyncio.start_unix_server(self._serve, path=self.path), self._loop
            ).result(timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as err:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise IdentityError(f"cannot open the local TLS relay socket in `{self._dir}`: {err}") from None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def target(self) -> str:
        """The grpcio target of the relay."""
        return f"unix:{self.path}"

    @property
    def authority(self) -> str:
        """The HTTP/2 authority of the broker (what a direct channel would send)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def _serve(self, local_in: asyncio.StreamReader, local_out: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._relay(local_in, local_out)
        finally:
            if task is not None:
                self._connections.discard(task)

    async def _relay(self, local_in: asyncio.StreamReader, local_out: asyncio.StreamWriter) -> None:
        try:
            broker_id = self._broker_id()
            remote_in, remote_out = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self._context(),
                    server_hostname=self.host,
                    ssl_handshake_timeout=CONNECT_TIMEOUT,
                ),
                CONNECT_TIMEOUT,
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError, IdentityError) as err:
            self.last_refusal = f"cannot connect to the broker at {self.authority}: {err or type(err).__name__}"
            local_out.close()
            return
        why = refusal(remote_out.get_extra_info("peercert"), broker_id)
        if why is not None:
            self.last_refusal = why
            remote_out.close()
            local_out.close()
            return
        self.last_refusal = None
        await asyncio.gather(_pipe(local_in, remote_out), _pipe(remote_in, local_out))

    def close(self) -> None:
        """Stops the relay and ends its connections; thread-safe."""

        def stop() -> None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()

        if self._loop.is_running():
            self._loop.call_soon_threadsafe(stop)
        shutil.rmtree(self._dir, ignore_errors=True)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copies until either side ends, then closes ``sink`` (the other pipe then ends too)."""
    try:
        while data := await source.read(_CHUNK):
            sink.write(data)
            await sink.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        sink.close()


class RelayPool:
    """One relay per broker endpoint of an attestation source. It holds the
    source weakly, and its relays stop when the source is collected."""

    def __init__(self, source: object, context: str, broker_id: str) -> None:
        ref = weakref.ref(source)

        def call(name: str) -> Any:
            target = ref()
            if target is None:
                raise IdentityError("the attestation source is gone")
            return getattr(target, name)()

        self._context: Callable[[], ssl.SSLContext] = lambda: call(context)
        self._broker_id: Callable[[], str] = lambda: call(broker_id)
        self._lock = threading.Lock()
        self._relays: dict[str, PinnedRelay] = {}
        weakref.finalize(source, self.close)

    def relay(self, endpoint: str) -> PinnedRelay:
        with self._lock:
            relay = self._relays.get(endpoint)
            if relay is None:
                relay = self._relays[endpoint] = PinnedRelay(endpoint, self._context, self._broker_id)
            return relay

    def refusal(self, endpoint: str) -> str | None:
        with self._lock:
            relay = self._relays.get(endpoint)
        return None if relay is None else relay.last_refusal

    def close(self) -> None:
        with self._lock:
            relays, self._relays = list(self._relays.values()), {}
        for relay in relays:
            relay.close()
