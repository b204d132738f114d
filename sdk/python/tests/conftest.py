"""Fixtures: a real ``tesserad`` on a free loopback port with a dev PKI from
``tessera dev init``, on the memory store, or on a real ``redis-server`` when
``TESSERA_TEST_STORE=redis`` (as ``tests/support`` does for the Rust e2e tests).

The binaries come from ``$TESSERA_BIN`` (``make test`` passes ``$(BIN)``),
default ``~/.cache/tessera/target/debug``. Missing binaries fail the tests:
they are never skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tessera_sdk import SvidSource

TD = "tessera.local"
CRM = "https://api.example.com/crm"
PAYMENTS = "https://api.example.com/payments"
ISSUER = "https://tessera.local"


def spiffe(name: str) -> str:
    """The SPIFFE ID of a dev identity."""
    return f"spiffe://{TD}/agent/{name}" if name in ("researcher", "writer") else f"spiffe://{TD}/{name}"


def bin_dir() -> pathlib.Path:
    default = pathlib.Path.home() / ".cache" / "tessera" / "target" / "debug"
    path = pathlib.Path(os.environ.get("TESSERA_BIN", default))
    for name in ("tesserad", "tessera"):
        if not (path / name).is_file():
            pytest.fail(f"{path / name} not found: build with `cargo build --bins` (make test does)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Redis:
    """A redis-server on a free loopback port, in a directory `make redis-reap` recognises."""

    proc: subprocess.Popen[bytes]
    port: int
    dir: str

    @classmethod
    def start(cls) -> Redis:
        if shutil.which("redis-server") is None:
            pytest.fail("TESSERA_TEST_STORE=redis needs redis-server: run `make redis`")
        tmp = tempfile.gettempdir()
        directory = tempfile.mkdtemp(prefix=f"tessera-e2e-redis-{os.getpid()}-py", dir=tmp)
        for _ in range(5):
            port = _free_port()
            args = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", directory, "--save", ""]
            args += ["--appendonly", "no", "--daemonize", "no", "--logfile", os.path.join(directory, "redis.log")]
            proc = subprocess.Popen(args, cwd=directory, stdin=subprocess.DEVNULL)  # noqa: S603
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                        s.sendall(b"PING\r\n")
                        if s.recv(16).startswith(b"+PONG"):
                            return cls(proc, port, directory)
                except OSError:
                    time.sleep(0.01)
            proc.kill()
            proc.wait()
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Broker:
    """A running ``tesserad``."""

    dir: pathlib.Path
    proc: subprocess.Popen[bytes] | None = None
    endpoint: str = ""
    oauth: str = ""
    log: pathlib.Path = field(default_factory=pathlib.Path)
    env: dict[str, str] = field(default_factory=dict)

    def identity(self, name: str) -> SvidSource:
        """The dev identity ``name`` (orchestrator, researcher, writer, alice, api-gateway)."""
        return SvidSource.from_dir(str(self.dir), name)

    def cli(self, *args: str) -> str:
        """Runs ``tessera`` against this broker with its dev PKI; fails the test on an error exit."""
        command = [str(bin_dir() / "tessera"), "--dev-dir", str(self.dir), "--endpoint", f"https://{self.endpoint}"]
        out = subprocess.run([*command, *args], capture_output=True, check=False)  # noqa: S603
        assert out.returncode == 0, out.stderr.decode()
        return out.stdout.decode()

    def start(self) -> None:
        n = int(time.monotonic_ns())
        ready = self.dir / f"ready-{n}.json"
        self.log = self.dir / f"tesserad-{n}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        env.update(
            {
                "TESSERA_SERVER__LISTEN": "127.0.0.1:0",
                "TESSERA_SERVER__HTTP_LISTEN": "127.0.0.1:0",
                "TESSERA_OAUTH__LISTEN": "127.0.0.1:0",
                "TESSERA_SERVER__INSTANCE_ID": f"tesserad-pytest-{n}",
                **self.env,
            }
        )
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603
                [str(bin_dir() / "tesserad"), "--config", str(self.dir / "tesserad.toml"), "--ready-file", str(ready)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"tesserad exited with {self.proc.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("tesserad did not become ready in 30 s")
            time.sleep(0.02)
        listening = json.loads(ready.read_text())
        self.endpoint = listening["grpc"]
        self.oauth = listening.get("oauth") or ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _dev_init(directory: pathlib.Path, *extra: str) -> None:
    out = subprocess.run(  # noqa: S603
        [str(bin_dir() / "tessera"), "dev", "init", "--dir", str(directory), *extra], capture_output=True, check=False
    )
    if out.returncode != 0:
        pytest.fail(f"tessera dev init failed: {out.stderr.decode()}")


@contextlib.contextmanager
def _store() -> Iterator[dict[str, str]]:
    """``TESSERA_*`` settings of a store: none on memory; on Redis, a
    redis-server of its own, stopped on exit."""
    if os.environ.get("TESSERA_TEST_STORE", "memory") != "redis":
        yield {}
        return
    redis = Redis.start()
    try:
        yield {"TESSERA_STORE__BACKEND": "redis", "TESSERA_STORE__URLS": f'["redis://127.0.0.1:{redis.port}/"]'}
    finally:
        redis.stop()


@pytest.fixture(scope="session")
def store_env() -> Iterator[dict[str, str]]:
    """``TESSERA_*`` settings of the store the brokers run on."""
    with _store() as env:
        yield env


def _broker(tmp: pathlib.Path, env: dict[str, str], *init: str) -> Broker:
    _dev_init(tmp, *init)
    broker = Broker(dir=tmp, env=dict(env))
    broker.start()
    return broker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory, store_env: dict[str, str]) -> Iterator[Broker]:
    """One broker shared by the tests that do not stop it."""
    b = _broker(tmp_path_factory.mktemp("tessera"), store_env)
    yield b
    b.stop()


@pytest.fixture
def own_store_env() -> Iterator[dict[str, str]]:
    """A store of the test's own: on Redis, a redis-server no other test's broker
    uses (for what acts on the whole deployment, such as break-glass, which
    withdraws every replica's signing key)."""
    with _store() as env:
        yield env


@pytest.fixture
def own_broker(tmp_path: pathlib.Path, store_env: dict[str, str]) -> Iterator[Broker]:
    """A broker of the test's own, which the test may stop. Its feed beats
    every 250 ms, so the tests may set a verifier's max_staleness to 1 s
    without the quiet feed itself going stale."""
    b = _broker(tmp_path, {**store_env, "TESSERA_SERVER__HEARTBEAT_INTERVAL": "250ms"})
    yield b
    b.stop()
