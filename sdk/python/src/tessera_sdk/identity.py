"""How a workload attests itself to the broker (:class:`Attestation`):

- :class:`SvidSource`: an X.509-SVID, its key and the trust bundle over mTLS,
  read from files and re-read when they change (SPIRE's agent or cert-manager
  rotate them in place), like ``py-spiffe``'s X.509 source;
- :class:`JwtSource`: a JWT (an OIDC token: Kubernetes projected token, CI
  token) from a file re-read for every call, or from a callable, sent as
  ``authorization: Bearer`` over TLS without a client certificate;
- :class:`UnixSocketSource`: the broker's local Unix socket, where the kernel
  tells the broker who the caller is.

Over TLS, the broker must prove its SPIFFE ID, not only its host name: its
certificate chains to the bundle, is valid for the endpoint's host and carries
exactly one URI SAN, ``broker_id`` (by default ``spiffe://<the SVID's trust
domain>/tesserad``). grpcio cannot check that itself, so the TLS is made by
the SDK (see ``_pinned``).
"""

from __future__ import annotations

import datetime
import os
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import grpc.aio
from cryptography import x509

from ._pinned import RelayPool, client_context
from .errors import BrokerError, IdentityError, broker_error

__all__ = ["DEFAULT_BROKER_PATH", "Attestation", "JwtSource", "SvidFiles", "SvidSource", "UnixSocketSource"]

_Options = Sequence[tuple[str, Any]]

DEFAULT_BROKER_PATH = "/tesserad"
"""The broker's SPIFFE ID path when none is given (what ``tessera dev init`` issues)."""


class Attestation(Protocol):
    """What the clients need from an attestation method."""

    def refresh(self) -> bool:
        """Re-reads what changed; true when channels must be re-made. Raises
        :class:`IdentityError` when the material is missing or unusable."""

    def channel(self, endpoint: str, options: _Options = ()) -> grpc.Channel:
        """A new synchronous channel to the broker."""

    def aio_channel(self, endpoint: str, options: _Options = ()) -> grpc.aio.Channel:
        """A new asyncio channel to the broker."""

    def refusal(self, endpoint: str) -> str | None:
        """Why the last connection to ``endpoint`` was refused before any call
        reached the broker (e.g. not the broker's SPIFFE ID), or None."""


@dataclass(frozen=True)
class SvidFiles:
    """The three PEM files of an X.509-SVID identity."""

    bundle: str
    """Trust bundle: the CA certificate(s) that sign the broker's certificate."""
    cert: str
    """The workload's X.509-SVID (optionally followed by intermediates)."""
    key: str
    """The SVID's private key (a secret; never logged)."""


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


class SvidSource:
    """Credentials for mTLS to the broker, reloaded when a file changes.

    Every :meth:`refresh` checks the files' modification time and size,
    re-reads them when they changed, and refuses an SVID that is expired or
    not yet valid with :class:`IdentityError` — before any connection is
    attempted, so an agent whose SVID rotation stopped gets a clear error
    instead of a TLS failure. ``broker_id`` is the broker's SPIFFE ID; by
    default ``spiffe://<this SVID's trust domain>/tesserad``.
    """

    def __init__(self, bundle: str, cert: str, key: str, *, broker_id: str | None = None) -> None:
        self.files = SvidFiles(bundle=str(bundle), cert=str(cert), key=str(key))
        if broker_id is not None:
            _check_spiffe_id(broker_id)
        self._broker_id = broker_id
        self._lock = threading.Lock()
        self._stamps: tuple[tuple[int, int], ...] | None = None
        self._context: ssl.SSLContext | None = None
        self._expected: str | None = None
        self._not_after: datetime.datetime | None = None
        self._not_before: datetime.datetime | None = None
        self.spiffe_id: str | None = None
        self._relays = RelayPool(self, "_current_context", "_current_broker_id")

    @classmethod
    def from_dir(cls, directory: str, name: str, *, broker_id: str | None = None) -> SvidSource:
        """A ``tessera dev init`` identity: ``ca.pem`` and ``identities/<name>.pem``."""
        return cls(
            os.path.join(directory, "ca.pem"),
            os.path.join(directory, "identities", f"{name}.pem"),
            os.path.join(directory, "identities", f"{name}.key.pem"),
            broker_id=broker_id,
        )

    def _read(self, what: str, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise IdentityError(f"cannot read {what} `{path}`: {err.strerror}") from None
        if b"-----BEGIN" not in data:
            raise IdentityError(f"{what} `{path}` is not PEM")
        return data

    def refresh(self) -> bool:
        """See :meth:`Attestation.refresh`: re-reads changed files; true when they changed."""
        files = (self.files.bundle, self.files.cert, self.files.key)
        with self._lock:
            try:
                stamps = tuple(_stamp(p) for p in files)
            except OSError as err:
                raise IdentityError(f"cannot read SVID file `{err.filename}`: {err.strerror}") from None
            changed = stamps != self._stamps
            if changed:
                bundle = self._read("trust bundle", self.files.bundle)
                cert_pem = self._read("certificate", self.files.cert)
                self._read("private key", self.files.key)
                try:
                    cert = x509.load_pem_x509_certificate(cert_pem)
                except ValueError:
                    raise IdentityError(f"certificate `{self.files.cert}` is not an X.509 certificate") from None
                spiffe_id = _spiffe_id(cert)
                expected = self._broker_id or _default_broker_id(spiffe_id, self.files.cert)
                self._context = client_context(bundle, self.files.cert, self.files.key)
                self._not_after = cert.not_valid_after_utc
                self._not_before = cert.not_valid_before_utc
                self.spiffe_id = spiffe_id
                self._expected = expected
                self._stamps = stamps
            now = datetime.datetime.now(datetime.timezone.utc)
            assert self._not_after is not None
            assert self._not_before is not None
            if now >= self._not_after:
                raise IdentityError(
                    f"SVID `{self.files.cert}` expired at {self._not_after.isoformat()}: is the rotation running?"
                )
            if now < self._not_before:
                raise IdentityError(f"SVID `{self.files.cert}` is not valid before {self._not_before.isoformat()}")
            return changed

    def _current_context(self) -> ssl.SSLContext:
        self.refresh()
        assert self._context is not None
        return self._context

    def _current_broker_id(self) -> str:
        self.refresh()
        assert self._expected is not None
        return self._expected

    @property
    def broker_id(self) -> str:
        """The SPIFFE ID the broker must prove."""
        return self._current_broker_id()

    def channel(self, endpoint: str, options: _Options = ()) -> grpc.Channel:
        """A new synchronous mTLS channel to ``endpoint`` (``host:port``)."""
        self.refresh()
        return _pinned_channel(self._relays, endpoint, grpc.local_channel_credentials(_UDS), options)

    def aio_channel(self, endpoint: str, options: _Options = ()) -> grpc.aio.Channel:
        """A new asyncio mTLS channel to ``endpoint`` (``host:port``)."""
        self.refresh()
        return _pinned_aio_channel(self._relays, endpoint, grpc.local_channel_credentials(_UDS), options)

    def refusal(self, endpoint: str) -> str | None:
        """See :meth:`Attestation.refusal`."""
        return self._relays.refusal(_target(endpoint))

    def close(self) -> None:
        """Stops the TLS relays (channels made from this source stop working)."""
        self._relays.close()

    def __repr__(self) -> str:
        return f"SvidSource(cert={self.files.cert!r}, spiffe_id={self.spiffe_id!r})"


class JwtSource:
    """A JWT sent as ``authorization: Bearer`` on every call, over TLS that
    trusts ``bundle``, to a broker that proves ``broker_id`` (its SPIFFE ID: a
    client without an SVID has no trust domain to derive it from). Give
    ``token_file`` (re-read for every call, so a rotated projected token is
    picked up) or ``token`` (a callable)."""

    def __init__(
        self,
        bundle: str,
        *,
        broker_id: str,
        token_file: str | None = None,
        token: Callable[[], str] | None = None,
    ) -> None:
        if (token_file is None) == (token is None):
            raise IdentityError("give exactly one of token_file and token")
        _check_spiffe_id(broker_id)
        self.bundle = str(bundle)
        self.broker_id = broker_id
        self.token_file = token_file
        self._token = token
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._context: ssl.SSLContext | None = None
        self._relays = RelayPool(self, "_current_context", "_pinned_id")

    def current_token(self) -> str:
        """The JWT to send now; :class:`IdentityError` if there is none."""
        if self._token is not None:
            value = self._token()
        else:
            assert self.token_file is not None
            try:
                with open(self.token_file, encoding="ascii") as f:
                    value = f.read()
            except (OSError, UnicodeDecodeError) as err:
                raise IdentityError(f"cannot read the attestation JWT `{self.token_file}`: {err}") from None
        value = value.strip()
        if value.count(".") != 2 or any(c.isspace() for c in value):
            raise IdentityError("the attestation JWT is not a compact JWS")
        return value

    def refresh(self) -> bool:
        """See :meth:`Attestation.refresh`: the bundle file's change, and a JWT is at hand."""
        self.current_token()
        with self._lock:
            try:
                stamp = _stamp(self.bundle)
            except OSError as err:
                raise IdentityError(f"cannot read trust bundle `{self.bundle}`: {err.strerror}") from None
            changed = stamp != self._stamp
            if changed:
                with open(self.bundle, "rb") as f:
                    self._context = client_context(f.read())
                self._stamp = stamp
            return changed

    def _current_context(self) -> ssl.SSLContext:
        self.refresh()
        assert self._context is not None
        return self._context

    def _pinned_id(self) -> str:
        return self.broker_id

    def _credentials(self) -> grpc.ChannelCredentials:
        self.refresh()
        plugin = grpc.metadata_call_credentials(_BearerPlugin(self))
        return grpc.composite_channel_credentials(grpc.local_channel_credentials(_UDS), plugin)

    def channel(self, endpoint: str, options: _Options = ()) -> grpc.Channel:
        """A new synchronous TLS channel sending the JWT on every call."""
        return _pinned_channel(self._relays, endpoint, self._credentials(), options)

    def aio_channel(self, endpoint: str, options: _Options = ()) -> grpc.aio.Channel:
        """A new asyncio TLS channel sending the JWT on every call."""
        return _pinned_aio_channel(self._relays, endpoint, self._credentials(), options)

    def refusal(self, endpoint: str) -> str | None:
        """See :meth:`Attestation.refusal`."""
        return self._relays.refusal(_target(endpoint))

    def close(self) -> None:
        """Stops the TLS relays (channels made from this source stop working)."""
        self._relays.close()

    def __repr__(self) -> str:
        return f"JwtSource(token_file={self.token_file!r}, broker_id={self.broker_id!r})"


class _BearerPlugin(grpc.AuthMetadataPlugin):  # type: ignore[misc]
    def __init__(self, source: JwtSource) -> None:
        self._source = source

    def __call__(self, context: Any, callback: Any) -> None:
        try:
            callback((("authorization", f"Bearer {self._source.current_token()}"),), None)
        except IdentityError as err:
            callback((), err)


# The authority the Rust SDK sends over the socket: with gRPC's default
# authority for a `unix:` target the broker resets the stream (RST_STREAM
# PROTOCOL_ERROR, seen in tests/test_attestation.py).
_UNIX_OPTIONS: list[tuple[str, Any]] = [("grpc.default_authority", "tesserad.local")]


class UnixSocketSource:
    """The broker's local Unix socket (``[attestation.unix] socket``): the
    kernel's peer credentials attest the caller. ``endpoint`` is ignored."""

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def refresh(self) -> bool:
        """See :meth:`Attestation.refresh`; the socket must exist."""
        if not os.path.exists(self.path):
            raise IdentityError(f"the broker's Unix socket `{self.path}` does not exist")
        return False

    def channel(self, endpoint: str, options: _Options = ()) -> grpc.Channel:
        """A new synchronous channel over the socket."""
        return grpc.insecure_channel(f"unix:{self.path}", options=[*_UNIX_OPTIONS, *options])

    def aio_channel(self, endpoint: str, options: _Options = ()) -> grpc.aio.Channel:
        """A new asyncio channel over the socket."""
        return grpc.aio.insecure_channel(f"unix:{self.path}", options=[*_UNIX_OPTIONS, *options])

    def refusal(self, endpoint: str) -> str | None:
        """See :meth:`Attestation.refusal`: the kernel attests, nothing is refused here."""
        return None

    def __repr__(self) -> str:
        return f"UnixSocketSource({self.path!r})"


def _target(endpoint: str) -> str:
    """``https://host:port`` or ``host:port`` → ``host:port``; other schemes are refused."""
    endpoint = endpoint.strip()
    scheme, sep, rest = endpoint.partition("://")
    if sep:
        if scheme.lower() != "https":
            raise IdentityError(f"endpoint `{endpoint}`: the broker only speaks https (mTLS)")
        endpoint = rest
    endpoint = endpoint.rstrip("/")
    if not endpoint:
        raise IdentityError("endpoint is empty")
    return endpoint


_UDS = grpc.LocalConnectionType.UDS


def call_error(identity: Attestation, endpoint: str, code: grpc.StatusCode, details: str) -> BrokerError:
    """The exception for a failed call; a broker that could not be reached
    says why the SDK refused it (e.g. not the broker's SPIFFE ID)."""
    if code == grpc.StatusCode.UNAVAILABLE:
        why = identity.refusal(endpoint)
        if why is not None:
            details = f"{why} ({details})" if details else why
    return broker_error(code, details)


def _pinned_channel(
    relays: RelayPool, endpoint: str, creds: grpc.ChannelCredentials, options: _Options
) -> grpc.Channel:
    relay = relays.relay(_target(endpoint))
    return grpc.secure_channel(relay.target, creds, options=[("grpc.default_authority", relay.authority), *options])


def _pinned_aio_channel(
    relays: RelayPool, endpoint: str, creds: grpc.ChannelCredentials, options: _Options
) -> grpc.aio.Channel:
    relay = relays.relay(_target(endpoint))
    return grpc.aio.secure_channel(relay.target, creds, options=[("grpc.default_authority", relay.authority), *options])


def _check_spiffe_id(broker_id: str) -> None:
    rest = broker_id.removeprefix("spiffe://")
    if rest == broker_id or not rest.split("/", 1)[0] or any(c.isspace() for c in broker_id):
        raise IdentityError(f"broker_id `{broker_id}` is not a SPIFFE ID")


def _default_broker_id(own: str | None, cert_file: str) -> str:
    """``spiffe://<own trust domain>/tesserad``."""
    domain = (own or "").removeprefix("spiffe://").split("/", 1)[0]
    if own is None or not domain:
        raise IdentityError(f"certificate `{cert_file}` has no SPIFFE ID: give broker_id")
    return f"spiffe://{domain}{DEFAULT_BROKER_PATH}"


def _spiffe_id(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return str(uri)
    return None
